#!/usr/bin/env python3
"""Tier fan-out benchmark: one topic, subscribers split across tiers, a fixed
publish rate; server CPU seconds per million delivered frames, per run.

The server runs pinned to core 0 (one worker); the load generators (the peer
harness's ssebench, one process per tier, each with that tier's key) and the
publisher (ssepub) run pinned to core 1. Server CPU is utime+stime from
/proc/PID/stat over the publishing window.

    scripts/tier-bench.py [--rate 500] [--duration 20] [--shape odds|ticker]
                          [--tiers scale:1000,enterprise:4500,business:4500]
                          [--out bench-results/tiers.jsonl]

--shape odds:   the topic's key is the row's event_id (ssepub's rows cycle
                through 997 of them): a coalesced frame holds every event that
                changed in its interval.
--shape ticker: the key is constant (one instrument updated R times a
                second): a coalesced frame holds one row.
--keys N:       publish with this script's own publisher instead of ssepub:
                rows like ssepub's (ts_ns first) whose event_id cycles through
                N values, the topic keyed by event_id.

Needs the harness built (scripts/peer-bench.sh builds it into
/tmp/sluice-peerbench) and a release build of sluice.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.environ.get("BENCH_WORK", "/tmp/sluice-peerbench")
BIN = os.path.join(WORK, "target", "release")
PORT = 8111
SERVER_CPU, LOAD_CPU = "0", "1"
KEYS = {"scale": "k_scale", "enterprise": "k_enterprise", "business": "k_business"}

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loadtest import Server  # noqa: E402


def publish_rows(port, rate, duration, keys):
    """A fixed-rate publisher (one keep-alive connection, one request at a
    time, like ssepub) whose rows cycle through `keys` event ids."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    period = 1.0 / rate
    t0 = time.perf_counter()
    sent = 0
    for seq in range(int(rate * duration)):
        due = t0 + seq * period
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        ts = time.time_ns()
        body = (
            '{"ts_ns":%d,"seq":%d,"type":"odds","event_id":"ev-%05d","market":"match_winner",'
            '"status":"open","book":"bk07","sel":[{"id":"1","odds":%d.%02d},{"id":"X","odds":3.10},'
            '{"id":"2","odds":2.45}],"upd_ms":%d,"src":"feed-a"}'
            % (ts, seq, seq % keys, 1 + seq % 3, seq % 100, ts // 1_000_000)
        )
        conn.request("POST", "/v1/publish/keyed/t", body, {"X-API-Key": "bench-pub"})
        r = conn.getresponse()
        r.read()
        if r.status != 202:
            raise RuntimeError(f"publish answered {r.status}")
        sent += 1
    conn.close()
    return sent


def run(args):
    tiers = []
    for part in args.tiers.split(","):
        name, n = part.split(":")
        tiers.append((name, int(n)))
    key = '"book"' if args.shape == "ticker" else '"event_id"'
    tmp = tempfile.mkdtemp(prefix="sluice-tierbench-")
    server = Server(argparse.Namespace(port=PORT, server_cpu=SERVER_CPU), key=key)
    benches = []
    try:
        rss0 = server.rss()
        url = f"http://127.0.0.1:{PORT}/v1/sse/keyed/t"
        for name, n in tiers:
            ready = os.path.join(tmp, f"{name}.ready")
            p = subprocess.Popen(
                ["taskset", "-c", LOAD_CPU, os.path.join(BIN, "ssebench"), "--url", url,
                 "--connections", str(n), "--ramp", "2000", "--duration", "3600",
                 "--header", f"X-API-Key: {KEYS[name]}", "--ready-file", ready, "--progress", "0"],
                stdout=subprocess.PIPE, stderr=open(os.path.join(tmp, f"{name}.log"), "w"), text=True,
            )
            benches.append((name, n, p, ready))
        end = time.time() + 60
        while not all(os.path.exists(b[3]) for b in benches):
            if time.time() > end:
                raise RuntimeError("subscribers did not connect")
            time.sleep(0.1)
        time.sleep(1.0)  # let the initial states drain before measuring
        for _, _, p, _ in benches:
            p.send_signal(signal.SIGUSR1)  # end the ramp phase
        for _, _, p, _ in benches:
            p.stdout.readline()
        c0, t0 = server.cpu(), time.time()
        if args.keys:
            os.sched_setaffinity(0, {int(LOAD_CPU)})
            publish_rows(PORT, args.rate, args.duration, args.keys)
        else:
            pub = subprocess.run(
                ["taskset", "-c", LOAD_CPU, os.path.join(BIN, "ssepub"), "--url",
                 f"http://127.0.0.1:{PORT}/v1/publish/keyed/t", "--rate", str(args.rate),
                 "--duration", str(args.duration), "--template", "{{json}}",
                 "--header", "X-API-Key: bench-pub"],
                capture_output=True, text=True,
            )
            if pub.returncode != 0:
                raise RuntimeError(f"ssepub failed: {pub.stderr[-400:]}")
        time.sleep(1.2)  # the last coalesced frames (one 1 s tick) arrive
        c1, t1 = server.cpu(), time.time()
        rss1 = server.rss()
        out = []
        total_frames = 0
        for name, n, p, _ in benches:
            p.send_signal(signal.SIGUSR1)
            s = json.loads(p.stdout.readline())
            total_frames += s["events"]
            out.append((name, n, s))
        server_cpu = c1 - c0
        row = {
            "tool": "tier-bench",
            "commit": subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                                     capture_output=True, text=True).stdout.strip(),
            "shape": f"keys={args.keys}" if args.keys else args.shape,
            "rate": args.rate,
            "duration_s": args.duration,
            "window_s": round(t1 - t0, 2),
            "server_cpu_s": round(server_cpu, 2),
            "server_cpu_pct": round(100 * server_cpu / (t1 - t0), 1),
            "frames": total_frames,
            "server_s_per_m_frames": round(server_cpu / total_frames * 1e6, 2) if total_frames else None,
            "rss_kib_delta": rss1 - rss0,
            "tiers": [
                {
                    "tier": name,
                    "subscribers": n,
                    "established": s["established"],
                    "frames": s["events"],
                    "frames_per_sub_per_s": round(s["events"] / n / (t1 - t0), 2),
                    "bytes_per_sub_per_s": round(s["bytes"] / n / (t1 - t0)),
                    "lat_ms_p50": s["lat_ms"]["p50"],
                    "lat_ms_p99": s["lat_ms"]["p99"],
                    "loadgen_cpu_s": s["cpu_s"],
                }
                for name, n, s in out
            ],
        }
        return row
    finally:
        for _, _, p, _ in benches:
            p.terminate()
        server.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--shape", choices=["odds", "ticker"], default="odds")
    ap.add_argument("--tiers", default="scale:1000,enterprise:4500,business:4500")
    ap.add_argument("--keys", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(REPO, "bench-results", "tiers.jsonl"))
    args = ap.parse_args()
    for b in ("ssebench", "ssepub"):
        if not os.access(os.path.join(BIN, b), os.X_OK):
            sys.exit(f"{BIN}/{b} missing: run scripts/peer-bench.sh smoke sluice once to build the harness")
    row = run(args)
    line = json.dumps(row)
    print(line)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
