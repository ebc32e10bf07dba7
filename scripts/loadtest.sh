#!/usr/bin/env bash
# Load tests of sluice with its own generator (`sluice bench`): sluice pinned
# to one core (one worker), the generator pinned to another, loopback only.
#
#   scripts/loadtest.sh SCENARIO [SCENARIO ...] [options]
#   scenarios: idle fanout tiers connect-storm vs-ssebench all
#   options: see scripts/loadtest.py --help (e.g. --subscribers 1000 --rate 200)
#
# Each result is appended as one JSON line to bench-results/loadtest.jsonl
# (or --out FILE) and printed as a short line.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
cargo build --release --locked
# Room for the connections: the server raises its own limit; the generator
# needs one descriptor per connection.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec python3 "$repo/scripts/loadtest.py" "$@"
