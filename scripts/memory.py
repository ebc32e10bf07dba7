#!/usr/bin/env python3
"""Memory cost of sluice's state, measured as the server process's VmRSS
(/proc/PID/status) before and after a load, with one worker.

    scripts/memory.py rows    [--n 1000000] [--pad 0]   keyed rows {"id":N,"v":1,...}
    scripts/memory.py topics  [--n 50000]               empty topics (snapshot GETs)
    scripts/memory.py clients [--n 1000] [--mb 10]      streams that never read
                                                        a topic of MB megabytes
    options: --bin PATH (default target/release/sluice), --server-extra TEXT
             (lines added to [server], e.g. 'max_topics_per_key = 0')

rows:    publishes N rows with distinct ids in batches of 10,000 to one keyed
         topic; prints RSS bytes per row next to the rows' JSON bytes.
         --pad P adds a "p" field of P bytes to each row; --flush-ring then
         publishes 1,100 one-row updates so that the replay ring no longer
         holds the big frames and what is measured is the state table.
clients: publishes MB megabytes of rows (1,000-byte rows) to one keyed topic,
         takes one snapshot (the size of one copy), opens N streams that
         read nothing, and prints the RSS the snapshot and streams added, in
         copies of the state's JSON.
topics:  N snapshot GETs of distinct topics (anonymous reader); prints RSS
         bytes per topic.

Prints one JSON line. Needs a release build (cargo build --release).
"""
import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = """[server]
listen = "127.0.0.1:{port}"
workers = 1
max_body_bytes = 67108864
max_connections = 200000
{server_extra}

[auth]
required = false
anonymous_tier = "raw"

[tiers.raw]
coalesce_ms = 0

[[keys]]
name = "pub"
key = "pk_mem"
tier = "raw"
role = "publisher"

[[topics]]
pattern = "k/*"
key = ["id"]

[[topics]]
pattern = "e/*"
history = 10
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Server:
    def __init__(self, binary, server_extra):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="sluice-memory-")
        cfg = os.path.join(self.dir, "sluice.toml")
        with open(cfg, "w") as f:
            f.write(CONFIG.format(port=self.port, server_extra=server_extra))
        self.proc = subprocess.Popen(
            [binary, "serve", "--config", cfg],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
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
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def rss(self):
        return rss_bytes(self.proc.pid)

    def request(self, method, path, body=None, headers=None):
        self.conn.request(method, path, body=body, headers=headers or {})
        r = self.conn.getresponse()
        data = r.read()
        if r.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        return r.status, data

    def publish(self, topic, rows):
        body = ("[" + ",".join(rows) + "]").encode()
        status, data = self.request(
            "POST", f"/v1/publish/{topic}", body,
            {"X-API-Key": "pk_mem", "Content-Type": "application/json"},
        )
        if status != 202:
            raise RuntimeError(f"publish: {status} {data[:200]!r}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def settle(srv):
    """RSS once it stops moving (mimalloc returns freed pages lazily)."""
    last = srv.rss()
    for _ in range(20):
        time.sleep(0.25)
        now = srv.rss()
        if abs(now - last) < 64 * 1024:
            return now
        last = now
    return last


def rows_mode(srv, args):
    pad = "x" * args.pad
    srv.publish("k/mem", ['{"id":-1,"v":1}'])
    before = settle(srv)
    json_bytes = 0
    batch = 10_000
    for start in range(0, args.n, batch):
        rows = []
        for i in range(start, min(start + batch, args.n)):
            r = f'{{"id":{i},"v":1,"p":"{pad}"}}' if args.pad else f'{{"id":{i},"v":1}}'
            json_bytes += len(r)
            rows.append(r)
        srv.publish("k/mem", rows)
    ring = None
    if args.flush_ring:
        # 1,100 one-row updates push the big frames out of the ring's 1,024
        # slots: what remains is the state table
        ring = settle(srv) - before
        for _ in range(1100):
            srv.publish("k/mem", ['{"id":0,"v":2}'])
    after = settle(srv)
    return {
        "mode": "rows",
        "ring_flushed": args.flush_ring,
        "rss_bytes_per_row_before_flush": None if ring is None else round(ring / args.n, 1),
        "rows": args.n,
        "json_bytes_per_row": round(json_bytes / args.n, 1),
        "rss_bytes_per_row": round((after - before) / args.n, 1),
        "rss_over_json": round((after - before) / json_bytes, 2),
        "rss_before": before,
        "rss_after": after,
    }


def topics_mode(srv, args):
    before = settle(srv)
    refused = 0
    for i in range(args.n):
        status, _ = srv.request("GET", f"/v1/snapshot/e/t{i}")
        if status != 200:
            refused += 1
    after = settle(srv)
    made = args.n - refused
    return {
        "mode": "topics",
        "topics": made,
        "refused": refused,
        "rss_bytes_per_topic": round((after - before) / max(made, 1), 1),
        "rss_before": before,
        "rss_after": after,
    }


def clients_mode(srv, args):
    row_pad = "x" * 970
    n_rows = args.mb * 1_000_000 // 1000
    batch = 10_000
    for start in range(0, n_rows, batch):
        srv.publish("k/big", [f'{{"id":{i},"p":"{row_pad}"}}' for i in range(start, min(start + batch, n_rows))])
    # before any initial state is encoded: what the clients add includes
    # the copies of it that they hold
    before = settle(srv)
    status, snap = srv.request("GET", "/v1/snapshot/k/big")
    assert status == 200, status
    copy = len(snap)
    del snap
    socks = []
    for _ in range(args.n):
        s = socket.create_connection(("127.0.0.1", srv.port))
        # a tiny receive buffer: the client reads nothing, so the initial
        # state stays queued in the server
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /v1/sse/k/big HTTP/1.1\r\nHost: m\r\n\r\n")
        socks.append(s)
    # every stream has its initial state queued once /healthz counts it (a
    # client that reads nothing may never even get its response head)
    end = time.time() + 60
    while True:
        _, health = srv.request("GET", "/healthz")
        if json.loads(health)["streams"] >= args.n:
            break
        if time.time() > end:
            raise RuntimeError(f"streams did not open: {health!r}")
        time.sleep(0.1)
    after = settle(srv)
    for s in socks:
        s.close()
    return {
        "mode": "clients",
        "clients": args.n,
        "state_json_bytes": copy,
        "rss_added": after - before,
        "rss_added_in_copies": round((after - before) / copy, 2),
        "rss_before": before,
        "rss_after": after,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["rows", "topics", "clients"])
    p.add_argument("--n", type=int)
    p.add_argument("--pad", type=int, default=0)
    p.add_argument("--flush-ring", action="store_true",
                   help="rows: measure after pushing the rows' frames out of the ring")
    p.add_argument("--mb", type=int, default=10)
    p.add_argument("--bin", default=os.path.join(REPO, "target", "release", "sluice"))
    p.add_argument("--server-extra", default="")
    args = p.parse_args()
    if args.n is None:
        args.n = {"rows": 1_000_000, "topics": 50_000, "clients": 1000}[args.mode]
    srv = Server(args.bin, args.server_extra)
    try:
        out = {"rows": rows_mode, "topics": topics_mode, "clients": clients_mode}[args.mode](srv, args)
    finally:
        srv.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
