#!/usr/bin/env bash
# A dead or hung peer must end the job, never hang it. Usage:
#   deadline_test.sh DSK MPIEXEC
# 1. One rank of three stops answering (test hook): the others hit
#    parallel.collective_timeout_s, print one line naming the collective and
#    the rank, and the job exits non-zero.
# 2. One rank of three is killed with SIGKILL mid-training: the job exits
#    non-zero (Open MPI notices the death; the deadline is the backstop).
# `timeout` only guards the test itself against a hang.
set -uo pipefail
dsk=$1; mpiexec=$2
work=$(mktemp -d)
trap 'rm -rf "$work"; kill -9 $(jobs -p) 2>/dev/null' EXIT
config="$(dirname "$0")/../../configs/synthetic.pbtxt"
deadline=3
common=(--config "$config" --set trainer.steps=1000000 --set trainer.log_every=1
        --set parallel.collective_timeout_s=$deadline)

DSK_TEST_STALL_RANK=1 DSK_TEST_STALL_STEP=5 timeout $((deadline + 60)) \
  "$mpiexec" -np 3 -x DSK_TEST_STALL_RANK -x DSK_TEST_STALL_STEP "$dsk" train "${common[@]}" \
  > "$work/stall.out" 2> "$work/stall.err"
rc=$?
if [ $rc -eq 0 ] || [ $rc -eq 124 ]; then echo "FAIL: stalled peer: exit $rc (0 = no error, 124 = hung)"; cat "$work/stall.err"; exit 1; fi
grep -q "dsk: error: all_to_all_v on communicator '.*' (rank [0-9] of 3, world rank [02]): no answer from rank 1 of .*collective_timeout_s" "$work/stall.err" ||
  { echo "FAIL: stalled peer: no deadline message:"; cat "$work/stall.err"; exit 1; }
echo "stalled peer: exit $rc, $(grep -c 'dsk: error' "$work/stall.err") deadline line(s): $(grep -m1 'dsk: error' "$work/stall.err")"

timeout $((deadline + 60)) "$mpiexec" -np 3 "$dsk" train "${common[@]}" --out "$work/kill" \
  > "$work/kill.out" 2> "$work/kill.err" &
job=$!
for _ in $(seq 1 300); do
  [ -f "$work/kill/metrics.jsonl" ] && [ "$(wc -l < "$work/kill/metrics.jsonl")" -ge 5 ] && break
  sleep 0.1
done
victim=$(pgrep -f "dsk train .*$work/kill" | grep -v "^$job\$" | while read -r p; do
  [ "$(cat /proc/$p/comm 2>/dev/null)" = dsk ] && echo "$p"; done | sed -n 2p)
[ -n "$victim" ] || { echo "FAIL: no rank process found to kill"; exit 1; }
kill -9 "$victim"
wait $job
rc=$?
if [ $rc -eq 0 ] || [ $rc -eq 124 ]; then echo "FAIL: killed peer: exit $rc"; cat "$work/kill.err"; exit 1; fi
echo "killed peer: job exit $rc"
echo "deadline test passed"
