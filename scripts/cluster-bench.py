#!/usr/bin/env python3
"""Cluster benchmark (run scripts/cluster-bench.sh: it builds and raises ulimit -n).

For each publish rate, two phases in one run, with the same load:

  single   one sluice node (no [cluster]), one worker, pinned to --server-cpu
  cluster  nats-server -js and two sluice nodes (one worker each) sharing one
           JetStream stream, all three pinned to --server-cpu

The generator (`sluice bench`, one thread) is pinned to --load-cpu. It holds
--subscribers raw-tier SSE connections (in the cluster phase split evenly
over the two nodes, round robin) on one topic and publishes at the rate
through the first node. Reported per phase: deliveries/s, delivered/expected,
gaps and duplicates, publish-to-receive latency p50/p99 (probe connections,
from the publisher's clock to the subscriber's read, so the cluster phase
includes the JetStream round trip), and server CPU seconds per million
deliveries for each node (and nats-server's CPU).
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loadtest  # noqa: E402  (CONFIG, bench(), finish(), proc_cpu_s(), host())

REPO = loadtest.REPO
SLUICE = loadtest.SLUICE


def wait_port(port, what, proc=None, log=None):
    end = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None or time.time() > end:
                tail = open(log).read()[-2000:] if log else ""
                raise RuntimeError(f"{what} did not start: {tail}")
            time.sleep(0.05)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nats:
    def __init__(self, args):
        self.dir = tempfile.mkdtemp(prefix="sluice-cluster-bench-nats-")
        self.port = free_port()
        self.log = os.path.join(self.dir, "nats.log")
        self.proc = subprocess.Popen(
            ["taskset", "-c", args.server_cpu, args.nats_server, "-js", "-a", "127.0.0.1",
             "-p", str(self.port), "-sd", os.path.join(self.dir, "js")],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        wait_port(self.port, "nats-server", self.proc, self.log)

    def cpu(self):
        return loadtest.proc_cpu_s(self.proc.pid)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Node:
    """One sluice (one worker) pinned to args.server_cpu; with `nats`, a
    cluster node named `name`."""

    def __init__(self, args, name, nats=None):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix=f"sluice-cluster-bench-{name}-")
        cfg = loadtest.CONFIG.format(port=self.port, key='"event_id"')
        if nats is not None:
            cfg += (f'\n[cluster]\nnats_url = "nats://127.0.0.1:{nats.port}"\n'
                    f'stream = "BENCH"\nnode = "{name}"\nsnapshot_s = 60\n')
        path = os.path.join(self.dir, "sluice.toml")
        with open(path, "w") as f:
            f.write(cfg)
        self.log = os.path.join(self.dir, "sluice.log")
        self.proc = subprocess.Popen(
            ["taskset", "-c", args.server_cpu, SLUICE, "serve", "--config", path],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "w"),
            env={**os.environ, "SLUICE_LOG": "warn"})
        wait_port(self.port, f"sluice {name}", self.proc, self.log)
        # a cluster node listens before it is ready: wait for /healthz 200
        end = time.time() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        break
            except OSError:
                pass
            if time.time() > end:
                raise RuntimeError(f"sluice {name} never became ready")
            time.sleep(0.05)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def cpu(self):
        return loadtest.proc_cpu_s(self.proc.pid)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def phase(args, rate, cluster):
    nats = Nats(args) if cluster else None
    nodes = []
    try:
        names = ["a", "b"] if cluster else ["single"]
        nodes = [Node(args, n, nats) for n in names]
        cpu0 = [n.cpu() for n in nodes]
        ncpu0 = nats.cpu() if nats else 0.0
        opts = []
        for n in nodes:
            opts += ["--url", n.url("/v1/sse/fan/t")]
        b = loadtest.bench(args, *opts, "-c", str(args.subscribers), "--ramp", "5000/s",
                           "-d", f"{args.duration}s", "--publish", nodes[0].url("/v1/publish/fan/t"),
                           "--rate", f"{rate}/s", "--publish-key", "bench-pub")
        cpus = [n.cpu() - c for n, c in zip(nodes, cpu0)]
        ncpu = (nats.cpu() - ncpu0) if nats else None
        delivered = b["events"] - 2 * b["established"]
        expected = b["established"] * b["published"]
        per_node = []
        for i, (n, cpu) in enumerate(zip(names, cpus)):
            # round robin: connection k goes to node k % len(nodes)
            subs = len(range(i, b["established"], len(nodes)))
            share = delivered * subs / b["established"] if b["established"] else 0
            per_node.append({"node": n, "subscribers": subs, "cpu_s": round(cpu, 2),
                             "s_per_m_deliveries": round(cpu / share * 1e6, 2) if share else None})
        return {"phase": "cluster" if cluster else "single", "rate": rate,
                "subscribers": args.subscribers, "established": b["established"],
                "published": b["published"], "delivered": delivered,
                "delivered_ratio": round(delivered / expected, 4) if expected else None,
                "gaps": b["gaps"], "duplicates": b["duplicates"],
                "deliveries_per_s": round(delivered / args.duration),
                "lat_ms_p50": b["lat_ms"]["p50"], "lat_ms_p99": b["lat_ms"]["p99"],
                "nodes": per_node,
                "nats_cpu_s": round(ncpu, 2) if ncpu is not None else None,
                "bench_cpu_s": b["cpu_s"]}
    finally:
        for n in nodes:
            n.stop()
        if nats:
            nats.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="20,200", help="publishes per second, comma-separated")
    ap.add_argument("--subscribers", type=int, default=10000)
    ap.add_argument("--duration", type=int, default=10, help="seconds of publishing per phase")
    ap.add_argument("--server-cpu", default="0")
    ap.add_argument("--load-cpu", default="1")
    ap.add_argument("--read-interval", default=None, help="passed to sluice bench (default: its own)")
    ap.add_argument("--nats-server", default=shutil.which("nats-server") or "/usr/sbin/nats-server")
    ap.add_argument("--out", default=os.path.join(REPO, "bench-results", "cluster-bench.jsonl"))
    args = ap.parse_args()
    if not os.access(args.nats_server, os.X_OK):
        sys.exit("nats-server is missing: apt-get install -y nats-server")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    for rate in [int(r) for r in args.rates.split(",")]:
        for cluster in (False, True):
            r = phase(args, rate, cluster)
            r = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": loadtest.host(), **r}
            line = json.dumps(r)
            with open(args.out, "a") as f:
                f.write(line + "\n")
            print(line, flush=True)


if __name__ == "__main__":
    main()
