#!/usr/bin/env bash
# Packaging test (docs/packaging.md): builds the Debian package with
# `dpkg-buildpackage -us -uc -b` from a copy of the tree, checks what the .deb
# holds and depends on, unpacks it into a private copy of the server, starts a
# throwaway cluster there with the library preloaded and runs the pg_regress
# suite and a JIT-inlined statement against it; and checks META.json (PGXN).
#
# Why `dpkg -x` into a copy of the server rather than `dpkg -i`: the test
# command also runs on developers' machines, where other work uses the system
# PostgreSQL and the files `make install` put there; dpkg -i would take those
# files over and removing the package would delete them. The copy holds
# Debian's server with any traffic_control files removed, so only the
# package's files can make the suite pass. Whether the package's Depends can
# be met is checked by apt-get --simulate, which installs nothing.
#
# Run as root (the server runs as postgres, build dependencies are
# apt-installed). Prints one "ok"/"not ok" line per check (the pg_regress
# tests count one each) and "deb: N passed, M failed"; exits non-zero when a
# check failed.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"

tc_install_dependencies debhelper postgresql-server-dev-all dpkg-dev fakeroot build-essential

PASSED=0
FAILED=0
check() {  # check DESCRIPTION COMMAND...: one ok/not ok line
  local what="$1"
  shift
  if "$@" >/dev/null 2>&1; then
    PASSED=$((PASSED + 1))
    echo "ok - $what"
  else
    FAILED=$((FAILED + 1))
    echo "not ok - $what"
  fi
}
finish() {
  echo "deb: $PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}

WORK="$(mktemp -d /tmp/tc_deb.XXXXXX)"
chmod 755 "$WORK"
PACKAGE=postgresql-15-traffic-control
cleanup() { tc_stop_cluster "$WORK/cluster"; }
trap cleanup EXIT

# ---- META.json (PGXN) -----------------------------------------------------
set +e
/usr/bin/python3 "$TC_ROOT/test/integrations/check_meta_json.py" "$TC_ROOT" >"$WORK/meta.log" 2>&1
set -e
cat "$WORK/meta.log"
PASSED=$((PASSED + $(grep -c '^ok - ' "$WORK/meta.log" || true)))
FAILED=$((FAILED + $(grep -c '^not ok - ' "$WORK/meta.log" || true)))
if ! grep -q '^ok - ' "$WORK/meta.log"; then FAILED=$((FAILED + 1)); fi  # crashed

# ---- build -----------------------------------------------------------------
# dpkg-buildpackage writes the .deb to the parent directory and build files
# into the tree, so it builds a copy: the files git tracks plus new ones not
# ignored (no build/ or in-tree objects from other suites; a tracked file
# deleted in the working tree is left out).
mkdir "$WORK/src"
git -C "$TC_ROOT" ls-files -z --cached --others --exclude-standard |
  (cd "$TC_ROOT" && tar --null --ignore-failed-read -T - -cf -) | tar -xf - -C "$WORK/src"
echo "# dpkg-buildpackage -us -uc -b (log: $WORK/build.log)"
set +e
(cd "$WORK/src" && dpkg-buildpackage -us -uc -b) >"$WORK/build.log" 2>&1
build_status=$?
set -e
DEB="$(ls "$WORK"/${PACKAGE}_*_*.deb 2>/dev/null | head -n 1 || true)"
check "dpkg-buildpackage builds $PACKAGE" test "$build_status" -eq 0 -a -n "$DEB"
if [ "$build_status" -ne 0 ] || [ -z "$DEB" ]; then
  tail -n 40 "$WORK/build.log"
  finish
  exit 1
fi

# ---- contents ----------------------------------------------------------------
# What `make install` installs must be in the package: a missing file makes
# CREATE EXTENSION, an upgrade or the JIT fail on the user's server.
dpkg-deb -c "$DEB" | awk '{print $NF}' | sed 's|^\./|/|' >"$WORK/contents"
LIB=/usr/lib/postgresql/15/lib
EXT=/usr/share/postgresql/15/extension
has() { grep -qxF "$1" "$WORK/contents"; }
check "the package holds $LIB/traffic_control.so" has "$LIB/traffic_control.so"
check "the package holds $EXT/traffic_control.control" has "$EXT/traffic_control.control"
for script in "$TC_ROOT"/sql/traffic_control--*.sql; do
  check "the package holds $EXT/$(basename "$script")" has "$EXT/$(basename "$script")"
done
# Bitcode for JIT inlining: one .bc per C source and the llvm-lto index, and
# none for the C++ core (Makefile.pgxs: it is never inlined).
check "the package holds $LIB/bitcode/traffic_control.index.bc" has "$LIB/bitcode/traffic_control.index.bc"
for source in "$TC_ROOT"/src/*.c; do
  bc="$LIB/bitcode/traffic_control/src/$(basename "${source%.c}").bc"
  check "the package holds $bc" has "$bc"
done
check "the package holds no bitcode for the C++ core" \
  bash -c "! grep -q '/bitcode/traffic_control/src/core/' '$WORK/contents'"

# ---- dependencies --------------------------------------------------------------
# ${shlibs:Depends} must bring abseil's shared library (the .so links it) and
# ${postgresql:Depends} the server; apt must be able to satisfy all of them.
depends="$(dpkg-deb -f "$DEB" Depends)"
echo "# Depends: $depends"
check "Depends names postgresql-15" grep -q 'postgresql-15\b' <<<"$depends"
check "Depends names abseil's shared library (shlibs)" grep -q 'libabsl' <<<"$depends"
check "apt-get can install the package's dependencies (simulated)" \
  apt-get install --simulate --no-install-recommends "$DEB"

# ---- the package on a server -------------------------------------------------
# A private copy of Debian's server, the one the package is built for (its
# paths; the build is relocatable), without traffic_control, and the package
# unpacked over it.
ROOT="$WORK/root"
mkdir -p "$ROOT/usr/lib/postgresql" "$ROOT/usr/share/postgresql"
cp -a /usr/lib/postgresql/15 "$ROOT/usr/lib/postgresql/"
cp -a /usr/share/postgresql/15 "$ROOT/usr/share/postgresql/"
rm -rf "$ROOT$LIB/traffic_control.so" "$ROOT$LIB/bitcode/traffic_control" \
  "$ROOT$LIB/bitcode/traffic_control.index.bc" "$ROOT$EXT"/traffic_control[.-]*
dpkg-deb -x "$DEB" "$ROOT"
chmod -R a+rX "$ROOT"
PG_BINDIR="$ROOT/usr/lib/postgresql/15/bin"
check "the server copy's pg_config points into the copy" \
  test "$("$PG_BINDIR/pg_config" --pkglibdir)" = "$ROOT$LIB"

tc_start_cluster "$WORK/cluster" "$TC_ROOT/regress/test.conf"

# The project's pg_regress suite, with run_all.sh's options.
PGXS_SRC="$ROOT$LIB/pgxs/src"
mkdir -p "$WORK/regress"
set +e
(cd "$TC_ROOT" && "$PGXS_SRC/test/regress/pg_regress" --bindir="$PG_BINDIR" --inputdir=regress \
  --outputdir="$WORK/regress" --schedule=regress/schedule --dbname=contrib_regression \
  --host="$PGHOST" --port="$PGPORT" --user=postgres) >"$WORK/regress.log" 2>&1
regress_status=$?
set -e
cat "$WORK/regress.log"
regress_ok=$(grep -cE '\.\.\. ok( |$)' "$WORK/regress.log" || true)
regress_failed=$(grep -cE '\.\.\. FAILED|\.\.\. failed' "$WORK/regress.log" || true)
PASSED=$((PASSED + regress_ok))
FAILED=$((FAILED + regress_failed))
if [ "$regress_status" -ne 0 ] && [ "$regress_failed" -eq 0 ]; then FAILED=$((FAILED + 1)); fi
if [ "$regress_status" -ne 0 ] && [ -f "$WORK/regress/regression.diffs" ]; then
  head -n 100 "$WORK/regress/regression.diffs"
fi

# JIT with inlining calls one of the library's functions in a compiled
# expression, so the server loads bitcode/traffic_control.index.bc: an empty
# or corrupt index (the old Makefile.pgxs touched empty .bc files) ends the
# backend with "failed to load summary"; a missing one means no inlining.
PSQL=("$PG_BINDIR/psql" -X -v ON_ERROR_STOP=1 -d postgres -At)
JIT_OPTIONS="-c jit=on -c jit_above_cost=0 -c jit_inline_above_cost=0 -c jit_optimize_above_cost=0"
JIT_QUERY="SELECT traffic_control.unshed('no_such_budget_' || g) FROM generate_series(1, 2) g"
"${PSQL[@]}" -c "CREATE EXTENSION IF NOT EXISTS traffic_control" >/dev/null
check "the server has JIT available (pg_jit_available)" \
  test "$("${PSQL[@]}" -c "SELECT pg_jit_available()")" = t
check "a JIT-inlined statement calling the library runs" \
  env PGOPTIONS="$JIT_OPTIONS" "${PSQL[@]}" -c "$JIT_QUERY"
PGOPTIONS="$JIT_OPTIONS" "${PSQL[@]}" -c "EXPLAIN (ANALYZE, FORMAT JSON) $JIT_QUERY" >"$WORK/jit_explain.json" 2>&1 || true
# Without this the check above proves nothing: it shows the statement went
# through the inliner (JIT available, the cost settings taken).
check "its plan was JIT-compiled with inlining" \
  /usr/bin/python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))[0]["JIT"]["Options"]["Inlining"] else 1)' \
  "$WORK/jit_explain.json"

if [ "$FAILED" -ne 0 ]; then
  echo "# server log (last 30 lines):"
  tail -n 30 "$WORK/cluster/server.log" | sed 's/^/# /' || true
fi
cleanup
trap - EXIT
if [ "$FAILED" -eq 0 ]; then rm -rf "$WORK"; else echo "# work directory kept: $WORK"; fi
finish
