# PORTline — the two commands that matter are `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: help venv run test lint format typecheck unit integration e2e k8s fuzz bench bench-intake eval-linking \
        kafka-up kafka-down pg-up pg-down infra-up infra-down clean dashboard-screenshot

help:
	@echo "make run        start Kafka and all four services on the embedded defaults"
	@echo "make test       lint, type-check and run every test (starts Kafka and PostgreSQL)"
	@echo "make lint | typecheck | unit | integration | e2e | format"
	@echo "make k8s        render the Kubernetes overlays (deploy/k8s) and validate them"
	@echo "make fuzz       the parser fuzz tests with FUZZ_SCALE (50) times the examples"
	@echo "make bench      intake (MLLP, EMS), scheduler, reporting and dashboard benchmarks"
	@echo "make eval-linking  linking on a synthetic population: auto-linked, reviewed, missed"
	@echo "make dashboard-screenshot   the browser test, refreshing docs/img/dashboard.png"
	@echo "make kafka-up | kafka-down | pg-up | pg-down"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "PORTline needs Python 3.11+")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

run: venv
	@scripts/run.sh

test: venv
	@scripts/test.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest tests/unit -q

k8s: venv
	$(BIN)/pytest tests/deploy -q

FUZZ_SCALE ?= 50

fuzz: venv
	PORTLINE_FUZZ_SCALE=$(FUZZ_SCALE) $(BIN)/pytest tests/unit/test_fuzz_*.py -q

integration: venv
	@scripts/test.sh --no-lint tests/integration

e2e: venv
	@scripts/test.sh --no-lint tests/e2e

dashboard-screenshot: venv
	@PORTLINE_REFRESH_SCREENSHOT=1 scripts/test.sh --no-lint tests/e2e/test_dashboard_e2e.py

bench: venv
	@scripts/bench.sh $(BENCH_ARGS)

bench-intake: bench

eval-linking: venv
	$(BIN)/python -m tests.linking.eval $(EVAL_ARGS)

kafka-up:
	@deploy/local/kafka.sh start

kafka-down:
	@deploy/local/kafka.sh stop

pg-up:
	@deploy/local/postgres.sh start

pg-down:
	@deploy/local/postgres.sh stop

clean: kafka-down pg-down
	rm -rf var .mypy_cache .ruff_cache .pytest_cache .hypothesis
