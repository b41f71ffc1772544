#!/usr/bin/env bash
# Runs the Catch2 suite and ends with the plain closing line "tests: N passed, N failed".
set -uo pipefail
BUILD=${1:-build}
shift || true
log=$(mktemp)
"$BUILD/bitbench_tests" --durations no "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
# Catch2 v2 summary: "All tests passed (A assertions in T test cases)" or
# "test cases: T | P passed | F failed".
if grep -q "^All tests passed" "$log"; then
  total=$(grep "^All tests passed" "$log" | sed -E 's/.* in ([0-9]+) test case.*/\1/')
  echo "tests: $total passed, 0 failed"
else
  line=$(grep -E "^test cases:" "$log" | tail -1)
  passed=$(echo "$line" | sed -nE 's/.*\| *([0-9]+) passed.*/\1/p')
  failed=$(echo "$line" | sed -nE 's/.*\| *([0-9]+) failed.*/\1/p')
  echo "tests: ${passed:-0} passed, ${failed:-0} failed"
fi
rm -f "$log"
exit $rc
