#!/usr/bin/env bash
# Install optillm (the peer proxy measured by `ponder bench serve`) into its own venv, .venv-optillm at the repo root.
# Never into .venv: optillm pulls a CUDA build of torch and its own pins (~4 min, ~7.7 GB). Idempotent: a venv whose
# optillm already reports the pinned version is left alone. On failure: one line on stderr, exit 1 (log kept).
set -u
VERSION="0.4.0"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-optillm"
LOG="$VENV.install.log"

installed() {
    [ -x "$VENV/bin/optillm" ] && "$VENV/bin/python" -c "import importlib.metadata as m; \
assert m.version('optillm') == '$VERSION'" >/dev/null 2>&1
}

if installed; then
    exit 0
fi
{
    python3.11 -m venv "$VENV" &&
        "$VENV/bin/pip" install --quiet --upgrade pip &&
        "$VENV/bin/pip" install --quiet "optillm==$VERSION"
} >"$LOG" 2>&1
if ! installed; then
    echo "install_optillm: failed to install optillm==$VERSION into $VENV (see $LOG)" >&2
    exit 1
fi
