#!/usr/bin/env bash
# The test command (README): installs the Debian packages it needs, builds the
# core and the extension, and runs every suite: GoogleTest (ctest), the same
# under ASan+UBSan, the libFuzzer targets for a short while, pg_regress
# and isolation specs on a throwaway cluster with the library preloaded, the
# TAP tests (terminate, disconnect, crash-restart, a streaming standby), the
# client-driver tests, the Prometheus exporter test, the PgBouncer test, chaos
# and the packaging test (Debian package, META.json).
# Run it as root on a fresh Debian 12 machine, or as a user who can already
# build and who owns a writable PostgreSQL install.
set -euo pipefail
source "$(dirname "$0")/scripts/lib.sh"
cd "$TC_ROOT"

# The client-driver tests need psycopg 3 (Debian's python3-psycopg, for Debian's
# /usr/bin/python3) and Node.js with npm; Node may already be installed from
# elsewhere, so Debian's nodejs and npm are only added when it is not. The
# Prometheus integration test runs Debian's prometheus-postgres-exporter, the
# PgBouncer one Debian's pgbouncer.
CLIENT_PACKAGES=(python3-psycopg prometheus-postgres-exporter pgbouncer)
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  CLIENT_PACKAGES+=(nodejs npm)
fi
tc_install_dependencies "${CLIENT_PACKAGES[@]}"

PASSED=0
FAILED=0
FAILED_SUITES=()
record() {  # record SUITE PASSED FAILED
  PASSED=$((PASSED + $2))
  FAILED=$((FAILED + $3))
  if [ "$3" -ne 0 ]; then FAILED_SUITES+=("$1"); fi
  echo "$1: $2 passed, $3 failed"
}

# record_summary SUITE STATUS LOG: records a suite from its closing line in LOG,
# "SUITE: N passed, M failed" (or "N checks passed"); an exit status that is
# not 0 with no failure counted, or no check counted at all, is one failure.
record_summary() {
  local pattern="^$1: ([0-9]+) (checks )?passed, ([0-9]+) failed\$" passed failed
  passed=$(sed -En "s/$pattern/\1/p" "$3" | tail -n 1)
  failed=$(sed -En "s/$pattern/\3/p" "$3" | tail -n 1)
  passed=${passed:-0}
  failed=${failed:-0}
  if [ "$2" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
  if [ "$passed" -eq 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
  record "$1" "$passed" "$failed"
}

# run_and_record SUITE COMMAND...: runs a suite script that closes with
# "SUITE: N passed, M failed", shows its output and records it.
run_and_record() {
  local status
  set +e
  "${@:2}" 2>&1 | tee "$WORK/$1.log"
  status=${PIPESTATUS[0]}
  set -e
  record_summary "$1" "$status" "$WORK/$1.log"
}

WORK="$(mktemp -d /tmp/tc_test.XXXXXX)"
chmod 755 "$WORK"
cleanup() { tc_stop_cluster "$WORK/cluster"; }
trap cleanup EXIT

# ---- GoogleTest ----------------------------------------------------------
tc_log "GoogleTest: building the core with CMake"
cmake -S . -B build/core -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build/core -j2 >/dev/null
set +e
(cd build/core && ctest -j2 --output-on-failure) | tee "$WORK/ctest.log" | tail -n 25
set -e
record_ctest() {  # record_ctest SUITE LOG: from ctest's "N tests failed out of M"
  local total failed
  total=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\2/p' "$2")
  failed=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\1/p' "$2")
  record "$1" "$(( ${total:-0} - ${failed:-0} ))" "${failed:-1}"
}
record_ctest "GoogleTest" "$WORK/ctest.log"

# ---- GoogleTest under ASan+UBSan (docs/testing.md#sanitizers) -------------
# The same suite, core included, built with gcc's AddressSanitizer and
# UndefinedBehaviorSanitizer in build/sanitize; any report fails its test.
tc_log "GoogleTest under ASan+UBSan"
set +e
test/scripts/sanitized_gtest.sh >"$WORK/sanitize.log" 2>&1
sanitize_status=$?
set -e
grep -v -E '^ *(Start +[0-9]+:|[0-9]+/[0-9]+ Test +#[0-9]+: .* Passed)' "$WORK/sanitize.log" | tail -n 60
record_ctest "GoogleTest-ASan+UBSan" "$WORK/sanitize.log"
# A failed build has no ctest line and counts as one failure (record_ctest);
# a sanitizer report that failed no test (sanitized_gtest.sh checks) as another.
if [ "$sanitize_status" -ne 0 ] && grep -q ' 0 tests failed out of' "$WORK/sanitize.log"; then
  record "GoogleTest-ASan+UBSan-reports" 0 1
fi

# ---- fuzzing (docs/testing.md#fuzzing) ------------------------------------
# Each libFuzzer target of test/fuzz for TC_FUZZ_SECONDS on a copy of its
# seeds, two at a time (a core each: nothing else runs now); a crash, leak,
# timeout or broken invariant fails it (the input is kept in
# build/fuzz/artifacts/). One result per target.
FUZZ_SECONDS="${TC_FUZZ_SECONDS:-30}"
tc_log "fuzzing ($FUZZ_SECONDS s per target)"
set +e
test/fuzz/run_fuzzers.sh --seconds "$FUZZ_SECONDS" --jobs 2 >"$WORK/fuzz.log" 2>&1
fuzz_status=$?
set -e
cat "$WORK/fuzz.log"
fuzz_passed=$(sed -n 's/^fuzzing: \([0-9]*\) passed, \([0-9]*\) failed$/\1/p' "$WORK/fuzz.log")
fuzz_failed=$(sed -n 's/^fuzzing: \([0-9]*\) passed, \([0-9]*\) failed$/\2/p' "$WORK/fuzz.log")
fuzz_passed=${fuzz_passed:-0}
fuzz_failed=${fuzz_failed:-0}
if [ "$fuzz_status" -ne 0 ] && [ "$fuzz_failed" -eq 0 ]; then fuzz_failed=1; fi  # build failed
record "fuzzing" "$fuzz_passed" "$fuzz_failed"

# ---- the extension, a cluster --------------------------------------------
tc_build_and_install
tc_log "starting a throwaway cluster in $WORK/cluster"
tc_start_cluster "$WORK/cluster" "$TC_ROOT/regress/test.conf"

PGXS_SRC="$(dirname "$(pg_config --pgxs)")/.."

# Count pg_regress-style results ("ok"/"FAILED" lines) from a log.
count_results() {  # count_results SUITE LOG
  local ok failed
  ok=$(grep -cE '\.\.\. ok( |$)' "$2" || true)
  failed=$(grep -cE '\.\.\. FAILED|\.\.\. failed' "$2" || true)
  record "$1" "$ok" "$failed"
}

tc_log "pg_regress"
mkdir -p "$WORK/regress"
set +e
"$PGXS_SRC/test/regress/pg_regress" --bindir="$PG_BINDIR" --inputdir=regress \
  --outputdir="$WORK/regress" --schedule=regress/schedule --dbname=contrib_regression \
  --host="$PGHOST" --port="$PGPORT" --user=postgres >"$WORK/regress.log" 2>&1
regress_status=$?
set -e
cat "$WORK/regress.log"
count_results "pg_regress" "$WORK/regress.log"
if [ $regress_status -ne 0 ] && [ -f "$WORK/regress/regression.diffs" ]; then
  cat "$WORK/regress/regression.diffs"
fi

tc_log "isolation"
mkdir -p "$WORK/isolation"
set +e
"$PGXS_SRC/test/isolation/pg_isolation_regress" --bindir="$PG_BINDIR" --inputdir=regress \
  --outputdir="$WORK/isolation" --schedule=regress/isolation_schedule \
  --dbname=isolation_regression --host="$PGHOST" --port="$PGPORT" --user=postgres \
  >"$WORK/isolation.log" 2>&1
isolation_status=$?
set -e
cat "$WORK/isolation.log"
count_results "isolation" "$WORK/isolation.log"
if [ $isolation_status -ne 0 ] && [ -f "$WORK/isolation/regression.diffs" ]; then
  cat "$WORK/isolation/regression.diffs"
fi

# ---- client drivers: node-postgres and psycopg 3 on the same cluster -------
# They read the cluster from PGHOST/PGPORT/PGUSER (set by tc_start_cluster).
export PGDATABASE=postgres
tc_log "client drivers: node-postgres (node --test)"
set +e
(cd test/clients/node && npm ci --no-audit --no-fund --loglevel=error && node --test) \
  >"$WORK/node.log" 2>&1
node_status=$?
set -e
cat "$WORK/node.log"
# TAP reporter ("# pass N"), or the spec reporter of newer Node ("ℹ pass N").
node_pass=$(sed -n 's/^\(# \|ℹ \)pass \([0-9][0-9]*\)$/\2/p' "$WORK/node.log" | tail -n 1)
node_fail=$(sed -n 's/^\(# \|ℹ \)fail \([0-9][0-9]*\)$/\2/p' "$WORK/node.log" | tail -n 1)
node_pass=${node_pass:-0}
node_fail=${node_fail:-0}
if [ $node_status -ne 0 ] && [ "$node_fail" -eq 0 ]; then node_fail=1; fi  # npm ci or node failed
if [ "$node_pass" -eq 0 ] && [ "$node_fail" -eq 0 ]; then node_fail=1; fi  # no test ran
record "node-postgres" "$node_pass" "$node_fail"

tc_log "client drivers: psycopg 3 (python3 -m unittest)"
set +e
(cd test/clients/python && /usr/bin/python3 -m unittest -v) >"$WORK/psycopg.log" 2>&1
psycopg_status=$?
set -e
cat "$WORK/psycopg.log"
py_ran=$(sed -n 's/^Ran \([0-9][0-9]*\) tests\{0,1\} in .*/\1/p' "$WORK/psycopg.log" | tail -n 1)
py_failures=$(sed -n 's/^FAILED (.*failures=\([0-9][0-9]*\).*/\1/p' "$WORK/psycopg.log" | tail -n 1)
py_errors=$(sed -n 's/^FAILED (.*errors=\([0-9][0-9]*\).*/\1/p' "$WORK/psycopg.log" | tail -n 1)
py_ran=${py_ran:-0}
py_failed=$(( ${py_failures:-0} + ${py_errors:-0} ))
py_passed=$(( py_ran - py_failed ))
if [ "$py_passed" -lt 0 ]; then py_passed=0; fi
if [ $psycopg_status -ne 0 ] && [ "$py_failed" -eq 0 ]; then py_failed=1; fi  # crashed
if [ "$py_ran" -eq 0 ] && [ "$py_failed" -eq 0 ]; then py_failed=1; fi      # no test ran
record "psycopg" "$py_passed" "$py_failed"

if [ $regress_status -ne 0 ] || [ $isolation_status -ne 0 ] || [ $node_status -ne 0 ] ||
   [ $psycopg_status -ne 0 ]; then
  tc_log "server log (last 60 lines)"
  tail -n 60 "$WORK/cluster/server.log" || true
fi
tc_stop_cluster "$WORK/cluster"

# ---- Prometheus: postgres_exporter with the query file, the Grafana dashboard
# (test/integrations/exporter_test.sh, docs/operations.md). Its own cluster:
# it checks exact counter values, which other suites' statements would change.
tc_log "Prometheus exporter and Grafana dashboard"
run_and_record exporter test/integrations/exporter_test.sh

# ---- PgBouncer in transaction pooling mode (test/integrations/
# pgbouncer_test.sh, docs/operations.md): tags, slots and application_name
# over pooled server connections. Its own cluster, for exact counter values.
tc_log "PgBouncer (transaction pooling)"
run_and_record pgbouncer test/integrations/pgbouncer_test.sh

# ---- reconnect storm (test/stress/reconnect_test.sh, docs/testing.md) ------
# 32 pgbench clients reconnecting for every transaction on budgets with
# cpu_priority and max_duration_ms: backends end while a priority restore
# lingers; none may crash, no slot may stay held. Its own cluster, ~15 s.
tc_log "reconnect storm"
run_and_record reconnect test/stress/reconnect_test.sh

# ---- TAP: error paths that end a backend or the server -------------------
# (and regress/t/007_standby.pl: a primary and a streaming hot standby)
# A cgroup with a CPU quota of half a core, which the postgres user may move
# a postmaster into (005_cpu_quota.pl; skipped where none can be made).
prepare_cpu_cgroup() {
  local dir
  if [ "$(id -u)" -ne 0 ]; then return; fi
  if [ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
    dir=/sys/fs/cgroup/cpu/traffic_control_tap
    mkdir -p "$dir" && echo 50000 >"$dir/cpu.cfs_quota_us" && echo 100000 >"$dir/cpu.cfs_period_us" || return 0
  elif grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
    dir=/sys/fs/cgroup/traffic_control_tap
    mkdir -p "$dir" && echo "50000 100000" >"$dir/cpu.max" || return 0
  else
    return 0
  fi
  chown postgres "$dir/cgroup.procs" && export TC_TEST_CPU_CGROUP="$dir"
}
remove_cpu_cgroup() {
  if [ -n "${TC_TEST_CPU_CGROUP:-}" ]; then rmdir "$TC_TEST_CPU_CGROUP" 2>/dev/null || true; fi
}
if ls regress/t/*.pl >/dev/null 2>&1; then
  prepare_cpu_cgroup || true
  tc_log "TAP tests (prove)"
  cp -r regress/t "$WORK/tap"
  chown -R postgres:postgres "$WORK/tap" 2>/dev/null || true
  set +e
  (cd "$WORK/tap" && tc_as_postgres env PATH="$PG_BINDIR:$PATH" \
    PERL5LIB="$PGXS_SRC/test/perl" PG_REGRESS="$PGXS_SRC/test/regress/pg_regress" \
    TESTDIR="$WORK/tap" TESTDATADIR="$WORK/tap/tmp_check" TESTLOGDIR="$WORK/tap/tmp_check/log" \
    TC_TEST_CPU_CGROUP="${TC_TEST_CPU_CGROUP:-}" prove -v --ext=.pl .) 2>&1 | tee "$WORK/tap.log"
  set -e
  remove_cpu_cgroup
  tap_failed=$(grep -cE '^not ok' "$WORK/tap.log" || true)
  tap_ok=$(grep -cE '^ok ' "$WORK/tap.log" || true)
  if ! grep -q '^Result: PASS' "$WORK/tap.log"; then tap_failed=$((tap_failed + 1)); fi
  record "TAP" "$tap_ok" "$tap_failed"
fi

# ---- chaos under load (test/chaos/chaos.sh, docs/testing.md) --------------
# 75 s of pgbench and psycopg traffic on enforce budgets with queues while
# backends are cancelled and terminated, statements time out, clients vanish
# and the configuration is reloaded with budgets renamed; then no slot may be
# held, no backend may have crashed and the counters must add up. Its own
# cluster; a random seed (printed, to replay a failure).
tc_log "chaos under load (75 s)"
run_and_record chaos test/chaos/chaos.sh --duration 75

# ---- packaging (test/integrations/deb_test.sh, docs/packaging.md) ---------
# META.json, and the Debian package built with dpkg-buildpackage, unpacked
# into a private copy of the server (the system install is left as it is) and
# run through pg_regress and a JIT-inlined statement. About 70 s.
tc_log "packaging: META.json and the Debian package"
run_and_record deb test/integrations/deb_test.sh

tc_log "summary"
if [ "${#FAILED_SUITES[@]}" -ne 0 ]; then
  echo "failing suites: ${FAILED_SUITES[*]}"
fi
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
