# MGE operator — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,local]'
	# TypeScript for validation, Jest (+ SWC) for acceptance tests; dependency-cruiser, madge and three
	# TypeScript packages that ship their sources for the dependency benchmark. One install, pinned.
	npm install --silent --no-audit --no-fund --save-exact --prefix $(VENV)/node typescript@5.9.3 \
		jest@29.7.0 @swc/core@1.7.26 @swc/jest@0.2.36 @types/node@20.11.30 @types/jest@29.5.14 \
		dependency-cruiser@17.4.3 madge@8.0.0 rxjs@7.8.2 @tanstack/query-core@5.108.4 zod@4.6.7
	@command -v promtool >/dev/null || $(SUDO) apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
		|| { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
		|| echo "promtool could not be installed (apt-get prometheus): the alert tests will be skipped"
	touch $@

setup: $(INSTALLED) ## Create .venv and install the package with its test tools

demo: $(INSTALLED) ## The main job: run the hello example end to end (embedded Postgres, recorded LLM answers)
	$(BIN)/mge run examples/hello

plan: $(INSTALLED) ## Dry run of the hello example: waves, critical path, token/cost estimate
	$(BIN)/mge plan examples/hello

# Most tests wait (on Postgres, fake providers, subprocesses): twice as many workers as cores keeps both busy.
# The slowest tests are collected first (tests/conftest.py); a worker that runs out takes tests queued for
# another (worksteal), so no worker is left with a block of long ones at the end (load scheduling left one
# worker alone for the last ~25 s).
TEST_WORKERS ?= 4
# The tests write throwaway files by the thousand (generated projects, embedded Postgres data folders, sandboxes):
# in a RAM-backed folder they cost no block I/O (about half a minute of the suite on a 2-core VM). Used when
# /dev/shm is writable, executable and has 4 GiB free; TEST_TMPDIR= (empty) keeps the system's temp folder.
TEST_TMPDIR ?= $(shell d=/dev/shm; [ -d $$d ] && [ -w $$d ] && ! grep -qs " $$d [^ ]* [^ ]*noexec" /proc/mounts \
	&& [ "$$(df -Pk $$d | awk 'NR==2 {print $$4}')" -ge 4194304 ] 2>/dev/null && echo $$d)
test: $(INSTALLED) ## Run every test: unit, component (kmock), chart; TEST_WORKERS=0 runs them in one process
	$(if $(TEST_TMPDIR),TMPDIR=$(TEST_TMPDIR)) $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

check: $(INSTALLED) ## Lint, format check, strict types, layer contract, CRD drift
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/mge crds --out crds --out helm/mge-operator/crds --check

crds: $(INSTALLED) ## Regenerate crds/ and the chart's copy from the pydantic models
	$(BIN)/mge crds --out crds --out helm/mge-operator/crds

docs: $(INSTALLED) ## Regenerate the settings table (docs/operations.md) and the chart's values table (helm/mge-operator/README.md)
	$(BIN)/python -m tests.support.settings_doc
	$(BIN)/python -m tests.support.chart_doc

manifests: crds ## Regenerate manifests/ (plain YAML install) from the Helm chart
	$(BIN)/python -m tests.support.helm manifests/mge-operator.yaml

bench: $(INSTALLED) ## Benchmarks (figures side by side with a baseline): planner, reconcile, execution, cost ledger, concurrency, cache, retrieval, dependencies, acceptance
	$(BIN)/python -m tests.bench.bench_plan
	$(BIN)/python -m tests.bench.bench_reconcile
	$(BIN)/python -m tests.bench.bench_live_plans
	$(BIN)/python -m tests.bench.bench_execution
	$(BIN)/python -m tests.bench.bench_ledger
	$(BIN)/python -m tests.bench.bench_concurrency
	$(BIN)/python -m tests.bench.bench_fleet
	$(BIN)/python -m tests.bench.bench_fleet_http
	$(BIN)/python -m tests.bench.bench_cache
	$(BIN)/python -m tests.bench.bench_retrieval
	$(BIN)/python -m tests.bench.bench_deps
	$(BIN)/python -m tests.bench.bench_deps_python
	$(BIN)/python -m tests.bench.bench_acceptance

WHEEL_VENV := .venv-wheel

wheel: $(INSTALLED) ## Build the wheel into dist/ and install it with [local] into a fresh .venv-wheel (tests/e2e/test_installed_wheel.py uses it)
	rm -rf dist $(WHEEL_VENV)
	$(BIN)/pip wheel --quiet --no-deps --wheel-dir dist .
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/pip install --quiet "$$(ls dist/mge_operator-*.whl)[local]"

# The image is tagged with the chart's appVersion, which is the tag the chart deploys by default.
APP_VERSION := $(shell sed -n 's/^appVersion: *"*\([^"]*\)"*$$/\1/p' helm/mge-operator/Chart.yaml)
IMAGE ?= $(if $(REGISTRY),$(REGISTRY)/,)mge-operator:$(APP_VERSION)

image: ## Build the image as mge-operator:<appVersion>; REGISTRY=r pushes r/mge-operator:<appVersion> (PLATFORMS=linux/amd64,linux/arm64 builds both with buildx)
ifdef PLATFORMS
	docker buildx build --platform $(PLATFORMS) -t $(IMAGE) $(if $(REGISTRY),--push,) .
else
	docker build -t $(IMAGE) .
	$(if $(REGISTRY),docker push $(IMAGE),)
endif

clean: ## Remove the virtualenv, caches, local run state and outputs
	rm -rf $(VENV) $(WHEEL_VENV) dist build .pytest_cache .mypy_cache .ruff_cache .mge out

.PHONY: help setup demo plan test check crds docs manifests bench wheel image clean
