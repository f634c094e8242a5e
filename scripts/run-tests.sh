#!/usr/bin/env bash
# `make test`: every pass of the test suite runs, whatever the others do, and their results are reported
# together at the end (a red first pass must not hide the others). Exit status 0 only if every pass passed.
#   scripts/run-tests.sh VENV
# Passes: the sim tests on two xdist workers (each test file on one worker: its tests share module fixtures),
# the sim tests marked `serial` alone (pinned CPUs, tbf-shaped links, timings compared between runs), then
# the hardware tests on a fresh 5-board virtual rack, stopped again whatever the tests do.
set -u
venv=${1:-.venv}
py="$venv/bin/python"
splitrack="$venv/bin/splitrack"
xdist=${XDIST:--n 2 --dist loadfile}
rack=build/ci-rack.toml
names=(); codes=(); lines=()
trap '"$splitrack" rack down "$rack" >/dev/null 2>&1; exit 130' INT TERM  # an interrupted hw pass leaves no rack

pass() {  # pass NAME CMD...: run one pass, keep its exit status and pytest's summary line
  local name=$1; shift
  local log; log=$(mktemp)
  echo "=== $name: $*"
  "$@" 2>&1 | tee "$log"
  local code=${PIPESTATUS[0]}
  names+=("$name"); codes+=("$code")
  lines+=("$(grep -E '(passed|failed|error|skipped|no tests ran)' "$log" | grep -E ' in [0-9.]+s' | tail -n 1)")
  rm -f "$log"
}

hw() {  # the hw pass: a fresh virtual rack, stopped again whatever the tests do
  mkdir -p build
  "$splitrack" rack down "$rack" >/dev/null 2>&1 || true
  "$splitrack" rack up --n-boards 5 --out "$rack" || return 1
  "$py" -m pytest -q -m hw --boards "$rack" hw_tests
  local code=$?
  "$splitrack" rack down "$rack" >/dev/null 2>&1 || true
  return $code
}

# shellcheck disable=SC2086
pass "sim tests (parallel)" "$py" -m pytest -q -m "not slow and not serial" $xdist --durations=15 sim_tests
pass "sim tests (serial)" "$py" -m pytest -q -m "not slow and serial" --durations=5 sim_tests
pass "hw tests (5-board virtual rack)" hw

echo
echo "=== make test: every pass"
status=0
for i in "${!names[@]}"; do
  if [ "${codes[$i]}" = 0 ]; then verdict=passed; else verdict="FAILED (exit ${codes[$i]})"; status=1; fi
  printf '  %-34s %-18s %s\n' "${names[$i]}" "$verdict" "${lines[$i]}"
done
exit $status
