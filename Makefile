# Two commands do everything on a fresh clone:
#   make run   - create .venv, install fedrec, run the main job on the bundled ml-latest-small
#   make test  - create .venv, install fedrec, run the test suite
PYTHON ?= python3
VENV ?= .venv
OUT ?= runs/default
BIN := $(VENV)/bin

.PHONY: run test test-heavy install clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/fedrec run-default --out $(OUT)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25

# the study, the stream, deployments and the docs' commands end to end (about 26 minutes on 2 cores); CI runs them too
test-heavy: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m heavy

clean:
	rm -rf $(VENV) runs .pytest_cache
