# Set-up and test entry points. Python 3.11 (or 3.10), PyPI reachable, no GPU needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install lava-env test test-slow test-all quickstart clean

$(BIN)/dvsguard: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# the CPU build of torch first, so nothing pulls a CUDA build
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[test]"
	# torchattacks (the authors' attack library, tests only); its torchvision requirement is unused
	$(BIN)/pip install --quiet --no-deps torchattacks==3.2.7
	# Norse runs exported NIR graphs (export --format nir --compare, tests); its torchvision requirement is unused
	$(BIN)/pip install --quiet --no-deps norse==1.1.0 nirtorch==2.6
	touch $@

install: $(BIN)/dvsguard

# The Lava runtime (Python 3.10, lava-dl 0.6.0) that checks exported networks; idempotent.
lava-env:
	bash dvsguard/export/lava_env.sh

test: install lava-env
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-slow: install lava-env
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

test-all: install lava-env
	$(BIN)/python -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)

quickstart: install lava-env
	$(BIN)/dvsguard run pipelines/quickstart.toml

clean:
	rm -rf $(VENV) .lava-env .pytest_cache
