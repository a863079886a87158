#!/usr/bin/env bash
# The GPU checks, in one run on a lent CUDA machine (the `device` tool) or any machine with a CUDA GPU, torch and
# Triton: the tests marked `gpu`, the Triton kernel's own benchmark (benchmarks/gpu_kernel.py) and
# `softmargin bench --device cuda`. Results go to $OUT (default: benchmarks/results). It uses the python3 found
# there, with this source tree on PYTHONPATH, and installs nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 TRITON_DEFAULT_FP_FUSION=1
py="${PYTHON:-python3}"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$py" -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$out/gpu-env.txt"
echo "== tests"
timeout 150 "$py" -m pytest -q -p no:cacheprovider -m gpu -rfEs tests/test_gpu.py tests/test_ops_triton.py 2>&1 | tee "$out/gpu-tests.txt"
echo "== kernel"
timeout 90 "$py" benchmarks/gpu_kernel.py --out "$out/gpu-kernel.csv" 2>&1 | tee "$out/gpu-kernel.txt"
echo "== bench"
for shape in 4096x2000 256x100000 32x10; do
  timeout 120 "$py" -c "from softmargin.app.cli import main; main(['bench', '--device', 'cuda', '--shapes', '$shape', '--repeat', '50', '--out', '$out/bench-cuda-$shape.csv'])" 2>&1 | grep -v "it/s\]" | tee -a "$out/bench-cuda.txt"
done
