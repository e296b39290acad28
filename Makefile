# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared/data
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m squeezenet.demo --shared $(SHARED)

test: $(STAMP)
	$(PY) -m pytest -q

# Slow tests too (long compression and training runs).
test-all: $(STAMP)
	RUN_SLOW=1 $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/run_all.py --shared $(SHARED)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
