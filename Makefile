# One-command set-up, demo and tests. Every target is safe to re-run.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned for reproducible numbers; the wheels come from the machine's package mirror.
PINS   := torch==2.14.1 torchvision==0.29.1 timm==1.0.31

.PHONY: setup demo test clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(PINS) -e '.[test]'
	@touch $@

demo: setup
	$(BIN)/vwt-export deit_s --mode inter --demo --out out/demo

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf out $(VENV) .pytest_cache
