"""The futures API against a real 2-worker cluster whose origin is the test process."""
from __future__ import annotations

import functools
import threading
import time

import pytest

from scoop import futures, shared
from scoop._protocol import SerializationError

import tasklib as T
from conftest import wait_idle


@pytest.fixture(autouse=True)
def _idle(cluster):
    wait_idle(cluster)
    yield


def test_submit_and_result(cluster):
    f = futures.submit(T.square, 7)
    assert f.result(timeout=30) == 49
    assert f.done() and not f.cancelled() and f.exception() is None


def test_map_in_input_order_with_generators_and_several_iterables(cluster):
    assert list(futures.map(T.square, range(500))) == [x * x for x in range(500)]
    gen = (i for i in range(50))
    assert list(futures.map(T.add, gen, range(1000))) == [2 * i for i in range(50)]


def test_map_over_sequences_sends_slices_and_keeps_every_item(cluster):
    """Lists, tuples, ranges and numpy arrays travel in slices (a sub-range is a few bytes, an
    array slice one buffer); what the function sees and what comes back is what iterating gives."""
    import numpy as np
    for seq in ([3, 1, 2] * 4000, tuple(range(9001)), range(5, 300_005, 3), np.arange(70_000) * 0.5):
        assert list(futures.map(T.square, seq)) == [x * x for x in seq], type(seq).__name__
    rows = np.arange(30_000.0).reshape(10_000, 3)
    assert list(futures.map(T.array_sum, rows)) == [float(r.sum()) for r in rows]
    assert list(futures.map(T.ident, "scoop")) == list("scoop")
    it = futures.map(T.square, range(100_000))
    head = [next(it) for _ in range(7)]  # one by one, then the rest in whole chunks
    assert head + list(it) == [x * x for x in range(100_000)]
    with pytest.raises(ValueError, match="bad value 4321"):
        list(futures.map(functools.partial(T.fail_on, bad=4321), range(50_000)))


def test_map_is_lazy_over_an_endless_iterable(cluster):
    import itertools
    it = futures.map(T.square, itertools.count())
    assert [next(it) for _ in range(5000)] == [x * x for x in range(5000)]


def test_map_raises_the_task_exception_when_iteration_reaches_it(cluster):
    it = futures.map(T.fail_on, range(6))
    assert [next(it), next(it), next(it)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad value 3"):
        next(it)


def test_map_as_completed_yields_every_result(cluster):
    got = list(futures.map_as_completed(T.sleep_return, [1.0, 0.01, 0.1]))
    assert sorted(got) == [0.01, 0.1, 1.0]
    assert got[-1] == 1.0


def test_map_timeout_is_honoured(cluster):
    t0 = time.monotonic()
    with pytest.raises(futures.TimeoutError):
        list(futures.map(T.sleep_return, [2, 2, 2], timeout=0.3))
    assert time.monotonic() - t0 < 1.5


def test_result_timeout_then_result(cluster):
    f = futures.submit(T.sleep_return, 0.8)
    with pytest.raises(futures.TimeoutError):
        f.result(timeout=0.1)
    assert not f.done()
    assert f.result(timeout=30) == 0.8


def test_as_completed_order_and_timeout(cluster):
    fs = [futures.submit(T.sleep_return, s) for s in (0.6, 0.05)]
    order = [f.result() for f in futures.as_completed(fs)]
    assert order == [0.05, 0.6]
    slow = futures.submit(T.sleep_return, 1.5)
    with pytest.raises(futures.TimeoutError):
        for _ in futures.as_completed([slow], timeout=0.2):
            pass
    slow.result()


def test_wait_return_when(cluster):
    quick, slow = futures.submit(T.square, 3), futures.submit(T.sleep_return, 1.0)
    done, not_done = futures.wait([quick, slow], return_when=futures.FIRST_COMPLETED)
    assert quick in done and slow in not_done
    bad, slow2 = futures.submit(T.fail_on, 3), futures.submit(T.sleep_return, 3.0)
    done, not_done = futures.wait([bad, slow2], return_when=futures.FIRST_EXCEPTION)
    assert done == {bad} and isinstance(bad.exception(), ValueError)
    done, not_done = futures.wait([slow, slow2], timeout=0.05)
    assert not_done  # timeout honoured
    done, not_done = futures.wait([slow, slow2])
    assert len(done) == 2 and not not_done


def test_cancel_queued_task_but_not_running_one(cluster):
    blockers = [futures.submit(T.sleep_return, 1.0) for _ in range(2)]
    time.sleep(0.3)  # both workers busy now
    queued = futures.submit(T.square, 5)
    assert queued.cancel() is True
    assert queued.cancelled() and queued.done()
    with pytest.raises(futures.CancelledError):
        queued.result()
    assert blockers[0].cancel() is False
    assert [b.result() for b in blockers] == [1.0, 1.0]


def test_running_while_a_worker_holds_the_task(cluster):
    f = futures.submit(T.sleep_return, 0.8)
    deadline = time.monotonic() + 10
    while not f.running():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert not f.done()
    f.result()
    assert not f.running() and f.done()


def test_done_callbacks_early_and_late(cluster):
    seen = []
    f = futures.submit(T.sleep_return, 0.2, 42)
    f.add_done_callback(lambda fut: seen.append(("early", fut.result())))
    f.result()
    assert seen == [("early", 42)]
    f.add_done_callback(lambda fut: seen.append(("late", fut.result())))
    assert seen[-1] == ("late", 42)  # runs at once on a finished future


def test_nested_recursion_12_levels_on_2_workers(cluster):
    assert futures.submit(T.tree, 12).result(timeout=120) == 4096
    assert futures.submit(T.map_tree, 10).result(timeout=120) == 1024


def test_as_completed_and_wait_inside_tasks(cluster):
    assert futures.submit(T.as_completed_inside, 6).result() == list(range(6))
    assert futures.submit(T.wait_inside, 10).result() == ([i * i for i in range(10)], 0)


def test_map_reduce_and_scan_match_serial_also_when_not_commutative(cluster):
    assert futures.mapReduce(T.square, T.add, range(1000)) == sum(x * x for x in range(1000))
    words = [str(i) for i in range(30)]
    assert futures.mapReduce(str.upper, T.add, words) == "".join(words)
    assert futures.mapScan(T.ident, T.add, range(20)) == [sum(range(i + 1)) for i in range(20)]
    assert futures.mapScan(str, T.add, range(12)) == ["".join(map(str, range(i + 1))) for i in range(12)]


def test_lambdas_closures_partials_bound_methods(cluster):
    k = 3
    assert list(futures.map(lambda x: x + k, range(5))) == [3, 4, 5, 6, 7]

    def make(n):
        def inner(x):
            return x * n
        return inner
    assert futures.submit(make(4), 5).result() == 20
    assert futures.submit(functools.partial(T.add, 10), 5).result() == 15
    assert list(futures.map(T.Scaler(6).scale, [1, 2])) == [6, 12]


def test_remote_exception_keeps_type_message_and_traceback(cluster):
    f = futures.submit(T.nested_fail, 3)
    with pytest.raises(ValueError, match="bad value 3") as info:
        f.result(timeout=60)
    import traceback
    text = "".join(traceback.format_exception(info.value))
    assert "fail_on" in text and "nested_fail" in text and "tasklib.py" in text
    assert "raise ValueError" in text


def test_unpicklable_argument_fails_at_submit_naming_it(cluster):
    lock = threading.Lock()
    with pytest.raises(SerializationError) as info:
        futures.submit(T.ident, lock)
    msg = str(info.value)
    assert "ident" in msg and "lock" in msg.lower()


def test_unpicklable_function_fails_at_submit_naming_it(cluster):
    lock = threading.Lock()

    def holds_lock(x):
        with lock:
            return x
    with pytest.raises(SerializationError, match="holds_lock"):
        futures.submit(holds_lock, 1)


def test_unpicklable_result_names_it_and_worker_survives(cluster):
    with pytest.raises(SerializationError, match="unpicklable_result"):
        futures.submit(T.unpicklable_result).result(timeout=60)  # a timeout: never run in place
    assert futures.submit(T.square, 9).result() == 81


def test_shared_constants(cluster):
    shared.setConst(offset=100, fn=lambda x: x * 1000)
    assert futures.submit(T.get_const, "offset").result() == 100
    assert list(futures.map(T.use_const, ["fn"] * 3, [1, 2, 3])) == [1000, 2000, 3000]
    with pytest.raises(TypeError, match="offset"):
        shared.setConst(offset=5)
    assert shared.getConst("offset") == 100
    t0 = time.monotonic()
    assert futures.submit(T.get_const, "never_set", 0.3).result() is None
    assert time.monotonic() - t0 < 5


def test_module_globals_on_origin_and_workers(cluster):
    import scoop
    assert scoop.IS_ORIGIN and scoop.IS_RUNNING and scoop.SIZE == 2
    assert scoop.BROKER.task_port == cluster.main_port and scoop.BROKER.info_port == cluster.meta_port
    infos = [f.result() for f in [futures.submit(T.where) for _ in range(8)]]
    assert all(not i["is_origin"] and i["running"] and i["size"] == 2 for i in infos)
    assert len({i["worker"] for i in infos} | {scoop.worker}) >= 2
    assert all(i["broker"][1] == cluster.main_port for i in infos)


def test_done_polls_without_a_wait_call(cluster):
    f = futures.submit(T.square, 2)
    deadline = time.monotonic() + 10
    while not f.done():
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert f.result() == 4


def test_status_reports_workers(cluster):
    snap = cluster.status()
    assert len(snap["workers"]) == 2
    assert all({"host", "pid", "state", "done", "cpu", "mem"} <= set(w) for w in snap["workers"])


def test_interrupt_a_group_frees_the_workers_at_once(cluster):
    import scoop.origin as origin
    origin.new_group()
    fs = [futures.submit(T.sleep_return, 20) for _ in range(6)]
    nested = futures.submit(T.tree, 14)
    time.sleep(0.5)
    t0 = time.monotonic()
    origin.interrupt()
    assert all(f.cancelled() for f in fs + [nested])
    origin.new_group()
    assert futures.submit(T.square, 3).result(timeout=10) == 9  # running sleeps were interrupted
    assert time.monotonic() - t0 < 5
    wait_idle(cluster, timeout=10)
    assert origin.outstanding() == 0


def test_a_task_waited_on_at_once_runs_in_place(cluster):
    import os
    futures.submit(T.where).result(timeout=30)  # ships the function
    here = futures.submit(T.where).result()
    assert here["pid"] == os.getpid() and here["is_origin"]
    with pytest.raises(ValueError, match="bad value 3"):
        futures.submit(T.fail_on, 3).result()
    held = futures.submit(T.square, 6)
    assert held.cancel() and held.cancelled()


def test_a_task_not_waited_on_goes_to_a_worker_within_milliseconds(cluster):
    import os
    futures.submit(T.pid_after, 0).result(timeout=30)
    f = futures.submit(T.pid_after, 0)
    time.sleep(0.2)  # the submitter goes on without waiting: the task must not sit here
    assert f.done()
    assert f.result() != os.getpid()
