# aligngym — two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
TORCH_VERSION := 2.11.0
TORCH_STAMP := $(VENV)/.torch-$(TORCH_VERSION)
# torch-sys finds libtorch through the venv's python (it runs `python` when VIRTUAL_ENV is set).
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
CARGO ?= cargo
BIN := target/release/aligngym
OUT ?= results

.PHONY: run test build venv gpu-check bench lint fmt clean

run: build
	$(BIN) compare --out $(OUT)

test: $(TORCH_STAMP)
	$(CARGO) test --release --workspace

build: $(TORCH_STAMP)
	$(CARGO) build --release

venv: $(TORCH_STAMP)

# Installed once; a second `make` finds the stamp and does nothing.
$(TORCH_STAMP):
	test -x $(VENV)/bin/python || /usr/bin/env -u VIRTUAL_ENV python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check torch==$(TORCH_VERSION)
	$(VENV)/bin/python -c "import torch; assert torch.__version__.split('+')[0] == '$(TORCH_VERSION)'"
	touch $@

# Prints the device, runs a forward/backward and sampling on CUDA, compares with CPU; fails without CUDA.
gpu-check: build
	$(BIN) gpu-check

bench: build
	$(BIN) bench --size tiny

lint: $(TORCH_STAMP)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --release -- -D warnings

fmt:
	$(CARGO) fmt --all
