"""Results straight from a worker to the origin on the same host (scoop.direct), with real
processes: they arrive that way, the broker still learns each task is over, a taken address or
an unreachable origin falls back to the broker, and only holders of the secret get a byte in."""
import os
import pickle
import time

import pytest
import zmq

from scoop import _globals, futures
from scoop import _protocol as P
from scoop.broker import secure_client
from scoop.cluster import Cluster
from scoop.direct import DirectOutbox
from tests.conftest import PROGRAMS, TESTS, origin_cluster, scoop_processes, wait_idle, wait_no_new_processes


def ident(x):
    return os.getpid(), x


def shout(x):
    print(f"task {x} speaks")
    return x


@pytest.fixture
def two():
    yield from origin_cluster(2)


@pytest.fixture
def one():
    yield from origin_cluster(1)


def test_results_come_straight_back_and_the_broker_hears_they_are_done(two):
    c = two
    if True:
        rt = _globals.current()
        assert rt.direct_in is not None
        direct_from = set()  # workers whose results already come straight back
        deadline = time.monotonic() + 20
        while len(direct_from) < 2 and time.monotonic() < deadline:
            before = rt.direct_in.received
            f = futures.submit(ident, 0)
            futures.wait([f], timeout=60)
            if rt.direct_in.received > before:
                direct_from.add(f.result()[0])
        assert len(direct_from) == 2, "a worker on the origin's host never reached it"
        before = rt.direct_in.received
        for i in range(300):
            f = futures.submit(ident, i)
            futures.wait([f], timeout=60)  # a wait with a timeout: dispatched, never in place
            pid, x = f.result()
            assert x == i and pid != os.getpid()
        assert list(futures.map(abs, range(-2000, 0))) == list(range(2000, 0, -1))
        assert rt.direct_in.received - before >= 300
        wait_idle(c, timeout=10)  # the deferred DONEs reach the broker: nothing stays in flight
        assert c.status()["totals"]["done"] >= 2300


def test_a_task_that_prints_sends_its_result_after_its_output(one):
    if True:
        lines = []
        rt = _globals.current()
        rt.output_handler = lambda name, stream, text, group: lines.append(text)
        for i in range(20):
            f = futures.submit(shout, i)
            futures.wait([f], timeout=60)
            assert f.result() == i
            assert lines and lines[-1].strip() == f"task {i} speaks", "the result overtook the output"


def test_a_taken_address_falls_back_to_the_broker():
    before = {p.pid for p in scoop_processes()}
    c = Cluster(2, pythonpath=[TESTS, PROGRAMS])
    ctx = zmq.Context()
    squatter = ctx.socket(zmq.ROUTER)
    squatter.setsockopt(zmq.LINGER, 0)
    squatter.bind(P.direct_address(c.secret))
    try:
        c.start()
        rt = _globals.current()
        assert rt.direct_in is None
        fs = [futures.submit(ident, i) for i in range(50)]
        futures.wait(fs, timeout=60)
        assert [f.result()[1] for f in fs] == list(range(50))
        assert not squatter.poll(200), "a worker sent results to a socket that is not the origin"
    finally:
        c.stop()
        squatter.close(0)
        ctx.term()
        wait_no_new_processes(before)


def test_a_worker_that_cannot_reach_the_origin_sends_through_the_broker():
    """Another host or network namespace: the origin's socket is out of reach, nothing waits."""
    ctx = zmq.Context()
    secret = P.new_secret()  # an origin nobody started
    try:
        direct = DirectOutbox(ctx, secret, P.Signer(secret))
        out = P.Outbox()
        hdr = P.RESULT_HEADER.pack(P.RESULT, 7, P.OK, 1, 0.0, 0.0, b"w" * 12)
        direct.add(hdr, P.pack(42), 7, 1)
        direct.flush(out)
        data, frames = out.take()
        recs = P.parse(data, frames, start=0)
        assert [r.type for r in recs] == [P.RESULT] and not direct.dones
        assert P.unpack(recs[0]) == 42
        direct.close()
    finally:
        ctx.term()


class _Trap:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_only_the_secret_gets_a_byte_in(one, tmp_path):
    """A stranger's connection is refused at the handshake; a peer with the handshake token but
    not the secret has its messages dropped before anything is unpickled."""
    trap_file = tmp_path / "pwned"
    trap = pickle.dumps(_Trap(str(trap_file)))
    c = one
    if True:
        rt = _globals.current()
        inbox = rt.direct_in
        ctx = zmq.Context()
        try:
            stranger = ctx.socket(zmq.DEALER)
            stranger.setsockopt(zmq.IMMEDIATE, 1)
            stranger.setsockopt(zmq.LINGER, 0)
            stranger.connect(P.direct_address(c.secret))
            token_only = ctx.socket(zmq.DEALER)
            token_only.setsockopt(zmq.LINGER, 0)
            secure_client(token_only, c.secret)
            token_only.connect(P.direct_address(c.secret))
            wrong = P.Signer(os.urandom(32))
            f = futures.submit(time.sleep, 0.5)
            box = P.Outbox()
            box.add(P.RESULT_HEADER.pack(P.RESULT, f.id, P.OK, 1, 0.0, 0.0, b"x" * 12), trap)
            data, _ = box.take()
            deadline = time.monotonic() + 2
            refused = forged = 0
            while time.monotonic() < deadline:
                try:
                    stranger.send(b"\0" * 16 + data, zmq.NOBLOCK)
                except zmq.Again:
                    refused += 1  # no completed handshake: nothing can be queued
                token_only.send_multipart([wrong.mac(P.TO_ORIGIN, data) + data])
                token_only.send_multipart([b"\0" * 16 + data, trap])
                forged += 2
                time.sleep(0.01)
            dropped = inbox.dropped
            assert f.result(timeout=30) is None  # the real result, through whichever path
            deadline = time.monotonic() + 5
            while inbox.dropped - dropped < forged and time.monotonic() < deadline:
                rt.poll()
            assert not trap_file.exists(), "the origin unpickled hostile bytes"
            assert refused > 0 and inbox.dropped - dropped == forged
        finally:
            ctx.destroy(linger=0)
