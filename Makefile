# Portcullis. `make help` lists the targets.

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec
.DEFAULT_GOAL := help

BIN ?= $(CURDIR)/bin
CONTROLLER_GEN := go tool controller-gen
export KUBEBUILDER_ASSETS := $(BIN)

##@ General

.PHONY: help
help: ## List the targets.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: generate
generate: ## Generate deepcopy code for the API types.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths=./api/...

.PHONY: manifests
manifests: ## Generate CRDs (config/crd/bases) and the operator and agent ClusterRoles (config/rbac).
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:artifacts:config=config/crd/bases
	$(CONTROLLER_GEN) rbac:roleName=portcullis-operator paths=./controllers/operator/... output:rbac:artifacts:config=config/rbac/operator
	$(CONTROLLER_GEN) rbac:roleName=portcullis-agent paths=./controllers/agent/... output:rbac:artifacts:config=config/rbac/agent
	cp config/crd/bases/*.yaml charts/portcullis/crds/
	cp config/rbac/operator/role.yaml charts/portcullis/templates/rbac-operator.yaml
	cp config/rbac/agent/role.yaml charts/portcullis/templates/rbac-agent.yaml

.PHONY: bpf
bpf: ## Rebuild the BPF objects (clang-14, pinned) and their Go bindings in internal/datapath and internal/l7.
	go generate ./internal/datapath/... ./internal/l7/...

.PHONY: fmt
fmt: ## Format the Go code.
	gofmt -s -w $$(git ls-files '*.go')

.PHONY: vet
vet: ## Run go vet.
	go vet ./...

.PHONY: verify
verify: generate manifests bpf ## Fail when regenerating code, BPF objects or manifests changes anything, or code is not formatted.
	@test -z "$$(gofmt -s -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -s -l $$(git ls-files '*.go'); exit 1; }
	@git diff --exit-code -- api config charts internal/datapath internal/l7 || { echo "generated files are stale: run make generate manifests bpf and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- api config charts internal/datapath internal/l7)" || { git status --porcelain -- api config charts internal/datapath internal/l7; echo "untracked generated files"; exit 1; }

##@ Build

.PHONY: build
build: ## Build the portcullis, operator and agent commands into bin/.
	go build -o $(BIN)/ ./cmd/...

.PHONY: controlplane
controlplane: ## Build kube-apiserver, etcd and kubectl from their Go modules into bin/ (reused when present).
	hack/build-controlplane.sh $(BIN)

.PHONY: setup
setup: ## Install the Debian packages the project needs and build the control plane.
	hack/setup.sh
	hack/build-controlplane.sh $(BIN)

##@ Run

.PHONY: lab
lab: setup build ## The main job (root): bring up the lab with the seed services and policies, run the seed requests, keep it running.
	$(BIN)/portcullis lab up

.PHONY: lab-down
lab-down: ## Stop the lab and remove everything it created.
	$(BIN)/portcullis lab down

##@ Test

.PHONY: test
test: setup verify vet ## Run every test: unit, envtest, and (as root) privileged.
	# One package at a time: the privileged packages share the kernel (BPF, namespaces), and the
	# control-plane tests check latencies that a parallel lab run would distort.
	go test -count=1 -p 1 ./...

.PHONY: test-short
test-short: ## Run the unit tests only (no control plane, no root).
	go test -count=1 -short ./...
