"""The origin and the workers on its host without the broker in between (scoop.direct), with
real processes: results arrive that way, a waited task is leased straight to an idle worker, the
broker still learns where each task is and that it is over (a worker killed or retired with a
leased task loses nothing), a taken address or an unreachable origin falls back to the broker,
and only holders of the secret get a byte in, either way."""
import os
import pickle
import signal
import time

import pytest
import zmq

from scoop import _globals, direct, futures
from scoop import _protocol as P
from scoop.cluster import Cluster
from scoop.direct import WorkerEnd
from scoop.security import Authenticator, secure_client, secure_server
from tests.conftest import PROGRAMS, TESTS, origin_cluster, scoop_processes, wait_idle, wait_no_new_processes


def ident(x):
    return os.getpid(), x


def shout(x):
    print(f"task {x} speaks")
    return x


def pid_then_sleep(path, seconds):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def wait_for(path):
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def leased_to(rt, fn, *args, surely=True):
    """Submits and starts waiting: the task goes straight to an idle worker (asserted; its function
    goes to the broker first: a task whose function has not yet gone is never held back)."""
    rt._callable_digest(fn)
    rt.flush()
    before = rt.direct_in.leased
    f = futures.submit(fn, *args)
    futures.wait([f], timeout=0)
    assert rt.direct_in.leased == before + 1 or not surely, "the waited task was not leased"
    return f


def until_idle_known(rt, n, timeout=20):
    """Round trips until ``n`` workers have told the origin they are idle (each must reach it)."""
    deadline = time.monotonic() + timeout
    while len(rt.direct_in.idle) < n and time.monotonic() < deadline:
        fs = [futures.submit(time.sleep, 0.05) for _ in range(n)]  # several: not leased
        futures.wait(fs, timeout=60)
    assert len(rt.direct_in.idle) >= n, "a worker on the origin's host never reached it"


def read_pid(path, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.01)
    raise AssertionError("the task never started")


@pytest.fixture
def two():
    yield from origin_cluster(2)


@pytest.fixture
def one():
    yield from origin_cluster(1)


def test_results_and_leased_tasks_go_straight_and_the_broker_hears_of_both(two):
    c = two
    rt = _globals.current()
    assert rt.direct_in is not None
    until_idle_known(rt, 2)
    received, leased = rt.direct_in.received, rt.direct_in.leased
    for i in range(300):
        f = futures.submit(ident, i)
        futures.wait([f], timeout=60)  # a wait with a timeout: dispatched, never in place
        pid, x = f.result()
        assert x == i and pid != os.getpid()
    assert rt.direct_in.received - received >= 300
    assert rt.direct_in.leased - leased >= 290  # all but the odd one that found no idle worker
    # several tasks in flight: none is leased, the broker balances them
    leased = rt.direct_in.leased
    assert list(futures.map(abs, range(-2000, 0))) == list(range(2000, 0, -1))
    fs = [futures.submit(ident, i) for i in range(20)]
    futures.wait(fs, timeout=60)
    assert rt.direct_in.leased == leased
    wait_idle(c, timeout=10)  # the deferred DONEs and LEASEs reach the broker: nothing stays in flight
    # the broker counts every task once its DONE arrives, however late (the meta stream is paced)
    snap = c.meta.wait_for(lambda s: s["totals"].get("done", 0) >= 2320, 10)
    assert snap is not None and snap["totals"]["done"] >= 2320, c.status()["totals"]


def test_a_task_that_prints_sends_its_result_after_its_output(one):
    """Also when it was leased: its result then goes through the broker, which may not know
    the task yet and passes it to the origin all the same."""
    lines = []
    rt = _globals.current()
    rt.output_handler = lambda name, stream, text, group: lines.append(text)
    until_idle_known(rt, 1)
    for i in range(20):
        futures.wait([futures.submit(ident, i)], timeout=60)  # the worker says it is idle again
        f = leased_to(rt, shout, i)
        assert f.result(timeout=60) == i
        assert lines and lines[-1].strip() == f"task {i} speaks", "the result overtook the output"
    wait_idle(one, timeout=10)


def test_a_leased_task_of_a_killed_worker_runs_elsewhere(two, tmp_path):
    rt = _globals.current()
    until_idle_known(rt, 2)
    path = tmp_path / "pid"
    f = leased_to(rt, pid_then_sleep, str(path), 2.0)
    victim = read_pid(path)
    os.kill(victim, signal.SIGKILL)
    pid = f.result(timeout=60)
    assert pid != victim and pid != os.getpid()
    wait_idle(two, timeout=10)


def test_a_worker_retired_just_before_a_lease_loses_nothing(one, tmp_path):
    """The RETIRE (through the broker) and the lease (straight) race: the worker runs the task
    and leaves after it, or has left and the broker runs it on the worker that replaces it."""
    c = one
    rt = _globals.current()
    for attempt in range(3):
        until_idle_known(rt, 1, timeout=60)
        (worker,) = c.status()["workers"]
        rt.retire(int(worker["id"]))
        # leased, unless the worker has already left (then the broker's way)
        f = leased_to(rt, pid_then_sleep, str(tmp_path / f"pid{attempt}"), 0.1, surely=False)
        assert f.result(timeout=60) == read_pid(tmp_path / f"pid{attempt}")
        wait_idle(c, timeout=10)
        c.meta.wait_for(lambda s, w=worker: [x["id"] for x in s["workers"]] not in ([], [w["id"]]), 60)


def test_a_taken_address_falls_back_to_the_broker():
    before = {p.pid for p in scoop_processes()}
    c = Cluster(2, pythonpath=[TESTS, PROGRAMS])
    ctx = zmq.Context()
    squatter = ctx.socket(zmq.ROUTER)
    squatter.setsockopt(zmq.LINGER, 0)
    direct._make_private_dir(direct.socket_dir(c.secret))
    squatter.bind(direct.address(c.secret))
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
        direct.remove(c.secret)
        wait_no_new_processes(before)


def test_a_worker_that_cannot_reach_the_origin_sends_through_the_broker():
    """Another host or network namespace: the origin's socket is out of reach, nothing waits."""
    ctx = zmq.Context()
    secret = P.new_secret()  # an origin nobody started
    try:
        direct = WorkerEnd(ctx, secret, P.Signer(secret), "0" * 16)
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
            stranger.connect(direct.address(c.secret))
            token_only = ctx.socket(zmq.DEALER)
            token_only.setsockopt(zmq.LINGER, 0)
            secure_client(token_only, c.secret, direct.address(c.secret))
            token_only.connect(direct.address(c.secret))
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


def test_a_worker_takes_leased_tasks_only_from_the_secret():
    """Whoever binds the origin's address (a squatter with the handshake token, say) cannot make
    a worker run anything: a lease signed without the secret, or signed for another channel (a
    captured result sent back), is dropped before the executor sees it."""
    secret = P.new_secret()
    signer = P.Signer(secret)
    ctx = zmq.Context()
    auth = None
    try:
        fake = ctx.socket(zmq.ROUTER)
        fake.setsockopt(zmq.LINGER, 0)
        fake.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send fails until the worker is connected
        auth = Authenticator(ctx, secret)  # checks the handshake token, as a squatter holding it would
        secure_server(fake, secret, direct.address(secret))
        direct._make_private_dir(direct.socket_dir(secret))
        fake.bind(direct.address(secret))
        end = WorkerEnd(ctx, secret, signer, "f" * 16)
        ident = b"d" + b"f" * 16
        def task(tid):
            box = P.Outbox()
            hdr = P.TASK_HEADER.pack(P.TASK, tid, 0, P.digest(b"fn"), 1, P.DIRECT)
            box.add(hdr, pickle.dumps(((1,), {})))
            return box.take()[0]

        data, real = task(6), task(5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the connection is up
            try:
                fake.send_multipart([ident, P.Signer(os.urandom(32)).mac(P.TO_WORKER, data) + data],
                                    zmq.NOBLOCK)
                break
            except zmq.ZMQError:
                time.sleep(0.01)
        else:
            raise AssertionError("the worker never connected")
        fake.send_multipart([ident, signer.mac(P.TO_ORIGIN, data) + data])
        fake.send_multipart([ident, b"\0" * 16 + data])
        fake.send_multipart([ident, signer.mac(P.TO_WORKER, real) + real])  # the real thing, last
        got = []
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            end.sock.poll(100)
            end.drain(got.extend)
        assert [P.task_id(r.hdr) for r in got] == [5]
    finally:
        if auth is not None:
            auth.stop()
        ctx.destroy(linger=0)
        direct.remove(secret)


def test_a_worker_busy_with_other_work_is_not_leased_a_task(one, tmp_path):
    """It said it was idle, then the broker gave it a task that runs until the test ends it: it
    says it is busy, so no lease waits behind that task; when it is done it is idle again."""
    rt = _globals.current()
    until_idle_known(rt, 1)
    go = tmp_path / "go"
    busy = [futures.submit(wait_for, str(go)), futures.submit(time.sleep, 0.01)]  # two: not leased
    futures.wait(busy, timeout=0)
    deadline = time.monotonic() + 30
    while rt.direct_in.idle and time.monotonic() < deadline:
        rt.pump(0.05)
    assert not rt.direct_in.idle, "the busy worker still counts as idle"
    go.touch()
    futures.wait(busy, timeout=60)
    assert rt.direct_in.idle, "the worker did not say it is idle again"
    leased_to(rt, ident, 1).result(timeout=60)


def test_a_long_task_does_not_hold_back_the_done_of_a_result_sent_straight(one, tmp_path):
    """The broker hears a task is done before the worker starts a long one: it must not count
    that task in flight meanwhile (nor run it again if the worker died)."""
    go = tmp_path / "go"
    fs = [futures.submit(ident, 1), futures.submit(wait_for, str(go))]  # one worker: in this order
    try:
        assert fs[0].result(timeout=60)[1] == 1
        snap = one.meta.wait_for(lambda s: s["totals"].get("in_flight") == 1, 20)
        assert snap["totals"]["in_flight"] == 1, "the DONE waits for the long task to end"
    finally:
        go.touch()
    futures.wait(fs, timeout=60)
    wait_idle(one, timeout=10)


def test_a_worker_reaches_the_origins_directory_only_if_it_is_private():
    """On a host where the origin does not run, another user may make a directory of the
    origin's name first: a worker sends it nothing (no handshake, result or segment) until the
    directory is a private one of its own user."""
    secret = os.urandom(32)
    path = direct.socket_dir(secret)
    ctx = zmq.Context()
    os.mkdir(path, 0o755)
    try:
        os.chmod(path, 0o755)  # whatever the umask: open to others, as a stranger's would be
        end = WorkerEnd(ctx, secret, P.Signer(secret), "w")
        try:
            assert not end.reach()
            box = P.Outbox()
            end.add(b"r", P.pack(1), 1, 1)
            end.flush(box)
            assert box and not end.waiting(), "a result went towards a directory that is not ours"
            os.chmod(path, 0o700)
            assert end.reach()
        finally:
            end.close()
    finally:
        os.rmdir(path)
        ctx.term()
