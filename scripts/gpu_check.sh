#!/usr/bin/env bash
# The GPU checks, in one run of at most five minutes on a lent CUDA machine (the `device` tool) or any machine with a
# CUDA GPU, torch and Triton: the tests marked `gpu` (the public API on the device; the Triton kernels with every
# option, bfloat16, torch.cuda.set_sync_debug_mode("error"), CUDA-graph capture, triton_op + torch.compile), the
# kernels' own benchmark (benchmarks/gpu_kernel.py: bandwidth, options, sparse, linear head, accuracy) and
# `softmargin bench --device cuda`. Results go to $OUT (default: benchmarks/results/gpu); each step has its own time
# limit and keeps what it measured when cut short. Uses the python3 found there, with this source tree on
# PYTHONPATH, and installs nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results/gpu}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src:$PWD/tests" PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
py="${PYTHON:-python3}"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$py" -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$out/gpu-env.txt"
echo "== tests (150 s)"
timeout 150 "$py" -m pytest -q -p no:cacheprovider -m gpu -rfEs --durations=10 tests/torch/test_gpu.py 2>&1 | tee "$out/gpu-tests.txt"
echo "== kernel (75 s)"
timeout 75 "$py" benchmarks/gpu_kernel.py --out "$out/gpu-kernel.csv" 2>&1 | tee "$out/gpu-kernel.txt"
echo "== bench (60 s)"
timeout 60 "$py" -c "from softmargin.app.cli import main; main(['bench', '--device', 'cuda', '--shapes', '32x10', '64x80', '256x1000', '4096x2000', '256x100000', '--repeat', '30', '--out', '$out/bench-cuda.csv'])" 2>&1 | grep -v "it/s\]" | tee "$out/bench-cuda.txt"
