"""The bare ZeroMQ chain a dispatched round trip is compared with: no logic, only the hops.

    python bench/zmq_chain.py --calls 2000          # alone
    from zmq_chain import Chain                      # beside an executor (bench/workloads/rtt.py)

client (DEALER) -> broker (one ROUTER socket) -> worker (DEALER) -> broker -> client, three
processes on TCP loopback, 64-byte messages.  The broker only swaps the routing identity (the
same shape as our broker: one ROUTER that clients and workers both connect to); the worker echoes.
The broker and the worker are children of the client's process, in its process group, and end
with it.  Alone, prints one JSON line: {"bench": "zmq_chain", "chain_us": median, ...}.
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


class Chain:
    """with Chain() as c: c.call(i) -> i, one round trip through broker and worker."""

    def __init__(self, size=64):
        self.size = size
        self.procs = []

    def __enter__(self):
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self):
        b = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--role", "broker"],
                             stdout=subprocess.PIPE)
        self.procs.append(b)
        port = int(b.stdout.readline())
        self.procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "--role", "worker",
                                            "--port", str(port)]))
        self.ctx = zmq.Context()
        self.sock = sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, b"C")
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://127.0.0.1:{port}")
        self.pad = os.urandom(self.size - 8)
        deadline = time.monotonic() + 30
        while True:  # until the worker is there (its 'ready' reached the broker first)
            sock.send(b"\0" * self.size)
            if sock.poll(200):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("zmq_chain: the worker never answered")
        time.sleep(0.2)
        while sock.poll(0):  # answers to the probes sent while the worker was connecting
            sock.recv()

    def call(self, i):
        msg = i.to_bytes(8, "little", signed=True) + self.pad
        self.sock.send(msg)
        r = self.sock.recv()
        if r != msg:
            raise RuntimeError("zmq_chain: answer out of sequence")
        return i

    def close(self):
        if getattr(self, "sock", None) is not None:
            self.sock.close()
            self.ctx.term()
            self.sock = None
        for p in self.procs:
            p.kill()
            p.wait()
        self.procs = []

    def __exit__(self, *exc):
        self.close()
        return False


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
        with Chain(a.bytes) as c:
            for i in range(a.warmup):
                c.call(i)
            lat = []
            pc = time.perf_counter
            for i in range(a.calls):
                t0 = pc()
                c.call(i)
                lat.append(pc() - t0)
        lat.sort()
        n = len(lat)
        print(json.dumps({"bench": "zmq_chain", "n": n, "msg_bytes": a.bytes, "chain_us": lat[n // 2] * 1e6,
                          "chain_p90_us": lat[min(n - 1, int(n * 0.9))] * 1e6, "min_us": lat[0] * 1e6}))


if __name__ == "__main__":
    main()
