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
comma := ,
PI_TOOLS := build/tools/tb_count.so build/tools/cpu_clock

.PHONY: install system-deps test demo compile bench bench-kernels pi-bench pi-estimate lint clean sanitize experiments wheels

install: system-deps $(STAMP) $(PI_TOOLS)

system-deps:
	@bash scripts/install-system-deps.sh

# make pi-estimate's host tools (native/tools): the qemu plugin counting blocks, and the clock probe
# for --calibrate. compile/pi_trace.py builds them the same way when they are missing.
build/tools/tb_count.so: native/tools/tb_count.c
	@mkdir -p $(@D)
	gcc -O2 -shared -fPIC -fvisibility=hidden -o $@ $< -lpthread
build/tools/cpu_clock: native/tools/cpu_clock.c
	@mkdir -p $(@D)
	gcc -O2 -o $@ $< -lpthread

# Re-installs only when the package metadata changed; quick otherwise. Two distributions, both
# editable: the device runtime qvit-edge (edge_runtime/, builds the native library from native/)
# and the training + compile side qvit (this folder), which depends on it.
$(STAMP): pyproject.toml edge_runtime/pyproject.toml constraints.txt $(wildcard edge_runtime/setup.py native/*.c native/*.h native/*/*.c native/*/*.h native/build_ffi.py)
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip setuptools wheel cffi
	$(VPY) -m pip install -q -c constraints.txt -e ./edge_runtime -e '.[compile,dev]'
	@touch $(STAMP)

test: install
	$(VPY) -m pytest -q $(PYTEST_ARGS)

demo: install
	$(VPY) -m qvit.demo

compile: install
	$(VPY) -m qvit_compile --target $(TARGET) --model "$(MODEL)" --out $(OUT) $(if $(ENGINE),--engine $(ENGINE))

# The device runtime (qvit-edge) as abi3 manylinux wheels for x86_64 and aarch64 -> build/wheels/
# (docs/runtime.md, The wheels). A board installs one with pip and needs no compiler.
wheels: install
	$(VPY) scripts/build_wheels.py --out build/wheels

bench: install
	$(VPY) -m qvit_compile.bench --threads $(BENCH_THREADS)

bench-kernels: install
	$(VPY) -m qvit_compile.bench_kernels

# The Q-ViT ablation on Fashion-MNIST (docs/results.md): hours on a CPU. Interrupt and rerun to
# resume; runs already complete are skipped.
EXP_JOBS ?= 2
experiments: install
	$(VPY) -m qvit.experiments all --jobs $(EXP_JOBS)

# Benchmark a model.so on a Raspberry Pi (64-bit OS) over ssh (README: Raspberry Pi).
PI ?=
pi-bench: install
	@bash scripts/pi-bench.sh "$(PI)" "$(or $(MODEL),build/aarch64/model.so)" --threads $(THREADS)

# A latency ESTIMATE for a Raspberry Pi without a board (docs/pi-estimate.md): one inference counted
# block by block under qemu-user, each block timed by llvm-mca for the core. Not a measurement.
# CPU=cortex-a72 (Pi 4, 1.8 GHz) or cortex-a76 (Pi 5, 2.4 GHz); THREADS (default 1,4); JSON=1;
# CALIBRATE=1 also checks the method against this machine's measured per-kernel times.
CPU ?= cortex-a72
PI_MODEL = $(or $(MODEL),build/aarch64/model.so)
pi-estimate: install
	@test -f "$(PI_MODEL)" || { echo "pi-estimate: error: no $(PI_MODEL): build it first with make compile TARGET=aarch64 MODEL=..." >&2; exit 2; }
	$(VPY) -m qvit_compile.pi_estimate "$(PI_MODEL)" --cpu $(CPU) \
	  --threads $(if $(filter command line environment,$(origin THREADS)),$(THREADS),1$(comma)4) \
	  $(if $(JSON),--json) $(if $(CALIBRATE),--calibrate)

# Every C path under ASan + UBSan (also part of make test: tests/test_kernels_native.py): the
# native kernels' own test, then DeiT-T and Swin-T model.so files (their micro-kernels, glue and
# the runtime's backend) against the same models built without the sanitizers.
sanitize: install
	$(VPY) native/tests/run_native_tests.py sanitize 2
	$(VPY) native/tests/sanitize_models.py --threads 1,2

lint: install
	$(VENV)/bin/ruff check qvit compile edge_runtime tests

clean:
	rm -rf build .pytest_cache
