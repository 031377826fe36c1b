"""Broker capacity: how much one broker process routes, and what it costs, with 1,000 to 10,000
simulated worker connections (or 50,000 through sub-brokers, ``--federation``).

A real broker (``python -m scoop.broker``) is started as the launcher starts it.  Simulated
workers (DEALER sockets speaking the wire protocol: CURVE handshake with keys from the cluster's secret,
signed header frames) take tasks on credit and answer each at once; a simulated origin keeps a
window of small tasks in flight.  Task execution is out of the picture: what is measured is the
broker's routing.  The benchmark scales itself: ``--per-proc`` connections per simulating
process (each with its own ZeroMQ context, under the 1,023 sockets a context allows by default),
as many processes as that takes, and the descriptor limit raised to its hard maximum (said on
stderr).

Printed (one JSON line per size, then a table with the goals):
  join_s           from the first simulated worker connecting to the origin hearing all joined
  broker_kib_per_worker   broker RSS growth per connected worker (KiB); with --baseline, the
                   same for a bare ROUTER with the same handshake (libzmq's own cost) beside it
  tasks_per_s      tasks completed per second (each: submit -> worker -> result -> submitter)
  records_per_s    task and result records routed per second (2 per task)
  broker_cpu       the broker process's CPU use during the measurement (1.0 = one core)
  records_per_broker_cpu_s   records routed per second of broker CPU: its capacity on one core,
                   whatever share of the machine the simulators take
  meta_bytes_per_s bytes per second one meta-stream subscriber receives during the measurement

    python bench/broker_capacity.py [--workers 1000] [--seconds 8] [--window 20000]
    python bench/broker_capacity.py --table 1000 2000 5000 10000 --seconds 4 --baseline
    python bench/broker_capacity.py --federation 5 --workers 50000 --seconds 6
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import resource
import select
import subprocess
import sys
import time

import psutil
import zmq

from scoop import _protocol as P
from scoop.meta import open_view
from scoop.security import secure_client

BODY = b"\x80\x05" + b"x" * 62  # a small task body; never unpickled by anyone here


def raise_fd_limit(need: int):
    """Every connection is a descriptor on each side: the soft limit goes to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        sys.stderr.write(f"broker_capacity: raised the descriptor limit from {soft} to {hard}\n")
    if hard < need:
        raise SystemExit(f"broker_capacity: {need} descriptors needed, the hard limit is {hard} "
                         f"(raise it: ulimit -Hn, or limits.conf)")
    lo, hi = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    return hi - lo + 1


ENCRYPTION = True  # --encryption off: PLAIN handshakes, no CURVE (a trusted fabric)
SIM_NICE = 10      # --sim-nice: the simulators' niceness (the broker is never kept waiting for a core)


def start_broker(secret: bytes, upstream: str | None = None):
    cfg = {"secret": secret.hex(), "main": "tcp://127.0.0.1:0", "meta": "tcp://127.0.0.1:0",
           "heartbeat_timeout": 600, "encryption": ENCRYPTION}
    if upstream:
        cfg["upstream"] = upstream
    module = "scoop.federation" if upstream else "scoop.broker"  # a sub-broker, or the root
    proc = subprocess.Popen([sys.executable, "-m", module], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    proc.stdin.write((json.dumps(cfg) + "\n").encode())
    proc.stdin.flush()
    ports = json.loads(proc.stdout.readline())
    return proc, ports["main_port"], ports["meta_port"]


def bare_router(secret: bytes, port_q, stop):
    """libzmq's own cost per connection: a ROUTER with the broker's handshake and options that
    reads and drops every message."""
    from scoop.broker import IO_THREADS
    from scoop.liveness import configure_socket
    from scoop.security import Authenticator, secure_server
    ctx = zmq.Context(io_threads=IO_THREADS)
    auth = Authenticator(ctx, secret)
    s = ctx.socket(zmq.ROUTER)
    for opt, val in ((zmq.SNDHWM, 0), (zmq.RCVHWM, 0), (zmq.LINGER, 0), (zmq.BACKLOG, 4096)):
        s.setsockopt(opt, val)
    configure_socket(s, 600)
    secure_server(s, secret, "tcp://127.0.0.1:0", ENCRYPTION)
    port_q.put(s.bind_to_random_port("tcp://127.0.0.1"))
    while not stop.is_set():
        if s.poll(100):
            while s.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                s.recv_multipart()
    s.close(0)
    auth.stop()
    ctx.term()


def _record(hdr: bytes, body: bytes = b"") -> bytes:
    return P.REC.pack(len(hdr), len(body), 0) + hdr + body


def _connect(ctx, port, secret, role, name):
    """A DEALER speaking to the broker as a peer of ``role`` would: CURVE handshake, HELLO."""
    uid = os.urandom(8).hex()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.IDENTITY, b"t" + uid.encode())
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 0)
    s.setsockopt(zmq.RCVHWM, 0)
    secure_client(s, secret, f"tcp://127.0.0.1:{port}", ENCRYPTION)
    s.connect(f"tcp://127.0.0.1:{port}")
    hello = {"uid": uid, "role": role, "name": name, "host": "sim", "host_key": 1, "pid": os.getpid()}
    return s, _record(P.HELLO, json.dumps(hello).encode())


def _send(sock, signer, data: bytes):
    sock.send(signer.mac(P.TO_BROKER, data) + data)


def _records(header):
    """(type byte, offset of the record header) of every record of a received header frame
    (a simulator need not check the broker's MACs: the broker checks theirs)."""
    i, end = P.MAC_SIZE, len(header)
    unpack, rsz = P.REC.unpack_from, P.REF.size
    while i < end:
        hl, bl, nr = unpack(header, i)
        s = i + P.REC.size
        yield header[s], s
        i = s + hl + bl + nr * rsz


def simulated_workers(ports, secret, count, credit, stop, ready, close_fds=()):
    """``count`` worker connections in one process (one context): answer every task at once.
    ``ports``: the brokers to spread them over (the root's sub-brokers, or the one broker).
    ``close_fds``: the brokers' stdin pipes, inherited by the fork: the brokers see their end."""
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    if SIM_NICE:
        os.nice(SIM_NICE)  # the broker first: it is what is measured, they only answer
    signer = P.Signer(secret)
    ctx = zmq.Context()
    ctx.max_sockets = count + 16
    socks = []
    # epoll on each socket's ZMQ_FD: a wait costs the sockets that have something, where
    # zmq_poll would look at all 1,000 of them for every task
    ep = select.epoll()
    by_fd = {}
    for k in range(count):
        s, hello = _connect(ctx, ports[k % len(ports)], secret, "worker", f"sim{os.getpid()}-{k}")
        _send(s, signer, hello + _record(P.COUNT.pack(P.CREDIT, credit)))
        fd = s.getsockopt(zmq.FD)
        by_fd[fd] = s
        ep.register(fd, select.EPOLLIN)
        socks.append(s)
    ready.put(count)
    # lean on purpose: the simulators share the machine with the broker, and every cycle they
    # spend is one the broker does not get; they read task ids by offset and reply with
    # pre-packed pieces
    body = b"\x80\x05K\x01."
    res_pack = P.RESULT_HEADER.pack
    prefix = P.REC.pack(P.RESULT_HEADER.size, len(body), 0)
    id_unpack = P.ID.unpack_from
    task_bytes = (P.TASK[0], P.CHUNK[0])
    credit_rec = P.REC.pack(P.COUNT.size, 0, 0)
    count_pack = P.COUNT.pack
    name = b"sim".ljust(12, b"\0")
    waiting = list(socks)  # what came before the first wait has signalled already
    while not stop.is_set():
        for s in waiting:
            # drained until empty, also after each send (a send can take the signal of a message);
            # what waits on one connection is answered in one message, as a worker's outbox does
            while s.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                pieces = []
                n = 0
                now = time.time()
                while True:
                    parts = [s.recv()]
                    while s.getsockopt(zmq.RCVMORE):
                        parts.append(s.recv())
                    for t, off in _records(parts[0]):
                        if t in task_bytes:
                            tid = id_unpack(parts[0], off + 1)[0]
                            pieces += (prefix, res_pack(P.RESULT, tid, P.OK, 1, now, now, name), body)
                            n += 1
                    if not s.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                        break
                if n:
                    pieces += (credit_rec, count_pack(P.CREDIT, n))
                    _send(s, signer, b"".join(pieces))
        waiting = [by_fd[fd] for fd, _ in ep.poll(0.1)]
    ep.close()
    for s in socks:
        s.close(0)
    ctx.term()


class Sims:
    """The simulating processes: ``per_proc`` connections each."""

    def __init__(self, ports, secret, workers, per_proc, credit, close_fds=()):
        self.stop = mp.Event()
        self.ready = mp.Queue()
        procs = max(1, math.ceil(workers / per_proc))
        shares = [workers // procs + (1 if i < workers % procs else 0) for i in range(procs)]
        self.procs = [mp.Process(target=simulated_workers, daemon=True,
                                 args=(ports, secret, n, credit, self.stop, self.ready, close_fds))
                      for n in shares]

    def start(self):
        for p in self.procs:
            p.start()

    def wait_connected(self, timeout=300):
        for _ in self.procs:
            self.ready.get(timeout=timeout)

    def end(self):
        self.stop.set()
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()


def _rss(pid) -> int:
    return psutil.Process(pid).memory_info().rss


def baseline_kib(secret, workers, per_proc) -> float:
    """RSS growth per connection of a bare ROUTER (libzmq's buffers and handshake state)."""
    port_q, stop = mp.Queue(), mp.Event()
    router = mp.Process(target=bare_router, args=(secret, port_q, stop), daemon=True)
    router.start()
    port = port_q.get(timeout=30)
    time.sleep(0.5)
    before = _rss(router.pid)
    sims = Sims([port], secret, workers, per_proc, 1)
    try:
        sims.start()
        sims.wait_connected()
        deadline = time.monotonic() + 60  # every connection accepted, then its handshake and hello
        while (len(psutil.Process(router.pid).net_connections()) < workers
               and time.monotonic() < deadline):
            time.sleep(0.5)
        time.sleep(2.0)
        grown = _rss(router.pid) - before
    finally:
        sims.end()
        stop.set()
        router.join(5)
        if router.is_alive():
            router.kill()
    return grown / workers / 1024


def _joined(origin, signer, want, timeout) -> float | None:
    """Waits until the origin hears the cluster has ``want`` workers; returns when."""
    deadline = time.monotonic() + timeout
    size = 0
    while size < want and time.monotonic() < deadline:
        if not origin.poll(200):
            continue
        while origin.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            recs = P.recv_verified(origin, signer, P.FROM_BROKER)
            for rec in recs or ():
                if rec.hdr[:1] == P.SIZE:
                    size = max(size, P.SIZE_HEADER.unpack(rec.hdr)[1])
    return time.monotonic() if size >= want else None


def measure(a, workers: int) -> dict:
    secret = P.new_secret()
    signer = P.Signer(secret)
    broker, port, meta_port = start_broker(secret)
    subs = []
    ports = [port]
    sub_metas = []
    for _ in range(a.federation):
        sub, sport, smeta = start_broker(secret, upstream=f"tcp://127.0.0.1:{port}")
        subs.append(sub)
        ports.append(sport)
        sub_metas.append(smeta)
    if a.federation:
        ports = ports[1:]  # workers behind the sub-brokers only
    ctx = zmq.Context()
    sims = Sims(ports, secret, workers, _per_proc(a, workers), a.credit,
                close_fds=[b.stdin.fileno() for b in [broker] + subs])
    origin, hello = _connect(ctx, port, secret, "origin", "origin")
    meta = open_view(ctx, secret, f"tcp://127.0.0.1:{meta_port}", ENCRYPTION)
    # where tasks wait: each sub-broker's queue and what its workers hold
    smetas = [open_view(ctx, secret, f"tcp://127.0.0.1:{mp_}", ENCRYPTION) for mp_ in sub_metas]
    window = a.window_per_worker * workers if a.window_per_worker else a.window
    out = {"bench": "broker_capacity", "workers": workers, "sub_brokers": a.federation,
           "sim_processes": len(sims.procs), "window": window, "batch": a.batch}
    try:
        digest = P.digest(b"fn")
        _send(origin, signer, hello + _record(P.BLOB_HEADER.pack(P.BLOB, digest), b"fn"))
        index = None
        deadline = time.monotonic() + 60
        while index is None:
            if time.monotonic() > deadline:
                raise SystemExit("broker_capacity: no welcome from the broker")
            if not origin.poll(1000):
                continue
            for rec in P.recv_verified(origin, signer, P.FROM_BROKER) or ():
                if rec.hdr[:1] == P.WELCOME:
                    index = json.loads(bytes(rec.body))["index"]
        time.sleep(0.5)
        rss0 = _rss(broker.pid)
        t_connect = time.monotonic()
        sims.start()
        # a federation's root hears of workers behind sub-brokers from their load reports
        t_joined = _joined(origin, signer, workers, max(120, workers / 200))
        out["join_s"] = round(t_joined - t_connect, 2) if t_joined else None
        sims.wait_connected()
        time.sleep(1.0)
        out["broker_kib_per_worker"] = round((_rss(broker.pid) - rss0) / workers / 1024, 1)
        bp = psutil.Process(broker.pid)
        c0, t0 = bp.cpu_times(), time.monotonic()
        time.sleep(2.0)
        c1, t1 = bp.cpu_times(), time.monotonic()
        # what the connected workers cost with nothing to route: snapshots, heartbeats
        out["broker_idle_cpu"] = round((c1.user + c1.system - c0.user - c0.system) / (t1 - t0), 3)
        if subs:
            out["sub_broker_kib_per_worker"] = round(
                sum(_rss(s.pid) for s in subs) / workers / 1024, 1)
        out.update(_load(a, window, origin, signer, index, digest, broker, subs, meta, sims, smetas))
    finally:
        # the brokers first: simulators dropping their connections would be reported as losses
        origin.close(0)
        meta.close(0)
        for m in smetas:
            m.close(0)
        for b in [broker] + subs:
            b.stdin.close()
        for b in [broker] + subs:
            try:
                b.wait(10)
            except subprocess.TimeoutExpired:
                b.kill()
                b.wait()
        sims.end()
        ctx.term()
    if a.baseline:
        out["zmq_kib_per_connection"] = round(baseline_kib(secret, workers, _per_proc(a, workers)), 1)
    return out


def _view_message(frames, signer) -> tuple:
    """(kind, data) of a meta-stream message as a view reads it (scoop.meta), or (None, None)."""
    if len(frames) == 1 and signer.check(P.META, frames[0]):
        recs = P.parse(frames[0], []) or ()
        if recs and recs[0].hdr[:1] in (P.STATUS, P.EVENT):
            return ("status" if recs[0].hdr[:1] == P.STATUS else "event"), json.loads(bytes(recs[0].body))
    return None, None


def _per_proc(a, workers: int) -> int:
    """Connections per simulating process: ``--per-proc``, or a share of ``--sim-procs``."""
    return -(-workers // a.sim_procs) if a.sim_procs else a.per_proc


def _load(a, window, origin, signer, index, digest, broker, subs, meta, sims, smetas=()) -> dict:
    seq = in_flight = done = 0
    bp = psutil.Process(broker.pid)
    sps = [psutil.Process(s.pid) for s in subs]
    simps = [psutil.Process(p.pid) for p in sims.procs]
    me = psutil.Process()
    marks = []
    meta_bytes = 0
    kill_at = time.monotonic() + a.seconds / 2 if a.kill_sub and subs else None
    seen = set() if kill_at else None
    dups = 0
    t_end = time.monotonic() + a.seconds
    t_measure = time.monotonic() + min(2.0, a.seconds / 4)  # warm-up first
    pack = P.TASK_HEADER.pack
    task_prefix = P.REC.pack(P.TASK_HEADER.size, len(BODY), 0)
    result_byte = P.RESULT[0]
    next_send = time.monotonic()
    routed = []  # (time, messages the broker routed so far), from its snapshots
    sub_seen = [[] for _ in smetas]  # each sub-broker's snapshots: (time, totals)
    root_seen = []
    while True:
        now = time.monotonic()
        if not marks and now >= t_measure:
            marks.append((now, done, bp.cpu_times(), [s.cpu_times() for s in sps], _threads(bp),
                          _cpu(simps), _cpu([me]), psutil.cpu_times()))
            while meta.poll(0):
                meta.recv_multipart()
            meta_bytes = 0
            routed.clear()
        if kill_at is not None and now >= kill_at:
            subs[0].kill()  # mid-stream: its workers' tasks must run elsewhere, once
            kill_at = None
        if now >= t_end:
            if seen is None or not in_flight or now >= t_end + 60:
                break
        while in_flight < window and now < t_end and (not a.rate or now >= next_send):
            next_send = max(next_send, now - 0.1) + a.batch / a.rate if a.rate else 0
            pieces = []
            for _ in range(a.batch):
                seq += 1
                pieces += (task_prefix, pack(P.TASK, (index << 40) | seq, 0, digest, 1, 0), BODY)
            _send(origin, signer, b"".join(pieces))
            in_flight += a.batch
        while meta.poll(0):
            frames = meta.recv_multipart()
            meta_bytes += sum(len(f) for f in frames)
            kind, data = _view_message(frames, signer)
            if kind == "status" and marks:
                totals = data["totals"]
                routed.append((time.monotonic(), totals["routed_messages"]))
                root_seen.append(totals)
        for m, seen_ in zip(smetas, sub_seen):
            while m.poll(0):
                kind, data = _view_message(m.recv_multipart(), signer)
                if kind == "status" and marks:
                    seen_.append((time.monotonic(), data["totals"]))
        wait = 50 if not a.rate else max(0, min(50, int((next_send - time.monotonic()) * 1000)))
        if origin.poll(wait):
            while origin.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                parts = [origin.recv()]
                while origin.getsockopt(zmq.RCVMORE):
                    parts.append(origin.recv())
                n = 0
                for t, off in _records(parts[0]):
                    if t == result_byte:
                        n += 1
                        if seen is not None:
                            tid = P.ID.unpack_from(parts[0], off + 1)[0]
                            dups += tid in seen
                            seen.add(tid)
                done += n
                in_flight -= n
    if seen is not None:
        return {"killed_sub_broker": True, "tasks_submitted": seq, "results": len(seen),
                "lost": seq - len(seen), "duplicates": dups}
    t1, d1, c1, s1, th1 = time.monotonic(), done, bp.cpu_times(), [s.cpu_times() for s in sps], _threads(bp)
    sim1, me1, m1 = _cpu(simps), _cpu([me]), psutil.cpu_times()
    t0, d0, c0, s0, th0, sim0, me0, m0 = marks[0]
    tasks_per_s = (d1 - d0) / (t1 - t0)
    cpu = ((c1.user + c1.system) - (c0.user + c0.system)) / (t1 - t0)
    main_cpu = (th1.get(bp.pid, 0) - th0.get(bp.pid, 0)) / (t1 - t0)
    out = {"tasks_per_s": round(tasks_per_s), "records_per_s": round(2 * tasks_per_s),
           "broker_cpu": round(cpu, 2), "broker_cpu_main": round(main_cpu, 2),
           "broker_cpu_io": round(cpu - main_cpu, 2), "tasks_done": done,
           # what one core of broker routes: independent of the simulators' own CPU needs
           "records_per_broker_cpu_s": round(2 * tasks_per_s / cpu) if cpu > 0 else None,
           "meta_bytes_per_s": round(meta_bytes / (t1 - t0)),
           # where the machine's cores went: the simulators (all processes), the submitter, idle
           "sims_cpu": round((sim1 - sim0) / (t1 - t0), 2), "origin_cpu": round((me1 - me0) / (t1 - t0), 2),
           "machine_idle": round((m1.idle - m0.idle) / (t1 - t0), 2),
           "load_avg": round(os.getloadavg()[0], 1)}
    if len(routed) >= 2:
        msgs = (routed[-1][1] - routed[0][1]) / (routed[-1][0] - routed[0][0])
        out["messages_per_s"] = round(msgs)
        out["records_per_message"] = round(2 * tasks_per_s / msgs, 2) if msgs else None
    if root_seen:  # where the tasks in flight wait, on average over the run
        out["root_queued"] = round(sum(t["queued"] for t in root_seen) / len(root_seen))
        out["root_held_by_subs"] = round(sum(t["running"] for t in root_seen) / len(root_seen))
    if any(sub_seen):
        out["sub_queued"] = [round(sum(t["queued"] for _, t in s_) / len(s_)) if s_ else None
                             for s_ in sub_seen]
        out["sub_held_by_workers"] = [round(sum(t["running"] for _, t in s_) / len(s_)) if s_ else None
                                      for s_ in sub_seen]
        rpm = []
        for s_ in sub_seen:  # records (task + result) per message between a sub-broker and its workers
            if len(s_) >= 2:
                a0, b0 = s_[0][1], s_[-1][1]
                msgs = b0["routed_messages"] - a0["routed_messages"]
                rpm.append(round(2 * (b0["done"] - a0["done"]) / msgs, 2) if msgs else None)
        out["sub_records_per_message"] = rpm
    if subs:
        out["sub_broker_cpu"] = [round(((b.user + b.system) - (a_.user + a_.system)) / (t1 - t0), 2)
                                 for a_, b in zip(s0, s1)]
    return out


def _cpu(procs) -> float:
    """CPU seconds of these processes (user + system), those gone counted as 0."""
    total = 0.0
    for p in procs:
        try:
            c = p.cpu_times()
        except psutil.Error:
            continue
        total += c.user + c.system
    return total


def _threads(proc) -> dict:
    """CPU seconds per thread id (the main thread's id is the pid; the rest is libzmq's I/O)."""
    return {t.id: t.user_time + t.system_time for t in proc.threads()}


def table(rows):
    """The goals of the scale issue next to the figures."""
    base = next((r for r in rows if r["workers"] == 1000), rows[0])
    lines = ["| workers | join s (≤10) | tasks/s | records / broker CPU-s | × 1,000's (≥0.8) | broker CPU "
             "| broker KiB/worker | libzmq KiB/conn | above libzmq (≤20 KB) | meta B/s (≤200 KB/s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cap = r.get("records_per_broker_cpu_s") or 0
        ratio = cap / base["records_per_broker_cpu_s"] if base.get("records_per_broker_cpu_s") else 0
        z = r.get("zmq_kib_per_connection")
        above = f'{(r["broker_kib_per_worker"] - z) * 1.024:.1f} KB' if z is not None else "–"
        lines.append(f'| {r["workers"]:,} | {r.get("join_s")} | {r["tasks_per_s"]:,} | {cap:,} | {ratio:.2f} '
                     f'| {r["broker_cpu"]} | {r["broker_kib_per_worker"]} | {z if z is not None else "–"} '
                     f'| {above} | {r["meta_bytes_per_s"]:,} |')
    return "\n".join(lines)


def federation_table(one, fed):
    """The federation's goals next to its figures, one broker measured in the same run."""
    subs = fed.get("sub_broker_cpu") or []
    return "\n".join([
        "| run | join s | tasks/s | × one broker (goal ≥ 0.7) | root CPU | sub-brokers' CPU "
        "| simulators' CPU |",
        "|---|---|---|---|---|---|---|",
        f'| one broker, {one["workers"]:,} workers | {one.get("join_s")} | {one["tasks_per_s"]:,} | 1.00 '
        f'| {one["broker_cpu"]} | – | {one.get("sims_cpu")} |',
        f'| {fed["sub_brokers"]} sub-brokers, {fed["workers"]:,} workers | {fed.get("join_s")} '
        f'| {fed["tasks_per_s"]:,} | **{fed["x_one_broker"]:.2f}** | {fed["broker_cpu"]} '
        f'| {min(subs, default=0)}-{max(subs, default=0)} each | {fed.get("sims_cpu")} |'])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--table", type=int, nargs="+", metavar="WORKERS",
                    help="measure each size in turn and print a table against the goals")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--window", type=int, default=20000, help="tasks in flight")
    ap.add_argument("--window-per-worker", type=int, default=0, metavar="N",
                    help="N tasks in flight per worker instead (the same load on each worker at every size)")
    ap.add_argument("--batch", type=int, default=500, help="tasks per submit message")
    ap.add_argument("--rate", type=float, default=0, metavar="TASKS_PER_S",
                    help="submit at this pace (the same load at every size) instead of keeping the "
                         "window full; the window stays a cap")
    ap.add_argument("--sim-nice", type=int, default=10,
                    help="niceness of the simulating processes (0: compete with the broker for cores)")
    ap.add_argument("--credit", type=int, default=64, help="credit per simulated worker")
    ap.add_argument("--per-proc", type=int, default=500,
                    help="simulated workers per process (each process has its own ZeroMQ context)")
    ap.add_argument("--sim-procs", type=int, default=0, metavar="N",
                    help="N simulating processes whatever the size (instead of --per-proc): the same "
                         "competition for the cores at every size, each process holding its share")
    ap.add_argument("--federation", type=int, default=0, metavar="K",
                    help="K sub-brokers under the root; the simulated workers connect to them")
    ap.add_argument("--kill-sub", action="store_true",
                    help="with --federation: SIGKILL one sub-broker mid-stream, then count lost and "
                         "duplicate results")
    ap.add_argument("--reference", type=int, default=10000, metavar="WORKERS",
                    help="with --federation: first measure one broker with this many workers, under the "
                         "same conditions (simulators, window per worker), and print the federation's "
                         "rate as a ratio of it (0: skip)")
    ap.add_argument("--encryption", choices=("on", "off"), default="on",
                    help="off: PLAIN handshakes and no CURVE, as --encryption off gives a cluster")
    ap.add_argument("--baseline", action="store_true",
                    help="also measure a bare ROUTER's memory per connection (libzmq's own)")
    a = ap.parse_args(argv)
    global ENCRYPTION, SIM_NICE
    ENCRYPTION = a.encryption == "on"
    SIM_NICE = a.sim_nice
    sizes = a.table or [a.workers]
    reference = a.reference if a.federation and not a.kill_sub else 0
    per_proc = max(_per_proc(a, n) for n in sizes + ([reference] if reference else []))
    if min(sizes) < 1 or a.sim_procs < 0 or per_proc < 1 or per_proc > 10000:
        raise SystemExit("broker_capacity: workers must be positive and connections per simulating "
                         "process (--per-proc, or workers / --sim-procs) between 1 and 10000")
    # the busiest process: the broker (or each sub-broker) holds a descriptor per worker it serves
    # and each simulating process two per connection (its TCP socket, its ZeroMQ socket's mailbox)
    per_broker = max(-(-max(sizes) // max(1, a.federation)), reference)
    ports = raise_fd_limit(max(per_broker + 1000, 2 * per_proc + 100))
    if max(sizes) > ports * max(1, a.federation or 1):
        sys.stderr.write(f"broker_capacity: {max(sizes)} connections, {ports} local ports per destination\n")
    if reference:
        one = measure(argparse.Namespace(**dict(vars(a), federation=0)), reference)
        print(json.dumps(one), flush=True)
        for n in sizes:
            row = measure(a, n)
            row["x_one_broker"] = round(row["tasks_per_s"] / one["tasks_per_s"], 2)
            print(json.dumps(row), flush=True)
            print(federation_table(one, row))
        return
    rows = []
    for n in sizes:
        row = measure(a, n)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if a.table:
        print(table(rows))


if __name__ == "__main__":
    main()
