#!/usr/bin/env bash
# Runs the Catch2 suite, then the real-Slurm test, and ends with the plain closing line
# "tests: N passed, N failed" (Catch2 test cases + the Slurm test).
set -uo pipefail
BUILD=${1:-build}
shift || true
log=$(mktemp)
"$BUILD/bitbench_tests" --durations no "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
# Catch2 v2 summary: "All tests passed (A assertions in T test cases)" or
# "test cases: T | P passed | F failed".
if grep -q "^All tests passed" "$log"; then
  passed=$(grep "^All tests passed" "$log" | sed -E 's/.* in ([0-9]+) test case.*/\1/')
  failed=0
else
  line=$(grep -E "^test cases:" "$log" | tail -1)
  passed=$(echo "$line" | sed -nE 's/.*\| *([0-9]+) passed.*/\1/p')
  failed=$(echo "$line" | sed -nE 's/.*\| *([0-9]+) failed.*/\1/p')
  passed=${passed:-0}
  failed=${failed:-0}
  [[ $rc -ne 0 && $failed -eq 0 ]] && failed=1
fi
if [[ $# -eq 0 && "${BITBENCH_SKIP_SLURM:-0}" != 1 ]]; then
  echo "=== real Slurm test (tests/slurm/test_slurm.sh) ==="
  bash tests/slurm/test_slurm.sh "$BUILD"
  src=$?
  if [[ $src -eq 0 ]]; then passed=$((passed + 1));
  elif [[ $src -eq 77 ]]; then echo "(slurm test skipped)";
  else failed=$((failed + 1)); rc=1; fi
fi
# CI shows only the tail of the output: repeat each failed assertion (where, what, its values) here.
if [[ $failed -gt 0 && -s "$log" ]]; then
  echo "=== failed assertions (first 10) ==="
  awk '/FAILED:$/ {k++; n = 6} n > 0 && k <= 10 {print; n--}' "$log" | sed "s#^$(pwd)/##"
fi
rm -f "$log"
echo "tests: $passed passed, $failed failed"
exit $rc
