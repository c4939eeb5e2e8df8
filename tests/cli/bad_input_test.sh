#!/usr/bin/env bash
# Bad-input checks of the `dsk` CLI (docs/cli.md): every usage, config or
# data error must exit with code 2 and print exactly one line on stderr,
# `dsk: error: ...`, naming the file (or the --set argument) and the field.
#
#   tests/cli/bad_input_test.sh BUILD/dsk SOURCE_DIR
#
# Environment: MPIEXEC (default mpirun) for the multi-rank cases,
# DSK_FASHION_DIR (default /usr/share/datasets/fashion-mnist) for the
# data cases, CASE_TIMEOUT seconds per case (default 120).
set -u

if [[ $# -lt 2 ]]; then
  echo "usage: $0 PATH/TO/dsk SOURCE_DIR" >&2
  exit 2
fi
DSK=$1
SRC=$2
MPIEXEC=${MPIEXEC:-mpirun}
FASHION=${DSK_FASHION_DIR:-/usr/share/datasets/fashion-mnist}
CASE_TIMEOUT=${CASE_TIMEOUT:-120}
SYNTH=$SRC/configs/synthetic.pbtxt
MULTI=$SRC/configs/multifashion.pbtxt

[[ -x $DSK ]] || { echo "bad_input_test: $DSK is not an executable" >&2; exit 2; }
[[ -f $SYNTH ]] || { echo "bad_input_test: $SYNTH missing" >&2; exit 2; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/dsk-cli-XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# Open MPI refuses root without these; harmless otherwise.
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1}
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
# A world of one must not think it runs under a launcher when this script
# itself is started by one.
unset OMPI_COMM_WORLD_SIZE PMI_SIZE MPI_LOCALNRANKS PMIX_RANK SLURM_PROCID SLURM_STEP_NUM_TASKS

passed=0
failed=0
failed_names=()

# Signs of a crash rather than a handled error.
CRASH_RE='terminate called|Segmentation fault|Aborted|core dumped|Exception raised from|Process received signal|Signal: |libc\+\+abi|stack trace|Backtrace|double free|std::bad_alloc'

show() {  # show FILE LABEL: the tail of a captured stream, indented
  echo "    --- $2 (last 15 lines) ---"
  tail -n 15 "$1" | sed 's/^/    | /'
}

# run_case NAME MODE EXPECTED_RC NEEDLE... -- COMMAND...
#   MODE single: stderr must be exactly one line, starting with "dsk: error: ".
#   MODE mpi:    stderr (all ranks and mpirun together) must hold exactly one
#                line starting with "dsk: error: "; mpirun's own banners are
#                allowed. EXPECTED_RC "nonzero" accepts any non-zero code.
#   Every NEEDLE must occur (as a fixed string) in that dsk: error line.
run_case() {
  local name=$1 mode=$2 want_rc=$3
  shift 3
  local needles=()
  while [[ $# -gt 0 && $1 != -- ]]; do needles+=("$1"); shift; done
  shift  # the --
  local out=$TMP/$name.stdout err=$TMP/$name.stderr
  timeout --kill-after=10 "$CASE_TIMEOUT" "$@" >"$out" 2>"$err" </dev/null
  local rc=$?
  local problems=()

  if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    problems+=("hung: killed after ${CASE_TIMEOUT}s (rc $rc)")
  elif [[ $want_rc == nonzero ]]; then
    [[ $rc -ne 0 ]] || problems+=("exit code 0, expected non-zero")
  elif [[ $rc -ne $want_rc ]]; then
    problems+=("exit code $rc, expected $want_rc")
  fi

  local err_lines error_lines line
  err_lines=$(wc -l <"$err")
  # A last line without a newline still counts.
  [[ -s $err && $(tail -c 1 "$err" | od -An -c | tr -d ' ') != '\n' ]] && err_lines=$((err_lines + 1))
  error_lines=$(grep -c '^dsk: error: ' "$err")
  line=$(grep -m 1 '^dsk: error: ' "$err")
  if [[ $mode == single ]]; then
    [[ $err_lines -eq 1 ]] || problems+=("stderr has $err_lines lines, expected exactly 1")
    [[ $(head -n 1 "$err") == "dsk: error: "* ]] || problems+=("stderr does not start with 'dsk: error: '")
  else
    [[ $error_lines -eq 1 ]] || problems+=("stderr has $error_lines 'dsk: error:' lines, expected exactly 1")
  fi
  local needle
  for needle in "${needles[@]}"; do
    [[ $line == *"$needle"* ]] || problems+=("error line does not name '$needle'")
  done
  if grep -Eq "$CRASH_RE" "$out" "$err"; then
    problems+=("output looks like a crash: $(grep -Eh -m 1 "$CRASH_RE" "$out" "$err" | head -n 1)")
  fi

  if [[ ${#problems[@]} -eq 0 ]]; then
    passed=$((passed + 1))
    echo "ok   $name (rc $rc): $line"
  else
    failed=$((failed + 1))
    failed_names+=("$name")
    echo "FAIL $name"
    echo "    command: $*"
    local p
    for p in "${problems[@]}"; do echo "    - $p"; done
    show "$err" stderr
    show "$out" stdout
  fi
  LAST_RC=$rc
}

# --- config files written for the cases --------------------------------------
UNKNOWN_CFG=$TMP/unknown_field.pbtxt
sed 's/^  seed: 1$/  seed: 1\n  bogus_field: 3/' "$SYNTH" >"$UNKNOWN_CFG"
grep -q bogus_field "$UNKNOWN_CFG" || { echo "bad_input_test: could not write $UNKNOWN_CFG" >&2; exit 1; }

BIGK_CFG=$TMP/big_k.pbtxt
sed 's/k: 2/k: 9/' "$SYNTH" >"$BIGK_CFG"
grep -q 'k: 9' "$BIGK_CFG" || { echo "bad_input_test: could not write $BIGK_CFG" >&2; exit 1; }

SYNTAX_CFG=$TMP/syntax_error.pbtxt
printf 'trainer {\n  steps: = 3\n}\n' >"$SYNTAX_CFG"

# A world of one needs no launcher; keep any accidental success short.
FAST=(--set trainer.steps=1)

# (a) unknown field in the config file
run_case a_unknown_field single 2 "$UNKNOWN_CFG" bogus_field -- \
  "$DSK" train --config "$UNKNOWN_CFG" "${FAST[@]}"
# (b) k > num_experts in the config file
run_case b_k_gt_experts single 2 "$BIGK_CFG" model.gate.k -- \
  "$DSK" train --config "$BIGK_CFG" "${FAST[@]}"
# (c) k > num_experts through --set
run_case c_set_k_gt_experts single 2 synthetic.pbtxt model.gate.k -- \
  "$DSK" train --config "$SYNTH" "${FAST[@]}" --set model.gate.k=9

# (d), (e): data files (multifashion config, kept small in case it loads)
DATA_FAST=(--set trainer.steps=1 --set data.train_size=64 --set data.test_size=64 --set trainer.global_batch_size=8)
run_case d_missing_data_dir single 2 /nonexistent/train-images-idx3-ubyte -- \
  "$DSK" train --config "$MULTI" "${DATA_FAST[@]}" --set data.path=/nonexistent
if compgen -G "$FASHION/*.gz" >/dev/null; then
  # (e) train-images holding 100000 of its 47040016 decompressed bytes
  TRUNC=$TMP/truncated-images
  mkdir -p "$TRUNC"
  cp "$FASHION"/*.gz "$TRUNC"/
  gzip -dc "$FASHION/train-images-idx3-ubyte.gz" | head -c 100000 | gzip -1 >"$TRUNC/train-images-idx3-ubyte.gz"
  run_case e_truncated_images single 2 "$TRUNC/train-images-idx3-ubyte" truncated -- \
    "$DSK" train --config "$MULTI" "${DATA_FAST[@]}" --set data.path="$TRUNC"
  # (e2) the gzip stream itself cut short
  TRUNCGZ=$TMP/truncated-gzip
  mkdir -p "$TRUNCGZ"
  cp "$FASHION"/*.gz "$TRUNCGZ"/
  head -c 100000 "$FASHION/train-images-idx3-ubyte.gz" >"$TRUNCGZ/train-images-idx3-ubyte.gz"
  run_case e2_truncated_gzip single 2 "$TRUNCGZ/train-images-idx3-ubyte" -- \
    "$DSK" train --config "$MULTI" "${DATA_FAST[@]}" --set data.path="$TRUNCGZ"
else
  echo "skip e_truncated_images, e2_truncated_gzip: no $FASHION/*.gz"
fi

# (f) unknown --set paths
run_case f_set_unknown_leaf single 2 trainer.nope nope -- \
  "$DSK" train --config "$SYNTH" "${FAST[@]}" --set trainer.nope=1
run_case f2_set_unknown_root single 2 nope.x "'nope'" -- \
  "$DSK" train --config "$SYNTH" "${FAST[@]}" --set nope.x=1
# (g) bad --set value
run_case g_set_bad_value single 2 trainer.steps abc -- \
  "$DSK" train --config "$SYNTH" --set trainer.steps=abc
# (h) missing --config
run_case h_missing_config_flag single 2 --config -- \
  "$DSK" train --set trainer.steps=1
# (i) config file that does not exist
run_case i_config_not_found single 2 "$TMP/no-such-config.pbtxt" -- \
  "$DSK" train --config "$TMP/no-such-config.pbtxt"
# (j) unknown command
run_case j_unknown_command single 2 frobnicate -- \
  "$DSK" frobnicate --config "$SYNTH"
# (k) syntax error: file:line:col
run_case k_syntax_error single 2 "$SYNTAX_CFG:2:" -- \
  "$DSK" train --config "$SYNTAX_CFG"
if [[ ${LAST_RC:-0} -eq 2 ]] && ! grep -Eq "^dsk: error: $SYNTAX_CFG:[0-9]+:[0-9]+: " "$TMP/k_syntax_error.stderr"; then
  echo "FAIL k_syntax_error_position: no FILE:LINE:COL: in $(cat "$TMP/k_syntax_error.stderr")"
  failed=$((failed + 1)); failed_names+=(k_syntax_error_position)
fi

# --- two ranks ------------------------------------------------------------------
if command -v "$MPIEXEC" >/dev/null; then
  MPI=("$MPIEXEC" -np 2 --oversubscribe)
  # (b) under mpirun: a config error every rank sees alike. The ranks agree
  # on it, print one line, and each exits 2; mpirun passes the 2 on.
  run_case b_mpi_k_gt_experts mpi 2 "$BIGK_CFG" model.gate.k -- \
    "${MPI[@]}" "$DSK" train --config "$BIGK_CFG" "${FAST[@]}"
  echo "     mpirun -np 2 returned $LAST_RC when every rank exited 2"
  # (l) an expert-parallel size that does not divide the world of 2
  run_case l_mpi_ep_not_dividing mpi 2 parallel.expert_parallel_size -- \
    "${MPI[@]}" "$DSK" train --config "$SYNTH" "${FAST[@]}" --set parallel.expert_parallel_size=3
  echo "     mpirun -np 2 returned $LAST_RC for parallel.expert_parallel_size=3"
else
  echo "skip b_mpi_k_gt_experts, l_mpi_ep_not_dividing: no $MPIEXEC"
fi

echo "$passed cases passed, $failed failed"
if [[ $failed -ne 0 ]]; then
  echo "failed: ${failed_names[*]}"
  exit 1
fi
