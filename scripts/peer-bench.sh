#!/usr/bin/env bash
# Runs the peer benchmark harness (../shared/bench: nchan, Pushpin, axum, the
# epoll "floor") with sluice added as the target `sluice`, in a writable copy.
#
#   scripts/peer-bench.sh SCENARIO [TARGET ...]     default targets: sluice floor
#   e.g. scripts/peer-bench.sh fanout-10k sluice floor nchan
#   scripts/peer-bench.sh fanout-10k sluice sluice-metered   # metering off, then on
#
# Results: one JSON line per run in $BENCH_WORK/results.jsonl, tables via
# report.py. Server on core 0, load on core 1 (the harness's own pinning).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
src="${BENCH_SRC:-$repo/../shared/bench}"
work="${BENCH_WORK:-/tmp/sluice-peerbench}"
scenario="${1:?usage: peer-bench.sh SCENARIO [TARGET ...]}"
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(sluice floor)

mkdir -p "$work"
# copy the harness (not its build output) so it can build and write results
(cd "$src" && tar --exclude=./target --exclude=./results.jsonl -cf - .) | (cd "$work" && tar -xf -)
chmod -R u+w "$work"
cp "$repo/scripts/bench-target.sh" "$work/targets/sluice.sh"
# sluice-metered: the same, with usage metering on (scripts/bench-metered.toml)
sed 's/SLUICE_CONFIG/SLUICE_METERED_CONFIG/g' "$repo/scripts/bench-target.sh" > "$work/targets/sluice-metered.sh"
[ -x "$work/target/release/ssebench" ] && [ -x "$work/floor/floor" ] || (cd "$work" && ./build.sh >/dev/null)

# SLUICE_BIN=path runs another build (e.g. a copy of an older one, to
# compare two builds in one sitting); SLUICE_LABEL names it in the results.
if [ -z "${SLUICE_BIN:-}" ]; then
  (cd "$repo" && cargo build --release --locked)
  SLUICE_BIN="$repo/target/release/sluice"
fi
export SLUICE_BIN SLUICE_CONFIG="${SLUICE_CONFIG:-$repo/scripts/bench.toml}" SLUICE_REPO="$repo" SLUICE_LABEL="${SLUICE_LABEL:-}"
export SLUICE_METERED_CONFIG="$repo/scripts/bench-metered.toml"
for t in "${targets[@]}"; do
  "$work/run.sh" "$t" "$scenario"
done
python3 "$work/report.py" "$work/results.jsonl" > "$work/results-table.md" || true
echo "results: $work/results.jsonl, tables: $work/results-table.md"
