# ModelService make targets. `make demo` and `make test` work from a fresh clone:
# each target creates what it needs (venv, control-plane binaries) under .cache/.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CACHE      := $(CURDIR)/.cache
VENV       := $(CACHE)/venv
PY         := $(VENV)/bin/python
BIN        := $(CACHE)/bin
KUBECONFIG_FILE := $(CACHE)/cluster/kubeconfig
PYTHON     ?= python3
EXTRAS     ?= runtime,operator,export,dev

export PATH := $(VENV)/bin:$(BIN):$(PATH)

.PHONY: help venv tools cluster-up cluster-down test test-unit test-integration lint \
        demo bench soak crd kind-up images kind-load deploy e2e-kind clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@echo ">> python venv in $(VENV) (extras: $(EXTRAS))"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed ## create the Python venv with every extra

tools: ## build the control-plane binaries from Go modules into .cache/bin
	hack/build-tools.sh

cluster-up: tools ## start the local control plane (kubeconfig: .cache/cluster/kubeconfig)
	hack/cluster-up.sh

cluster-down: ## stop the local control plane
	hack/cluster-down.sh

lint: venv ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

crd: venv ## regenerate crds/ (and the chart's copy) from the pydantic models
	$(PY) -m modelservice_operator.crd --write

test: venv tools ## set everything up and run the whole suite
	$(VENV)/bin/ruff check .
	hack/cluster-up.sh
	set -o pipefail; status=0; \
	KUBECONFIG=$(KUBECONFIG_FILE) $(PY) -m pytest tests $(PYTEST_ARGS) || status=$$?; \
	hack/cluster-down.sh; exit $$status

test-unit: venv ## fast tests only (no control plane)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

demo: venv tools ## the main job end to end on the local control plane
	$(PY) -m modelservice_cli demo

bench: venv tools ## benchmarks side by side with peers -> docs/benchmarks.md
	$(PY) bench/run.py

soak: venv ## longer reliability runs -> docs/reliability.md
	$(PY) -m pytest tests -m soak -p no:cacheprovider $(PYTEST_ARGS)

# --- The Docker / kind path (needs a Docker engine; not available on CI machines) ---
KIND_CLUSTER ?= modelservice
RUNTIME_IMAGE ?= modelservice-runtime:dev
OPERATOR_IMAGE ?= modelservice-operator:dev

kind-up: ## create a kind cluster from kind-config.yaml (kept if it already exists)
	@if kind get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)'; then \
	  echo "kind cluster $(KIND_CLUSTER) already exists"; \
	else kind create cluster --name $(KIND_CLUSTER) --config kind-config.yaml --wait 180s; fi

images: ## build the runtime and operator images
	docker build -f runtime/Dockerfile -t $(RUNTIME_IMAGE) .
	docker build -f operator/Dockerfile -t $(OPERATOR_IMAGE) .

kind-load: ## load both images into the kind cluster
	kind load docker-image --name $(KIND_CLUSTER) $(RUNTIME_IMAGE) $(OPERATOR_IMAGE)

deploy: ## helm install the operator into the current kube context
	helm upgrade --install modelservice-operator charts/modelservice-operator \
	  --namespace modelservice-system --create-namespace \
	  --set image.repository=$(firstword $(subst :, ,$(OPERATOR_IMAGE))) \
	  --set image.tag=$(lastword $(subst :, ,$(OPERATOR_IMAGE))) \
	  --set runtimeImage=$(RUNTIME_IMAGE) \
	  --wait --timeout 5m

e2e-kind: venv ## kind-up, images, kind-load, deploy, then the e2e tests
	$(MAKE) kind-up images kind-load deploy
	$(PY) -m pytest tests/e2e -m kind

clean: cluster-down ## remove everything under .cache/
	rm -rf $(CACHE)
