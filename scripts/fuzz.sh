#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/) for 10^6 executions or SECONDS each (default 3600),
# whichever comes first, with libFuzzer's limits: no input over 10 s, no process over 2 GiB of
# memory and no single allocation over 2 GiB. Needs the nightly toolchain; installs cargo-fuzz
# when missing. Corpora grow in fuzz/corpus/ (from the committed seeds in fuzz/seeds/); crashes
# land in fuzz/artifacts/; one line of figures per target is appended to fuzz/results.txt.
#   scripts/fuzz.sh [SECONDS] [TARGET ...]
# Two runs with different targets may go in parallel (one core each; the targets run with
# RAYON_NUM_THREADS=1).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-3600}
shift || true
if ! rustup toolchain list | grep -q nightly; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo +nightly install cargo-fuzz --locked
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(ls fuzz/fuzz_targets | sed 's/\.rs$//')
fi
export RAYON_NUM_THREADS=1
status=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  cp -n fuzz/seeds/"$t"/* "fuzz/corpus/$t/" 2>/dev/null || true
  log="fuzz/artifacts/$t/run.log"
  echo "== $t (up to 10^6 executions or ${SECONDS_PER_TARGET} s)"
  if cargo +nightly fuzz run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" -- \
      -runs=1000000 -max_total_time="$SECONDS_PER_TARGET" -timeout=10 \
      -rss_limit_mb=2048 -malloc_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result="FAILED (see $log and fuzz/artifacts/$t/)"
    status=1
  fi
  execs=$( (grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1) || true)
  secs=$( (grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' | tail -1) || true)
  cov=$( (grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1) || true)
  corpus=$(ls "fuzz/corpus/$t" | wc -l)
  line="$(date -u +%Y-%m-%dT%H:%MZ) $t: ${execs:-?} executions in ${secs:-?} s, ${cov:-cov ?}, corpus $corpus inputs: $result"
  echo "$line" | tee -a fuzz/results.txt
done
exit $status
