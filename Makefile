# Two commands for a fresh machine: `make demo` runs Part 1 on the generated demo data set,
# `make test` runs the test suite. Both create .venv and install the project into it first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install demo test clean-venv

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools>=61"
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $(STAMP)

demo: install
	$(PY) scripts/0_downloadData.py $(ARGS)
	$(PY) scripts/1_prepareData.py $(ARGS)
	$(PY) scripts/2_refineDNN.py $(ARGS)
	$(PY) scripts/3_runDNN.py $(ARGS)
	$(PY) scripts/4_trainSVM.py $(ARGS)
	$(PY) scripts/5_evaluate.py $(ARGS)

test: install
	IMGCLASS_OFFLINE=1 $(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
