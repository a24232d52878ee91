#!/usr/bin/env bash
# GPU check for torchopt-accel: build the CUDA kernels, run the CUDA tests and the CUDA benchmark
# in one run of a few minutes. Run from anywhere inside the repository on a machine with an
# NVIDIA GPU, a CUDA build of torch and a CUDA toolkit (no network needed):
#
#     bash packages/torchopt-accel/tools/gpu_check.sh
#
# Environment: PYTHON (default: python3), TORCH_CUDA_ARCH_LIST (default: the GPU's own
# capability), CUDA_PATH (default: found from nvcc on PATH or /usr/local/cuda).
# Exits non-zero when the build, a test or the benchmark fails.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
status=0
step() { echo; echo "=== $* ==="; }

step "machine"
nvidia-smi || echo "nvidia-smi failed (no driver?)"
"$PYTHON" --version
"$PYTHON" - <<'PY' || { echo "torch is not importable"; exit 2; }
import torch
print('torch', torch.__version__, 'cuda', torch.version.cuda)
print('cuda available:', torch.cuda.is_available())
if torch.cuda.is_available():
    print('device:', torch.cuda.get_device_name(), 'capability', torch.cuda.get_device_capability())
PY

if [ -z "${CUDA_PATH:-}" ]; then
  if command -v nvcc >/dev/null 2>&1; then
    CUDA_PATH="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
  elif [ -x /usr/local/cuda/bin/nvcc ]; then
    CUDA_PATH=/usr/local/cuda
  fi
fi
export CUDA_PATH="${CUDA_PATH:-}"
echo "CUDA_PATH=${CUDA_PATH:-<none>}"
if [ -n "$CUDA_PATH" ]; then "$CUDA_PATH/bin/nvcc" --version | tail -2; fi
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST="$("$PYTHON" -c 'import torch; c = torch.cuda.get_device_capability() if torch.cuda.is_available() else (9, 0); print(f"{c[0]}.{c[1]}")')"
fi
export TORCH_CUDA_ARCH_LIST
echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"

step "python build requirements (already installed? no network is assumed)"
"$PYTHON" -m pip --version
missing=$("$PYTHON" - <<'PY'
import importlib.util
mods = {'scikit_build_core': 'scikit-build-core>=0.11', 'cmake': 'cmake>=3.31', 'ninja': 'ninja',
        'optree': 'optree', 'pytest': 'pytest', 'torchopt': 'torchopt-core (-e packages/torchopt-core)'}
print(' '.join(v for k, v in mods.items() if importlib.util.find_spec(k) is None))
PY
)
echo "missing: ${missing:-none}"
if ! "$PYTHON" -c 'import torchopt' 2>/dev/null; then
  "$PYTHON" -m pip install --no-deps --no-build-isolation -e packages/torchopt-core || status=1
fi

step "build torchopt-accel with CUDA kernels"
start=$(date +%s)
"$PYTHON" -m pip install -v --no-deps --no-build-isolation -e packages/torchopt-accel \
  -Ccmake.define.TORCHOPT_ACCEL_CUDA=ON > /tmp/torchopt_accel_build.log 2>&1
rc=$?
grep -E "torchopt_accel:|CUDA|error" /tmp/torchopt_accel_build.log | grep -v "^\s*$" | tail -20
echo "build rc=$rc in $(( $(date +%s) - start )) s (full log: /tmp/torchopt_accel_build.log)"
if [ $rc -ne 0 ]; then tail -60 /tmp/torchopt_accel_build.log; exit 3; fi

step "build info"
"$PYTHON" - <<'PY' || status=1
import json, torch, torchopt, torchopt_accel
info = torchopt_accel.build_info()
print(json.dumps(info, indent=1, default=str))
print('accelerated_op_available(cuda) =', torchopt.accelerated_op_available('cuda'))
assert info['cuda'], 'CUDA kernels were not built'
PY

step "CUDA tests"
"$PYTHON" -m pytest packages/torchopt-accel/tests -m cuda -q -p no:cacheprovider -rs || status=1

step "CPU tests (quick sanity on this machine)"
"$PYTHON" -m pytest packages/torchopt-accel/tests -m "not cuda" -q -p no:cacheprovider \
  -k "not all_cpu_kernel_variants" || status=1

step "CUDA benchmark"
"$PYTHON" benchmarks/accel_bench.py --device cuda --rounds 50 || status=1

echo
echo "gpu_check: $([ $status -eq 0 ] && echo OK || echo FAILED)"
exit $status
