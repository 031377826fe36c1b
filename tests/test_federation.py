"""Broker federation (-b): a root broker with sub-brokers, each serving part of the workers."""
from __future__ import annotations

import json
import os
import signal
import time
from types import SimpleNamespace

import pytest

from scoop import _protocol as P
from scoop import futures, shared
from scoop.dispatch import PACK_AFTER
from scoop.federation import PACK, SubBroker
from scoop.scheduling import Peer, Scheduler

import tasklib as T
from conftest import origin_cluster, run_scoop, wait_idle


def test_acceptance_program_on_two_brokers(no_leak):
    r = run_scoop(["-n", "2", "-b", "2", "acceptance.py"])
    assert r.returncode == 0, r.stderr
    assert "ACCEPTANCE OK" in r.stdout


def test_a_short_task_does_not_wait_behind_a_long_one_across_brokers(no_leak):
    # the root steals from a sub-broker whose worker holds both tasks: the sub-broker asks its
    # worker for the unstarted one and hands it up (before, it gave back only what it had queued)
    r = run_scoop(["-n", "2", "-b", "2", "short_behind_long.py"])
    assert r.returncode == 0, r.stderr
    assert "LATE []" in r.stdout, r.stdout


def test_tiny_tasks_packed_behind_a_long_one_do_not_wait_for_it(no_leak):
    # two workers behind the sub-broker: it packs tiny tasks to one of them, and one turning out
    # long has the others it holds asked back for the idle one
    r = run_scoop(["-n", "4", "-b", "2", "packed_long_task.py"])
    assert r.returncode == 0, r.stderr
    assert "LATE []" in r.stdout, r.stdout


@pytest.fixture(scope="module")
def fed():
    yield from origin_cluster(4, brokers=3)


def test_every_worker_is_seen_through_the_root(fed):
    import scoop
    snap = fed.meta.wait_for(lambda s: len(s["workers"]) == 4, 10)
    assert len(snap["workers"]) == 4 and scoop.SIZE == 4
    behind = [w for w in snap["workers"] if "via" in w]
    assert len(behind) >= 2  # served by sub-brokers
    # tasks really run behind the sub-brokers: their workers' done counts grow
    list(futures.map(T.pid_after, [0.05] * 16))
    snap = fed.meta.wait_for(lambda s: sum(w["done"] for w in s["workers"] if "via" in w) > 0, 5)
    assert sum(w["done"] for w in snap["workers"] if "via" in w) > 0


def test_futures_api_across_the_federation(fed):
    wait_idle(fed)
    assert list(futures.map(T.square, range(3000))) == [x * x for x in range(3000)]
    assert futures.submit(T.tree, 10).result(timeout=120) == 1024
    shared.setConst(fed_fn=lambda x: -x)
    assert list(futures.map(T.use_const, ["fed_fn"] * 4, range(4))) == [0, -1, -2, -3]
    with pytest.raises(ValueError, match="bad value 3"):
        futures.submit(T.nested_fail, 3).result()
    running = [futures.submit(T.pid_after, 0.3) for _ in range(8)]
    pids = {f.result() for f in running}
    assert len(pids) >= 3  # tasks spread over workers behind different brokers


def test_killing_a_sub_broker_mid_map_loses_nothing(fed):
    wait_idle(fed)
    fs = [futures.submit(T.work_ms, 20, i) for i in range(200)]
    counts = {}
    for i, f in enumerate(fs):
        f.add_done_callback(lambda fut, i=i: counts.__setitem__(i, counts.get(i, 0) + 1))
    time.sleep(0.5)
    os.kill(fed.broker_procs[1].pid, signal.SIGKILL)
    assert [f.result(timeout=120) for f in fs] == list(range(200))
    assert counts == {i: 1 for i in range(200)}
    # the sub-broker is restarted and its workers replaced
    snap = fed.meta.wait_for(lambda s: len(s["workers"]) == 4, 30)
    assert len(snap["workers"]) == 4
    assert list(futures.map(T.square, range(100))) == [x * x for x in range(100)]


# ---- pure: no sockets, no processes -------------------------------------------------------------
def _sub_core(workers):
    """A sub-broker's scheduling core with ``workers`` workers joined, their outboxes emptied."""
    core = Scheduler(Peer(b"^", 0, {"role": "upstream"}, set()))
    peers = [core.join(f"w{k}".encode(), {"role": "worker", "host_key": 1}) for k in range(workers)]
    for p in peers:
        p.out.take()
    core.dirty.clear()
    core.size_due = False
    return core, peers


@pytest.mark.parametrize("workers", [10, 10000])
def test_sizes_from_the_root_are_passed_on_at_the_broker_pace(workers):
    """While thousands join, the root's size changes at every report: each change must not be a
    message to every worker behind the sub-broker (10,000 changes were 10**8 messages); the
    broker's loop sends one broadcast per pacing interval, carrying the latest size."""
    core, peers = _sub_core(workers)
    sub = SimpleNamespace(core=core)  # what _u_size reads of a sub-broker
    for size in range(1, 1001):
        SubBroker._u_size(sub, P.parse(*_one(P.SIZE_HEADER.pack(P.SIZE, size, 1)))[0])
    assert not core.dirty and not any(p.out for p in peers)  # nothing sent yet, at any size
    assert core.size_due and core.global_size == 1000
    core.send_size()  # the loop's paced broadcast: one record per worker, the latest size
    for p in peers:
        (rec,) = P.parse(*_one_box(p.out))
        assert P.SIZE_HEADER.unpack(rec.hdr)[1] == 1000
    SubBroker._u_size(sub, P.parse(*_one(P.SIZE_HEADER.pack(P.SIZE, 1000, 1)))[0])
    assert not core.size_due  # an unchanged size is no news


def _one(hdr):
    box = P.Outbox()
    box.add(hdr)
    return _one_box(box)


def _one_box(box):
    data, frames = box.take()
    return data, frames, 0


class _Walks:
    """A census that counts its walks over the workers."""

    def __init__(self):
        self.walks = 0

    def snapshot(self):
        self.walks += 1
        return {"totals": {}, "workers": [], "left": []}


def test_a_sub_broker_walks_its_workers_once_per_report_as_seldom_as_the_root_publishes():
    """10,000 workers behind a sub-broker of a 50,000-worker cluster: a report (a walk over the
    workers) every 2 s, as the root publishes, not every 0.5 s; the sub-broker's own meta
    stream shows the last report (no walk of its own); a join is reported within 0.5 s."""
    core, _ = _sub_core(10000)
    core.global_size = 50000
    census = _Walks()
    sub = SimpleNamespace(core=core, census=census, upstream=core.upstream, next_beat=0.0,
                          last_report=None, reported_at=0.0, reported_count=0)
    for tick in range(600):  # 60 s of the broker's 0.1 s ticks
        SubBroker._periodic(sub, 1000.0 + tick / 10)
    assert census.walks <= 31
    assert len(sent_loads(core.upstream)) == census.walks
    assert SubBroker._snapshot(sub)["totals"]["done"] == 0 and census.walks <= 31  # no walk of its own
    before = census.walks
    core.join(b"late", {"role": "worker", "host_key": 1})
    for tick in range(1, 6):  # the next 0.5 s
        SubBroker._periodic(sub, 1060.0 + tick / 10)
    assert census.walks == before + 1
    assert json.loads(bytes(sent_loads(core.upstream)[-1].body))["count"] == 10001


def sent_loads(peer):
    data, frames = peer.cout.take()
    return [r for r in (P.parse(data, frames, 0) or []) if r.hdr[:1] == P.LOAD]


# ---- packing tiny tasks (pure) -------------------------------------------------------------------
FN = P.digest(b"the function")
OTHER = P.digest(b"another function")


def _from_root(core, tids, fn=FN):
    """Tasks the root sent, with their function."""
    box = P.Outbox()
    box.add(P.BLOB_HEADER.pack(P.BLOB, fn), b"callable")
    for tid in tids:
        box.add(P.TASK_HEADER.pack(P.TASK, tid, 0, fn, 1, 0), b"args")
    recs = P.parse(*_one_box(box))
    core.blob(core.upstream, recs[0])
    for rec in recs[1:]:
        core.submit(core.upstream, rec)


def _result(tid, seconds):
    hdr = P.RESULT_HEADER.pack(P.RESULT, tid, P.OK, 1, 1000.0, 1000.0 + seconds, b"w" * 12)
    box = P.Outbox()
    box.add(hdr, b"value")
    return P.parse(*_one_box(box))[0]


def _timed(core, fn, seconds, n, first=1 << 40):
    """``n`` tasks of ``fn`` run by one worker, each in ``seconds``, their results back here."""
    w = core.join(b"timer%d" % first, {"role": "worker", "host_key": 1})
    core.credit(w, n)
    _from_root(core, range(first, first + n), fn)
    core.dispatch()
    for tid in range(first, first + n):
        core.result(_result(tid, seconds))
    core.leave(w, "left")
    core.upstream.out.take()


def _packed_core(workers, credit, tiny=True):
    core, peers = _sub_core(workers)
    core.pack = PACK
    if tiny:
        _timed(core, FN, 0.00001, PACK_AFTER)
    for p in peers:
        core.credit(p, credit)
    core.upstream.out.take()
    return core, peers


def _tasks_per_message(peers):
    return [len([r for r in P.parse(*_one_box(p.out)) or () if r.hdr[:1] == P.TASK]) for p in peers if p.out]


@pytest.mark.parametrize("credit, per_message", [(64, PACK), (2 * PACK, PACK), (2 * PACK - 1, 1), (1, 1)])
def test_a_sub_broker_packs_tiny_tasks_in_messages_to_its_workers(credit, per_message):
    """A few hundred tiny tasks for 1,000 idle workers (the root sends them as credits come back):
    a worker that says it starts at least twice ``PACK`` soon gets ``PACK`` in one message (a
    fair share was one each: one message per task); one asking less gets a fair share."""
    core, peers = _packed_core(1000, credit)
    _from_root(core, range(1, 401))
    v0 = core.visits
    core.dispatch()
    assert core.visits - v0 == 400 // per_message  # a peer visited per message, no more
    got = _tasks_per_message(peers)
    assert sum(got) == 400 and set(got) == {per_message}
    assert not core.queue


@pytest.mark.parametrize("runs, seconds", [(0, 0.0), (PACK_AFTER - 1, 0.00001), (PACK_AFTER, 0.001)])
def test_a_function_not_known_to_be_tiny_is_not_packed(runs, seconds):
    """Never run here, too few results yet, or runs that are not tiny: one task per idle worker,
    so a long task never has others packed behind it."""
    core, peers = _packed_core(1000, 64, tiny=False)
    if runs:
        _timed(core, FN, seconds, runs)
    _from_root(core, range(1, 401))
    core.dispatch()
    assert set(_tasks_per_message(peers)) == {1}


def test_one_long_run_unpacks_a_function_for_its_next_results():
    core, peers = _packed_core(10, 64)
    assert FN in core.tiny
    _timed(core, FN, 2.0, 1, first=1 << 41)
    assert FN not in core.tiny
    _timed(core, FN, 0.00001, 200, first=1 << 42)
    assert FN not in core.tiny  # 2 s decays below PACK_TINY over ~270 results
    _timed(core, FN, 0.00001, 100, first=1 << 43)
    assert FN in core.tiny


def test_only_tiny_tasks_are_packed_and_never_behind_another():
    """A task of another function among the next ``PACK`` stops packing; a worker that holds
    a task not known to be tiny gets a fair share only (a packed one would wait behind it), one
    that holds tiny ones only is packed."""
    core, peers = _packed_core(8, 64)
    _from_root(core, range(1, 4))
    _from_root(core, [4], OTHER)
    _from_root(core, range(5, 17))
    core.dispatch()  # a fair share (16 over 8) while OTHER is among the next PACK, then packs
    assert _tasks_per_message(peers) == [2, 2, PACK, 4]
    assert set(peers[1].assigned) == {3, 4}
    for first, then in ((OTHER, [2, 3, 1]), (FN, [4, 1, 1])):
        core, peers = _packed_core(3, 64)
        for tid, fn in ((1, first), (2, FN), (3, FN)):  # one each, the first of ``first``
            _from_root(core, [tid], fn)
            core.dispatch()
        assert [len(p.assigned) for p in peers] == [1, 1, 1]
        _from_root(core, [4, 5, 6])
        core.dispatch()  # a fair share of one each, or packs to who holds tiny ones only
        assert [len(p.assigned) for p in peers] == then, first


def test_a_packed_worker_is_asked_for_its_unstarted_tasks_when_another_is_idle():
    """The safety net, for a task that turns out long: the next steal asks the packed worker
    for all but the one it runs."""
    core, peers = _packed_core(2, 64)
    _from_root(core, range(1, PACK + 1))
    core.dispatch()
    packed = [p for p in peers if p.assigned]
    assert len(packed) == 1 and len(packed[0].assigned) == PACK
    packed[0].cout.take()
    core.steal(100.0)
    got = [P.COUNT.unpack(r.hdr)[1] for r in P.parse(*_one_box(packed[0].cout)) or () if r.hdr[:1] == P.STEAL]
    assert got == [PACK - 1]


def test_the_root_does_not_pack_nor_time_results():
    core = Scheduler()
    peers = [core.join(f"w{k}".encode(), {"role": "worker", "host_key": 1}) for k in range(100)]
    origin = core.join(b"o", {"role": "origin", "host_key": 1})
    for p in peers:
        core.credit(p, 64)
    box = P.Outbox()
    box.add(P.BLOB_HEADER.pack(P.BLOB, FN), b"callable")
    for tid in range(1, 51):
        box.add(P.TASK_HEADER.pack(P.TASK, tid, 0, FN, 1, 0), b"args")
    recs = P.parse(*_one_box(box))
    core.blob(origin, recs[0])
    for rec in recs[1:]:
        core.submit(origin, rec)
    core.dispatch()
    for tid in range(1, 51):
        core.result(_result(tid, 0.0))
    assert not core.run_times and not core.tiny
