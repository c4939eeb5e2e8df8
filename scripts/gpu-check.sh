#!/usr/bin/env bash
# The one prepared check for a machine with a GPU (docs/gpu.md): builds
# against the PyTorch-bundled CUDA LibTorch (scripts/build-cuda.sh), runs the
# gpu-labelled tests, then tries a short training job on cuda. Exit code: that
# of the gpu tests (0 = ran and passed), or the build's.
#
#   scripts/gpu-check.sh            # build into build-cuda ($DSK_BUILD_DIR)
#   DSK_SKIP_BUILD=1 scripts/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/mpi-env.sh
build_dir=${DSK_BUILD_DIR:-build-cuda}
export DSK_BUILD_DIR=$build_dir

echo "== devices"
nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not available"

if [ -z "${DSK_SKIP_BUILD:-}" ]; then
  echo "== build ($build_dir, CUDA LibTorch)"
  ./scripts/build-cuda.sh || { echo "gpu-check: build failed" >&2; exit 1; }
fi

echo "== ctest -L gpu"
ctest_log=$(mktemp)
(cd "$build_dir" && ctest -L gpu --output-on-failure --timeout 600) 2>&1 | tee "$ctest_log"
gpu_rc=${PIPESTATUS[0]}
skipped=$(grep -c '\*\*\*Skipped' "$ctest_log" || true)
rm -f "$ctest_log"

echo "== training on cuda (synthetic, 50 steps)"
out=runs/gpu-check
rm -rf "$out"
train_log=$(mktemp)
timeout 600 "$build_dir/dsk" train --config configs/synthetic.pbtxt --out "$out" \
  --set trainer.device=cuda --set trainer.steps=50 --set trainer.log_every=10 >"$train_log" 2>&1
train_rc=$?
cat "$train_log"
if [ "$train_rc" -ne 0 ]; then
  echo "gpu-check: training on cuda FAILED (dsk train exited $train_rc): the log above says why;" \
       "this path has never run on a GPU before this check"
  echo "== the same job on cpu, for a step-time reference"
  rm -rf "$out"
  timeout 600 "$build_dir/dsk" train --config configs/synthetic.pbtxt --out "$out" \
    --set trainer.device=cpu --set trainer.steps=50 --set trainer.log_every=10 >"$train_log" 2>&1
  train_rc=$?
  cat "$train_log"
fi
if [ "$train_rc" -eq 0 ] && [ -f "$out/metrics.jsonl" ]; then
  # examples_per_s per logged step; step time = global batch / examples_per_s.
  "${PYTHON:-python3}" - "$out" <<'PY' || true
import json, sys, re, os
out = sys.argv[1]
batch = None
cfg = os.path.join(out, "config.pbtxt")
if os.path.exists(cfg):
    m = re.search(r"global_batch_size:\s*(\d+)", open(cfg).read())
    batch = int(m.group(1)) if m else None
rates = [r["examples_per_s"] for r in map(json.loads, open(os.path.join(out, "metrics.jsonl")))
         if "examples_per_s" in r]
if rates:
    last = rates[-1]
    step = f", step time {1000.0 * batch / last:.2f} ms (global batch {batch})" if batch and last > 0 else ""
    print(f"gpu-check: examples/s {last:.0f} (last log){step}")
else:
    print("gpu-check: no examples_per_s in metrics.jsonl")
PY
fi
rm -f "$train_log"

if [ "$gpu_rc" -eq 0 ] && [ "$skipped" -gt 0 ]; then
  echo "gpu-check: $skipped gpu ctest entries were SKIPPED (no usable device: see their output), none failed"
elif [ "$gpu_rc" -eq 0 ]; then
  echo "gpu-check: gpu tests ran on the device and passed"
else
  echo "gpu-check: gpu tests FAILED (ctest exit $gpu_rc)"
fi
exit "$gpu_rc"
