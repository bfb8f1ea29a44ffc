# Shortcuts for scripts/dev.py, which needs nothing but Python 3.11+.
PYTHON ?= python3

.PHONY: run test compose-test compose-engine setup stubs lint clean
run:
	$(PYTHON) scripts/dev.py run
test:
	$(PYTHON) scripts/dev.py test
compose-test:
	$(PYTHON) scripts/dev.py compose-test
compose-engine:
	$(PYTHON) scripts/dev.py compose-engine
setup:
	$(PYTHON) scripts/dev.py setup
stubs:
	$(PYTHON) scripts/dev.py stubs
lint:
	$(PYTHON) scripts/dev.py lint
clean:
	rm -rf .run .venv .mypy_cache .pytest_cache .ruff_cache
