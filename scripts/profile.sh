#!/usr/bin/env bash
# Where a delivery's CPU goes: runs the release sluice (scripts/bench.toml,
# one worker) pinned to core 0 under the peer harness's load generator on
# core 1, and samples the server with perf (cpu-clock: this machine has no
# hardware counters), then prints the top symbols and a grouped split.
#
#   scripts/profile.sh [RATE=20] [CONNECTIONS=10000] [SECONDS=10]
#
# Needs: linux-perf (apt-get install linux-perf), and the harness built by
# scripts/peer-bench.sh (its ssebench and ssepub in $BENCH_WORK).
set -euo pipefail
rate="${1:-20}" conns="${2:-10000}" secs="${3:-10}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${BENCH_WORK:-/tmp/sluice-peerbench}"
bin="$work/target/release"
[ -x "$bin/ssebench" ] || { echo "run scripts/peer-bench.sh smoke first (builds the harness)" >&2; exit 1; }
(cd "$repo" && cargo build --release --locked)
out="$(mktemp -d /tmp/sluice-profile-XXXXXX)"
ulimit -n "$(ulimit -Hn)"
taskset -c 0 "$repo/target/release/sluice" serve --config "$repo/scripts/bench.toml" 2>"$out/server.log" &
srv=$!
trap 'kill $srv 2>/dev/null || true' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/8100) 2>/dev/null && break; sleep 0.1; done
taskset -c 1 "$bin/ssebench" --url http://127.0.0.1:8100/v1/sse/test --connections "$conns" --ramp 5000 \
  --duration $((secs + 15)) --ready-file "$out/ready.json" >"$out/ssebench.out" 2>"$out/ssebench.err" &
sb=$!
for _ in $(seq 600); do [ -s "$out/ready.json" ] && break; sleep 0.1; done
perf record -e cpu-clock -F 2000 -g -p "$srv" -o "$out/perf.data" -- sleep "$secs" >/dev/null 2>&1 &
pp=$!
taskset -c 1 "$bin/ssepub" --url http://127.0.0.1:8100/v1/publish/test --rate "$rate" --duration "$secs" \
  --template '{{json}}' --header 'X-API-Key: bench-pub' >"$out/ssepub.out" 2>&1
wait $pp
kill $sb 2>/dev/null || true
perf report -i "$out/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep '%' | head -4
perf report -i "$out/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null | grep '%' >"$out/syms.txt"
head -25 "$out/syms.txt"
python3 - "$out/syms.txt" <<'PY'
import re, sys
groups = {"TCP send path": 0.0, "loopback receive and reader wake-up": 0.0, "io_uring per operation": 0.0,
          "timers": 0.0, "sluice + monoio (user space)": 0.0, "other kernel": 0.0}
rx = ("tcp_v4_rcv", "tcp_rcv", "tcp_data_queue", "tcp_ack", "sock_def_readable", "_raw_spin", "__inet_lookup",
      "process_backlog", "net_rx", "ip_rcv", "__netif", "handle_softirqs", "do_softirq", "ep_poll", "__wake",
      "try_to_wake", "tcp_in_ack", "ip_local", "tcp_filter", "sk_filter", "__local_bh", "skb_defer")
tx = ("tcp", "__tcp", "ip_", "__ip", "skb", "__skb", "__dev", "dev_", "loopback", "kmem", "__alloc_skb", "_copy",
      "copy_", "sock_", "inet_", "__kmalloc", "kfree", "__sk", "sk_", "validate_xmit", "neigh", "eth_")
for line in open(sys.argv[1]):
    m = re.match(r"\s*([\d.]+)%\s+\[(.)\]\s+(\S+)", line)
    if not m:
        continue
    p, kind, sym = float(m.group(1)), m.group(2), m.group(3)
    if kind == ".":
        groups["sluice + monoio (user space)"] += p
    elif sym.startswith(("io_", "__io", "fget", "fput")):
        groups["io_uring per operation"] += p
    elif "timer" in sym or sym in ("read_tsc", "ktime_get"):
        groups["timers"] += p
    elif sym.startswith(rx):
        groups["loopback receive and reader wake-up"] += p
    elif sym.startswith(tx):
        groups["TCP send path"] += p
    else:
        groups["other kernel"] += p
for k, v in groups.items():
    print(f"{v:5.1f}%  {k}")
PY
echo "perf data and logs: $out"
