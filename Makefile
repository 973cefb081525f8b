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

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): setup.py $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[dev,quant]"
	$(PY) -c "import deepspeed" 2>/dev/null || $(PIP) install -q -c $(CONSTRAINTS) --no-build-isolation deepspeed
	touch $(STAMP)

demo: setup
	$(PY) -m data_shards demo --out runs/demo

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not multiprocess and not slow"

bench: setup
	$(PY) bench/bench_stream.py

clean:
	rm -rf runs .pytest_cache
