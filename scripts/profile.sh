#!/usr/bin/env bash
# Where a delivery's CPU goes: runs the release sluice (scripts/bench.toml,
# one worker) pinned to core 0 under the peer harness's load generator on
# core 1, and samples the server with perf (cpu-clock: this machine has no
# hardware counters), then prints the top symbols, a grouped split, and
# counts per delivery (syscalls, io_uring submissions and enters, wake-ups
# the server does, context switches), with the server's CPU and the
# subscribers' latency over the publishing window.
#
#   scripts/profile.sh [RATE=20] [CONNECTIONS=10000] [SECONDS=10]
#   TOPICS=100 scripts/profile.sh 1000 10000 10   # connection i on t{i % 100},
#                                                # RATE is the total over them
#   SLUICE_BIN=/path/to/sluice ...    another build (no cargo build)
#   TARGET=floor ...                  the harness's floor server instead
#   RECORD=0 ...                      counts, CPU and latency only (no perf
#                                     record, whose sampling costs CPU)
#   RECORD=0 STAT=0 ...               CPU and latency only (no tracepoints)
#   RECORD=user STAT=0 ...            CPU, latency, and the server's user-space
#                                     time from 4 kHz user-only samples (finer
#                                     than the 10 ms ticks of the user/kernel
#                                     split): for A/B runs of user-space work
#   PORT=8101 ...                     another port than the harness's 8100
#   CALLGRAPH=dwarf ...               user-space call chains too (the release
#                                     build has no frame pointers); then
#                                     perf report --children -i DIR/perf.data
#
# Needs: linux-perf (apt-get install linux-perf), and the harness built by
# scripts/peer-bench.sh (its ssebench, ssepub and floor in $BENCH_WORK).
set -euo pipefail
rate="${1:-20}" conns="${2:-10000}" secs="${3:-10}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${BENCH_WORK:-/tmp/sluice-peerbench}"
bin="$work/target/release"
[ -x "$bin/ssebench" ] || { echo "run scripts/peer-bench.sh smoke first (builds the harness)" >&2; exit 1; }
topics="${TOPICS:-1}" target="${TARGET:-sluice}" record="${RECORD:-1}" port="${PORT:-8100}"
if [ "$target" = floor ]; then
  cmd=("$work/floor/floor" --port "$port")
  base="http://127.0.0.1:$port" sub_path='/sse/' pub_path='/publish/' dso=floor
else
  if [ -z "${SLUICE_BIN:-}" ]; then
    (cd "$repo" && cargo build --release --locked)
    SLUICE_BIN="$repo/target/release/sluice"
  fi
  config="$(mktemp /tmp/sluice-profile-config-XXXXXX)"
  sed "s/127.0.0.1:8100/127.0.0.1:$port/" "$repo/scripts/bench.toml" >"$config"
  cmd=("$SLUICE_BIN" serve --config "$config")
  base="http://127.0.0.1:$port/v1" sub_path='/sse/' pub_path='/publish/' dso="$(basename "$SLUICE_BIN")"
fi
if [ "$topics" -gt 1 ]; then
  sub_url="$base$sub_path{topic}" pub_url="$base$pub_path{topic}"
else
  sub_url="${base}${sub_path}test" pub_url="${base}${pub_path}test"
fi
# The port must be free: a server already there would answer the load and
# this one would fail to bind (the peer harness's driver checks the same).
if (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then
  echo "127.0.0.1:$port is in use (another benchmark?); not starting" >&2
  exit 1
fi
out="$(mktemp -d /tmp/sluice-profile-XXXXXX)"
ulimit -n "$(ulimit -Hn)"
taskset -c 0 "${cmd[@]}" 2>"$out/server.log" &
srv=$!
trap 'kill $srv 2>/dev/null || true' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
kill -0 "$srv" 2>/dev/null || { echo "the server did not start:" >&2; cat "$out/server.log" >&2; exit 1; }
taskset -c 1 "$bin/ssebench" --url "$sub_url" --topics "$topics" --connections "$conns" --ramp 5000 \
  --duration $((secs + 60)) --progress 0 --ready-file "$out/ready.json" >"$out/ssebench.out" 2>"$out/ssebench.err" &
sb=$!
for _ in $(seq 600); do [ -s "$out/ready.json" ] && break; sleep 0.1; done
sleep 1
kill -USR1 $sb # ends the connect phase: the next summary covers the publishing window only
if [ "$record" = user ]; then
  perf record -e cpu-clock:u -F 4000 ${USER_CG:-} -p "$srv" -o "$out/perf-user.data" -- sleep "$secs" >/dev/null 2>&1 &
  pp=$!
elif [ "$record" = 1 ]; then
  if [ "${CALLGRAPH:-fp}" = dwarf ]; then cg=(--call-graph dwarf,32768 -F 500); else cg=(-g -F 2000); fi
  perf record -e cpu-clock "${cg[@]}" -p "$srv" -o "$out/perf.data" -- sleep "$secs" >/dev/null 2>&1 &
  pp=$!
fi
# what the server does per delivery, over the same window
[ "${STAT:-1}" = 1 ] || stat_events='sched:sched_switch'
perf stat -e "${stat_events:-raw_syscalls:sys_enter,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,io_uring:io_uring_submit_req,io_uring:io_uring_poll_arm,io_uring:io_uring_queue_async_work,io_uring:io_uring_task_add,sched:sched_wakeup,sched:sched_switch}" \
  -p "$srv" -o "$out/stat.txt" -- sleep "$secs" >/dev/null 2>&1 &
ps=$!
t0=$(awk '{print $14","$15}' "/proc/$srv/stat")
taskset -c 1 "$bin/ssepub" --url "$pub_url" --topics "$topics" --rate "$rate" --duration "$secs" \
  --template '{{json}}' --header 'X-API-Key: bench-pub' >"$out/ssepub.out" 2>&1
t1=$(awk '{print $14","$15}' "/proc/$srv/stat")
wait $ps
if [ "$record" != 0 ]; then wait $pp; fi
sleep 1
kill -USR1 $sb
sleep 0.5
kill $sb 2>/dev/null || true
wait $sb 2>/dev/null || true
python3 - "$out" "$t0" "$t1" "$(getconf CLK_TCK)" <<'PY'
import json, re, sys
out, tck = sys.argv[1], int(sys.argv[4])
(u0, s0), (u1, s1) = ([int(x) for x in a.split(",")] for a in sys.argv[2:4])
# phase 1 is the connect phase, 2 the publishing window (ended by the second SIGUSR1)
phase = [json.loads(l) for l in open(f"{out}/ssebench.out") if '"final"' in l and '"phase":2,' in l]
pub = json.loads(open(f"{out}/ssepub.out").read().splitlines()[0])
d = phase[0]["deliveries"] if phase else 0
lat = phase[0]["lat_ms"] if phase else {}
user_ms, sys_ms = (u1 - u0) * 1000 / tck, (s1 - s0) * 1000 / tck
cpu_ms = user_ms + sys_ms
print(f"published {pub['ok']} ({pub['actual_rate']}/s), deliveries {d}, server CPU {cpu_ms:.0f} ms"
      f" = {cpu_ms * 1000 / max(d, 1):.2f} us/delivery (user {user_ms * 1000 / max(d, 1):.2f}, kernel {sys_ms * 1000 / max(d, 1):.2f});"
      f" latency ms p50 {lat.get('p50')} p99 {lat.get('p99')} p99.9 {lat.get('p999')}")
for line in open(f"{out}/stat.txt"):
    m = re.match(r"\s+([\d,]+)\s+(\S+)", line)
    if m:
        n = int(m.group(1).replace(",", ""))
        print(f"{n:>10}  {n / max(d, 1):7.3f}/delivery  {n / max(pub['ok'], 1):8.2f}/publish  {m.group(2)}")
PY
if [ "$record" = user ]; then
  n=$(perf script -G -i "$out/perf-user.data" -F ip 2>/dev/null | wc -l)
  python3 -c "import json,sys; n=int(sys.argv[1]); d=json.loads([l for l in open(sys.argv[2]) if '\"final\"' in l and '\"phase\":2,' in l][0])['deliveries']; print(f'user-space samples {n} (4 kHz) = {n/4:.0f} ms = {n*250/max(d,1):.2f} us/delivery')" "${n:-0}" "$out/ssebench.out"
fi
if [ "$record" = 1 ]; then
perf report -i "$out/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep '%' | head -4
perf report -i "$out/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null | grep '%' >"$out/syms.txt"
head -25 "$out/syms.txt"
python3 - "$out/syms.txt" <<'PY'
import re, sys
groups = {"TCP send path": 0.0, "loopback receive and reader wake-up": 0.0, "io_uring per operation": 0.0,
          "timers": 0.0, "server user space": 0.0, "other kernel": 0.0}
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
        groups["server user space"] += p
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
perf report -i "$out/perf.data" --no-children --sort sym --stdio -g none --dsos "$dso" 2>/dev/null | grep '%' | head -30 >"$out/user.txt" || true
echo "top user-space symbols:"; head -15 "$out/user.txt"
fi
echo "perf data and logs: $out"
