# The README's two commands are `make repro` and `make test`; both set up the venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true DVC_NO_ANALYTICS=1 \
       NO_ALBUMENTATIONS_UPDATE=1 RAY_AUTH_MODE=disabled TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1

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
