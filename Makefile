# The README's commands: `make demo`, `make test` (the suite without the `slow` tier, minutes) and
# `make test-slow` (fault injection, multi-node, `ray job submit`: ~30 min on 2 cores). CI runs both.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?=
RUN ?= runs/demo
PYTEST_ARGS ?=

.PHONY: demo test test-slow bench setup clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/alle-dist demo --run-dir $(RUN) $(if $(DATA),--data $(DATA),)

test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow --durations=15 $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/segment_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
