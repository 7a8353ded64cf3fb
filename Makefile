# tdsim developer targets.  Needs only python3 (with venv) and network access to PyPI.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv run test test-slow bench lint typecheck clean distclean

venv: $(STAMP)

# Re-installs only when pyproject.toml changes (or the venv is missing).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test,study]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/tdsim run scenarios/baseline.toml

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) -m tdsim.bench

lint: $(STAMP)
	$(PY) -m ruff --version >/dev/null 2>&1 || $(PY) -m pip install -q ruff
	$(PY) -m ruff check tdsim tests

# mypy --strict on the modules listed in pyproject.toml ([tool.mypy] files)
typecheck: $(STAMP)
	$(PY) -m mypy --version >/dev/null 2>&1 || $(PY) -m pip install -q mypy
	$(PY) -m mypy

clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
