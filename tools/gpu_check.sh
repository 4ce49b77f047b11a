#!/usr/bin/env bash
# `make gpu-check`: tideflow on one CUDA GPU, from a bare machine (Python 3.11 and this
# repository) in under 8 minutes. Steps, each under its own timeout (seconds, env overrides):
#   install  GPU_CHECK_INSTALL_TIMEOUT=180  its own venv ($GPU_CHECK_VENV, default .venv-gpu; the
#            CPU .venv is left alone): torch==2.13.0 as pip serves it (the CUDA build on Linux
#            from PyPI; a CPU build is replaced from $GPU_CHECK_TORCH_INDEX, default the cu128
#            index), the project, pytest, and libNVVM + cudart for numba.cuda
#            (nvidia-cuda-nvcc-cu12 pinned to the driver's CUDA 12.x, nvidia-cuda-runtime-cu12).
#            Skipped when the venv is already installed for this pyproject.toml.
#   tests    GPU_CHECK_TESTS_TIMEOUT=125    pytest tests/gpu (the numba.cuda kernels vs torch)
#   kernels  GPU_CHECK_KERNELS_TIMEOUT=60   tideflow bench kernels (decode attention vs copy bandwidth)
#   model    GPU_CHECK_MODEL_TIMEOUT=100    tideflow bench gpu-check (random 1B Llama, bf16:
#            greedy tokens vs transformers, decode step vs its bandwidth floor)
# Results: $GPU_CHECK_JSON (default gpu-check.json), a summary at the end. Exit 0 when every
# step passed, or when there is no GPU (checked with nvidia-smi before anything is installed:
# "no CUDA device: skipping"); 1 when a step failed or timed out.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${GPU_CHECK_VENV:-.venv-gpu}
OUT=${GPU_CHECK_JSON:-gpu-check.json}
TORCH_SPEC=${GPU_CHECK_TORCH:-torch==2.13.0}
TORCH_INDEX=${GPU_CHECK_TORCH_INDEX:-https://download.pytorch.org/whl/cu128}
T_INSTALL=${GPU_CHECK_INSTALL_TIMEOUT:-180}
T_TESTS=${GPU_CHECK_TESTS_TIMEOUT:-125}
T_KERNELS=${GPU_CHECK_KERNELS_TIMEOUT:-60}
T_MODEL=${GPU_CHECK_MODEL_TIMEOUT:-100}
PY="$VENV/bin/python"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
STEPS="$WORK/steps.tsv"  # name, rc, seconds, timeout
: >"$STEPS"
START=$SECONDS

# Write $OUT from the steps and the JSON the steps left in $WORK (stdlib only: no venv needed).
write_json() {  # $1: skip reason or ""
    "$PYTHON" - "$OUT" "$STEPS" "$WORK" "$1" "$((SECONDS - START))" <<'EOF'
import json, os, sys
out, steps_path, work, reason, total = sys.argv[1:]
def load(name):
    try:
        with open(os.path.join(work, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
steps = []
for line in open(steps_path):
    name, rc, seconds, timeout = line.split()
    rc = int(rc)
    status = "passed" if rc == 0 else "timed out" if rc in (124, 137) else "failed"
    steps.append({"name": name, "status": status, "rc": rc, "seconds": int(seconds), "timeout_s": int(timeout)})
result = {"skipped": bool(reason), "reason": reason or None, "total_seconds": int(total), "steps": steps,
          "environment": load("env.json"), "kernels": load("kernels.json"), "model": load("model.json")}
with open(out, "w") as f:
    json.dump(result, f, indent=2)
EOF
}

GPUS=$(nvidia-smi -L 2>/dev/null)
if ! grep -q '^GPU' <<<"$GPUS"; then
    echo "no CUDA device: skipping the GPU check (nvidia-smi finds no GPU)"
    write_json "no CUDA device"
    exit 0
fi
echo "$GPUS"

# nvidia-cuda-nvcc-cu12 pinned to the driver's CUDA version when that is 12.x: libNVVM newer
# than the driver writes PTX the driver cannot load
DRIVER_CUDA=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9]*\.[0-9]*\).*/\1/p' | head -1)
case "$DRIVER_CUDA" in
    12.*) NVCC_SPEC="nvidia-cuda-nvcc-cu12==$DRIVER_CUDA.*" ;;
    *) NVCC_SPEC="nvidia-cuda-nvcc-cu12" ;;
esac
NVCC_SPEC=${GPU_CHECK_NVCC:-$NVCC_SPEC}

run_step() {  # name timeout command...
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    echo "== $name (timeout ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    echo -e "$name\t$rc\t$((SECONDS - t0))\t$limit" >>"$STEPS"
    echo "== $name: rc $rc after $((SECONDS - t0))s"
    return $rc
}

install_all() {
    set -e
    [ -x "$PY" ] || "$PYTHON" -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q "$TORCH_SPEC"
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)'; then
        echo "pip served a CPU build of torch; replacing it from $TORCH_INDEX"
        "$PY" -m pip uninstall -q -y torch
        "$PY" -m pip install -q --index-url "$TORCH_INDEX" "$TORCH_SPEC"
    fi
    "$PY" -m pip install -q -e . pytest pytest-timeout "$NVCC_SPEC" nvidia-cuda-runtime-cu12
    touch "$VENV/.gpu-installed"
}
export -f install_all
export PY PYTHON VENV TORCH_SPEC TORCH_INDEX NVCC_SPEC

if [ "$VENV/.gpu-installed" -nt pyproject.toml ]; then
    echo "== install: $VENV is installed already"
else
    run_step install "$T_INSTALL" bash -c install_all || { write_json ""; echo "install failed: see above"; exit 1; }
fi

# numba.cuda finds libNVVM, libdevice and cudart under CUDA_HOME (nvvm/lib64, nvvm/libdevice,
# lib64): one directory of links into the nvidia wheels
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
export CUDA_HOME="$(cd "$VENV" && pwd)/cuda-home"
rm -rf "$CUDA_HOME" && mkdir -p "$CUDA_HOME/lib64"
ln -s "$SITE/nvidia/cuda_nvcc/nvvm" "$CUDA_HOME/nvvm"
for lib in "$SITE"/nvidia/cuda_runtime/lib/libcudart.so*; do [ -e "$lib" ] && ln -s "$lib" "$CUDA_HOME/lib64/"; done
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# preflight: torch sees the GPU and numba.cuda finds its toolkit; the facts go into the JSON
if ! "$PY" - "$WORK/env.json" <<'EOF'
import json, os, sys
import torch
env = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
       "CUDA_HOME": os.environ["CUDA_HOME"]}
if env["cuda_available"]:
    env["device"] = torch.cuda.get_device_name()
    from numba import cuda
    from numba.cuda.cudadrv.libs import get_cudalib, get_libdevice
    env["numba_cuda"] = cuda.is_available()
    env["nvvm"], env["cudart"], env["libdevice"] = get_cudalib("nvvm"), get_cudalib("cudart"), get_libdevice()
json.dump(env, open(sys.argv[1], "w"), indent=2)
print(json.dumps(env, indent=2))
ok = env["cuda_available"] and env.get("numba_cuda") and all(env.get(k) and os.path.isfile(env[k]) for k in ("nvvm", "cudart", "libdevice"))
sys.exit(0 if ok else 1)
EOF
then
    echo "preflight failed: torch ${TORCH_SPEC} sees no CUDA device, or numba.cuda lacks libNVVM/cudart/libdevice (above)"
    echo -e "preflight\t1\t0\t0" >>"$STEPS"
    write_json ""
    exit 1
fi

run_step tests "$T_TESTS" "$PY" -m pytest -q -p no:cacheprovider tests/gpu
run_step kernels "$T_KERNELS" "$VENV/bin/tideflow" bench kernels --repeats 3 --json "$WORK/kernels.json"
run_step model "$T_MODEL" "$VENV/bin/tideflow" bench gpu-check --json "$WORK/model.json"
write_json ""

echo
echo "== gpu-check summary ($((SECONDS - START))s in all; results in $OUT)"
"$PYTHON" - "$OUT" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
for s in r["steps"]:
    print(f"  {s['name']:<8} {s['status']:<10} {s['seconds']:>4}s of {s['timeout_s']}s")
if k := (r["kernels"] or {}).get("gpu"):
    print(f"  decode attention: {k['achieved_GBps']:.0f} GB/s of {k['copy_GBps']:.0f} GB/s copy = {k['ratio']:.0%}")
if (m := r["model"]) and not m.get("skipped"):
    a = m["agreement"]
    print(f"  1B greedy vs transformers: {a['identical']}/{a['prompts']} identical, mean prefix {a['mean_prefix_fraction']:.0%}")
    for t in m["decode"]:
        print(f"  decode batch {t['batch']}: {t['step_ms']:.2f} ms/step, floor {t['floor_ms']:.2f} ms ({t['floor_fraction']:.0%})")
sys.exit(0 if r["steps"] and all(s["status"] == "passed" for s in r["steps"]) else 1)
EOF
