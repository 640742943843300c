# Every target installs what it needs first, so each works on a fresh machine.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CLUSTER_DIR ?= .cluster
STAMP := $(VENV)/.installed
include tests/cluster/versions.env
HELM = $${FBL_CACHE_DIR:-$$HOME/.cache/feedbackloop}/bin/helm-$(HELM_VERSION)
KUBE_SCORE = $${FBL_CACHE_DIR:-$$HOME/.cache/feedbackloop}/bin/kube-score-$(KUBE_SCORE_VERSION)
# checkov's exact dependency pins clash with the project's: it gets a virtualenv of its own, cached by version.
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV := $(or $(FBL_CACHE_DIR),$(HOME)/.cache/feedbackloop)/checkov-$(CHECKOV_VERSION)

.PHONY: help demo backtest-demo bench-loop venv checkov-venv cluster-build manifests chart-scan lint typecheck unit integration e2e test cluster-up cluster-down dev-cluster bench-cluster-start bench-trainer bench-serving bench-scale chaos clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# pip 23 backtracks for minutes on this dependency set; a current pip resolves it at once.
	$(BIN)/pip install --quiet --upgrade pip==26.3
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(STAMP) cluster-build  ## the whole loop on one machine: drift, retrain, rollout, a refused candidate (demo-out/)
	$(BIN)/python tests/e2e/loop_demo.py --out demo-out

backtest-demo: $(STAMP)  ## backtest a loop on the SEA drifting stream with a scratch Prometheus (backtest-demo-out/)
	tests/cluster/build.sh prometheus
	$(BIN)/python bench/backtest_demo.py --out backtest-demo-out \
		--prometheus-bin $${FBL_CACHE_DIR:-$$HOME/.cache/feedbackloop}/bin/prometheus-$(PROMETHEUS_VERSION)

bench-loop: $(STAMP)  ## the default policy vs never/periodic on river's drifting streams, 4 seeds (QUICK=1: 1 seed)
	tests/cluster/build.sh prometheus
	$(BIN)/python bench/loop_efficacy.py --out bench-loop-out $${QUICK:+--quick} \
		--prometheus-bin $${FBL_CACHE_DIR:-$$HOME/.cache/feedbackloop}/bin/prometheus-$(PROMETHEUS_VERSION)

venv: $(STAMP)  ## create the virtualenv with runtime and dev dependencies

cluster-build:  ## build or install the control plane, etcd, kwok, versitygw, Prometheus and helm (cached)
	tests/cluster/build.sh

manifests: $(STAMP) cluster-build  ## regenerate manifests/ and the chart's CRD copy from helm/ and crds/
	$(BIN)/python helm/render_manifests.py --helm $(HELM)

$(CHECKOV_VENV)/.installed:
	rm -rf $(CHECKOV_VENV)
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip==26.3
	$(CHECKOV_VENV)/bin/pip install --quiet checkov==$(CHECKOV_VERSION)
	touch $@

checkov-venv: $(CHECKOV_VENV)/.installed  ## checkov in a virtualenv of its own (cached by version)

chart-scan: $(STAMP) $(CHECKOV_VENV)/.installed  ## checkov and kube-score on the rendered chart; a finding fails unless skipped with a reason
	tests/cluster/build.sh helm kube-score
	$(BIN)/python helm/scan_chart.py --helm $(HELM) --kube-score $(KUBE_SCORE) --checkov $(CHECKOV_VENV)/bin/checkov

lint: $(STAMP) typecheck chart-scan  ## ruff, mypy strict, import-linter, hadolint, checkov and kube-score
	$(BIN)/ruff check operator jobs serving tests bench helm
	$(BIN)/ruff format --check operator jobs serving tests bench helm
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

# One mypy run per test suite: each suite has its own conftest.py, and one run cannot hold two of a name.
typecheck: $(STAMP)  ## mypy strict on the operator, server and trainer, then on every test suite
	$(BIN)/mypy  # operator, server, trainer and backtest packages: [tool.mypy] packages
	$(BIN)/mypy tests/unit
	$(BIN)/mypy tests/integration
	$(BIN)/mypy tests/e2e
	$(BIN)/mypy tests/conftest.py tests/cluster

unit: $(STAMP)  ## fast tests, no external components
	$(BIN)/pytest tests/unit

integration: $(STAMP) cluster-build  ## tests against the real control plane, Prometheus and S3
	$(BIN)/pytest tests/integration

e2e: $(STAMP) cluster-build  ## the whole loop
	$(BIN)/pytest tests/e2e

# Three workers, each with a control plane of its own: the suite mostly waits on ticks and rollouts, so on 2 cores
# it takes about half as long as one worker (17 against 33 minutes, measured). TEST_WORKERS=0 runs it in-process.
test: $(STAMP) cluster-build lint  ## everything CI runs: lint, unit, integration, e2e (TEST_WORKERS=3)
	$(BIN)/pytest tests --durations=25 -n $${TEST_WORKERS:-3}

cluster-up: $(STAMP) cluster-build  ## start the test cluster in the background; writes .cluster/env
	$(BIN)/python tests/cluster/harness.py up --dir $(CLUSTER_DIR)

cluster-down: $(STAMP)  ## stop the background test cluster
	$(BIN)/python tests/cluster/harness.py down --dir $(CLUSTER_DIR)

dev-cluster: $(STAMP) cluster-build  ## run the test cluster in the foreground until Ctrl-C
	$(BIN)/python tests/cluster/harness.py run --dir $(CLUSTER_DIR)

bench-cluster-start: $(STAMP) cluster-build  ## median warm start time of the test cluster over 5 starts
	$(BIN)/python tests/cluster/bench_start.py --runs 5

bench-trainer: $(STAMP) cluster-build  ## trainer overhead vs a bare fit on synthetic data in S3 (ROWS=1000000 REPEATS=3)
	$(BIN)/python bench/trainer.py --rows $${ROWS:-1000000} --repeats $${REPEATS:-3}

bench-serving: $(STAMP) cluster-build  ## model server req/s and latency vs in-process predict, RSS with a full store
	$(BIN)/python bench/serving.py

bench-scale: $(STAMP) cluster-build  ## N FeedbackLoops vs a no-op kopf operator: lag, breach → Job, API, CPU, RSS (N=100,1000,3000 SHARDS=1 OPERATOR_SRC=operator)
	$(BIN)/python bench/scale.py --n "$${N:-100,1000,3000}" --shards "$${SHARDS:-1}" --operator-src "$${OPERATOR_SRC:-operator}"

chaos: $(STAMP) cluster-build  ## fault injection on the real control plane, Prometheus and S3: each fault 3 times, then the outcome table (CHAOS_REPEAT=3)
	CHAOS_REPEAT=$${CHAOS_REPEAT:-3} CHAOS_ETCD_OUTAGE_SECONDS=$${CHAOS_ETCD_OUTAGE_SECONDS:-60} $(BIN)/pytest tests/integration/test_chaos.py tests/integration/test_chaos_drift.py tests/integration/test_chaos_retrain_pods.py

clean:  ## remove the virtualenv and local cluster state (the binary cache stays)
	rm -rf $(VENV) $(CLUSTER_DIR) .mypy_cache .ruff_cache .pytest_cache
