#!/usr/bin/env bash
# Cluster benchmark: nats-server -js and two sluice nodes against one sluice
# node, in one run, with the same subscribers and publish rates; servers
# pinned to one core, the generator (`sluice bench`) to the other.
#
#   scripts/cluster-bench.sh [--rates 20,200] [--subscribers 10000] [--duration 10]
#
# Needs nats-server (apt-get install -y nats-server). Each phase is appended
# as one JSON line to bench-results/cluster-bench.jsonl (or --out FILE).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
cargo build --release --locked
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec python3 "$repo/scripts/cluster-bench.py" "$@"
