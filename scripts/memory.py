#!/usr/bin/env python3
"""Memory cost of sluice's state, measured as the server process's VmRSS
(/proc/PID/status) before and after a load, with one worker (hold: two).

    scripts/memory.py rows    [--n 1000000] [--pad 0]   keyed rows {"id":N,"v":1,...}
    scripts/memory.py topics  [--n 50000]               empty topics (snapshot GETs)
    scripts/memory.py clients [--n 1000] [--mb 10]      streams that never read
                                                        a topic of MB megabytes
    scripts/memory.py hold    [--n 19900] [--workers 2] [--hold-s 60]
                                                        N idle streams held by
                                                        one client process
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
hold:    N SSE streams of one empty topic, held by this process (non-blocking
         sockets on one epoll, from 127.0.0.1..127.0.0.K with --sources K,
         default one address per 20,000 streams), with heartbeat_s = 1.
         Raises its own and the server's soft RLIMIT_NOFILE to the hard limit
         (sluice keeps 32 + 8 per worker descriptors back from
         max_connections). Checks that every stream got its `connected`
         frame (heartbeat_s 1) and initial state, then measures: server RSS
         and PSS per stream; the socket buffer memory of the server's and
         the client's sockets apart (`ss -tm` skmem); /proc/net/sockstat
         and slab growth per stream (machine-wide, both ends); server CPU
         (utime+stime) over --hold-s seconds, minus the idle server's, per
         heartbeat the streams received, and from it CPU seconds per stream
         per hour at --default-heartbeat-s (15, the config default).
         --driver epoll runs the server on monoio's epoll driver.

Prints one JSON line. Needs a release build (cargo build --release).
"""
import argparse
import errno
import http.client
import json
import shutil
import os
import resource
import select
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = """[server]
listen = "127.0.0.1:{port}"
workers = {workers}
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
    def __init__(self, binary, server_extra, workers=1, env=None):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="sluice-memory-")
        cfg = os.path.join(self.dir, "sluice.toml")
        with open(cfg, "w") as f:
            f.write(CONFIG.format(port=self.port, server_extra=server_extra, workers=workers))
        # its warnings (e.g. the descriptor limit capping max_connections)
        self.log = os.path.join(self.dir, "sluice.log")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [binary, "serve", "--config", cfg],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, "SLUICE_LOG": "warn", **(env or {})},
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
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


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


# [server] lines of `hold`: heartbeats every second (so that they dominate
# the hold's CPU), streams that never time out, and room for a whole batch
# of connections reading their request at once from one address.
HOLD_SERVER = """heartbeat_s = 1
max_duration_s = 0
max_events = 0
max_pending_connections = 4096
max_pending_per_ip = 4096
"""

# Requests being opened at once (TCP connect to `connected` frame): under
# the listen backlog (4096) and the pending caps above.
HOLD_WINDOW = 1024

# IP_BIND_ADDRESS_NO_PORT (linux/in.h): bind() picks the source address and
# connect() the port, per destination, so each source address gives the
# whole ephemeral range towards the server.
IP_BIND_ADDRESS_NO_PORT = 24

HEARTBEAT = b": heartbeat "


def raise_nofile():
    """Soft RLIMIT_NOFILE up to the hard limit, for this process and the
    server it starts (which raises its own again)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def cpu_s(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pss_bytes(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no Pss")


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def sockstat():
    """/proc/net/sockstat's TCP line: inuse (this network namespace) and mem
    (pages, the whole kernel's TCP memory)."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                v = line.split()[1:]
                return dict(zip(v[0::2], map(int, v[1::2])))
    raise RuntimeError("no TCP line in /proc/net/sockstat")


def kernel_memory():
    """Slab bytes by cache (/proc/slabinfo, readable by root only) and
    /proc/meminfo's Slab and SUnreclaim: machine-wide, so other processes'
    churn shows up too."""
    caches = {}
    try:
        with open("/proc/slabinfo") as f:
            for line in f.readlines()[2:]:
                v = line.split()
                caches[v[0]] = int(v[1]) * int(v[3])
    except OSError:
        pass
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            if k in ("Slab", "SUnreclaim"):
                info[k] = int(v.split()[0]) * 1024
    return caches, info


def skmem(port):
    """Socket memory of the TCP sockets to and from `port`, by side, from
    `ss -tmn` (skmem: r receive queue, w send queue, f forward allocation,
    tb send buffer size; bytes): exact for these sockets, where
    /proc/net/sockstat's mem is the whole kernel's."""
    sides = {}
    for side, match in (("server", f"sport = :{port}"), ("client", f"dport = :{port}")):
        out = subprocess.run(["ss", "-tmnH", "state", "established", match],
                             capture_output=True, text=True, check=True).stdout
        v = {"sockets": 0, "r": 0, "w": 0, "f": 0, "tb": set()}
        for line in out.split("skmem:(")[1:]:
            v["sockets"] += 1
            for field in line.split(")", 1)[0].split(","):
                k = field.rstrip("0123456789")
                if k in ("r", "w", "f"):
                    v[k] += int(field[len(k):])
                elif k == "tb":
                    v["tb"].add(int(field[len(k):]))
        v["tb"] = sorted(v["tb"])
        sides[side] = v
    return sides


def conntrack_count():
    try:
        with open("/proc/sys/net/netfilter/nf_conntrack_count") as f:
            return int(f.read())
    except OSError:
        return None


def metric(srv, name):
    """Sum of a metric family's samples in GET /metrics."""
    status, text = srv.request("GET", "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics: {status}")
    total = 0.0
    for line in text.decode().splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


class Stream:
    """One SSE client connection: its socket and the bytes after the last
    complete frame (frames end with a blank line)."""

    __slots__ = ("sock", "buf", "head_done", "connected")

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.head_done = False
        self.connected = False


class Streams:
    """N SSE streams of one topic held by one process: non-blocking sockets
    on one epoll, frames counted by kind."""

    def __init__(self, srv, args):
        self.srv = srv
        self.args = args
        self.ep = select.epoll()
        self.by_fd = {}
        self.request = (f"GET /v1/sse/e/hold HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
                        "Accept: text/event-stream\r\n\r\n").encode()
        self.sources = [f"127.0.0.{i + 1}" for i in range(args.sources)]
        self.kinds = {"connected": 0, "initial_state": 0, "heartbeat": 0, "other": 0}
        self.failures = {}
        self.others = []

    def fail(self, st, why):
        self.failures[why] = self.failures.get(why, 0) + 1
        self.drop(st)

    def drop(self, st):
        fd = st.sock.fileno()
        self.ep.unregister(fd)
        del self.by_fd[fd]
        st.sock.close()

    def start(self, i):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        if len(self.sources) > 1:
            s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((self.sources[i % len(self.sources)], 0))
        err = s.connect_ex(("127.0.0.1", self.srv.port))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            raise OSError(err, f"connect: {os.strerror(err)}")
        st = Stream(s)
        self.by_fd[s.fileno()] = st
        # writable once connected: then the request goes out
        self.ep.register(s.fileno(), select.EPOLLOUT)

    def on_event(self, fd, ev):
        st = self.by_fd.get(fd)
        if st is None:
            return
        if ev & select.EPOLLOUT:
            err = st.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                return self.fail(st, f"connect: {os.strerror(err)}")
            # a fresh socket's buffer takes the whole small request
            if st.sock.send(self.request) != len(self.request):
                return self.fail(st, "short request write")
            self.ep.modify(fd, select.EPOLLIN)
            return
        try:
            data = st.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as e:
            return self.fail(st, f"recv: {e.strerror}")
        if not data:
            return self.fail(st, "closed by the server" if st.connected else "closed before connected")
        buf = st.buf + data
        if not st.head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                st.buf = buf
                return
            status = buf.split(b"\r\n", 1)[0]
            if not status.startswith(b"HTTP/1.1 200"):
                return self.fail(st, status.decode(errors="replace"))
            st.head_done = True
            buf = buf[end + 4:]
        frames = buf.split(b"\n\n")
        st.buf = frames.pop()
        for frame in frames:
            self.classify(st, frame)

    def classify(self, st, frame):
        if frame.startswith(HEARTBEAT):
            self.kinds["heartbeat"] += 1
            return
        lines = frame.split(b"\n")
        event = next((ln[7:] for ln in lines if ln.startswith(b"event: ")), b"")
        data = next((ln[6:] for ln in lines if ln.startswith(b"data: ")), b"")
        if not st.connected:
            # SPEC §2: the first frame is `retry:` + `event: connected`
            d = json.loads(data) if event == b"connected" else {}
            if d.get("type") != "connected" or d.get("heartbeat_s") != 1:
                return self.fail(st, "first frame is not connected with heartbeat_s 1")
            st.connected = True
            self.kinds["connected"] += 1
        elif event == b"initial_state":
            self.kinds["initial_state"] += 1
        else:
            self.kinds["other"] += 1
            if len(self.others) < 5:
                self.others.append(frame[:200].decode(errors="replace"))

    def poll(self, timeout):
        for fd, ev in self.ep.poll(timeout):
            self.on_event(fd, ev)

    def open(self, n, deadline_s):
        """Opens n streams, at most HOLD_WINDOW unconfirmed at a time, until
        every one has its connected frame and initial state."""
        end = time.monotonic() + deadline_s
        started = 0
        while self.kinds["initial_state"] + sum(self.failures.values()) < n:
            in_flight = started - self.kinds["initial_state"] - sum(self.failures.values())
            while started < n and in_flight < HOLD_WINDOW:
                self.start(started)
                started += 1
                in_flight += 1
            self.poll(0.05)
            if time.monotonic() > end:
                raise RuntimeError(f"streams did not open within {deadline_s} s: {self.kinds} "
                                   f"failures {self.failures}")

    def read_for(self, seconds):
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.poll(min(left, 0.1))

    def close(self):
        for st in list(self.by_fd.values()):
            self.drop(st)
        self.ep.close()


def hold_mode(srv, args):
    pid = srv.proc.pid
    n = args.n
    load_start = list(os.getloadavg())
    # the server's budget: sluice caps max_connections below its descriptor
    # limit (32 + 8 per worker kept back, src/server/listener.rs)
    status, health = srv.request("GET", "/healthz")
    assert status == 200, (status, health)
    idle_fds = fd_count(pid)
    # CPU of the server with no connections: its workers' timer ticks
    cpu0, t0 = cpu_s(pid), time.monotonic()
    time.sleep(args.baseline_s)
    idle_cpu_per_s = (cpu_s(pid) - cpu0) / (time.monotonic() - t0)

    rss0, pss0 = settle(srv), pss_bytes(pid)
    sock0 = sockstat()
    slab0, mem0 = kernel_memory()
    ct0 = conntrack_count()

    streams = Streams(srv, args)
    t_open = time.monotonic()
    streams.open(n, args.open_timeout_s)
    open_s = time.monotonic() - t_open
    opened = streams.kinds["connected"]
    if opened != n or streams.failures:
        raise RuntimeError(f"{opened} of {n} streams connected; failures {streams.failures}")
    # two seconds of heartbeats, read, before measuring: every stream is in
    # its steady state (a heartbeat a second, read at once)
    streams.read_for(2)
    _, health = srv.request("GET", "/healthz")
    server_streams = json.loads(health)["streams"]
    rss1, pss1 = settle(srv), pss_bytes(pid)
    streams.read_for(0.5)
    sock1 = sockstat()
    slab1, mem1 = kernel_memory()
    ct1 = conntrack_count()
    # after the slab reading: listing /proc/PID/fd makes an inode per entry
    fds = fd_count(pid)
    sk1 = skmem(srv.port)
    # read what queued up while measuring (nothing was read), so that the
    # hold counts only heartbeats sent within it
    streams.read_for(1.5)

    # the hold: server CPU against the heartbeats the streams received
    bytes0 = metric(srv, "sluice_sse_written_bytes_total")
    hb0 = streams.kinds["heartbeat"]
    cpu0, own0, t0 = cpu_s(pid), sum(os.times()[:2]), time.monotonic()
    streams.read_for(args.hold_s)
    cpu1, own1, t1 = cpu_s(pid), sum(os.times()[:2]), time.monotonic()
    hb = streams.kinds["heartbeat"] - hb0
    # a long hold outlives keepalive_timeout_s: ask on a new connection
    srv.conn.close()
    bytes1 = metric(srv, "sluice_sse_written_bytes_total")
    sock2 = sockstat()
    sk2 = skmem(srv.port)
    held = len(streams.by_fd)
    streams.close()
    if held != n:
        raise RuntimeError(f"{n - held} streams closed during the hold: {streams.failures}")

    window = t1 - t0
    cpu = cpu1 - cpu0
    cpu_heartbeats = cpu - idle_cpu_per_s * window
    us_per_hb = cpu_heartbeats / max(hb, 1) * 1e6
    per_hour = 3600 / args.default_heartbeat_s
    slab_delta = {k: slab1.get(k, 0) - v for k, v in slab0.items()}
    top = sorted(((d, k) for k, d in slab_delta.items() if d > 0), reverse=True)[:10]
    return {
        "mode": "hold",
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "scripts/memory.py " + " ".join(sys.argv[1:]),
        "host": {
            "nproc": os.cpu_count(),
            "kernel": os.uname().release,
            "commit": subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                                     capture_output=True, text=True).stdout.strip(),
        },
        "connections": n,
        "workers": args.workers,
        "driver": args.driver,
        "source_ips": args.sources,
        "nofile_hard": args.nofile,
        "server_fds_idle": idle_fds,
        "server_fds_held": fds,
        "server_streams": server_streams,
        "open_s": round(open_s, 2),
        "frames": streams.kinds,
        "other_frames": streams.others,
        "rss_before": rss0,
        "rss_held": rss1,
        "rss_kib_per_conn": round((rss1 - rss0) / n / 1024, 3),
        "pss_before": pss0,
        "pss_held": pss1,
        "pss_kib_per_conn": round((pss1 - pss0) / n / 1024, 3),
        # ss: the sockets of this run only, each side apart
        "skmem_held": sk1,
        "skmem_end_of_hold": sk2,
        "server_skmem_bytes_per_conn": round((sk1["server"]["r"] + sk1["server"]["w"] + sk1["server"]["f"]) / n, 1),
        "server_skmem_bytes_per_conn_end_of_hold":
            round((sk2["server"]["r"] + sk2["server"]["w"] + sk2["server"]["f"]) / n, 1),
        # machine-wide (other processes' sockets move it too)
        "sockstat_tcp_inuse": [sock0.get("inuse"), sock1.get("inuse")],
        "sockstat_tcp_mem_pages": [sock0.get("mem"), sock1.get("mem"), sock2.get("mem")],
        # machine-wide, both ends (client and server sockets are on this
        # machine): 2 sockets per connection
        "slab_bytes_per_conn_both_ends": round((mem1["Slab"] - mem0["Slab"]) / n, 1),
        "sunreclaim_bytes_per_conn_both_ends": round((mem1["SUnreclaim"] - mem0["SUnreclaim"]) / n, 1),
        "slab_caches_bytes_per_conn_both_ends": {k: round(d / n, 1) for d, k in top},
        "conntrack": [ct0, ct1],
        "idle_cpu_s_per_s": round(idle_cpu_per_s, 6),
        "hold_s": round(window, 2),
        "heartbeats_received": hb,
        # heartbeat_s 1: sent at the first 100 ms tick after 1 s of silence
        "heartbeat_period_s": round(n * window / max(hb, 1), 3),
        "heartbeats_written_by_bytes": round((bytes1 - bytes0) / len(b": heartbeat 1700000000\n\n")),
        "server_cpu_s": round(cpu, 3),
        "server_cpu_pct_of_core": round(100 * cpu / window, 1),
        "client_cpu_s": round(own1 - own0, 3),
        "cpu_us_per_heartbeat": round(us_per_hb, 3),
        "default_heartbeat_s": args.default_heartbeat_s,
        "cpu_s_per_conn_hour_at_default": round(us_per_hb * per_hour / 1e6, 6),
        "loadavg_start": load_start,
        "loadavg_end": list(os.getloadavg()),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["rows", "topics", "clients", "hold"])
    p.add_argument("--n", type=int)
    p.add_argument("--pad", type=int, default=0)
    p.add_argument("--flush-ring", action="store_true",
                   help="rows: measure after pushing the rows' frames out of the ring")
    p.add_argument("--mb", type=int, default=10)
    p.add_argument("--bin", default=os.path.join(REPO, "target", "release", "sluice"))
    p.add_argument("--server-extra", default="")
    p.add_argument("--workers", type=int, help="server workers (default 1; hold: 2)")
    p.add_argument("--driver", choices=["io_uring", "epoll"], default="io_uring",
                   help="hold: the server's monoio driver (SLUICE_DRIVER)")
    p.add_argument("--hold-s", type=float, default=60, help="hold: seconds of heartbeats measured")
    p.add_argument("--baseline-s", type=float, default=5,
                   help="hold: seconds of the idle server's CPU, subtracted from the hold's")
    p.add_argument("--sources", type=int,
                   help="hold: client source addresses 127.0.0.1..127.0.0.K (default one per 20,000)")
    p.add_argument("--open-timeout-s", type=float, default=120)
    p.add_argument("--default-heartbeat-s", type=int, default=15,
                   help="hold: the heartbeat the per-hour figure is given for (config default 15)")
    args = p.parse_args()
    if args.n is None:
        args.n = {"rows": 1_000_000, "topics": 50_000, "clients": 1000, "hold": 19_900}[args.mode]
    args.nofile = raise_nofile()
    extra, env = args.server_extra, {}
    if args.mode == "hold":
        args.workers = args.workers or 2
        args.sources = args.sources or max(1, -(-args.n // 20_000))
        if args.sources > 254:
            p.error("--sources: at most 254 (127.0.0.1..127.0.0.254)")
        # sluice keeps 32 + 8 per worker descriptors back, and this script
        # holds one more connection to it (/healthz, /metrics)
        budget = args.nofile - 32 - 8 * args.workers - 1
        if args.n > budget:
            p.error(f"--n {args.n}: the descriptor limit {args.nofile} allows {budget} streams "
                    f"with {args.workers} workers (raise the hard limit: ulimit -Hn)")
        extra = HOLD_SERVER + extra
        if args.driver == "epoll":
            env["SLUICE_DRIVER"] = "epoll"
    srv = Server(args.bin, extra, args.workers or 1, env)
    try:
        out = {"rows": rows_mode, "topics": topics_mode, "clients": clients_mode,
               "hold": hold_mode}[args.mode](srv, args)
    finally:
        srv.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
