# qvit-edge: train -> export -> compile -> run.
# `make demo` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TARGET ?= x86_64
MODEL ?=
OUT ?= build/$(TARGET)/model.so
THREADS ?= 1
BENCH_THREADS ?= 1,2

.PHONY: install system-deps test demo compile bench bench-kernels pi-bench lint clean sanitize experiments

install: system-deps $(STAMP)

system-deps:
	@bash scripts/install-system-deps.sh

# Re-installs only when the package metadata changed; quick otherwise.
$(STAMP): pyproject.toml constraints.txt $(wildcard setup.py native/*.c native/*.h native/*/*.c native/*/*.h native/build_ffi.py)
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip setuptools wheel cffi
	$(VPY) -m pip install -q -c constraints.txt -e '.[train,compile,dev]'
	@touch $(STAMP)

test: install
	$(VPY) -m pytest -q $(PYTEST_ARGS)

demo: install
	$(VPY) -m qvit.demo

compile: install
	$(VPY) -m qvit_compile --target $(TARGET) --model "$(MODEL)" --out $(OUT)

bench: install
	$(VPY) -m qvit_compile.bench --threads $(BENCH_THREADS)

bench-kernels: install
	$(VPY) -m qvit_edge.bench_kernels

# The Q-ViT ablation on Fashion-MNIST (docs/results.md): hours on a CPU. Interrupt and rerun to
# resume; runs already complete are skipped.
EXP_JOBS ?= 2
experiments: install
	$(VPY) -m qvit.experiments all --jobs $(EXP_JOBS)

# Benchmark a model.so on a Raspberry Pi (64-bit OS) over ssh (README: Raspberry Pi).
PI ?=
pi-bench: install
	@bash scripts/pi-bench.sh "$(PI)" "$(or $(MODEL),build/aarch64/model.so)" --threads $(THREADS)

# Native kernel tests under ASan + UBSan (also part of make test: tests/test_kernels_native.py).
sanitize: install
	$(VPY) native/tests/run_native_tests.py sanitize 2

lint: install
	$(VENV)/bin/ruff check qvit compile edge_runtime tests

clean:
	rm -rf build .pytest_cache
