# cubeflash: build, test and run. `make test` is what CI runs (.ci/run).
CARGO    ?= cargo
BIN      := target/debug/cubeflash
RELEASE  := target/release/cubeflash
K8S_VERSION ?= 1.33.0

.PHONY: all build release test test-e2e unit render check validate k8s-validate \
        deploy bench bench-generator run stop image bench-render bench-gateway fmt clippy clean

all: build

build:            ## debug build of the cubeflash binary
	$(CARGO) build

release:          ## optimized build (what benchmarks use)
	$(CARGO) build --release

test:             ## everything CI checks: fmt, clippy, tests, generated/ up to date, k8s schemas
	@tools=$$(scripts/test-deps.sh | tail -n 1) && \
	  $(CARGO) fmt --all -- --check && \
	  $(CARGO) clippy --all-targets -- -D warnings && \
	  $(CARGO) build && \
	  $(CARGO) test && \
	  $(BIN) render --check && \
	  $$tools/kubernetes-validate --strict --quiet -k $(K8S_VERSION) $$(find generated -name '*.yaml' | sort) && \
	  echo "make test: all checks passed"

test-e2e:         ## the Kubernetes end-to-end suite, against CUBEFLASH_E2E_KUBECONFIG's cluster
	@test -n "$$CUBEFLASH_E2E_KUBECONFIG" || { echo "make test-e2e: set CUBEFLASH_E2E_KUBECONFIG to a cluster's kubeconfig (README, Kubernetes)" >&2; exit 2; }
	$(CARGO) test --test e2e_kubernetes -- --ignored --nocapture

unit:             ## cargo test only
	$(CARGO) test

render: build     ## regenerate generated/ from functions/ and templates/
	$(BIN) render

check: build      ## fail with a diff when generated/ is out of date
	$(BIN) render --check

validate: build   ## check every spec and rendered object, write nothing
	$(BIN) validate

k8s-validate:     ## check generated/ against the Kubernetes OpenAPI schemas (strict)
	@tools=$$(scripts/test-deps.sh | tail -n 1) && \
	  $$tools/kubernetes-validate --strict --quiet -k $(K8S_VERSION) $$(find generated -name '*.yaml' | sort)

bench-render: release  ## render cost at 100 vs 1,000 functions (see bench/render-scale.sh)
	bench/render-scale.sh $(RELEASE)

deploy: release   ## bring the example functions up on the local platform and print their URLs
	@scripts/test-deps.sh --runtimes
	$(RELEASE) deploy

run: release      ## the local platform in the foreground (Ctrl-C stops it and every replica)
	@scripts/test-deps.sh --runtimes
	$(RELEASE) up

stop:             ## stop the local platform that `make deploy` started
	@if [ -x $(RELEASE) ]; then $(RELEASE) down; else echo "nothing to stop"; fi

bench-gateway: release  ## gateway overhead vs nginx, cold starts, idle memory (bench/*.sh)
	bench/gateway-overhead.sh $(RELEASE)
	python3 bench/cold-start.py $(RELEASE)
	bench/idle-memory.sh $(RELEASE)

bench: release     ## run bench/plan.yaml: random-quote serverless vs its baseline; report in bench/results/latest/
	@scripts/test-deps.sh --runtimes
	$(RELEASE) bench

bench-generator: release  ## the load generator's own ceiling against nginx, beside wrk and oha
	bench/generator-ceiling.sh $(RELEASE)

IMAGE ?= ghcr.io/cubeflash/cubeflash:0.1.0

image:            ## build the gateway image (Dockerfile) with docker or podman
	@engine=$$(command -v docker || command -v podman) || { \
	  echo "make image: needs docker or podman, and neither is installed here (no container engine runs on the development machines: the Dockerfile is reviewed there and built elsewhere)" >&2; exit 2; }; \
	$$engine build -t $(IMAGE) .

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf .tools
