#!/usr/bin/env bash
# The GPU checks, in one run of about nine minutes on a lent CUDA machine (the `device` tool) or any machine with a
# CUDA GPU, torch and Triton: the tests marked `gpu` (the public API on the device: every option without a host
# synchronisation under torch.cuda.set_sync_debug_mode("error"), the Triton operator under torch.compile, a training
# step in CUDA graphs, autocast; the Triton kernels with every option, bfloat16, CUDA-graph capture), the kernels' own
# benchmark (benchmarks/gpu_kernel.py: bandwidth, options, sparse, linear head, accuracy), `softmargin bench --device
# cuda` and the compiled training step on the device. Results go to $OUT (default: benchmarks/results/gpu); each step
# has its own time limit and keeps what it measured when cut short. Uses the python3 found there, with this source
# tree on PYTHONPATH, and installs nothing. TESTS=<pytest -k expression> runs only those tests and skips the rest.
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
echo "== tests (240 s)"
timeout 240 "$py" -m pytest -q -p no:cacheprovider -m gpu -rfEs --durations=15 ${TESTS:+-k "$TESTS"} tests/torch/test_gpu.py 2>&1 | tee "$out/gpu-tests.txt"
if [ -n "${TESTS:-}" ]; then exit 0; fi
echo "== kernel (60 s)"
timeout 60 "$py" benchmarks/gpu_kernel.py --out "$out/gpu-kernel.csv" 2>&1 | tee "$out/gpu-kernel.txt"
echo "== bench (170 s, three runs: one cut short loses only its own shapes)"
for shapes in "32x10 64x80 256x1000:80" "4096x2000:45" "256x100000:45"; do
  limit="${shapes##*:}"; shapes="${shapes%:*}"; name="${shapes%% *}"
  # shellcheck disable=SC2086
  timeout "$limit" "$py" -m softmargin bench --device cuda --shapes $shapes --repeat 30 --out "$out/bench-cuda-$name.csv" 2>&1 | grep -v "it/s\]" | tee -a "$out/bench-cuda.txt"
done
echo "== compiled training step (60 s)"
timeout 60 "$py" -m softmargin bench --train-step --device cuda --shapes 4096x2000 --repeat 30 --out "$out/bench-cuda-train-step.csv" 2>&1 | tee "$out/bench-cuda-train-step.txt"
