#!/usr/bin/env bash
# Everything `make bench-gpu` runs, each stage under its own time limit, logs and tables into one folder.
#   bash kernels/benchmarks/run_on_gpu.sh OUT_DIR [TESTS_S STEP_S REPORT_S]
# REPORT_ONLY="pyramid_fuse density_render": time only these ops (report.py --only); TESTS_K=pyramid: only the
# GPU tests whose names match (pytest -k).
# Installs nothing: the machine's python3 (torch + triton) imports the packages from their source folders.
set -u
out=${1:?usage: run_on_gpu.sh OUT_DIR [TESTS_S STEP_S REPORT_S]}
tests_s=${2:-150}; step_s=${3:-150}; report_s=${4:-300}
mkdir -p "$out"
cd "$(dirname "$0")/../.."
export PYTHONPATH=kernels/src:packages/rpc-metrics/src:packages/dpsnet/src PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $py -c 'import torch, triton, torchvision; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__, "torchvision", torchvision.__version__)'
} >"$out/machine.txt" 2>&1
cat "$out/machine.txt"
t=$SECONDS
# correctness does not need autotuning (a benchmark run per config and shape): the GPU tests run without it
ACO_KERNELS_NO_AUTOTUNE=1 timeout "$tests_s" $py -m pytest -q -m gpu -p no:cacheprovider kernels/tests ${TESTS_K:+-k "$TESTS_K"} -rfE >"$out/gpu_tests.log" 2>&1
echo "gpu tests: rc=$? in $((SECONDS - t)) s"; tail -5 "$out/gpu_tests.log"
t=$SECONDS
timeout "$step_s" $py packages/dpsnet/benchmarks/gpu_step.py --output "$out/GPU_STEP.md" >"$out/gpu_step.log" 2>&1
echo "dpsnet step: rc=$? in $((SECONDS - t)) s"; tail -3 "$out/gpu_step.log"
t=$SECONDS
timeout "$report_s" $py kernels/benchmarks/report.py ${REPORT_ONLY:+--only $REPORT_ONLY} --output "$out/RESULTS.md" >"$out/report.log" 2>&1
echo "kernel report: rc=$? in $((SECONDS - t)) s"; tail -3 "$out/report.log"
