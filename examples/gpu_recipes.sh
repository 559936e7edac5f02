#!/usr/bin/env bash
# The demo's training recipes on a GPU machine that has torch but no package registry (as in docs/RESULTS.md,
# "The shared Syn trunk, and more steps"): nothing is installed; the packages are imported from their source
# folders, console-script stand-ins go to /tmp/bin, and wheels in .whl/ (pycocotools) to /tmp/site.
#   bash examples/gpu_recipes.sh OUT_DIR [TOTAL_S]
# Before: a finished run's stages 1-11 in runs/carry/$BASE (default g1), hard links of its world/, masks/,
# poses.json, pretrain/, checkout_unlabeled/, synth_heldout/, render/translator.pt (its generator alone is
# enough) and stages/ without synth, render_apply, histogram, render_measure and later (those are redone
# there, under 64 MiB to carry). Then: rpc-synth's GPU tests, the data stages (`aco_pipeline.py --until
# render_measure`), and the recipes of $VARIANTS ("name:opt,opt name2:...") at once; OUT_DIR/results.tgz holds
# their logs, stage records, reports, predictions and kd-loop rounds (no checkpoints or images).
set -u
out=${1:?}; total=${2:-540}; t0=$SECONDS; base=${BASE:-g1}; quick=${QUICK:-}
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
root=$PWD
if [ -z "${SKIP_WHL:-}" ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 3
fi
export PYTHONPATH=/tmp/site:$root/packages/rpc-metrics/src:$root/packages/rpc-synth/src:$root/packages/dpsnet/src:$root/packages/kd-loop/src:$root/kernels/src
export PYTHONUNBUFFERED=1
mkdir -p /tmp/bin
for pair in dpsnet:dpsnet rpc-synth:rpc_synth kd-loop:kd_loop rpc-metrics:rpc_metrics; do
  name=${pair%%:*}; mod=${pair#*:}
  printf '#!/bin/sh\nexec python3 -c "import sys; sys.argv[0] = \\"%s\\"; from %s.cli import main; main()" "$@"\n' \
    "$name" "$mod" >/tmp/bin/$name
  chmod +x /tmp/bin/$name
done
export PATH=/tmp/bin:$PATH
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1; nproc; lscpu | grep -i "model name"
  python3 -c 'import torch, triton, cv2; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "triton", triton.__version__, "cv2", cv2.__version__, "amx", torch.cpu._is_amx_tile_supported())'; } \
  >"$out/machine.txt" 2>&1
cat "$out/machine.txt"
[ -d runs/carry/$base ] && { rm -rf runs/$base; mv runs/carry/$base runs/$base; }
# 1. GPU tests of rpc-synth render (beside the data stages: they are small)
( timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider packages/rpc-synth/tests -rfE >"$out/gpu_tests.log" 2>&1
  echo "rc=$?" >>"$out/gpu_tests.log" ) &
tests=$!
# 2. the data stages (synthesis, render apply on the GPU, histogram, measures)
timeout 200 python3 examples/aco_pipeline.py --out runs/$base $quick --workers 16 --until render_measure >runs/$base.log 2>&1
echo "base: rc=$? at $((SECONDS - t0)) s"; grep -E "^\[[0-9]+/[0-9]+\].*done in" runs/$base.log | tail -6
wait $tests; tail -4 "$out/gpu_tests.log"
# 3. recipes at once
limit=$(( total - (SECONDS - t0) - 35 ))
# Explicit steps, so that the variants stay those of docs/RESULTS.md whatever aco_pipeline.py's defaults are.
variants=${VARIANTS:-"gA:--source-trunk-steps=0,--source-steps=740,--kd-steps=300 gB:--source-trunk-steps=0,--source-steps=1480,--kd-steps=600 gC:--source-trunk-steps=1110,--source-steps=370,--kd-steps=300"}
n=0; for v in $variants; do n=$((n + 1)); done
per=$(( $(nproc) / n )); [ "$per" -ge 1 ] || per=1
echo "variants: $variants; $per threads each; limit $limit s"
pids=()
for v in $variants; do
  name=${v%%:*}; args=${v#*:}; args=${args//,/ }
  rm -rf runs/$name; cp -al runs/$base runs/$name
  ( export OMP_NUM_THREADS=$per MKL_NUM_THREADS=$per
    timeout "$limit" python3 examples/aco_pipeline.py --out runs/$name $quick $args >runs/$name.log 2>&1
    echo "rc=$?" >>runs/$name.log ) &
  pids+=($!)
done
start=$SECONDS
while :; do
  alive=0; for p in "${pids[@]}"; do kill -0 $p 2>/dev/null && alive=1; done
  [ $alive = 1 ] || break
  sleep 30
  for v in $variants; do name=${v%%:*}; echo "[$((SECONDS - start)) s] $name: $(grep -oE '^\[[0-9]+/[0-9]+\] [^(:]*' runs/$name.log | tail -1) | $(grep -oE 'step [0-9]+/[0-9]+.*img/s' runs/$name.log | tail -1 | grep -oE 'step [0-9]+/[0-9]+|[0-9.]+ img/s' | tr '\n' ' ')"; done
done
wait
names=$(for v in $variants; do echo -n "${v%%:*} "; done)
tar czf "$out/results.tgz" --exclude='*.pt' --exclude='*.jpg' --exclude='*.png' runs/$base.log runs/$base/stages runs/$base/render/measure.json \
  $(for n in $names; do echo runs/$n.log; ls -d runs/$n/stages runs/$n/report.md runs/$n/metrics.json runs/$n/models runs/$n/kd 2>/dev/null; done)
for n in $names; do echo "== $n"; tail -3 runs/$n.log; done
echo "total $((SECONDS - t0)) s"; ls -la "$out"
