# Shortcuts for scripts/dev.py, which needs nothing but Python 3.11+.
PYTHON ?= python3

.PHONY: run test setup stubs lint clean
run:
	$(PYTHON) scripts/dev.py run
test:
	$(PYTHON) scripts/dev.py test
setup:
	$(PYTHON) scripts/dev.py setup
stubs:
	$(PYTHON) scripts/dev.py stubs
lint:
	$(PYTHON) scripts/dev.py lint
clean:
	rm -rf .run .venv .mypy_cache .pytest_cache .ruff_cache
