"""Broker capacity: how much one broker process routes, with 1,000 simulated worker connections.

A real broker (``python -m scoop.broker``) is started as the launcher starts it.  Simulated
workers (DEALER sockets speaking the wire protocol: CURVE handshake with keys from the cluster's secret,
signed header frames, split over two processes) take tasks
on credit and answer each at once; a simulated origin keeps a window of small tasks in flight.
Task execution is out of the picture: what is measured is the broker's routing.

Printed (one JSON line, like the other workloads):
  tasks_per_s      tasks completed per second (each: submit -> worker -> result -> submitter)
  records_per_s    task and result records routed per second (2 per task)
  zmq_msgs_per_s   ZeroMQ messages the broker received and sent per second (batches)
  broker_cpu       the broker process's CPU use during the measurement (1.0 = one core)
  records_per_broker_cpu_s   records routed per second of broker CPU: its capacity on one core,
                   whatever share of the machine the simulators take

    python bench/broker_capacity.py [--workers 1000] [--seconds 8] [--window 20000]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time

import psutil
import zmq

from scoop import _protocol as P
from scoop.security import secure_client

BODY = b"\x80\x05" + b"x" * 62  # a small task body; never unpickled by anyone here


def start_broker(secret: bytes):
    cfg = {"secret": secret.hex(), "main": "tcp://127.0.0.1:0", "meta": "tcp://127.0.0.1:0",
           "heartbeat_timeout": 600}
    proc = subprocess.Popen([sys.executable, "-m", "scoop.broker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    proc.stdin.write((json.dumps(cfg) + "\n").encode())
    proc.stdin.flush()
    ports = json.loads(proc.stdout.readline())
    return proc, ports["main_port"], ports["meta_port"]


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
    secure_client(s, secret, f"tcp://127.0.0.1:{port}")
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


def simulated_workers(port, secret, count, credit, stop, ready):
    """``count`` worker connections in one process: answer every task at once."""
    signer = P.Signer(secret)
    ctx = zmq.Context()
    socks = []
    poller = zmq.Poller()
    for k in range(count):
        s, hello = _connect(ctx, port, secret, "worker", f"sim{os.getpid()}-{k}")
        _send(s, signer, hello + _record(P.COUNT.pack(P.CREDIT, credit)))
        poller.register(s, zmq.POLLIN)
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
    while not stop.is_set():
        for s, _ in poller.poll(100):
            while s.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                parts = [s.recv()]
                while s.getsockopt(zmq.RCVMORE):
                    parts.append(s.recv())
                pieces = []
                n = 0
                now = time.time()
                for t, off in _records(parts[0]):
                    if t in task_bytes:
                        tid = id_unpack(parts[0], off + 1)[0]
                        pieces += (prefix, res_pack(P.RESULT, tid, P.OK, 1, now, now, name), body)
                        n += 1
                if n:
                    pieces += (credit_rec, count_pack(P.CREDIT, n))
                    _send(s, signer, b"".join(pieces))
    for s in socks:
        s.close(0)
    ctx.term()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--window", type=int, default=20000, help="tasks in flight")
    ap.add_argument("--batch", type=int, default=500, help="tasks per submit message")
    ap.add_argument("--credit", type=int, default=64, help="credit per simulated worker")
    ap.add_argument("--procs", type=int, default=2, help="processes simulating the workers")
    a = ap.parse_args(argv)

    secret = P.new_secret()
    signer = P.Signer(secret)
    broker, port, _meta = start_broker(secret)
    ctx = zmq.Context()
    stop = mp.Event()
    ready = mp.Queue()
    sims = [mp.Process(target=simulated_workers, daemon=True,
                       args=(port, secret, a.workers // a.procs, a.credit, stop, ready))
            for _ in range(a.procs)]
    origin, hello = _connect(ctx, port, secret, "origin", "origin")
    try:
        for p in sims:
            p.start()
        for _ in sims:
            ready.get(timeout=120)
        digest = P.digest(b"fn")
        _send(origin, signer, hello + _record(P.BLOB_HEADER.pack(P.BLOB, digest), b"fn"))
        # wait for the welcome: its index gives unique task ids
        index = None
        deadline = time.monotonic() + 60
        while index is None:
            if time.monotonic() > deadline:
                raise SystemExit("broker_capacity: no welcome from the broker")
            if not origin.poll(1000):
                continue
            recs = P.recv_verified(origin, signer, P.FROM_BROKER)
            for rec in recs or ():
                if rec.hdr[:1] == P.WELCOME:
                    index = json.loads(bytes(rec.body))["index"]
        time.sleep(0.5)
        seq = 0
        in_flight = 0
        done = 0
        bp = psutil.Process(broker.pid)
        marks = []
        t_end = time.monotonic() + a.seconds
        t_measure = time.monotonic() + min(2.0, a.seconds / 4)  # warm-up first
        pack = P.TASK_HEADER.pack
        task_prefix = P.REC.pack(P.TASK_HEADER.size, len(BODY), 0)
        result_byte = P.RESULT[0]
        while True:
            now = time.monotonic()
            if not marks and now >= t_measure:
                marks.append((now, done, bp.cpu_times()))
            if now >= t_end:
                break
            while in_flight < a.window:
                pieces = []
                for _ in range(a.batch):
                    seq += 1
                    pieces += (task_prefix, pack(P.TASK, (index << 40) | seq, 0, digest, 1, 0), BODY)
                _send(origin, signer, b"".join(pieces))
                in_flight += a.batch
            if origin.poll(50):
                while origin.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    parts = [origin.recv()]
                    while origin.getsockopt(zmq.RCVMORE):
                        parts.append(origin.recv())
                    n = sum(1 for t, _ in _records(parts[0]) if t == result_byte)
                    done += n
                    in_flight -= n
        t1, d1, c1 = time.monotonic(), done, bp.cpu_times()
        t0, d0, c0 = marks[0]
        # the broker counts the ZeroMQ messages it routed; ask its meta stream for the figure
        sub = ctx.socket(zmq.SUB)
        secure_client(sub, secret, f"tcp://127.0.0.1:{_meta}")
        sub.setsockopt(zmq.SUBSCRIBE, P.STATUS)
        sub.connect(f"tcp://127.0.0.1:{_meta}")
        routed = None
        deadline = time.monotonic() + 3
        while routed is None and time.monotonic() < deadline and sub.poll(500):
            msg = sub.recv_multipart()
            if len(msg) == 2 and signer.check(P.META, msg[1]):
                recs = P.parse(msg[1], [])
                if recs and recs[0].hdr[:1] == P.STATUS:
                    routed = json.loads(bytes(recs[0].body)).get("totals", {}).get("routed_messages")
        sub.close(0)
        tasks_per_s = (d1 - d0) / (t1 - t0)
        cpu = ((c1.user + c1.system) - (c0.user + c0.system)) / (t1 - t0)
        total_elapsed = a.seconds + 0.5
        print(json.dumps({
            "bench": "broker_capacity", "workers": a.workers, "window": a.window, "batch": a.batch,
            "tasks_per_s": round(tasks_per_s), "records_per_s": round(2 * tasks_per_s),
            "zmq_msgs_per_s": round(routed / total_elapsed) if routed else None,
            "broker_cpu": round(cpu, 2), "tasks_done": done,
            # what one core of broker routes: independent of the simulators' own CPU needs
            "records_per_broker_cpu_s": round(2 * tasks_per_s / cpu) if cpu > 0 else None,
        }))
    finally:
        # the broker first: simulators dropping their connections would be reported as losses
        origin.close(0)
        broker.stdin.close()
        try:
            broker.wait(5)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()
        stop.set()
        for p in sims:
            p.join(5)
            if p.is_alive():
                p.kill()
        ctx.term()


if __name__ == "__main__":
    main()
