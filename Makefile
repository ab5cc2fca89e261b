# The README's two commands: `make demo` (the main job) and `make test` (the test suite).
.PHONY: setup services demo test lint

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

# pytest exits 5 when it collected no test: that counts as a failure here.
test: setup services lint
	.venv/bin/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc
