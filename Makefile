# One entry point for every routine task. `make run` and `make test` work on a fresh
# machine: they create .venv and install the pinned stack (torch's CPU build first).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_SRC := $(shell find protos -name '*.proto')

.PHONY: help venv run test test-unit test-integration lint format proto proto-check data bench bench-inference bench-ranking evaluate clean compose-up compose-down
COMPOSE ?= docker compose
# GPU host: make compose-up COMPOSE_FILES="-f docker-compose.yml -f docker-compose.gpu.yml"
COMPOSE_FILES ?= -f docker-compose.yml

help:
	@echo "make run      start the whole stack locally and print recommendations (Ctrl-C stops it)"
	@echo "make test     create the environment if needed and run every test"
	@echo "make lint     ruff + mypy"
	@echo "make proto    regenerate gRPC code from protos/"
	@echo "make bench    run the benchmarks under bench/"
	@echo "make evaluate offline model quality against baselines (MovieLens-100K)"

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-nodeps.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, from the CPU build; the constraint stops anything pulling the CUDA build
	$(PY) -m pip install --quiet "$$(grep -E '^torch==' constraints.txt)"
	PIP_CONSTRAINT=constraints.txt $(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m recsys.devstack

test: $(STAMP) lint proto-check
	$(PY) -m pytest -q -p no:cacheprovider

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

test-integration: $(STAMP)
	$(PY) -m pytest -q tests/integration tests/e2e

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

proto: $(STAMP)
	$(PY) -m recsys.protogen shared

# Regenerates into a scratch folder and fails if the committed code differs.
proto-check: $(STAMP)
	$(PY) -m recsys.protogen --check shared

data: $(STAMP)
	$(PY) -m recsys.data.movielens

# Offline model quality on MovieLens-100K against baselines (about 30 minutes on 2 cores):
# bench/results/model-quality.json and docs/validation-ndcg.png.
evaluate: $(STAMP)
	$(PY) bench/evaluate.py

# Each script prints its figures and writes bench/results/<name>.json.
bench: $(STAMP)
	$(PY) bench/inference.py
	$(PY) bench/streaming.py
	$(PY) bench/ranking.py
	$(PY) bench/refresh.py
	$(PY) bench/soak.py --runs 3
	$(PY) bench/broker.py

# The user tower in onnxruntime vs torch eager, CPU and (on a GPU host) CUDA, no broker
# (about a minute on 2 cores): bench/results/inference.json.
bench-inference: $(STAMP)
	$(PY) bench/inference.py

# gRPC ranking latency/throughput on MovieLens and a 1M-item catalogue (about 15 minutes
# on 2 cores, half of it the 1M HNSW build): bench/results/ranking.json.
bench-ranking: $(STAMP)
	$(PY) bench/ranking.py

compose-up:
	$(COMPOSE) $(COMPOSE_FILES) up -d --build --wait --wait-timeout 300

compose-down:
	$(COMPOSE) $(COMPOSE_FILES) down --remove-orphans

clean:
	rm -rf .data .pytest_cache .mypy_cache .ruff_cache
