#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ for a while each.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS (default 20) is each target's -max_total_time; no TARGET means all
# of them (`cargo fuzz list`). Needs the nightly toolchain; installs
# cargo-fuzz when it is missing. Each target starts from its committed corpus
# (fuzz/corpus/TARGET, read only here) with its dictionary (fuzz/dict/) and
# writes what it finds to a scratch directory, so a run leaves the tree
# clean. A crash is saved under fuzz/artifacts/TARGET/ and reproduces with
#   cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...
# Exits non-zero when any target failed (all of them run regardless).
# To grow a committed corpus instead, see fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=20
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
  seconds=$1
  shift
fi

if ! cargo +nightly --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

if [[ $# -gt 0 ]]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
  # One cargo invocation builds every target at once (`run` builds one).
  cargo +nightly fuzz build
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

failed=()
for t in "${targets[@]}"; do
  echo "=== fuzz $t for ${seconds}s"
  mkdir -p "$scratch/$t" "fuzz/corpus/$t"
  args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
  if [[ -f fuzz/dict/$t.dict ]]; then
    args+=(-dict="fuzz/dict/$t.dict")
  fi
  if ! cargo +nightly fuzz run "$t" "$scratch/$t" "fuzz/corpus/$t" -- "${args[@]}"; then
    failed+=("$t")
  fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz: FAILED: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} target(s) clean, ${seconds}s each"
