"""Test-wide settings.

vLLM engines started by the tests (in this process and in the ``ponder`` subprocesses they run) skip the
torch.compile warm-up: about 20 s less per engine on the 2-core CI machine, over about twenty engines. One test
module (tests/test_e2e_serve.py) serves with the default, compiled path.
"""

import os

os.environ.setdefault("PONDER_ENFORCE_EAGER", "1")
