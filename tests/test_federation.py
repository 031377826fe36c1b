"""Broker federation (-b): a root broker with sub-brokers, each serving part of the workers."""
from __future__ import annotations

import os
import signal
import time

import pytest

from scoop import futures, shared

import tasklib as T
from conftest import origin_cluster, run_scoop, wait_idle


def test_acceptance_program_on_two_brokers(no_leak):
    r = run_scoop(["-n", "2", "-b", "2", "acceptance.py"])
    assert r.returncode == 0, r.stderr
    assert "ACCEPTANCE OK" in r.stdout


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
