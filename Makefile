# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
CONSTRAINTS := requirements/constraints.txt

export DS_ACCELERATOR := cpu
export TOKENIZERS_PARALLELISM := false
export WANDB_MODE ?= offline

.PHONY: setup demo data-demo lint format test test-fast bench slurm-up slurm-down clean

setup: $(STAMP)

$(STAMP): setup.py $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[dev,quant]"
	$(PY) -c "import deepspeed" 2>/dev/null || $(PIP) install -q -c $(CONSTRAINTS) --no-build-isolation deepspeed
	touch $(STAMP)

demo: setup
	OMP_NUM_THREADS=1 $(PY) launch/demo.py

data-demo: setup
	rm -rf runs/data-demo
	$(PY) -m data_shards synth --format llava --out runs/data-demo/raw --n 400 --defects
	$(PY) -m data_shards build --input runs/data-demo/raw/data.json --out runs/data-demo/shards --split train=0.9,val=0.1 --seed 0 --shard-samples 100
	$(PY) -m data_shards inspect runs/data-demo/shards --contact-sheet runs/data-demo/contact_sheet.png

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(PY) -m pytest -q

test-fast: lint
	$(PY) -m pytest -q -m "not multiprocess and not slow"

bench: setup
	$(PY) bench/bench_stream.py
	$(PY) bench/bench_train.py

slurm-up: setup
	$(PY) -m slurm.localcluster start --dir runs/slurm-cluster

slurm-down: setup
	$(PY) -m slurm.localcluster stop --dir runs/slurm-cluster

clean:
	rm -rf runs .pytest_cache
