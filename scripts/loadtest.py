#!/usr/bin/env python3
"""Scenarios of scripts/loadtest.sh (run that: it builds and raises ulimit -n).

Server: target/release/sluice, one worker, pinned to --server-cpu (0).
Generator: target/release/sluice bench, pinned to --load-cpu (1), one thread.
Server CPU is utime+stime from /proc/PID/stat; RSS from /proc/PID/status.

  idle          N held connections, no events: server RSS growth per connection
  fanout        C subscribers x R updates/s: delivered/expected, latency,
                server CPU seconds per million deliveries (and the generator's)
  tiers         the three tiers of one topic together (raw, 0.5 s, 1 s)
  connect-storm N clients connecting at once: time until all have their
                initial_state
  vs-ssebench   sluice bench and the peer harness's ssebench side by side on
                one stream: events per CPU second of each (needs the harness
                built by scripts/peer-bench.sh)
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLUICE = os.path.join(REPO, "target", "release", "sluice")
HARNESS = os.environ.get("BENCH_WORK", "/tmp/sluice-peerbench")

# Shared with scripts/tier-bench.py. `{key}`: the row key of keyed/* topics.
CONFIG = """
[server]
listen = "127.0.0.1:{port}"
workers = 1
max_connections = 1000000
heartbeat_s = 30
max_duration_s = 0
max_events = 0

[auth]
required = false
anonymous_tier = "scale"

[tiers.scale]
coalesce_ms = 0
[tiers.enterprise]
coalesce_ms = 500
[tiers.business]
coalesce_ms = 1000

[[keys]]
name = "scale"
key = "k_scale"
tier = "scale"
[[keys]]
name = "enterprise"
key = "k_enterprise"
tier = "enterprise"
[[keys]]
name = "business"
key = "k_business"
tier = "business"
[[keys]]
name = "publisher"
key = "bench-pub"
tier = "scale"
role = "publisher"

[[topics]]
pattern = "keyed/*"
key = [{key}]

[[topics]]
pattern = "*"
history = 0
"""


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Server:
    """sluice with CONFIG (keyed/* topics keyed by `key`), pinned to
    args.server_cpu, listening on args.port."""

    def __init__(self, args, key='"event_id"'):
        self.port = args.port
        self.dir = tempfile.mkdtemp(prefix="sluice-loadtest-")
        cfg = os.path.join(self.dir, "sluice.toml")
        with open(cfg, "w") as f:
            f.write(CONFIG.format(port=self.port, key=key))
        self.proc = subprocess.Popen(
            ["taskset", "-c", args.server_cpu, SLUICE, "serve", "--config", cfg],
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.dir, "sluice.log"), "w"),
            env={**os.environ, "SLUICE_LOG": "warn"},
        )
        end = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.time() > end:
                    raise RuntimeError("sluice did not start")
                time.sleep(0.05)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def cpu(self):
        return proc_cpu_s(self.proc.pid)

    def rss(self):
        return proc_rss_kib(self.proc.pid)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def bench(args, *opts, wait=True):
    cmd = ["taskset", "-c", args.load_cpu, SLUICE, "bench", "--threads", "1", "--json", *opts]
    if args.read_interval is not None and "--read-interval" not in opts:
        cmd += ["--read-interval", args.read_interval]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return p
    return finish(p)


def finish(p):
    """The bench's JSON summary. Exit status 2 (the run passed an error
    threshold, e.g. connect-storm refusals) still has a summary to record."""
    out, err = p.communicate()
    if p.returncode not in (0, 2) or not out.strip():
        raise RuntimeError(f"sluice bench failed: {err.strip()[-400:]}")
    return json.loads(out)


def host():
    return {
        "nproc": os.cpu_count(),
        "kernel": os.uname().release,
        "commit": subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True).stdout.strip(),
    }


def idle(args):
    s = Server(args)
    try:
        rss0 = s.rss()
        ramp = 5000
        hold = 5
        p = bench(args, "--url", s.url("/v1/sse/idle"), "-c", str(args.connections),
                  "--ramp", f"{ramp}/s", "-d", f"{hold + 3}s", "--read-interval", "0", wait=False)
        time.sleep(args.connections / ramp + hold)
        rss1 = s.rss()
        b = finish(p)
        return {"scenario": "idle", "connections": args.connections, "established": b["established"],
                "failed": b["failed"], "rss_before_kib": rss0, "rss_held_kib": rss1,
                "rss_kib_per_conn": round((rss1 - rss0) / max(b["established"], 1), 3),
                "bench_cpu_s": b["cpu_s"]}
    finally:
        s.stop()


def fanout(args, c=None, rate=None):
    c = c or args.subscribers
    rate = rate or args.rate
    n = args.topics
    s = Server(args)
    try:
        c0 = s.cpu()
        topics = ",".join(f"f{t}" for t in range(n))
        b = bench(args, "--url", s.url("/v1/sse/fan/{topic}"), "--topics", topics, "-c", str(c),
                  "--ramp", "5000/s", "-d", f"{args.duration}s",
                  "--publish", s.url("/v1/publish/fan/{topic}"),
                  "--rate", f"{rate}/s", "--publish-key", "bench-pub")
        cpu = s.cpu() - c0
        updates = b["events"] - 2 * b["established"]
        # connection i reads topic i % n; publish k goes to topic k % n
        p = b["published"]
        expected = sum((c // n + (1 if t < c % n else 0)) * (p // n + (1 if t < p % n else 0))
                       for t in range(n))
        return {"scenario": "fanout", "subscribers": c, "topics": n, "rate": rate,
                "duration_s": args.duration,
                "established": b["established"], "published": b["published"],
                "delivered": updates, "expected": expected,
                "delivered_ratio": round(updates / expected, 4) if expected else None,
                "gaps": b["gaps"], "duplicates": b["duplicates"],
                "deliveries_per_s": round(updates / args.duration),
                "lat_ms": b["lat_ms"], "server_cpu_s": round(cpu, 2),
                "server_s_per_m_deliveries": round(cpu / updates * 1e6, 2) if updates else None,
                "bench_cpu_s": b["cpu_s"],
                "bench_s_per_m_events": round(b["cpu_s"] / b["events"] * 1e6, 2) if b["events"] else None}
    finally:
        s.stop()


def tiers(args):
    s = Server(args)
    try:
        c0 = s.cpu()
        split = [("scale", "k_scale", args.subscribers // 10),
                 ("enterprise", "k_enterprise", args.subscribers * 45 // 100),
                 ("business", "k_business", args.subscribers * 45 // 100)]
        procs = []
        for i, (tier, key, n) in enumerate(split):
            opts = ["--url", s.url(f"/v1/sse/keyed/t?apiKey={key}"), "-c", str(n), "--ramp", "3000/s",
                    "-d", f"{args.duration + 4}s"]
            if i == 0:
                # the raw bench publishes, once its own streams are up
                opts += ["--publish", s.url("/v1/publish/keyed/t"), "--rate", f"{args.rate}/s",
                         "--publish-key", "bench-pub"]
            procs.append((tier, n, bench(args, *opts, wait=False)))
        out = [(tier, n, finish(p)) for tier, n, p in procs]
        cpu = s.cpu() - c0
        frames = sum(b["events"] for _, _, b in out)
        return {"scenario": "tiers", "subscribers": args.subscribers, "rate": args.rate,
                "server_cpu_s": round(cpu, 2),
                "server_s_per_m_frames": round(cpu / frames * 1e6, 2) if frames else None,
                "tiers": [{"tier": t, "subscribers": n, "established": b["established"],
                           "frames": b["events"], "lat_ms": b["lat_ms"], "gaps": b["gaps"],
                           "duplicates": b["duplicates"], "bench_cpu_s": b["cpu_s"]}
                          for t, n, b in out],
                "published": out[0][2]["published"]}
    finally:
        s.stop()


def connect_storm(args):
    s = Server(args)
    try:
        c0 = s.cpu()
        b = bench(args, "--url", s.url("/v1/sse/storm"), "-c", str(args.connections), "-d", "5s",
                  "--read-interval", "0")
        return {"scenario": "connect-storm", "connections": args.connections,
                "established": b["established"], "failed": b["failed"],
                "fail_reasons": b["fail_reasons"], "all_initial_state_s": b["all_ready_s"],
                "server_cpu_s": round(s.cpu() - c0, 2), "bench_cpu_s": b["cpu_s"]}
    finally:
        s.stop()


def vs_ssebench(args):
    ssebench = os.path.join(HARNESS, "target", "release", "ssebench")
    if not os.access(ssebench, os.X_OK):
        raise RuntimeError(f"{ssebench} missing: run scripts/peer-bench.sh smoke sluice once")
    results = []
    for c, rate in [(100, 1500), (500, 200)]:
        s = Server(args)
        try:
            dur = args.duration
            sb = subprocess.Popen(["taskset", "-c", args.load_cpu, ssebench, "--url", s.url("/v1/sse/vs"),
                                   "--connections", str(c), "--duration", str(dur + 6), "--progress", "0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            ours = bench(args, "--url", s.url("/v1/sse/vs"), "-c", str(c), "-d", f"{dur + 3}s", wait=False)
            time.sleep(2)
            subprocess.run(["taskset", "-c", args.load_cpu, SLUICE, "bench", "--url", s.url("/v1/sse/none"),
                            "-c", "1", "-d", f"{dur}s", "--threads", "1", "--publish", s.url("/v1/publish/vs"),
                            "--rate", f"{rate}/s", "--publish-key", "bench-pub", "--json"],
                           capture_output=True, check=True)
            a = finish(ours)
            out, _ = sb.communicate()
            b = json.loads(out.strip().splitlines()[-1])
            results.append({
                "subscribers_each": c, "rate": rate,
                "sluice_bench": {"events": a["events"], "cpu_s": a["cpu_s"],
                                 "events_per_cpu_s": round(a["events"] / a["cpu_s"]),
                                 "lat_ms_p50": a["lat_ms"]["p50"], "lat_ms_p99": a["lat_ms"]["p99"]},
                "ssebench": {"events": b["events"], "cpu_s": b["cpu_s"],
                             "events_per_cpu_s": round(b["events"] / b["cpu_s"]),
                             "lat_ms_p50": b["lat_ms"]["p50"], "lat_ms_p99": b["lat_ms"]["p99"]},
                "ratio": round((a["events"] / a["cpu_s"]) / (b["events"] / b["cpu_s"]), 2),
            })
        finally:
            s.stop()
    return {"scenario": "vs-ssebench", "runs": results}


SCENARIOS = {"idle": idle, "fanout": fanout, "tiers": tiers, "connect-storm": connect_storm,
             "vs-ssebench": vs_ssebench}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", nargs="+", help="|".join(SCENARIOS) + "|all")
    ap.add_argument("--connections", type=int, default=10000, help="idle and connect-storm")
    ap.add_argument("--subscribers", type=int, default=1000, help="fanout (tiers: all tiers together)")
    ap.add_argument("--rate", type=int, default=200, help="updates per second (all topics together)")
    ap.add_argument("--topics", type=int, default=1, help="fanout: subscribers and updates spread over N topics")
    ap.add_argument("--duration", type=int, default=20, help="seconds of publishing")
    ap.add_argument("--server-cpu", default="0")
    ap.add_argument("--load-cpu", default="1")
    ap.add_argument("--port", type=int, default=8120)
    ap.add_argument("--read-interval", default=None, help="passed to sluice bench (default: its own)")
    ap.add_argument("--out", default=os.path.join(REPO, "bench-results", "loadtest.jsonl"))
    args = ap.parse_args()
    names = list(SCENARIOS) if "all" in args.scenarios else args.scenarios
    for n in names:
        if n not in SCENARIOS:
            sys.exit(f"unknown scenario {n}: {', '.join(SCENARIOS)}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    for n in names:
        r = SCENARIOS[n](args)
        r = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": host(), **r}
        line = json.dumps(r)
        with open(args.out, "a") as f:
            f.write(line + "\n")
        print(line)


if __name__ == "__main__":
    main()
