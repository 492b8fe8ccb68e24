#!/usr/bin/env bash
# The GoogleTest suite under AddressSanitizer and UndefinedBehaviorSanitizer
# (docs/testing.md#sanitizers): configures build/sanitize with TC_SANITIZE=ON,
# builds the core and the tests (-j2), runs ctest, and fails on any test
# failure or sanitizer report. Ends with ctest's own summary line.
#
#   test/scripts/sanitized_gtest.sh [BUILD_DIR]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$TC_ROOT"

BUILD="${1:-build/sanitize}"
# -O1: the optimisation the sanitizers' authors recommend; -O2 builds much
# slower under ASan on two cores and finds nothing more.
tc_log "GoogleTest under ASan+UBSan: building in $BUILD"
cmake -S . -B "$BUILD" -DTC_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" >/dev/null
cmake --build "$BUILD" -j2 >/dev/null

# Each report also goes to a file of its own under REPORTS, so that one cannot
# hide in the output of a test that passed anyway (none should: nothing
# recovers, every report aborts its test).
REPORTS="$(mktemp -d /tmp/tc_sanitize.XXXXXX)"
trap 'rm -rf "$REPORTS"' EXIT
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1:log_path=$REPORTS/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$REPORTS/ubsan"

set +e
(cd "$BUILD" && ctest -j2 --output-on-failure)
status=$?
set -e
if compgen -G "$REPORTS/*" >/dev/null; then
  echo "sanitizer reports:" >&2
  for report in "$REPORTS"/*; do
    echo "---- $report" >&2
    cat "$report" >&2
  done
  exit 1
fi
exit "$status"
