# Tasks for local work and CI. `make test-fast` is the default while editing (< 2 min on 2 cores);
# `make test` is the README's test command's suite (CI: .ci/run). GLUE data: $GLUE_DIR, else ../shared/glue.
PYTHON ?= python
GLUE_DIR ?= ../shared/glue
export GLUE_DIR

.PHONY: install test test-fast quickstart notebooks bench lint

install:  ## torch first and pinned (an unpinned torch pulls a multi-GB CUDA build), then the rest
	pip install torch==2.13.0 && pip install -r requirements.txt

test:  ## the whole suite, as CI runs it
	$(PYTHON) -m pytest -q tests

test-fast:  ## everything but the tests marked slow (pyproject.toml)
	$(PYTHON) -m pytest -q -m "not slow" tests

quickstart:  ## the README's quick-start comparison: 60 steps of MRPC, random vs svd
	$(PYTHON) run_glue.py --task mrpc --model minilm --init random svd --lr 5e-3 --max-steps 60 --eval-every 20 --seeds 0 --log-dir logs/quickstart

notebooks:  ## re-execute the committed notebooks from the committed logs (needs the GLUE data)
	$(PYTHON) -m utils.notebooks

bench:  ## the benchmark tables in bench/results/ (docs/bench.md)
	$(PYTHON) bench/init.py
	$(PYTHON) bench/step.py --dtype fp32 --targets attention all-linear
	$(PYTHON) bench/epoch.py

lint:
	$(PYTHON) -m ruff check .
