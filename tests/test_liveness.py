"""Liveness that survives GIL-holding work, no head-of-line blocking, errors that keep the
error, and API edges -- with real worker processes (issue: robustness)."""
from __future__ import annotations

import time

import pytest

from scoop import futures
from scoop.errors import RemoteError

import tasklib as T
from conftest import origin_cluster, run_scoop, wait_idle


@pytest.fixture(scope="module")
def hb_cluster():
    """Two workers, the default 3 s heartbeat timeout."""
    yield from origin_cluster(2, heartbeat_timeout=3.0)


def test_a_task_holding_the_gil_past_the_heartbeat_timeout_completes_exactly_once(hb_cluster):
    wait_idle(hb_cluster)
    lost_before = hb_cluster.status()["totals"]["lost_workers"]
    pids = sorted(w.pid for w in hb_cluster.workers)
    fs = [futures.submit(T.hold_gil, 7, k) for k in range(2)]
    done, _ = futures.wait(fs, timeout=60)
    assert [f.result() for f in fs] == [0, 1]
    snap = hb_cluster.status()
    assert snap["totals"]["lost_workers"] == lost_before, "a busy worker was declared lost"
    assert sorted(w.pid for w in hb_cluster.workers if w.poll() is None) == pids


def test_the_origin_holding_the_gil_between_maps_keeps_its_cluster(hb_cluster):
    wait_idle(hb_cluster)
    assert list(futures.map(T.square, range(20))) == [x * x for x in range(20)]
    T.hold_gil(5)  # a long pandas/numpy call in a notebook cell, say
    assert list(futures.map(T.square, range(20))) == [x * x for x in range(20)]
    assert hb_cluster.status()["totals"]["lost_workers"] == 0


def test_one_crashing_task_among_long_ones_does_not_cascade(hb_cluster):
    wait_idle(hb_cluster)
    lost_before = hb_cluster.status()["totals"]["lost_workers"]
    fs = [futures.submit(T.sleep_return, 1.5, k) for k in range(6)]
    crash = futures.submit(T.crash_worker) if hasattr(T, "crash_worker") else None
    assert [f.result(timeout=60) for f in fs] == list(range(6))
    if crash is not None:
        crash.exception(timeout=60)
    hb_cluster.wait_for_workers(2, 30)
    lost = hb_cluster.status()["totals"]["lost_workers"] - lost_before
    assert lost <= 3, f"{lost} workers declared lost for one crashing task"


def test_short_tasks_never_wait_behind_a_long_one(hb_cluster):
    wait_idle(hb_cluster)
    # warm up: tiny tasks make workers prefetch deeply
    assert sum(futures.map(T.ident, range(5000))) == sum(range(5000))
    order = []
    long_first = [(8.0, "long")] + [(0.0, k) for k in range(2000)]
    for value in futures.map_as_completed(T.sleep_return, *zip(*long_first)):
        order.append(value)
    assert order[-1] == "long", "short tasks waited behind the long one"
    assert len(order) == 2001


def test_after_a_map_timeout_the_cluster_is_not_blocked_behind_the_stuck_task(hb_cluster):
    wait_idle(hb_cluster)
    with pytest.raises(futures.TimeoutError):
        list(futures.map(T.sleep_return, [6.0] + [0.0] * 200, timeout=1.0))
    t0 = time.monotonic()
    assert list(futures.map(T.square, range(200))) == [x * x for x in range(200)]
    assert time.monotonic() - t0 < 5.5, "the next map waited for the stuck task"


def test_an_exception_that_cannot_be_unpickled_keeps_its_type_and_message(hb_cluster):
    with pytest.raises(RemoteError) as info:
        list(futures.map(T.raise_custom, range(3)))
    assert "CustomError" in str(info.value) and "HTTP 404" in str(info.value)
    assert info.value.type_name.endswith("CustomError")
    assert "raise_custom" in str(info.value.__cause__)  # the remote traceback
    f = futures.submit(T.raise_custom, 5)
    futures.wait([f], timeout=30)
    exc = f.exception()
    assert isinstance(exc, RemoteError) and "HTTP 404 for http://example.invalid/5" in str(exc)


def test_an_unpicklable_result_is_the_same_error_in_place_and_through_a_worker(hb_cluster):
    in_place = futures.submit(T.make_lock).exception()
    dispatched = futures.submit(T.make_lock)
    futures.wait([dispatched], timeout=30)  # a wait with a timeout goes through a worker
    assert type(in_place) is type(dispatched.exception())
    assert "make_lock" in str(in_place) and "make_lock" in str(dispatched.exception())


def test_unpicklable_argument_names_the_argument_and_its_task(hb_cluster):
    import threading
    with pytest.raises(TypeError) as info:
        futures.submit(T.ident, threading.Lock())
    assert "argument 1 of task ident" in str(info.value) and "lock" in str(info.value)


def test_after_shutdown_map_mapreduce_and_setconst_raise(no_leak):
    r = run_scoop(["-n", "1", "after_shutdown.py"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:4] == ["map raises", "mapReduce raises", "setConst raises", "submit raises"]


def test_after_interrupting_the_current_group_new_work_still_runs(hb_cluster):
    import scoop.origin
    wait_idle(hb_cluster)
    slow = [futures.submit(T.sleep_return, 2.0, k) for k in range(2)]
    futures.wait(slow, timeout=0.2)
    scoop.origin.interrupt()
    assert all(f.cancelled() for f in slow)
    g = futures.submit(abs, -3)
    futures.wait([g], timeout=30)
    assert g.result() == 3
    assert list(futures.map(T.square, range(5))) == [0, 1, 4, 9, 16]
