# The two set-up commands of the README:
#   make demo   creates .venv (CPU torch where no GPU is present) and runs the demo pipeline
#   make test   creates .venv and runs the test suite (the default, fast tier, then the slow tier)
# Both are idempotent: the virtualenv is (re)built only when pyproject.toml or constraints.txt change.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lmforge-installed
# torch: the CPU wheel (2.13.0) unless a GPU is present; GPU users may pre-install their CUDA build
# into $(VENV) and it is kept. Other packages follow constraints.txt, the versions CI runs.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo demo-tiny test test-fast test-slow install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lmforge run recipes/demo.yaml

demo-tiny: $(STAMP)
	$(BIN)/lmforge run recipes/demo-tiny.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" --durations=15
	$(BIN)/python -m pytest -q -m slow --durations=10 || test $$? -eq 5  # 5: no slow tests collected

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow || test $$? -eq 5

clean:
	rm -rf $(VENV) runs .pytest_cache
