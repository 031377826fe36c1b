"""Broker capacity: how much one broker process routes, with 1,000 simulated worker connections.

A real broker (``python -m scoop.broker``) is started as the launcher starts it.  Simulated
workers (plain DEALER sockets speaking the wire protocol, split over two processes) take tasks
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


def simulated_workers(port, secret, count, credit, stop, ready):
    """``count`` worker connections in one process: answer every task at once."""
    signer = P.Signer(secret)
    ctx = zmq.Context()
    socks = []
    poller = zmq.Poller()
    for _ in range(count):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, b"t" + os.urandom(8).hex().encode())
        s.setsockopt(zmq.LINGER, 0)
        s.connect(f"tcp://127.0.0.1:{port}")
        P.send(s, signer, [P.HELLO, json.dumps({"role": "worker", "host": "sim", "pid": os.getpid()}).encode(),
                           P.CREDIT + P.I32.pack(credit), P.EMPTY])
        poller.register(s, zmq.POLLIN)
        socks.append(s)
    ready.put(count)
    # lean on purpose: the simulators share the machine with the broker, and every cycle they
    # spend is one the broker does not get; they read task ids by offset and reply with
    # pre-packed pieces (a simulator need not check the broker's signatures)
    body = b"\x80\x05K\x01."
    res_hdr = P.RESULT_HEADER.pack
    prefix = P.REC.pack(P.RESULT_HEADER.size, len(body))
    rec_unpack, id_unpack = P.REC.unpack_from, P.ID.unpack_from
    task_byte = P.TASK[0]
    credit_hdr = P.REC.pack(5, 0) + P.CREDIT
    while not stop.is_set():
        for s, _ in poller.poll(100):
            while s.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                data = s.recv()
                i, end = P.SIG_SIZE, len(data)
                pieces = []
                n = 0
                while i < end:
                    hl, bl = rec_unpack(data, i)
                    hs = i + 6
                    if data[hs] == task_byte:
                        pieces += (prefix, res_hdr(P.RESULT, id_unpack(data, hs + 1)[0], P.OK, 1), body)
                        n += 1
                    i = hs + hl + bl
                if n:
                    pieces += (credit_hdr, P.I32.pack(n))
                    msg = b"".join(pieces)
                    s.send(signer.sign((msg,)) + msg)
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
    origin = ctx.socket(zmq.DEALER)
    try:
        for p in sims:
            p.start()
        for _ in sims:
            ready.get(timeout=120)
        origin.setsockopt(zmq.IDENTITY, b"t" + os.urandom(8).hex().encode())
        origin.setsockopt(zmq.LINGER, 0)
        origin.connect(f"tcp://127.0.0.1:{port}")
        digest = P.digest(b"fn")
        P.send(origin, signer, [P.HELLO, b'{"role": "origin", "host": "bench"}', P.BLOB + digest, b"fn"])
        # wait for the welcome: index gives unique task ids
        recs = P.recv_verified(origin, signer)
        index = json.loads(recs[1])["index"]
        time.sleep(0.5)
        seq = 0
        in_flight = 0
        done = 0
        bp = psutil.Process(broker.pid)
        marks = []
        t_end = time.monotonic() + a.seconds
        t_measure = time.monotonic() + min(2.0, a.seconds / 4)  # warm-up first
        pack = P.TASK_HEADER.pack
        task_prefix = P.REC.pack(P.TASK_HEADER.size, len(BODY))
        rec_unpack, result_byte = P.REC.unpack_from, P.RESULT[0]
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
                    pieces += (task_prefix, pack(P.TASK, (index << 40) | seq, 0, digest), BODY)
                msg = b"".join(pieces)
                origin.send(signer.sign((msg,)) + msg)
                in_flight += a.batch
            if origin.poll(50):
                while origin.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    data = origin.recv()
                    i, end, n = P.SIG_SIZE, len(data), 0
                    while i < end:
                        hl, bl = rec_unpack(data, i)
                        n += data[i + 6] == result_byte
                        i += 6 + hl + bl
                    done += n
                    in_flight -= n
        t1, d1, c1 = time.monotonic(), done, bp.cpu_times()
        t0, d0, c0 = marks[0]
        # the broker counts the ZeroMQ messages it routed; ask its meta stream for the figure
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, P.STATUS)
        sub.connect(f"tcp://127.0.0.1:{_meta}")
        routed = None
        if sub.poll(3000):
            recs = P.open_sealed(signer, sub.recv_multipart()[1])
            routed = json.loads(recs[1])["totals"]["routed_messages"]
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
        stop.set()
        for p in sims:
            p.join(5)
            if p.is_alive():
                p.kill()
        origin.close(0)
        broker.stdin.close()
        try:
            broker.wait(5)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()
        ctx.term()


if __name__ == "__main__":
    main()
