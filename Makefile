# Two commands do everything on a fresh clone: `make demo` and `make test`.
# `make wheel-check` builds the wheel and runs it from a fresh venv outside the checkout (CI).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean bench wheel-check

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/merkit demo

test: $(STAMP)
	$(PY) -m pytest -n 2 tests

wheel-check:
	PYTHON=$(PYTHON) .ci/wheel-check $(DEMO_ARGS)

bench: $(STAMP)
	for script in bench/*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) runs .merkit-cache
