# Two commands on a fresh machine: `make demo` (the simulated arm following an instruction) and
# `make test`. Both run `setup` first; `setup` is idempotent (it re-runs only when the lock changes).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
APT_PACKAGES := libosmesa6 libgl1 libegl1

.PHONY: setup test demo bench clean

setup: $(STAMP)

$(STAMP): requirements.lock setup.py setup.cfg
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q pip==26.3
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

test: setup
	MUJOCO_GL=osmesa $(VENV)/bin/pytest -q test

demo: setup
	MUJOCO_GL=osmesa $(VENV)/bin/mambavla demo

bench: setup
	$(VENV)/bin/mambavla bench --preset base --device cpu --json

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
