# Two commands set everything up: `make demo` (the main job) and `make test`.
# Each creates .venv and installs what it needs when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The edge's own venv: edge_runtime/requirements.txt only (no TensorFlow), to prove the edge runs without it.
EDGE_VENV := .venv-edge
EDGE_BIN := $(EDGE_VENV)/bin
EDGE_STAMP := $(EDGE_VENV)/.installed
DIR ?=

.PHONY: demo test setup clean

$(STAMP): requirements.txt setup.cfg pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

$(EDGE_STAMP): edge_runtime/requirements.txt requirements.txt setup.cfg pyproject.toml
	@test -x $(EDGE_BIN)/python || $(PYTHON) -m venv $(EDGE_VENV)
	$(EDGE_BIN)/python -m pip install -q -r edge_runtime/requirements.txt "$$(grep -E '^pytest==' requirements.txt)" wheel
	$(EDGE_BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(EDGE_STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/keras-codec demo $(if $(DIR),--dir "$(DIR)",)

test: $(STAMP) $(EDGE_STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests
	KERAS_CODEC_EDGE_VENV=1 $(EDGE_BIN)/python -m pytest -q -p no:cacheprovider tests/edge

clean:
	rm -rf $(VENV) $(EDGE_VENV) out .pytest_cache
