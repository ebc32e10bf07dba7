#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ for a while each.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS (default 20) is each target's -max_total_time; no TARGET means all
# of them (`cargo fuzz list`). Uses the nightly toolchain when rustup has
# one, else the stable one with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Z
# flags; stable ships the sanitizer runtimes too). Installs cargo-fuzz when
# it is missing. Each target starts from its committed corpus
# (fuzz/corpus/TARGET, read only here) with its dictionary (fuzz/dict/) and
# writes what it finds to a scratch directory, so a run leaves the tree
# clean. A crash is saved under fuzz/artifacts/TARGET/ and reproduces with
#   cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...
# (or, with only the stable toolchain, RUSTC_BOOTSTRAP=1 cargo fuzz run ...)
# Exits non-zero when any target failed (all of them run regardless).
# To grow a committed corpus instead, see fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=20
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
  seconds=$1
  shift
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi

if [[ $# -gt 0 ]]; then
  targets=("$@")
else
  mapfile -t targets < <("${fuzz[@]}" list)
  # One cargo invocation builds every target at once (`run` builds one).
  "${fuzz[@]}" build
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
  if ! "${fuzz[@]}" run "$t" "$scratch/$t" "fuzz/corpus/$t" -- "${args[@]}"; then
    failed+=("$t")
  fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz: FAILED: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} target(s) clean, ${seconds}s each"
