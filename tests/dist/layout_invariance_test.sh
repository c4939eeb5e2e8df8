#!/usr/bin/env bash
# Trains the same job through `dsk train` under several layouts W = E x D and
# checks that every step's loss (metrics.jsonl) and the final evaluation agree
# with the one-process run. Usage: layout_invariance_test.sh DSK MPIEXEC [MPI FLAGS...]
# Extra MPI flags (e.g. a two-"node" host list) are passed to every mpiexec.
set -euo pipefail
dsk=$1; mpiexec=$2; shift 2
mpi_flags=("$@")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

base=(--config "$(dirname "$0")/../../configs/synthetic.pbtxt"
      --set trainer.steps=30 --set trainer.global_batch_size=40 --set trainer.seed=5
      --set trainer.log_every=1 --set model.num_experts=8 --set model.gate.k=2
      --set data.synthetic.train_size=400 --set data.synthetic.test_size=103)

run() {  # name world expert_parallel [extra --set ...]
  local name=$1 world=$2 e=$3; shift 3
  if [ "$world" -eq 1 ]; then
    "$dsk" train "${base[@]}" --set parallel.expert_parallel_size="$e" "$@" --out "$work/$name" > "$work/$name.log" 2>&1
  else
    "$mpiexec" -np "$world" "${mpi_flags[@]}" "$dsk" train "${base[@]}" \
      --set parallel.expert_parallel_size="$e" "$@" --out "$work/$name" > "$work/$name.log" 2>&1
  fi || { echo "FAIL: run $name exited non-zero:"; tail -20 "$work/$name.log"; exit 1; }
}

compare() {  # reference candidate loss_rtol eval_rtol
  python3 - "$work/$1/metrics.jsonl" "$work/$2/metrics.jsonl" "$3" "$4" "$2" <<'PY'
import json, sys
ref_path, cand_path, loss_rtol, eval_rtol, name = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
def load(path):
    steps, evals = {}, []
    for line in open(path):
        r = json.loads(line)
        if "split" in r: evals.append(r)
        else: steps[r["step"]] = r
    return steps, evals
rs, re_ = load(ref_path); cs, ce = load(cand_path)
assert sorted(rs) == sorted(cs) and rs, f"{name}: logged steps differ"
worst = 0.0
for s in rs:
    a, b = rs[s]["loss"], cs[s]["loss"]
    rel = abs(a - b) / max(abs(a), 1e-12)
    worst = max(worst, rel)
    assert rel <= loss_rtol, f"{name}: step {s} loss {b!r} vs one process {a!r} (rel {rel:.3g})"
assert len(re_) == len(ce) and re_, f"{name}: evaluations differ"
for a, b in zip(re_, ce):
    assert a["examples"] == b["examples"], f"{name}: eval counted {b['examples']} examples, one process {a['examples']}"
    for x, y in zip(a["task_losses"], b["task_losses"]):
        assert abs(x - y) <= eval_rtol * max(abs(x), 1e-12), f"{name}: eval task loss {y!r} vs {x!r}"
print(f"{name}: {len(rs)} steps agree with W=1 (worst relative loss difference {worst:.2e})")
PY
}

run w1 1 0
run w2_e2 2 2
run w4_e4 4 4
run w4_e2 4 2
run w4_e1 4 1
run w3_e3 3 3
grep -q "rank 2 (expert rank 2, replica 0) owns experts 6-7" "$work/w3_e3.log" ||
  { echo "FAIL: W=3 placement is not 3,3,2:"; grep owns "$work/w3_e3.log"; exit 1; }
for name in w2_e2 w4_e4 w4_e2 w4_e1 w3_e3; do compare w1 "$name" 1e-4 1e-4; done

# 41 examples, global batch 10, 4 ranks: uneven slices (3,3,2,2), an epoch
# boundary inside a batch, and an evaluation that counts every example once.
small=(--set data.synthetic.train_size=41 --set data.synthetic.test_size=41 --set trainer.global_batch_size=10
       --set trainer.steps=12 --set trainer.eval_every=6)
run small_w1 1 0 "${small[@]}"
run small_w4 4 0 "${small[@]}"
compare small_w1 small_w4 1e-4 1e-5
echo "layout invariance: all layouts agree"
