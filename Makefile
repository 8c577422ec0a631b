# `make run` and `make test` each do all the set-up on a fresh clone.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
DATA    ?= $(if $(JAXUQ_DATA_DIR),$(JAXUQ_DATA_DIR),../shared/data)
PYTEST_ARGS ?=

.PHONY: run test venv install-run install-test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The main job: TU's "From Deep Ensembles to Packed-Ensembles" tutorial through the launcher at a fast
# config (all 60k MNIST images, 1 epoch, 1 seed): a LeNet, a deep ensemble of 2 and a Packed-Ensemble
# trained by jaxuq, the 8 hub LeNets as one ensemble, TU's tables, plots, and a comparison with the TU
# runs committed in experiments/results/ (TU itself is not installed here: torch only reads the hub files).
RUN_ARGS ?= --set epochs=1 --set num_seeds=1 --set compare_tu=false --out runs/main
install-run: $(BIN)/python
	$(BIN)/pip install -q -e ".[torch]"
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
	JAXUQ_DATA_DIR=$(DATA) JAXUQ_REQUIRE_PARITY=1 $(BIN)/python -m pytest -q --durations=15 $(PYTEST_ARGS)

lint: $(BIN)/python
	$(BIN)/ruff check .

bench: install-test
	JAXUQ_DATA_DIR=$(DATA) $(BIN)/python bench/metrics.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
