# make test: create .venv if missing, install torch and the tools, build the package (CUDA kernels
# too when nvcc is found), run the tests. make demo: the STCB demo, the pyramid demo (a few
# minutes), a short benchmark. make bench: the CPU benchmark grid (results in benchmarks/results/latest).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)
export CUDA_HOME
MAX_JOBS ?= 2
export MAX_JOBS

PACKAGES := torch==2.14.1 torchvision==0.29.1 numpy setuptools wheel ninja pytest expecttest \
	pytest-benchmark av opencv-contrib-python-headless matplotlib tqdm

.PHONY: test demo bench build venv clean

venv: $(VENV)/.deps
$(VENV)/.deps: Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PACKAGES)
	touch $@

# The extension is rebuilt when a source file changes (ninja keeps unchanged objects).
build: $(VENV)/.built
$(VENV)/.built: $(VENV)/.deps setup.py $(shell find csrc -type f) 
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

test: build
	$(PY) -m pytest -q tests

demo: build
	$(PY) examples/stcb_demo.py
	$(PY) -m pyramid demo --variants A,B,C,D --out results/demo
	$(PY) -m benchmarks --quick --device cpu

bench: build
	$(PY) -m benchmarks --device cpu

clean:
	rm -rf build *.egg-info compact_bilinear/*.so $(VENV)/.built
