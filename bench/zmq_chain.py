"""The bare ZeroMQ chain a dispatched round trip is compared with: no logic, only the hops.

    python bench/zmq_chain.py --calls 2000

client (DEALER) -> broker (one ROUTER socket) -> worker (DEALER) -> broker -> client, three
processes on TCP loopback, 64-byte messages.  The broker only swaps the routing identity (the
same shape as our broker: one ROUTER that clients and workers both connect to); the worker echoes.
The broker and the worker are children of this process, in its process group, and end with it.
Prints one JSON line: {"bench": "rtt", "dispatched_us": median, "dispatched_p90_us": ...}.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import zmq

WORKER_ID = b"W"


def broker():
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    print(port, flush=True)
    recv, send = sock.recv_multipart, sock.send_multipart
    while True:
        frames = recv()
        if frames[0] == WORKER_ID:  # [W, client, payload] -> [client, payload]
            send(frames[1:])
        else:                       # [client, payload] -> [W, client, payload]
            send([WORKER_ID] + frames)


def worker(port):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, WORKER_ID)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    sock.send_multipart([b"", b"ready"])  # makes the worker's identity known to the broker
    recv, send = sock.recv_multipart, sock.send_multipart
    while True:
        send(recv())


def client(n, warmup, size):
    procs = []
    try:
        b = subprocess.Popen([sys.executable, __file__, "--role", "broker"], stdout=subprocess.PIPE)
        procs.append(b)
        port = int(b.stdout.readline())
        procs.append(subprocess.Popen([sys.executable, __file__, "--role", "worker", "--port", str(port)]))
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, b"C")
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://127.0.0.1:{port}")
        pad = os.urandom(size - 8)
        send, recv = sock.send, sock.recv
        deadline = time.monotonic() + 30
        while True:  # until the worker is there (its 'ready' reached the broker first)
            send(b"\0" * size)
            if sock.poll(200):
                break
            if time.monotonic() > deadline:
                raise SystemExit("zmq_chain: the worker never answered")
        time.sleep(0.2)
        while sock.poll(0):  # answers to the probes sent while the worker was connecting
            recv()
        lat = []
        pc = time.perf_counter
        for i in range(-warmup, n):
            msg = i.to_bytes(8, "little", signed=True) + pad
            t0 = pc()
            send(msg)
            r = recv()
            dt = pc() - t0
            assert r == msg, "out of sequence"
            if i >= 0:
                lat.append(dt)
        lat.sort()
        sock.close()
        ctx.term()
        return {"bench": "rtt", "runner": "zmq", "n": n, "msg_bytes": size,
                "dispatched_us": lat[n // 2] * 1e6, "dispatched_p90_us": lat[min(n - 1, int(n * 0.9))] * 1e6,
                "min_us": lat[0] * 1e6}
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--role", choices=("client", "broker", "worker"), default="client")
    ap.add_argument("--port", type=int)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--bytes", type=int, default=64)
    a = ap.parse_args()
    if a.role == "broker":
        broker()
    elif a.role == "worker":
        worker(a.port)
    else:
        print(json.dumps(client(a.calls, a.warmup, a.bytes)), flush=True)


if __name__ == "__main__":
    main()
