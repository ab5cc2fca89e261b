# The README's two commands: `make demo` (the main job) and `make test` (the test suite).
.PHONY: setup services demo test test-fast lint lock

setup:
	bash scripts/setup.sh

services:
	bash scripts/services.sh
	bash scripts/test_tools.sh

demo: setup
	.venv/bin/canary demo

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports
	.venv/bin/mypy
	bash scripts/lock.sh --check

# Rewrite requirements-dev.lock after changing dependencies in pyproject.toml.
lock: setup
	bash scripts/lock.sh

# The inner loop: lint (ruff, the layer contract, mypy) and the unit tests without the
# statistical simulations (no services needed).
test-fast: lint
	.venv/bin/python -m pytest -q -m "not integration and not slow" tests/unit

# Two test processes (pytest-xdist; each has its own Redis database and PostgreSQL schema),
# handing out tests one by one so a long file does not leave the other process idle.
# pytest exits 5 when it collected no test: that counts as a failure here.
test: setup services lint
	.venv/bin/python -m pytest -q -n 2 --dist worksteal --durations=15; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc
