# msds-lightning: `make help` lists the targets.
PY     ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTHON := $(BIN)/python
MSDS   := $(BIN)/msds

.DEFAULT_GOAL := help
.PHONY: help install lock test test-full lint format bench bench-gpu demo demo-all analyze certify finetune pretrain-denoiser train-classifier clean

help: ## show this help
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

# AutoAttack for `msds attack`. --no-deps: every torchattacks release pins requests~=2.25.1 (it never
# imports requests), which would downgrade requests/urllib3 under wandb and huggingface_hub.
TORCHATTACKS := torchattacks==3.5.1
# The versions CI tested (a lock): `make install` installs exactly these; `make install LOCK=` resolves the
# newest versions pyproject.toml allows instead; `make lock` rewrites it from .venv.
LOCK ?= constraints.txt
LOCK_ARG := $(if $(LOCK),-c $(LOCK),)

install: ## create .venv and install the package with its dev extras at the locked versions (constraints.txt)
	@if $(PY) -m uv --version >/dev/null 2>&1 || $(PY) -m pip install -q uv; then \
		[ -x $(PYTHON) ] || $(PY) -m uv venv -q -p $(PY) $(VENV); \
		$(PY) -m uv pip install -q --python $(PYTHON) $(LOCK_ARG) -e ".[dev]"; \
		$(PY) -m uv pip install -q --python $(PYTHON) $(LOCK_ARG) --no-deps "$(TORCHATTACKS)"; \
	else \
		[ -x $(PYTHON) ] || $(PY) -m venv $(VENV); \
		$(PYTHON) -m pip install -q $(LOCK_ARG) -e ".[dev]"; \
		$(PYTHON) -m pip install -q $(LOCK_ARG) --no-deps "$(TORCHATTACKS)"; \
	fi
	@$(PYTHON) -c "import torch, torchvision, lightning, diffusers, timm; print('installed: torch', torch.__version__, '| torchvision', torchvision.__version__, '| lightning', lightning.__version__)"

lock: ## rewrite constraints.txt from the versions installed in .venv (after a dependency change; then make test)
	@{ sed -n '1,3p' constraints.txt; $(PY) -m uv pip freeze --python $(PYTHON) | grep -v '^-e '; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt && echo "constraints.txt: $$(grep -vc '^#' constraints.txt) pinned packages"

test: ## run the test suite (CPU, a few minutes; heavy checks are marked slow)
	$(PYTHON) -m pytest -m "not slow" -q

test-full: ## run every test, the slow ones too
	$(PYTHON) -m pytest -q

lint: ## ruff checks
	$(BIN)/ruff check msds_lightning tests bench

format: ## ruff format + autofix
	$(BIN)/ruff format msds_lightning tests bench && $(BIN)/ruff check --fix msds_lightning tests bench

COHEN := ../shared/fixtures/cohen2019
bench: ## throughput (reference loop vs engine vs bare forwards) + adaptive sampling replay -> bench/RESULTS.md (~5 min on CPU)
	$(PYTHON) bench/certify_throughput.py --images 4
	@if [ -d $(COHEN) ]; then $(PYTHON) bench/adaptive_samples.py $(COHEN)/cifar_0.25 $(COHEN)/cifar_0.50 \
		$(COHEN)/cifar_1.00 --sigmas 0.25 0.5 1.0 --out bench/RESULTS.md; \
	else echo "adaptive replay skipped: no $(COHEN) (any result TSVs work: bench/adaptive_samples.py --help)"; fi
	$(PYTHON) bench/finetune_throughput.py --unet tiny --steps 10

bench-gpu: ## the GPU check (one CUDA GPU, ~8 min): certification and fine-tuning at the real model sizes -> bench/RESULTS_GPU.md
	bench/gpu_check.sh $(ARGS)

demo: ## the MSDS experiment on scikit-learn digits at the paper's protocol (CPU, 5-9 min): train, fine-tune, certify, compare, report
	$(MSDS) demo

demo-all: ## the demo plus DiffSmooth, adversarial training with generated digits and IDC (CPU, ~25 min)
	$(MSDS) demo --all


analyze: ## tabulate results: make analyze RESULTS="outputs/a.tsv outputs/b.tsv" [RADII="0 0.25 0.5"]
	$(MSDS) analyze $(RESULTS) $(if $(RADII),--radii $(RADII),)

certify: ## certify: make certify CONFIG=configs/cifar10/certify_dds.yaml [ARGS=...]; no CONFIG: the digits demo's
	$(if $(CONFIG),$(MSDS) certify -c $(CONFIG) $(ARGS),$(MSDS) demo --stages certify report)

finetune: ## MSDS fine-tuning: make finetune CONFIG=configs/cifar10/finetune_msds.yaml [ARGS=...]; no CONFIG: the demo's
	$(if $(CONFIG),$(MSDS) finetune -c $(CONFIG) $(ARGS),$(MSDS) demo --stages finetune)

pretrain-denoiser: ## DDPM pre-training: make pretrain-denoiser CONFIG=configs/cifar10/pretrain_denoiser.yaml
	@test -n "$(CONFIG)" || { echo "usage: make pretrain-denoiser CONFIG=... [ARGS=...]"; exit 2; }
	$(MSDS) pretrain-denoiser -c $(CONFIG) $(ARGS)

train-classifier: ## classifier training: make train-classifier CONFIG=configs/cifar10/train_classifier.yaml
	@test -n "$(CONFIG)" || { echo "usage: make train-classifier CONFIG=... [ARGS=...]"; exit 2; }
	$(MSDS) train-classifier -c $(CONFIG) $(ARGS)

clean: ## remove caches (keeps .venv and outputs/)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
