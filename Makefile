# `make demo` and `make test` each do all set-up first (idempotent), then run.
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install -q --disable-pip-version-check -c constraints.txt

.PHONY: install demo test bench
install:
	$(PIP_INSTALL) -e ".[test]"

demo: install
	graft demo

test: install
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) bench/transfer_basics.py
