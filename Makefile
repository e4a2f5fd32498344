# The one entry point. CI runs `make test` (see .ci/run).
UV ?= uv
PY := $(UV) run --frozen --all-extras

.PHONY: setup run demo-core test test-fast lint format typecheck screenshots bench bench-small schemas clean

setup:            ## install everything (Python deps from the lock, redis-server and chromium if missing)
	@command -v $(UV) >/dev/null || python3 -m pip install --quiet "uv==0.13.8"
	$(UV) sync --frozen --all-extras
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
	@test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium)  # UI browser tests (Playwright drives it)

run: setup        ## run the whole product on this machine (no Docker): deploy/docker-compose.yml as local processes
	$(PY) python -m hiddenscope_stack up

demo-core: setup  ## the core engine alone on a generated dataset (no services)
	$(PY) python -m hiddenscope_core.demo

test: setup lint typecheck  ## the whole test suite (what CI runs)
	$(PY) pytest -q

test-fast: ## tests without the slow marker
	$(PY) pytest -q -m "not slow"

lint:             ## ruff (lint + format) and the import contracts of pyproject's [tool.importlinter]
	$(PY) ruff check .
	$(PY) ruff format --check .
	$(PY) lint-imports --no-logo

format:
	$(PY) ruff format .
	$(PY) ruff check --fix .

typecheck:
	$(PY) mypy

screenshots: setup  ## refresh the README's pictures in docs/screenshots/ (the browser tests; tests alone write only to temp dirs)
	HIDDENSCOPE_SCREENSHOTS_DIR=$(CURDIR)/docs/screenshots $(PY) pytest -q -p no:cacheprovider tests/ui/test_browser.py

bench: setup      ## benchmarks (not tests): T = 1e7 and 1e8; prints ratios against a numpy baseline
	$(PY) python -m bench.core_bench --steps 10000000 100000000

bench-small: setup
	$(PY) python -m bench.core_bench --steps 1000000 --repeats 3 --build-repeats 3

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
