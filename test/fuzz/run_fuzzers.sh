#!/usr/bin/env bash
# Builds the libFuzzer targets of test/fuzz (clang-14, ASan+UBSan, in
# build/fuzz) and runs each for a while on a copy of its seed corpus
# (docs/testing.md#fuzzing). One line per target: executions, coverage,
# findings. Exits non-zero when any target finds a crash, a leak, a timeout or
# an out-of-memory, leaving the input that caused it under
# build/fuzz/artifacts/run-<time>-<pid>/<target>/ (the path is printed).
#
#   test/fuzz/run_fuzzers.sh [--seconds N] [--jobs N] [TARGET...]
#
#   --seconds N  how long each target runs (default 45)
#   --jobs N     how many targets run at once (default 1; each takes a core)
#   TARGET       sqlcommenter, config, ruleset, capi (default: all of them)
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$TC_ROOT"

FUZZ_SECONDS=45
JOBS=1
TARGETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) FUZZ_SECONDS="$2"; shift 2 ;;
    --jobs) JOBS="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) TARGETS+=("$1"); shift ;;
  esac
done
if [ "${#TARGETS[@]}" -eq 0 ]; then
  for source in test/fuzz/*_fuzz.cpp; do
    name="$(basename "$source" _fuzz.cpp)"
    TARGETS+=("$name")
  done
fi

BUILD=build/fuzz
CXX_COMPILER="${TC_FUZZ_CXX:-clang++-14}"
if ! command -v "$CXX_COMPILER" >/dev/null; then
  echo "$CXX_COMPILER not found: apt-get install clang-14 libfuzzer-14-dev" >&2
  exit 1
fi
tc_log "fuzzing: building ${TARGETS[*]} in $BUILD"
cmake -S . -B "$BUILD" -DCMAKE_CXX_COMPILER="$CXX_COMPILER" -DTC_BUILD_FUZZERS=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD" -j2 --target "${TARGETS[@]/%/_fuzz}" >/dev/null

WORK="$(mktemp -d /tmp/tc_fuzz.XXXXXX)"
# Findings of this run only, kept after it (build/ is not in git); a run
# beside this one has its own.
ARTIFACTS="$TC_ROOT/$BUILD/artifacts/run-$(date +%Y%m%d-%H%M%S)-$$"
cleanup() {
  rm -rf "$WORK"
  find "$ARTIFACTS" -depth -type d -empty -delete 2>/dev/null || true
}
trap cleanup EXIT
export UBSAN_OPTIONS="print_stacktrace=1"

# Runs one target; its output goes to $WORK/NAME.log, its status to
# $WORK/NAME.status.
run_target() {
  local name="$1" dict artifacts
  # A copy: libFuzzer adds every new input to its first corpus directory, and
  # the committed seeds must stay as they are.
  cp -r "test/fuzz/corpus/$name" "$WORK/corpus-$name"
  artifacts="$ARTIFACTS/$name"
  mkdir -p "$artifacts"
  case "$name" in
    sqlcommenter) dict=test/fuzz/dict/sqlcommenter.dict ;;
    ruleset) cat test/fuzz/dict/config.dict test/fuzz/dict/sqlcommenter.dict >"$WORK/ruleset.dict"
             dict="$WORK/ruleset.dict" ;;
    *) dict=test/fuzz/dict/config.dict ;;
  esac
  set +e
  "$BUILD/${name}_fuzz" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 \
    -max_len=8192 -print_final_stats=1 -dict="$dict" -artifact_prefix="$artifacts/" \
    "$WORK/corpus-$name" >"$WORK/$name.log" 2>&1
  echo $? >"$WORK/$name.status"
  set -e
}

tc_log "fuzzing: ${#TARGETS[@]} targets, $FUZZ_SECONDS s each, $JOBS at a time"
running=0
for name in "${TARGETS[@]}"; do
  if [ ! -d "test/fuzz/corpus/$name" ]; then
    echo "no target $name (test/fuzz/${name}_fuzz.cpp, test/fuzz/corpus/$name)" >&2
    exit 2
  fi
  run_target "$name" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then
    wait -n
    running=$((running - 1))
  fi
done
wait

passed=0
failed=0
for name in "${TARGETS[@]}"; do
  log="$WORK/$name.log"
  status="$(cat "$WORK/$name.status")"
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  # The last status line ("#N DONE cov: C ft: F corp: K/S ...", or the last
  # NEW/pulse line of a run that stopped early).
  # (None when the first seed crashed.)
  last="$(grep -E '^#[0-9]+.* cov: ' "$log" | tail -n 1 || true)"
  cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")"
  ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")"
  corp="$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")"
  seeds="$(find "test/fuzz/corpus/$name" -type f | wc -l)"
  findings=("$ARTIFACTS/$name"/*)
  if [ ! -e "${findings[0]}" ]; then findings=(); fi
  printf '%-13s %10s runs, cov %5s, ft %6s, corpus %3s seeds -> %5s, findings %d\n' \
    "$name" "${runs:-?}" "${cov:-?}" "${ft:-?}" "$seeds" "${corp:-?}" "${#findings[@]}"
  if [ "$status" -ne 0 ] || [ "${#findings[@]}" -ne 0 ]; then
    failed=$((failed + 1))
    echo "---- $name: exit status $status; the end of its output:"
    grep -v -E '^#[0-9]+' "$log" | tail -n 60
    for finding in "${findings[@]}"; do
      echo "FINDING: $finding  (replay: $BUILD/${name}_fuzz $finding)"
    done
  else
    passed=$((passed + 1))
  fi
done
echo "fuzzing: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
