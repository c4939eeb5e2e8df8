#!/usr/bin/env bash
# Checkpoints through `dsk train`: exact resume, resume on other layouts, a
# signal, a rank killed mid-save, and every validation error.
# Usage: checkpoint_test.sh DSK MPIEXEC
set -uo pipefail
dsk=$1; mpiexec=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
config="$(dirname "$0")/../../configs/synthetic.pbtxt"
# 2000 examples / batch 40: epoch boundary after step 50, inside 41-60.
base=(--config "$config" --set trainer.log_every=1 --set trainer.checkpoint_every=20
      --set data.synthetic.train_size=2000 --set trainer.global_batch_size=40)

train() {  # world out [args...]
  local world=$1 out=$2; shift 2
  if [ "$world" -eq 1 ]; then "$dsk" train "${base[@]}" --out "$out" "$@"
  else "$mpiexec" -np "$world" "$dsk" train "${base[@]}" --out "$out" "$@"; fi
}

losses_agree() {  # reference candidate first_step last_step rtol (0 = bitwise)
  python3 - "$@" <<'PY' || exit 1
import json, sys
ref, cand, first, last, rtol = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
def losses(path):
    return {r["step"]: r["loss"] for r in map(json.loads, open(path)) if "loss" in r}
a, b = losses(ref), losses(cand)
worst = 0.0
for s in range(first, last + 1):
    if s not in a or s not in b:
        sys.exit(f"FAIL: step {s} missing from {ref if s not in a else cand}")
    diff = abs(a[s] - b[s]) / max(abs(a[s]), 1e-300)
    worst = max(worst, diff)
    if (rtol == 0 and a[s] != b[s]) or diff > rtol:
        sys.exit(f"FAIL: step {s}: {b[s]!r} vs {a[s]!r}")
print(f"  steps {first}-{last}: {'bitwise equal' if rtol == 0 else f'worst relative difference {worst:.2e}'}")
PY
}

tensors_equal() {  # manifest manifest: same tensor names and checksums
  python3 - "$1" "$2" <<'PY' || exit 1
import re, sys
def entries(path):
    text = open(path).read()
    return dict(re.findall(r'tensors \{\s*name: "([^"]+)".*?checksum: (\d+)', text, re.S))
a, b = entries(sys.argv[1]), entries(sys.argv[2])
if a != b or not a:
    missing = set(a) ^ set(b)
    bad = [k for k in a if k in b and a[k] != b[k]]
    sys.exit(f"FAIL: tensors differ: names {sorted(missing)[:3]}, checksums {bad[:3]}")
print(f"  {len(a)} tensors with equal checksums")
PY
}

echo "1. same world size (2 ranks): 60 straight vs 40 + resume to 60"
train 2 "$work/a" --set trainer.steps=60 > "$work/a.log" 2>&1 || fail "uninterrupted run"
train 2 "$work/b" --set trainer.steps=40 > "$work/b.log" 2>&1 || fail "run to 40"
train 2 "$work/b" --set trainer.steps=60 --resume "$work/b" > "$work/b2.log" 2>&1 || fail "resume: $(tail -3 "$work/b2.log")"
grep -q "resumed from .*step-00000040" "$work/b2.log" || fail "did not resume from step 40"
losses_agree "$work/a/metrics.jsonl" "$work/b/metrics.jsonl" 41 60 0
tensors_equal "$work/a/ckpt/step-00000060/manifest.pbtxt" "$work/b/ckpt/step-00000060/manifest.pbtxt"

echo "2. a SIGTERM to one rank: all stop at the same step, save, exit 0; the resume is exact"
train 2 "$work/s" --set trainer.steps=1000000 --set trainer.checkpoint_every=0 > "$work/s.log" 2>&1 &
job=$!
for _ in $(seq 1 300); do
  [ -f "$work/s/metrics.jsonl" ] && [ "$(wc -l < "$work/s/metrics.jsonl")" -ge 30 ] && break; sleep 0.1
done
victim=$(pgrep -f "dsk train .*$work/s" | while read -r p; do [ "$(cat /proc/$p/comm)" = dsk ] && echo "$p"; done | tail -n 1)
[ -n "$victim" ] || fail "no rank to signal"
kill -TERM "$victim"
wait $job || fail "signalled run exited $? (want 0): $(tail -3 "$work/s.log")"
stop=$(sed -n 's/.*stopped at step \([0-9]*\).*/\1/p' "$work/s.log")
[ -n "$stop" ] || fail "no 'stopped at step' line"
[ "$(cat "$work/s/ckpt/latest")" = "$(printf 'step-%08d' "$stop")" ] || fail "latest is not the stop step $stop"
echo "  stopped at step $stop"
train 2 "$work/s" --set trainer.steps=$((stop + 15)) --resume "$work/s" > "$work/s2.log" 2>&1 || fail "resume after the signal"
train 2 "$work/c" --set trainer.steps=$((stop + 15)) --set trainer.checkpoint_every=0 > "$work/c.log" 2>&1 || fail "reference run"
losses_agree "$work/c/metrics.jsonl" "$work/s/metrics.jsonl" $((stop + 1)) $((stop + 15)) 0

echo "3. other world sizes: saved at W=4 (E=4), resumed at W=2, W=1, W=3 (E=3)"
train 4 "$work/w4" --set trainer.steps=60 > "$work/w4.log" 2>&1 || fail "W=4 run"
for w in 2 1 3; do
  train $w "$work/r$w" --set trainer.steps=60 --resume "$work/w4/ckpt/step-00000040" > "$work/r$w.log" 2>&1 ||
    fail "resume at W=$w: $(tail -3 "$work/r$w.log")"
  losses_agree "$work/w4/metrics.jsonl" "$work/r$w/metrics.jsonl" 41 60 1e-5
  # Resuming at the saved step trains nothing and saves again under the new layout.
  train $w "$work/re$w" --set trainer.steps=40 --resume "$work/w4/ckpt/step-00000040" > "$work/re$w.log" 2>&1 ||
    fail "reshard at W=$w"
  tensors_equal "$work/w4/ckpt/step-00000040/manifest.pbtxt" "$work/re$w/ckpt/step-00000040/manifest.pbtxt"
done

echo "4. a rank killed (SIGKILL) in the middle of a save"
train 2 "$work/k" --set trainer.steps=20 > "$work/k.log" 2>&1 || fail "run to 20"
DSK_TEST_PAUSE_IN_SAVE_RANK=1 "$mpiexec" -np 2 -x DSK_TEST_PAUSE_IN_SAVE_RANK "$dsk" train "${base[@]}" \
  --out "$work/k" --set trainer.steps=40 --resume "$work/k" > "$work/k2.log" 2>&1 &
job=$!
for _ in $(seq 1 300); do [ -d "$work/k/ckpt/.tmp-step-00000040" ] && break; sleep 0.1; done
sleep 1
victim=$(pgrep -f "dsk train .*$work/k" | while read -r p; do [ "$(cat /proc/$p/comm)" = dsk ] && echo "$p"; done | tail -n 1)
[ -n "$victim" ] || fail "no rank to kill"
kill -KILL "$victim"
wait $job && fail "the killed job exited 0"
[ "$(cat "$work/k/ckpt/latest")" = "step-00000020" ] || fail "latest moved: $(cat "$work/k/ckpt/latest")"
[ -d "$work/k/ckpt/.tmp-step-00000040" ] || fail "expected the half-written .tmp directory"
"$dsk" ckpt inspect "$work/k" > /dev/null || fail "step 20 is no longer valid"
train 2 "$work/k" --set trainer.steps=40 --resume "$work/k" > "$work/k3.log" 2>&1 || fail "resume after the kill"
[ ! -d "$work/k/ckpt/.tmp-step-00000040" ] || fail "the half-written directory was not cleaned up"
[ "$(cat "$work/k/ckpt/latest")" = "step-00000040" ] || fail "latest after the resumed save"
echo "  previous checkpoint intact, half-written save ignored and removed, resume fine"

echo "5. validation: one line naming the file and tensor, exit 2, nothing overwritten"
expect_error() {  # name pattern dir [extra args]
  local name=$1 pattern=$2 dir=$3; shift 3
  local before; before=$(find "$dir" -type f -exec md5sum {} + | sort)
  "$dsk" train "${base[@]}" --set trainer.steps=60 --out "$work/v_$name" --resume "$dir" "$@" \
    > "$work/v_$name.out" 2> "$work/v_$name.err"
  local rc=$?
  [ $rc -eq 2 ] || fail "$name: exit $rc (want 2): $(cat "$work/v_$name.err")"
  [ "$(wc -l < "$work/v_$name.err")" -eq 1 ] || fail "$name: stderr is not one line: $(cat "$work/v_$name.err")"
  grep -q -- "$pattern" "$work/v_$name.err" || fail "$name: '$pattern' not in: $(cat "$work/v_$name.err")"
  [ "$before" = "$(find "$dir" -type f -exec md5sum {} + | sort)" ] || fail "$name: the checkpoint was modified"
  echo "  $name: $(cat "$work/v_$name.err")"
}
fresh() {  # name -> a private copy of a good checkpoint
  rm -rf "$work/bad_$1"; cp -r "$work/a/ckpt/step-00000040" "$work/bad_$1"; echo "$work/bad_$1"
}
d=$(fresh missing); rm "$d/shard-00001.safetensors"
expect_error missing_shard "shard-00001.safetensors: shard file is missing" "$d"
d=$(fresh shape); python3 - "$d/manifest.pbtxt" <<'PY'
import re, sys; p = sys.argv[1]; t = open(p).read()
t = re.sub(r'(name: "towers.layer0.weight"\s*file: "[^"]+"\s*shape: )(\d+)', lambda m: m.group(1) + str(int(m.group(2)) + 1), t, 1)
open(p, "w").write(t)
PY
expect_error wrong_shape "tensor 'towers.layer0.weight' has shape" "$d"
d=$(fresh dtype); python3 - "$d/manifest.pbtxt" <<'PY'
import re, sys; p = sys.argv[1]; t = open(p).read()
t = re.sub(r'(name: "towers.layer0.bias".*?dtype: )"F32"', r'\1"F64"', t, 1, re.S)
open(p, "w").write(t)
PY
expect_error wrong_dtype "tensor 'towers.layer0.bias' has dtype F32 but the manifest says F64" "$d"
d=$(fresh checksum); python3 - "$d/shard-00000.safetensors" <<'PY'
import sys; p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[-3] ^= 0xFF; open(p, "wb").write(b)
PY
expect_error checksum "fails its checksum" "$d"
d=$(fresh truncated); truncate -s -100 "$d/shard-00000.safetensors"
expect_error truncated "shard-00000.safetensors" "$d"
expect_error other_model "different model config" "$work/a/ckpt/step-00000040" --set model.num_experts=6
echo "checkpoint test passed"
