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
EXTRAS     ?= runtime,genai,operator,export,dev

export PATH := $(VENV)/bin:$(BIN):$(PATH)

.PHONY: help venv tools host-deps cluster-up cluster-down gateway-up test test-unit test-integration lint \
        demo bench soak crd constraints kind-up images node-load kind-load deploy e2e-kind clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# constraints.txt holds the tests to the versions the images install (make constraints).
$(VENV)/.installed: pyproject.toml constraints.txt
	@echo ">> python venv in $(VENV) (extras: $(EXTRAS))"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed ## create the Python venv with every extra

tools: ## build the control-plane binaries (and the real node's) from Go modules into .cache/bin
	hack/build-tools.sh

host-deps: ## install the host packages the real node and image builds need (root, Debian)
	hack/host-deps.sh

cluster-up: tools host-deps ## start the local control plane with kwok nodes and a real node
	hack/cluster-up.sh

gateway-up: ## run the Gateway API implementation (Traefik) on the real node: GatewayClass and default Gateway
	hack/gateway-up.sh

cluster-down: ## stop the control plane and the real node, undo what they changed on the host
	hack/cluster-down.sh
	hack/docker-down.sh

constraints: ## re-pin constraints.txt (the images' and the test venv's versions)
	hack/update-constraints.sh

lint: venv ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

crd: venv ## regenerate crds/ (and the chart's copy) from the pydantic models
	$(PY) -m modelservice_operator.crd --write

test: venv tools host-deps ## set everything up and run the whole suite
	$(VENV)/bin/ruff check .
	@start=$$(date +%s); hack/cluster-up.sh; echo ">> phase: node up in $$(( $$(date +%s) - start ))s"
	@start=$$(date +%s); hack/images.sh; echo ">> phase: images in $$(( $$(date +%s) - start ))s"
	@start=$$(date +%s); hack/gateway-up.sh; echo ">> phase: gateway in $$(( $$(date +%s) - start ))s"
	set -o pipefail; status=0; start=$$(date +%s); \
	KUBECONFIG=$(KUBECONFIG_FILE) $(PY) -m pytest tests $(PYTEST_ARGS) || status=$$?; \
	echo ">> phase: suite in $$(( $$(date +%s) - start ))s"; \
	grep -qx REAL_NODE=yes $(CACHE)/cluster/real-node || echo ">> NO REAL NODE ($$(sed -n \
	  's/^REAL_NODE_REASON=//p' $(CACHE)/cluster/real-node)): tests/integration/test_real_node.py was left out"; \
	hack/cluster-down.sh; hack/docker-down.sh; exit $$status

test-unit: venv ## fast tests only (no control plane)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

demo: venv tools host-deps ## the main job end to end on the local control plane (a real node where it can)
	hack/cluster-up.sh
	hack/images.sh
	hack/gateway-up.sh
	$(PY) -m modelservice_cli demo

bench: venv tools ## benchmarks side by side with peers -> docs/benchmarks.md
	$(PY) bench/run.py

soak: venv ## longer reliability runs -> .cache/soak/results.json, then docs/reliability.md
	$(PY) -m pytest tests -m soak -p no:cacheprovider $(PYTEST_ARGS)
	$(PY) -m tests.soak_report

# --- The Docker / kind path (needs a Docker engine; not available on CI machines) ---
KIND_CLUSTER ?= modelservice
RUNTIME_IMAGE ?= modelservice-runtime:dev
OPERATOR_IMAGE ?= modelservice-operator:dev

kind-up: ## create a kind cluster from kind-config.yaml (kept if it already exists)
	@if kind get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)'; then \
	  echo "kind cluster $(KIND_CLUSTER) already exists"; \
	else kind create cluster --name $(KIND_CLUSTER) --config kind-config.yaml --wait 180s; fi

images: tools host-deps ## build the runtime, operator and gateway images (offline base if none can be pulled), load them into the real node
	RUNTIME_IMAGE=$(RUNTIME_IMAGE) OPERATOR_IMAGE=$(OPERATOR_IMAGE) hack/images.sh

node-load: ## load the built images into the real node's containerd
	RUNTIME_IMAGE=$(RUNTIME_IMAGE) OPERATOR_IMAGE=$(OPERATOR_IMAGE) hack/images.sh load

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
