# The README's two commands are `make repro` and `make test`; both set up the venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# One variable per line: `export A=1 B=2` would set A to "1 B=2" and leave B unset.
export RAY_USAGE_STATS_ENABLED = 0
export MLFLOW_DISABLE_TELEMETRY = true
export DO_NOT_TRACK = true
export DVC_NO_ANALYTICS = 1
export NO_ALBUMENTATIONS_UPDATE = 1
export RAY_AUTH_MODE = disabled
export TUNE_DISABLE_AUTO_CALLBACK_LOGGERS = 1

.PHONY: setup repro test test-fast clean

$(BIN)/stargan: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]' -c constraints.txt
	touch $@

setup: $(BIN)/stargan

repro: setup   ## run the whole pipeline on the embedded default (synthetic data, CPU)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro

test: setup    ## the whole suite (fast tests, then the slow end-to-end ones)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q

test-fast: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q -m "not slow"
