#!/bin/bash
# The GPU checks of the performance issue, on a machine with an NVIDIA GPU (about 5 minutes on an H200):
# the cuda test cases, then the 138k-user DP round on the GPU and on the CPU beside it.
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh [OUT_DIR]
# Logs go to OUT_DIR (default: a temporary directory). Measured: README, Performance, "Measured on a GPU".
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-$(mktemp -d)}
mkdir -p "$OUT"
t0=$(date +%s)
step() {
    local name=$1; shift
    echo "=== $name at +$(( $(date +%s) - t0 ))s"
    "$@" 2>&1 | tee "$OUT/$name.log"
    echo "=== $name exit ${PIPESTATUS[0]} at +$(( $(date +%s) - t0 ))s"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -c "import torch; assert torch.cuda.is_available(), 'PyTorch sees no GPU'; print(torch.__version__, torch.cuda.get_device_name(0))" || exit 1
step tests "$PY" -m pytest -q -p no:cacheprovider -k "cuda or gpu" tests/test_engine.py tests/test_engine_models.py \
    tests/test_flower_compat.py tests/test_cli_errors.py
step scale_cuda "$PY" benchmarks/scale.py --rounds 5 --users-per-node 69000 --device cuda
step scale_cpu "$PY" benchmarks/scale.py --rounds 3 --users-per-node 69000
echo "logs in $OUT"
