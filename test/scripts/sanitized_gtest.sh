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
# -O1 -g1 (line tables only): the optimisation the sanitizers' authors
# recommend, and enough debug information for symbolized reports; the build
# is most of this script's time on two cores.
tc_log "GoogleTest under ASan+UBSan: building in $BUILD"
cmake -S . -B "$BUILD" -DTC_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" >/dev/null
cmake --build "$BUILD" -j2 >/dev/null

# Every test's output, passed or not, is in ctest's LastTest.log: a report
# there fails the run even if its test passed (none should: nothing recovers,
# every report aborts its test).
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

set +e
(cd "$BUILD" && ctest -j2 --output-on-failure)
status=$?
set -e
REPORT='runtime error:|ERROR: (AddressSanitizer|LeakSanitizer)|SUMMARY: [A-Za-z]*Sanitizer'
if grep -q -E "$REPORT" "$BUILD/Testing/Temporary/LastTest.log"; then
  echo "sanitizer reports (from $BUILD/Testing/Temporary/LastTest.log):" >&2
  grep -E "$REPORT" "$BUILD/Testing/Temporary/LastTest.log" >&2
  exit 1
fi
exit "$status"
