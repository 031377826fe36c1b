"""An intruder on the machine, without the cluster's secret, cannot make any process unpickle
anything, stall the broker, or change which workers are considered alive (real processes)."""
from __future__ import annotations

import os
import pickle
import random
import socket
import threading
import time

import pytest
import zmq

from scoop import _protocol as P
from scoop import futures
from scoop.broker import secure_client

import tasklib as T
from conftest import origin_cluster, wait_idle


@pytest.fixture(scope="module")
def cluster():
    yield from origin_cluster(2)


class _Trap:
    """Unpickling this creates a file: proof that a process decoded hostile bytes."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _timed_map(n=400, ms=5):
    t0 = time.monotonic()
    assert list(futures.map(T.work_ms, [ms] * n, range(n))) == list(range(n))
    return time.monotonic() - t0


def _quiet(cluster):
    """Nothing the broker or a worker printed (the relay keeps their stderr)."""
    cluster.relay.flush(0.3)
    return {label: tail for label, tail in cluster.relay.tails.items() if tail}


def _in_background(fn):
    stop = threading.Event()
    t = threading.Thread(target=fn, args=(stop,), daemon=True)
    t.start()
    return stop, t


def test_strangers_cannot_even_connect(cluster, tmp_path):
    """No handshake token: big frames, garbage and the raw trap never reach the broker's code."""
    wait_idle(cluster)
    base = _timed_map()
    lost = cluster.status()["totals"]["lost_workers"]
    dropped = cluster.status()["totals"]["dropped_messages"]
    trap_file = tmp_path / "pwned"
    trap = pickle.dumps(_Trap(str(trap_file)))
    big = b"\0" * (100 << 20)

    def attack(stop):
        ctx = zmq.Context()
        socks = []
        for port in (cluster.main_port, cluster.meta_port):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 4)
            s.connect(f"tcp://127.0.0.1:{port}")
            socks.append(s)
        k = 0
        while not stop.is_set() and k < 30:
            for s in socks:
                try:
                    s.send_multipart([b"\0" * 16, big], zmq.NOBLOCK)
                    s.send_multipart([trap, trap], zmq.NOBLOCK)
                except zmq.Again:
                    pass
            k += 1
            time.sleep(0.05)
        for s in socks:
            s.close(0)
        ctx.term()

    stop, t = _in_background(attack)
    try:
        under_attack = _timed_map()
    finally:
        stop.set()
        t.join(30)
    snap = cluster.status()
    assert snap["totals"]["lost_workers"] == lost
    assert snap["totals"]["dropped_messages"] == dropped, "a stranger's message reached the broker"
    assert not trap_file.exists()
    assert not _quiet(cluster)
    print(f"map under attack {under_attack:.2f} s vs {base:.2f} s")
    assert under_attack < 3 * base + 3


def test_connection_churn_changes_no_liveness_decision(cluster):
    wait_idle(cluster)
    base = _timed_map(200, 20)
    lost = cluster.status()["totals"]["lost_workers"]

    def churn(stop):
        rnd = random.Random(7)
        while not stop.is_set():
            for port in (cluster.main_port, cluster.meta_port):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                        if rnd.random() < 0.5:
                            s.sendall(os.urandom(rnd.randint(1, 4096)))
                except OSError:
                    pass

    stop, t = _in_background(churn)
    try:
        under_churn = _timed_map(200, 20)
        under_churn += _timed_map(200, 20)
    finally:
        stop.set()
        t.join(10)
    assert cluster.status()["totals"]["lost_workers"] == lost, "churn got healthy workers declared lost"
    assert len(cluster.status()["workers"]) == 2
    print(f"two maps under churn {under_churn:.2f} s vs one {base:.2f} s")
    assert under_churn < 3 * 2 * base + 3
    assert not _quiet(cluster)


def test_meta_stream_is_closed_to_strangers(cluster):
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.connect(f"tcp://127.0.0.1:{cluster.meta_port}")
    try:
        assert not s.poll(1500), "a subscriber without the secret received the meta stream"
    finally:
        s.close(0)
        ctx.term()


def test_with_the_handshake_token_but_not_the_secret_nothing_is_unpickled(cluster, tmp_path):
    """Even a peer that sniffed the handshake token (it travels in the clear) only gets its
    messages dropped: headers are MAC'd with the secret, per channel and direction, and payload
    frames are checked against signed digests.  Replayed meta messages, forged multi-frame
    messages, spliced frames: nothing is unpickled, nothing printed, nobody declared lost."""
    wait_idle(cluster)
    trap_file = tmp_path / "pwned"
    trap = pickle.dumps(_Trap(str(trap_file)))
    secret = cluster.secret
    wrong = P.Signer(os.urandom(32))
    right = P.Signer(secret)  # only to build a genuine header whose frames are then spliced
    ctx = zmq.Context()
    meta = ctx.socket(zmq.SUB)
    meta.setsockopt(zmq.SUBSCRIBE, b"")
    secure_client(meta, secret)
    meta.connect(f"tcp://127.0.0.1:{cluster.meta_port}")
    captured = []
    deadline = time.monotonic() + 5
    while len(captured) < 5 and time.monotonic() < deadline:
        if meta.poll(200):
            captured.append(meta.recv_multipart())
    assert captured, "no meta message to replay"
    socks = []
    for i in range(4):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IDENTITY, (b"t" if i % 2 else b"c") + os.urandom(8).hex().encode())
        secure_client(s, secret)
        s.connect(f"tcp://127.0.0.1:{cluster.main_port}")
        socks.append(s)
    # a genuine task header naming one frame, whose frame is then swapped for the trap
    d = P.digest(trap)
    genuine = P.Outbox()
    genuine.add(P.TASK_HEADER.pack(P.TASK, 1 << 40 | 7, 0, d, 0, 0), packed=P.pack(b"x" * (1 << 17)))
    gdata, _ = genuine.take()
    spliced = [right.mac(P.TO_BROKER, gdata) + gdata, trap]
    box = P.Outbox()
    box.add(P.BLOB_HEADER.pack(P.BLOB, d), packed=P.packed_bytes(trap * 2000))
    box.add(P.TASK_HEADER.pack(P.TASK, 1 << 40 | 1, 0, d, 0, 0), trap)
    fdata, fframes = box.take()
    rnd = random.Random(99)
    running = futures.map(T.work_ms, [2] * 400, range(400))
    lost = cluster.status()["totals"]["lost_workers"]
    sent = 0
    while sent < 2000:
        s = socks[sent % len(socks)]
        kind = sent % 7
        if kind == 0:
            msg = captured[sent % len(captured)][1:]            # meta replayed to the task port
        elif kind == 1:
            msg = [wrong.mac(P.TO_BROKER, fdata) + fdata, *fframes]  # wrong key, multi-frame
        elif kind == 2:
            msg = [b"\0" * 16 + fdata, *fframes]                   # unsigned
        elif kind == 3:
            msg = spliced                                          # genuine header, foreign frame
        elif kind == 4:
            msg = [os.urandom(rnd.randint(0, 64)) for _ in range(rnd.randint(1, 6))]
        elif kind == 5:
            m = wrong.mac(P.TO_BROKER, fdata) + fdata
            msg = [m[: rnd.randint(0, len(m))]]                    # truncated
        else:
            msg = [trap] * rnd.randint(1, 5)
        s.send_multipart([bytes(m) if isinstance(m, memoryview) else m for m in msg])
        sent += 1
    assert list(running) == list(range(400))
    time.sleep(0.5)
    assert not trap_file.exists(), "a process unpickled hostile bytes"
    snap = cluster.status()
    assert snap["totals"]["dropped_messages"] >= 1000
    assert snap["totals"]["lost_workers"] == lost
    assert len(snap["workers"]) == 2
    assert not _quiet(cluster), "hostile input made a process print"
    assert list(futures.map(T.square, range(10))) == [x * x for x in range(10)]
    for s in socks + [meta]:
        s.close(0)
    ctx.term()
