# One entry point for everything: each target installs what it needs first (idempotent).
VENV := .venv/bin
PYTEST_ARGS ?=
# Tests run in parallel processes, one per core up to 4 (each starts its own servers on
# free ports; most integration tests wait on them). PYTEST_WORKERS=0 runs them in one.
PYTEST_WORKERS ?= auto
PYTEST := $(VENV)/pytest -n $(PYTEST_WORKERS) --maxprocesses 4 --dist worksteal

.PHONY: bootstrap demo test lint typecheck unit integration bench bench-soak bench-charts bench-memory bench-fanout clean

bootstrap:
	@bash scripts/bootstrap

demo: bootstrap
	$(VENV)/cdc-cache demo

test: bootstrap lint typecheck
	$(PYTEST) $(PYTEST_ARGS)

lint: bootstrap
	$(VENV)/ruff check .
	$(VENV)/ruff format --check cdc_cache dataflows client/cdc_cache_client

typecheck: bootstrap
	$(VENV)/mypy

unit: bootstrap
	$(PYTEST) -m "not integration" $(PYTEST_ARGS)

integration: bootstrap
	$(PYTEST) -m integration $(PYTEST_ARGS)

# Throughput, latency and scaling on the local stack (docs/benchmarks.md); BENCH_ARGS="--events 200000"
bench: bootstrap
	$(VENV)/python bench/throughput.py $(BENCH_ARGS)
	$(MAKE) bench-charts

# The worker's memory over a 10-minute paced run
bench-soak: bootstrap
	$(VENV)/python bench/throughput.py --soak 600 --out bench/results/soak.json $(BENCH_ARGS)
	$(MAKE) bench-charts

# Charts and the scaling model's table (also in docs/benchmarks.md) from the results JSON
bench-charts:
	$(VENV)/python bench/charts.py
	$(VENV)/python bench/scaling.py --doc docs/benchmarks.md

# Version metadata per cached key, before and after version buckets (docs/benchmarks.md)
bench-memory: bootstrap
	$(VENV)/python bench/memory.py $(BENCH_ARGS)

# Invalidation across tables: dependent keys deleted per second, delay of other changes
bench-fanout: bootstrap
	$(VENV)/python bench/fanout.py $(BENCH_ARGS)

clean:
	-$(VENV)/cdc-cache dev down
	rm -rf .cdc-cache .pytest_cache .mypy_cache .ruff_cache
