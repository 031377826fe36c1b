"""The public Cluster API: start/stop, context manager, status, scale, failures at start."""
from __future__ import annotations

import os
import signal
import time

import pytest

from scoop import futures
from scoop.cluster import Cluster
from scoop.errors import ClusterError

import tasklib as T
from conftest import PROGRAMS


def test_context_manager_status_and_stop(no_leak):
    import scoop
    with Cluster(2, pythonpath=[PROGRAMS]) as c:
        assert c.running and c.size == 2 and scoop.IS_RUNNING
        assert "running" in repr(c) and "2 workers" in repr(c)
        assert futures.submit(T.square, 3).result() == 9
        snap = c.status()
        assert snap["state"] == "running" and snap["totals"]["workers"] == 2
        events = []
        unsubscribe = c.subscribe(lambda kind, data: events.append(kind))
        time.sleep(0.6)
        unsubscribe()
        assert events.count("status") >= 2  # the meta stream runs at ~5 Hz
    assert not c.running and not scoop.IS_RUNNING
    # no cluster any more: like a plain `python prog.py`, futures run serially here
    assert futures.submit(T.square, 4).result() == 16


def test_only_one_origin_per_process(no_leak):
    with Cluster(1, pythonpath=[PROGRAMS]):
        other = Cluster(1)
        with pytest.raises(ClusterError, match="already the origin"):
            other.start()
        assert not other.running


def test_scale_up_and_down_while_tasks_run(no_leak):
    with Cluster(2, pythonpath=[PROGRAMS]) as c:
        fs = [futures.submit(T.work_ms, 30, i) for i in range(120)]
        c.scale(4)
        snap = c.meta.wait_for(lambda s: len(s["workers"]) == 4, 10)
        assert len(snap["workers"]) == 4 and c.size == 4
        c.scale(1)
        assert c.size == 1
        assert [f.result(timeout=120) for f in fs] == list(range(120))  # nothing lost by retiring
        snap = c.meta.wait_for(lambda s: len(s["workers"]) == 1, 10)
        assert len(snap["workers"]) == 1
        assert list(futures.map(T.square, range(10))) == [x * x for x in range(10)]


def test_a_failed_start_leaves_nothing_running(no_leak):
    c = Cluster(2, python="/nonexistent/python3")
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match="nonexistent"):
        c.start(timeout=30)
    assert time.monotonic() - t0 < 30
    assert not c.running


def test_futures_whose_parent_task_was_on_a_lost_worker_complete_once(no_leak):
    """A parent dies with its worker: it runs again elsewhere and resubmits its children; the
    orphaned first children are forgotten, and the root future completes exactly once."""
    with Cluster(3, pythonpath=[PROGRAMS]) as c:
        calls = []
        f = futures.submit(T.slow_tree, 5, 0.02)
        f.add_done_callback(lambda fut: calls.append(fut.result()))
        time.sleep(0.5)
        victim = [w for w in c.workers if w.poll() is None][0]
        os.kill(victim.pid, signal.SIGKILL)
        assert f.result(timeout=120) == 32
        time.sleep(0.2)
        assert calls == [32]


def test_inline_off_sends_every_task_to_a_worker(no_leak):
    with Cluster(1, pythonpath=[PROGRAMS], inline=False):
        futures.submit(T.where).result()
        assert not futures.submit(T.where).result()["is_origin"]


@pytest.mark.parametrize("kwargs,says", [
    ({"n": 0}, "expected at least 1, got 0"),
    ({"n": -3}, "expected at least 1, got -3"),
    ({"brokers": 0}, "brokers"),
    ({"heartbeat_timeout": 0}, "heartbeat_timeout"),
    ({"heartbeat_timeout": -1}, "heartbeat_timeout"),
])
def test_bad_arguments_are_refused_before_anything_starts(kwargs, says):
    with pytest.raises(ValueError, match=says):
        Cluster(**kwargs)


def test_unknown_argument_is_named():
    with pytest.raises(TypeError, match="unknown cluster option 'workers_count'"):
        Cluster(2, workers_count=3)


def test_scale_edges_and_the_joined_count(no_leak):
    c = Cluster(2, pythonpath=[PROGRAMS])
    with pytest.raises(ClusterError, match="not started"):
        c.scale(3)
    with c:
        with pytest.raises(ValueError, match="at least 1 worker, not -1"):
            c.scale(-1)
        with pytest.raises(ValueError, match="at least 1 worker, not 0"):
            c.scale(0)
        with pytest.raises(ClusterError, match="only 2 of 5 workers joined"):
            c.wait_for_workers(5, timeout=1)
        assert (c.requested, c.launched, c.joined) == (2, 2, 2)
        assert sorted(w.name for w in c.workers) == ["w1", "w2"]
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match="stopped"):
        c.scale(3)
    assert time.monotonic() - t0 < 5 and len(c.workers) == 2  # nothing was started


def test_replacement_workers_get_new_names(no_leak):
    with Cluster(2, pythonpath=[PROGRAMS]) as c:
        victim = c.workers[0]
        os.kill(victim.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(c.workers) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [w.name for w in c.workers] == ["w1", "w2", "w3"]
        assert sorted(s.name for s in c.spec) == ["w2", "w3"]
        assert list(futures.map(T.square, range(6))) == [x * x for x in range(6)]


FAKE_PBSDSH = """#!/bin/sh
# stand-in for PBS's pbsdsh [-n INDEX] -- CMD...: runs CMD here, with no stdin, as pbsdsh does
while [ "$1" != "--" ]; do
  case "$1" in -n) PBS_TASKNUM=$2; export PBS_TASKNUM; shift 2;; *) shift;; esac
done
shift
exec "$@" </dev/null
"""

FAKE_QRSH = """#!/bin/sh
# stand-in for SGE's qrsh -inherit HOST CMD...: runs CMD here with our stdin, as qrsh does
[ "$1" = "-inherit" ] || exit 2
shift 2
exec "$@"
"""


@pytest.mark.parametrize("kind", ["pbs", "sge"])
def test_allocation_launchers_through_stand_ins(kind, tmp_path, monkeypatch, no_leak):
    """pbsdsh and qrsh -inherit cannot run here: stand-ins with their command lines check that
    the launchers are chosen inside an allocation, start workers that join, and end them."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    program, text = ("pbsdsh", FAKE_PBSDSH) if kind == "pbs" else ("qrsh", FAKE_QRSH)
    (bindir / program).write_text(text)
    (bindir / program).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HOME", str(tmp_path))  # pbsdsh's private config files go under ~/.scoop
    for var in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "PBS_NODEFILE", "PE_HOSTFILE"):
        monkeypatch.delenv(var, raising=False)
    if kind == "pbs":
        (tmp_path / "nodes").write_text("localhost\nlocalhost\n")
        monkeypatch.setenv("PBS_NODEFILE", str(tmp_path / "nodes"))
    else:
        (tmp_path / "pe").write_text("localhost 2 all.q@localhost UNDEFINED\n")
        monkeypatch.setenv("PE_HOSTFILE", str(tmp_path / "pe"))
    with Cluster(pythonpath=[PROGRAMS]) as c:
        assert c.launcher.name == program and c.plan == [("localhost", 2)]
        assert list(futures.map(T.square, range(10))) == [x * x for x in range(10)]
        with pytest.raises(ClusterError, match="3 workers asked for, but the .* allocation has 2 slots"):
            c.scale(3)
    if kind == "pbs":
        assert os.listdir(tmp_path / ".scoop") == []  # the secret's files are gone
