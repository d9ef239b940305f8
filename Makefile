# `make demo` and `make test` each do all set-up first (idempotent), then run.
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install -q --disable-pip-version-check -c constraints.txt

.PHONY: install demo test bench browser
install:
	$(PIP_INSTALL) -e ".[test]"

# headless Chromium for the report tests (Debian's package); skipped when already there
browser:
	@test -x /usr/bin/chromium || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

demo: install
	graft demo

# one process per core (pytest-xdist, whole files per process), each with one torch thread: two processes with two
# threads each on two cores would spin against each other (see docs/devices.md)
test: install browser
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest -q -n auto --dist loadfile

bench:
	$(PIP_INSTALL) -e ".[test,bench]"
	$(PYTHON) bench/transfer_basics.py
	$(PYTHON) bench/baselines.py
