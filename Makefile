# Two commands do all set-up on a fresh machine:
#   make demo   -> creates .venv, installs gridcam, runs the demo on built-in synthetic data
#   make test   -> creates .venv, installs gridcam with test extras, runs the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: venv demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gridcam demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest tests

bench: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
