# Two commands on a fresh machine: `make demo` (the simulated arm following an instruction) and
# `make test`. Both run `setup` first; `setup` is idempotent (it re-runs only when the lock changes).
# Python 3.11 and 3.12 are supported: `setup` takes the first of python3.11, python3.12 that runs, or
# PYTHON=... A robot PC with ROS 2 from apt installs with scripts/install_robot_pc.sh (`make robot-pc`).
SHELL := /bin/bash
SUPPORTED_PYTHONS := python3.11 python3.12
ifeq ($(origin PYTHON),undefined)
PYTHON := $(firstword $(foreach p,$(SUPPORTED_PYTHONS),$(shell $(p) -c 'import sys' >/dev/null 2>&1 && echo $(p))))
endif
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
APT_PACKAGES := libosmesa6 libgl1 libegl1
# torch==<lock version> is whatever build the index serves: PyPI's Linux wheel is the CUDA build (GBs).
# TORCH_INDEX=https://download.pytorch.org/whl/cpu takes the CPU build of the same version.
TORCH_INDEX ?=

.PHONY: setup test demo bench robot-pc metaworld clean

setup: $(STAMP)

$(STAMP): requirements.lock setup.py setup.cfg
	@[ -x $(PY) ] || [ -n "$(PYTHON)" ] || { echo "make setup: needs Python 3.11 or 3.12 (none of" \
		"$(SUPPORTED_PYTHONS) runs here): install one (Ubuntu 24.04: apt install python3.12-venv) or pass" \
		"PYTHON=/path/to/python3.12" >&2; exit 1; }
	@[ -x $(PY) ] || case "$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" in \
		3.11|3.12) ;; \
		*) echo "make setup: $(PYTHON) is not Python 3.11 or 3.12 (or does not run): pass PYTHON=python3.11 or" \
			"PYTHON=python3.12" >&2; exit 1 ;; \
	esac
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q pip==26.3
	$(if $(TORCH_INDEX),$(PY) -m pip install -q --index-url $(TORCH_INDEX) $$(grep '^torch==' requirements.lock))
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

test: setup
	$(VENV)/bin/ruff check .
	MUJOCO_GL=osmesa $(VENV)/bin/pytest -q test

demo: setup
	MUJOCO_GL=osmesa $(VENV)/bin/mambavla demo

bench: setup
	$(VENV)/bin/mambavla bench --preset base --device cpu --json

# A robot PC (Ubuntu 24.04 + ROS 2 Jazzy or Kilted from apt, NVIDIA GPU): venv over apt ROS, colcon workspace.
robot-pc:
	bash scripts/install_robot_pc.sh

# Meta-World's own environment (docs/metaworld.md): metaworld 3.1.1 and its mujoco 3.3.0 in front of .venv.
metaworld: setup
	bash scripts/metaworld_venv.sh

clean:
	rm -rf $(VENV) .venv-metaworld build src/*.egg-info .pytest_cache
