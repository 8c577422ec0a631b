# `make run` and `make test` each do all the set-up on a fresh clone.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
DATA    ?= $(if $(JAXUQ_DATA_DIR),$(JAXUQ_DATA_DIR),../shared/data)
PYTEST_ARGS ?=
# test files run at once, each in a fresh pytest process (a long-lived process holding many freed XLA:CPU
# executables segfaulted in libgcc_s's unwinder on CI): a crash or leak stays with one file
TEST_WORKERS ?= 2
LATEST  ?= .venv-latest

.PHONY: run test venv install-run install-test lint bench clean docs test-latest

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The main job: TU's "From Deep Ensembles to Packed-Ensembles" tutorial through the launcher at the tutorial's
# recipe (all 60k MNIST images, 3 epochs, 1 seed): a LeNet, a deep ensemble of 2 and a Packed-Ensemble
# trained by jaxuq, the 8 hub LeNets as one ensemble, TU's tables, plots, and a comparison with the TU
# runs committed in experiments/results/ (TU itself is not installed here: torch only reads the hub files).
RUN_ARGS ?= --set num_seeds=1 --set compare_tu=false --out runs/main
install-run: $(BIN)/python
	$(BIN)/pip install -q -e ".[torch,plots]"
	@touch $(VENV)/.run-deps

run: install-run
	JAXUQ_DATA_DIR=$(DATA) $(BIN)/python -m experiments de_to_pe $(RUN_ARGS)

# The whole suite, parity tests against torch-uncertainty 0.13.0 included.
# torch/torchvision come first, alone, as in TU's install recipe (local wheels).
install-test: $(BIN)/python
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[dev,torch,examples]"

test: install-test
	$(BIN)/ruff check .
	JAXUQ_DATA_DIR=$(DATA) JAXUQ_REQUIRE_PARITY=1 bash .ci/test-files $(BIN)/python $(TEST_WORKERS) $(PYTEST_ARGS)

# API reference from the docstrings (pdoc) into docs/api; fails if a module does not import.
docs: install-test
	rm -rf docs/api
	$(BIN)/python -m pdoc -o docs/api jaxuq converters

# The torch-free suite (goldens, real data; parity tests skip) against the newest jax, flax,
# optax, orbax and numpy that the package index offers, in a separate venv ($(LATEST)).
test-latest:
	$(PY) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade pip
	$(LATEST)/bin/pip install -q -U --upgrade-strategy eager ".[examples]" pytest hypothesis
	@$(LATEST)/bin/pip list 2>/dev/null | grep -iE '^(jax|jaxlib|flax|optax|orbax-checkpoint|numpy|scipy|rich|matplotlib) '
	JAXUQ_DATA_DIR=$(DATA) $(LATEST)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(BIN)/python
	$(BIN)/ruff check .

# Every CPU bench at its CPU-sized defaults, through bench/_common.py: each records the load average
# and thread settings first and refuses a loaded machine (pass BENCH_ARGS=--allow-load to flag instead).
BENCHES := metrics convert ood ood_memory scaler_gap train ensembles conv predict xla_cpu eval_memory
BENCH_ARGS ?=

bench: install-test
	@set -e; for b in $(BENCHES); do \
	  test -f bench/$$b.py || { echo "make bench: bench/$$b.py is missing"; exit 1; }; \
	  echo "== bench/$$b.py"; \
	  JAXUQ_DATA_DIR=$(DATA) $(BIN)/python bench/$$b.py $(BENCH_ARGS); \
	done

clean:
	rm -rf $(VENV) $(LATEST) .pytest_cache .ruff_cache docs/api
