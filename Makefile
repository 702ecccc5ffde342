# One entry point for everything: each target installs what it needs first (idempotent).
VENV := .venv/bin
PYTEST_ARGS ?=

.PHONY: bootstrap demo test lint typecheck unit integration clean

bootstrap:
	@bash scripts/bootstrap

demo: bootstrap
	$(VENV)/cdc-cache demo

test: bootstrap lint typecheck
	$(VENV)/pytest $(PYTEST_ARGS)

lint: bootstrap
	$(VENV)/ruff check .
	$(VENV)/ruff format --check cdc_cache dataflows

typecheck: bootstrap
	$(VENV)/mypy

unit: bootstrap
	$(VENV)/pytest -m "not integration" $(PYTEST_ARGS)

integration: bootstrap
	$(VENV)/pytest -m integration $(PYTEST_ARGS)

clean:
	-$(VENV)/cdc-cache dev down
	rm -rf .cdc-cache .pytest_cache .mypy_cache .ruff_cache
