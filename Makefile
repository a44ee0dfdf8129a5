# Two commands do all set-up on a fresh machine:
#   make demo   -> creates .venv, installs gridcam, runs the demo on built-in synthetic data
#   make test   -> creates .venv, installs gridcam with test extras, runs the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: venv demo test bench mutation clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch torchvision
	$(PIP) install -q -c constraints.txt -e '.[test]'
	# Quantus, the outside reference of the faithfulness metrics: without its declared opencv-python
	# (the GUI build, which would shadow grad-cam's opencv-python-headless); its other needs are in .[test]
	$(PIP) install -q -c constraints.txt --no-deps quantus==0.6.0
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gridcam demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest tests

bench: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

# Mutation testing (mutmut): mutate grid.py, metrics/, cam/ and the training loop (the list is
# [tool.mutmut] in pyproject.toml), run the unit tests that reach each mutant, print a table per
# file; fails when 10 % or more of the reached mutants survive. `mutmut results` names the
# survivors, `mutmut show NAME` prints one as a diff. About an hour on 2 cores.
$(VENV)/.mutmut: $(STAMP)
	$(PIP) install -q -c constraints.txt -e '.[test,mutation]'
	touch $@

mutation: $(VENV)/.mutmut
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children $$(nproc) >mutmut.log 2>&1 || { tail -n 40 mutmut.log; exit 1; }
	$(PY) .ci/mutation_summary.py

clean:
	rm -rf $(VENV) runs build mutants mutmut.log *.egg-info src/*.egg-info
