# kubemeter developer targets. Keep targets small; group related ones under a comment header.

PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
VENV := .venv
PYTEST_ARGS ?=

.PHONY: help setup system-deps venv lint test test-unit crds demo demo-down

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

# ---------------------------------------------------------------------------
# Python environment and tests

system-deps: ## Install missing Debian packages (postgresql, prometheus, openssl)
	hack/install-system-deps.sh

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed ## Create .venv with kubemeter installed (editable) and dev tools

setup: system-deps venv binaries ## Everything the tests and the demo need

lint: venv ## ruff, mypy --strict and the import-linter contracts (layers, pure core, kopf edge)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

crds: venv ## Regenerate crds/ (and the chart's copy) from the API models
	$(VENV)/bin/kubemeter crds

test-unit: venv ## Unit tests only (no cluster, Prometheus or PostgreSQL)
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

demo: setup ## The main job on this machine: cluster, simulated GPUs, Prometheus, operator; spend rising
	$(VENV)/bin/python hack/demo.py $(DEMO_ARGS)

demo-down: ## Stop what `make demo DEMO_ARGS=--keep` left running
	$(VENV)/bin/python hack/demo.py --down

test: setup lint ## The whole suite: lint, unit and integration tests (real apiserver, Prometheus, PostgreSQL)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# ---------------------------------------------------------------------------
# Local control plane (no Docker): etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kwok (fake GPU nodes), kubectl and helm built from the Go module
# proxy into $${KUBEMETER_CACHE:-$$HOME/.cache/kubemeter}. Versions: hack/versions.env.
CLUSTER_DIR ?= .cluster
GPU_NODES ?= 2
GPUS_PER_NODE ?= 8

.PHONY: binaries cluster cluster-down cluster-status

binaries: ## Build (once; cached) the control-plane binaries, kwok and helm
	hack/build-control-plane.sh

cluster: binaries ## Start a dev cluster in $(CLUSTER_DIR) (kubeconfig: $(CLUSTER_DIR)/kubeconfig)
	$(PYTHON) hack/devcluster.py up --dir $(CLUSTER_DIR) --gpu-nodes $(GPU_NODES) --gpus-per-node $(GPUS_PER_NODE)

cluster-down: ## Stop the dev cluster started by `make cluster`
	$(PYTHON) hack/devcluster.py down --dir $(CLUSTER_DIR)

cluster-status: ## Show the dev cluster processes and /readyz
	$(PYTHON) hack/devcluster.py status --dir $(CLUSTER_DIR)

# ---------------------------------------------------------------------------
# Images (no Docker): both Dockerfile targets built with buildah on a Debian base made by
# mmdebstrap, cached in $${KUBEMETER_CACHE:-$$HOME/.cache/kubemeter}/images. Docs: docs/images.md.

.PHONY: image lock

image: system-deps ## Build the operator and exporter images (localhost/kubemeter{,-exporter}:dev)
	hack/build-image.sh

lock: venv ## Recompile requirements/*.lock (hash-pinned) from pyproject.toml with uv
	test -x $(VENV)/bin/uv || $(VENV)/bin/pip install -q uv
	$(VENV)/bin/python hack/lock.py $(LOCK_ARGS)
