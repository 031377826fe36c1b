"""A retirement is a plan, not a loss: a worker leaving on scale-down or at its walltime hands
back what it has not started, finishes what it runs, says goodbye, and no task runs twice."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter

import pytest

from scoop import futures
from scoop.launch.base import config_line

from conftest import origin_cluster


def starts_marker(where: str):
    """A task that leaves one file per start, so a test counts how often each input ran."""
    def mark(i, ms=30):
        import os
        import time
        with open(os.path.join(where, f"{i}.{os.getpid()}.{time.monotonic_ns()}"), "w"):
            pass
        time.sleep(ms / 1000)
        return i
    return mark


def starts(where: str) -> Counter:
    return Counter(int(name.split(".")[0]) for name in os.listdir(where))


@pytest.fixture
def cluster4():
    yield from origin_cluster(4)


def test_scale_down_mid_map_runs_each_task_once_and_loses_no_worker(cluster4, tmp_path):
    mark = starts_marker(str(tmp_path))
    fs = [futures.submit(mark, i) for i in range(240)]
    time.sleep(0.5)
    cluster4.scale(1)
    assert [f.result(timeout=120) for f in fs] == list(range(240))
    assert starts(str(tmp_path)) == Counter(range(240))
    snap = cluster4.meta.wait_for(lambda s: s["totals"].get("workers") == 1, 10)
    assert snap["totals"]["workers"] == 1 and snap["totals"]["lost_workers"] == 0
    assert "lost" not in cluster4.relay.tail("broker")


def test_walltime_retirement_runs_each_task_once_and_loses_no_worker(tmp_path):
    """A worker told its walltime (as a batch job's is) retires mid-map by itself."""
    marks = tmp_path / "starts"
    marks.mkdir()
    mark = starts_marker(str(marks))
    gen = origin_cluster(2)
    cluster = next(gen)
    proc = None
    try:
        spec = cluster._worker_spec("wall1", None)
        cfg = dict(spec.config, retire_at=time.time() + 1.5, detached=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        proc = subprocess.Popen([sys.executable, "-m", "scoop.worker"], stdin=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        proc.stdin.write(config_line(cfg))
        proc.stdin.close()
        cluster.meta.wait_for(lambda s: s["totals"].get("workers") == 3, 20)
        fs = [futures.submit(mark, i, 20) for i in range(300)]
        assert [f.result(timeout=120) for f in fs] == list(range(300))
        assert proc.wait(30) == 0, proc.stderr.read().decode()
        assert starts(str(marks)) == Counter(range(300))
        ran_there = [n for n in os.listdir(marks) if int(n.split(".")[1]) == proc.pid]
        assert ran_there, "the retiring worker ran nothing: the map did not cross its walltime"
        snap = cluster.meta.wait_for(lambda s: s["totals"].get("workers") == 2, 10)
        assert snap["totals"]["lost_workers"] == 0
        assert "lost" not in cluster.relay.tail("broker")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        for _ in gen:
            pass


# ---- the broker's side, with hand-made peers (real sockets, one process) --------------------------
class FakePeer:
    """A DEALER pair speaking the wire protocol as a worker or the origin would."""

    def __init__(self, ctx, port, secret, role, name):
        import json

        import zmq

        from scoop import _protocol as P
        from scoop.security import secure_client
        self.P, self.zmq = P, zmq
        self.signer = P.Signer(secret)
        uid = os.urandom(8).hex().encode()
        self.t = self._socket(ctx, b"t" + uid, port, secret, secure_client)
        self.c = self._socket(ctx, b"c" + uid, port, secret, secure_client)
        hello = {"uid": uid.decode(), "control": uid.decode(), "role": role, "name": name, "host": "h",
                 "host_key": 1, "pid": os.getpid()}
        self.send(self.t, [(P.HELLO, json.dumps(hello).encode())])
        assert self.recv(self.t)[0].hdr[:1] == P.WELCOME

    def _socket(self, ctx, ident, port, secret, secure_client):
        s = ctx.socket(self.zmq.DEALER)
        s.setsockopt(self.zmq.IDENTITY, ident)
        s.setsockopt(self.zmq.LINGER, 0)
        secure_client(s, secret, f"tcp://127.0.0.1:{port}")
        s.connect(f"tcp://127.0.0.1:{port}")
        return s

    def send(self, sock, records):
        channel = self.P.TO_BROKER if sock is self.t else self.P.CONTROL_TO_BROKER
        self.P.send_records(sock, self.signer, channel, records)

    def recv(self, sock, timeout=5.0):
        if not sock.poll(int(timeout * 1000)):
            return []
        channel = self.P.FROM_BROKER if sock is self.t else self.P.CONTROL_FROM_BROKER
        return self.P.recv_verified(sock, self.signer, channel) or []

    def recv_types(self, sock, want, timeout=5.0):
        deadline = time.monotonic() + timeout
        got = []
        while time.monotonic() < deadline and want not in [r.hdr[:1] for r in got]:
            got += self.recv(sock, 0.1)
        return got


@pytest.fixture
def broker():
    import threading

    import zmq

    from scoop import _protocol as P
    from scoop.broker import Broker
    ctx = zmq.Context()
    secret = P.new_secret()
    b = Broker(secret, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", context=ctx, log=lambda m: b.lines.append(m))
    b.lines = []
    thread = threading.Thread(target=b.serve, daemon=True)
    thread.start()
    peers = []
    try:
        yield b, lambda role, name: peers.append(FakePeer(ctx, b.main_port, secret, role, name)) or peers[-1]
    finally:
        b.stop_event.set()
        thread.join(10)
        for p in peers:
            p.t.close(0)
            p.c.close(0)
        ctx.term()


def test_a_goodbye_after_the_control_connection_closed_is_not_a_loss(broker):
    """A leaving worker's control connection may close before its last result and goodbye
    arrive on the task connection: the broker reads them, counts no loss, re-runs nothing,
    and answers the goodbye (the worker exits only then)."""
    b, peer = broker
    from scoop import _protocol as P
    origin = peer("origin", "origin")
    w = peer("worker", "w1")
    w.send(w.c, [(P.LOAD, b"{}")])
    fn = P.digest(b"fn")
    origin.send(origin.t, [(P.BLOB_HEADER.pack(P.BLOB, fn), b"fn"),
                           (P.TASK_HEADER.pack(P.TASK, 7, 0, fn, 1, 0), b"args")])
    w.send(w.t, [(P.COUNT.pack(P.CREDIT, 1), b"")])
    assert P.TASK in [r.hdr[:1] for r in w.recv_types(w.t, P.TASK)]
    other = peer("worker", "w2")
    w.c.close(0)
    time.sleep(0.3)  # the broker sees the control connection drop first
    now = time.time()
    w.send(w.t, [(P.RESULT_HEADER.pack(P.RESULT, 7, P.OK, 1, now, now, b"w1".ljust(12, b"\0")), b"r"),
                 (P.BYE, b"")])
    farewell = w.recv_types(w.t, P.SHUTDOWN)
    assert [bytes(r.body) for r in farewell if r.hdr[:1] == P.SHUTDOWN] == [b"goodbye"]
    other.send(other.t, [(P.COUNT.pack(P.CREDIT, 5), b"")])
    results = [r for r in origin.recv_types(origin.t, P.RESULT) if r.hdr[:1] == P.RESULT]
    assert len(results) == 1
    time.sleep(1.5)  # past the control connection's grace
    assert P.TASK not in [r.hdr[:1] for r in other.recv_types(other.t, P.TASK, 0.5)]
    assert b.core.lost_workers == 0 and not [line for line in b.lines if "lost" in line]
