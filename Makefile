# Two commands for a fresh machine: `make demo` (the main job on the embedded default) and `make test`.
# Both create .venv if it is missing and install every member package editable plus the dev tools.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Member packages come from the root pyproject.toml; those not present yet are skipped.
MEMBERS := $(shell $(PYTHON) -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['tool']['aco']['members']))")
PRESENT := $(patsubst %/pyproject.toml,%,$(wildcard $(addsuffix /pyproject.toml,$(MEMBERS))))
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
QUICK ?=

.PHONY: install test bench bench-gpu demo lint clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements-dev.txt $(addsuffix /pyproject.toml,$(PRESENT))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt $(addprefix -e ./,$(PRESENT))
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Benchmarks run on demand; each reports a ratio against the baseline it measures in the same run.
bench: $(STAMP)
	$(BIN)/python -m pytest -q --benchmark-enable --benchmark-only \
		--benchmark-columns=min,median,max,rounds $(addsuffix /benchmarks,$(PRESENT)) $(PYTEST_ARGS)

# GPU tests and benchmarks with the machine's own python3: installs nothing (the GPU machine may have
# no package registry); the packages are imported from their source folders. Only the members with GPU
# tests are collected: kernels (torch and triton alone) and rpc-synth (its render tests also need opencv and
# pycocotools; carry a pycocotools wheel where the machine lacks it).
GPU_TESTS := $(filter kernels packages/rpc-synth,$(PRESENT))
bench-gpu:
	ACO_KERNELS_NO_AUTOTUNE=1 PYTHONPATH=$(subst $(eval) ,:,$(addsuffix /src,$(PRESENT))) $(PYTHON) -m pytest -q -m gpu \
		-p no:cacheprovider $(GPU_TESTS) $(PYTEST_ARGS)
	test ! -f kernels/benchmarks/report.py || PYTHONPATH=$(subst $(eval) ,:,$(addsuffix /src,$(PRESENT))) \
		$(PYTHON) kernels/benchmarks/report.py --output kernels/benchmarks/RESULTS.md
	test ! -f packages/dpsnet/benchmarks/gpu_step.py || PYTHONPATH=$(subst $(eval) ,:,$(addsuffix /src,$(PRESENT))) \
		$(PYTHON) packages/dpsnet/benchmarks/gpu_step.py --output packages/dpsnet/benchmarks/GPU_STEP.md

# The whole ACO system on the embedded mini world (19 min from a fresh clone on a 2-core AMD EPYC; report in runs/mini/, resumable).
# QUICK=1: tiny sizes (under 3 minutes; runs/mini-quick/). DEMO_ARGS: more options (`examples/aco_pipeline.py -h`).
DEMO_ARGS ?=
demo: $(STAMP)
	$(BIN)/python examples/aco_pipeline.py $(if $(QUICK),--quick,) $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python tools/check_duplicates.py

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
