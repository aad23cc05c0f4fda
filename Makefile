# Two commands set everything up: `make demo` (the main job) and `make test`. Each builds the venvs it
# needs when missing (stamp files keep reruns fast).
#   .venv-edge  no TensorFlow: edge_runtime/requirements.txt + the demo's report tools + pytest
#               (requirements-demo.txt), on the newest working Python 3.13, 3.12 or 3.11 found.
#               `make demo` runs here; so do the edge tests, to prove the edge needs no TensorFlow.
#   .venv       the workstation (training, export, the full test suite): requirements.txt, TensorFlow 2.14,
#               so Python 3.11 (tensorflow-compression's last release is built for TensorFlow 2.14).
# The corpus volumes (data.corpus.volumes: the NRRD files of the pyradiomics 3.0.1 sdist) are fetched with pip
# by `make volumes`, which setup and test run: never at run time. Files already in place (SHA-256 checked) are kept.
# .ci/find-python finds the interpreters (PATH, pyenv, uv) or stops with one line saying what is missing;
# PYTHON=/path/to/python3.11 or EDGE_PYTHON=/path/to/python3.1x skips the search.
PYTHON ?=
EDGE_PYTHON ?=
FIND_PYTHON := /bin/sh .ci/find-python
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EDGE_VENV := .venv-edge
EDGE_BIN := $(EDGE_VENV)/bin
EDGE_STAMP := $(EDGE_VENV)/.installed
DIR ?=

NEED_311 := make setup and make test (the training stack: TensorFlow 2.14, which tensorflow-compression's last release is built for)
NEED_EDGE := make demo (no TensorFlow)

.PHONY: demo test setup clean dicom3tools ffmpeg volumes

# The venv is made (and its Python checked) before pip downloads anything.
$(STAMP): requirements.txt setup.cfg pyproject.toml
	@if [ ! -x $(BIN)/python ]; then \
	    py="$(PYTHON)"; [ -n "$$py" ] || py=$$($(FIND_PYTHON) --need "$(NEED_311)" --var PYTHON 3.11) || exit 1; \
	    echo "creating $(VENV) with $$py"; "$$py" -m venv $(VENV) || exit 1; \
	fi
	@$(BIN)/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { \
	    echo "$(VENV) runs Python $$($(BIN)/python -c 'import platform; print(platform.python_version())'), but" \
	         "$(NEED_311) needs 3.11: remove $(VENV) and run make again" >&2; exit 1; }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

$(EDGE_STAMP): requirements-demo.txt edge_runtime/requirements.txt setup.cfg pyproject.toml
	@if [ ! -x $(EDGE_BIN)/python ]; then \
	    py="$(EDGE_PYTHON)"; \
	    [ -n "$$py" ] || py=$$($(FIND_PYTHON) --need "$(NEED_EDGE)" --var EDGE_PYTHON 3.13 3.12 3.11) || exit 1; \
	    echo "creating $(EDGE_VENV) with $$py"; "$$py" -m venv $(EDGE_VENV) || exit 1; \
	fi
	@$(EDGE_BIN)/python -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' || { \
	    echo "$(EDGE_VENV) runs Python $$($(EDGE_BIN)/python -c 'import platform; print(platform.python_version())')," \
	         "but $(NEED_EDGE) needs 3.11, 3.12 or 3.13: remove $(EDGE_VENV) and run make again" >&2; exit 1; }
	$(EDGE_BIN)/python -m pip install -q -r requirements-demo.txt
	$(EDGE_BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(EDGE_STAMP)

setup: $(STAMP) volumes

volumes: $(STAMP)
	$(BIN)/python -m data.corpus fetch-volumes

demo: $(EDGE_STAMP)
	$(EDGE_BIN)/keras-codec demo $(if $(DIR),--dir "$(DIR)",)

# dciodvfy for tests/test_dicom_conformance.py: installed with apt-get where possible, else that test is skipped.
dicom3tools:
	@/bin/sh .ci/apt-install dicom3tools dciodvfy "tests/test_dicom_conformance.py"

# ffmpeg (with libx265) for the HEVC baseline's tests (tests/test_baselines.py) and benchmarks/bench_series.py.
ffmpeg:
	@/bin/sh .ci/apt-install ffmpeg ffmpeg "the HEVC tests of tests/test_baselines.py"

test: $(STAMP) $(EDGE_STAMP) dicom3tools ffmpeg volumes
	$(BIN)/python -m pytest -q -p no:cacheprovider tests
	KERAS_CODEC_EDGE_VENV=1 $(EDGE_BIN)/python -m pytest -q -p no:cacheprovider tests/edge

clean:
	rm -rf $(VENV) $(EDGE_VENV) out .pytest_cache data/volumes
