# Developer entry points. `make test` on a fresh machine installs what it needs.

VENV        := .venv
PYTHON      := $(VENV)/bin/python
STAMP       := $(VENV)/.stamp
PYTEST_ARGS ?=
# CPU torch, pinned here and in the image (deploy/Dockerfile reads it through deploy/image.sh).
TORCH_VERSION := 2.13.0
# Root installs packages directly; everyone else goes through sudo.
SUDO        := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: setup system-packages test demo lint image image-check

setup: system-packages $(STAMP)

# Real servers and tools used by the tests and benchmarks (Redis, PostgreSQL, Prometheus,
# headless Chromium, wrk); installed only when a binary is missing.
system-packages:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	command -v prometheus >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v kubectl >/dev/null 2>&1 || echo "note: kubectl (with kustomize) is missing; tests/test_deploy.py needs it: https://kubernetes.io/docs/tasks/tools/"; \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages:$$missing"; \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi

$(PYTHON):
	python3 -m venv $(VENV)

# torch is pinned first: an unpinned resolve would pull the multi-GB CUDA build.
$(STAMP): pyproject.toml | $(PYTHON)
	$(PYTHON) -m pip install torch==$(TORCH_VERSION)
	$(PYTHON) -m pip install -e '.[dev,spark]'
	touch $@

test: setup
	$(PYTHON) -m pytest $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/tsops demo

lint: setup
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy src

# The images (deploy/README.md): docker when an engine answers, else buildah; a debootstrapped
# Debian base when BASE cannot be pulled. Settings pass through the environment (IMAGE, BASE,
# BUILDAH_OPTS, IMAGE_WORK; deploy/image.sh lists them).
image:
	deploy/image.sh build

image-check:
	deploy/image.sh check
