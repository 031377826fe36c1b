"""Reliability and security against real processes: killed workers, crashing tasks, hostile
peers on the broker's ports, the secret's whereabouts, and the origin's loss."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import psutil
import pytest

from scoop import futures
from scoop.errors import WorkerLostError

import tasklib as T
from conftest import PROGRAMS, ROOT, wait_idle


def _worker_pids(cluster):
    return [w.pid for w in cluster.workers if not w.retired and w.poll() is None]


@pytest.mark.parametrize("trial", range(3))
def test_sigkill_a_worker_mid_map_every_result_exactly_once(cluster, trial):
    wait_idle(cluster)
    n = 300
    completions = {}
    fs = [futures.submit(T.work_ms, 15, i) for i in range(n)]
    for i, f in enumerate(fs):
        f.add_done_callback(lambda fut, i=i: completions.__setitem__(i, completions.get(i, 0) + 1))
    time.sleep(0.4 + 0.2 * trial)
    victim = random.Random(trial).choice(_worker_pids(cluster))
    os.kill(victim, signal.SIGKILL)
    results = [f.result(timeout=120) for f in fs]
    assert results == list(range(n))
    assert completions == {i: 1 for i in range(n)}  # each future completed exactly once
    # the cluster replaced the dead worker and keeps computing
    snap = cluster.meta.wait_for(lambda s: len(s["workers"]) == 2, 20)
    assert len(snap["workers"]) == 2
    assert list(futures.map(T.square, range(50))) == [x * x for x in range(50)]


def test_task_that_exits_its_worker_fails_with_a_named_error(cluster):
    wait_idle(cluster)
    f = futures.submit(T.die, 9)
    with pytest.raises(WorkerLostError) as info:
        f.result(timeout=120)
    msg = str(info.value)
    assert "died" in msg and "worker" in msg
    snap = cluster.meta.wait_for(lambda s: len(s["workers"]) == 2, 30)
    assert len(snap["workers"]) == 2
    assert list(futures.map(T.square, range(20))) == [x * x for x in range(20)]


def test_secret_never_on_a_command_line_or_in_the_environment(cluster):
    secret = cluster.secret.hex()
    pids = [cluster.broker_proc.pid] + _worker_pids(cluster)
    for pid in pids:
        p = psutil.Process(pid)
        assert secret not in " ".join(p.cmdline())
        assert not any(secret in v for v in p.environ().values())


def test_local_cluster_listens_on_loopback_only(cluster):
    listening = [c for c in psutil.Process(cluster.broker_proc.pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN]
    assert {c.laddr.port for c in listening} >= {cluster.main_port, cluster.meta_port}
    assert all(c.laddr.ip == "127.0.0.1" for c in listening)


def test_frozen_origin_ends_the_whole_cluster():
    """The broker notices the origin's silence (heartbeats) and ends every worker; this is the
    path a hung or cut-off origin takes, independent of parent-death signals."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, "-m", "scoop", "-n", "2", "long_running.py"], cwd=PROGRAMS,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert p.stdout.readline().strip() == "READY"
        mine = [c.pid for c in psutil.Process(p.pid).children(recursive=True)]
        os.kill(p.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
                psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                for pid in mine):
            time.sleep(0.2)
        alive = [pid for pid in mine if psutil.pid_exists(pid)
                 and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"still running 10 s after the origin froze: {alive}"
    finally:
        os.kill(p.pid, signal.SIGCONT)
        p.kill()
        p.wait()
