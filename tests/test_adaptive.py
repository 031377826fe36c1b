"""Adaptive scaling: the rules without processes, then a real local cluster through a burst."""
from __future__ import annotations

import time

import pytest

from scoop.adaptive import Rules, parse_range


def idle(name):
    return {"name": name, "state": "idle", "running": 0, "assigned": 0, "queued": 0}


def busy(name, assigned=1):
    return {"name": name, "state": "busy", "running": 1, "assigned": assigned, "queued": 0}


def solo(names):
    return [([x], False) for x in names]


def test_a_burst_grows_at_once_towards_one_worker_per_task_within_maximum():
    r = Rules(1, 8, wait=5)
    r.observe(0, [busy("w1", 30)])
    assert r.decide(0, ["w1"], tasks=30, jobs=solo(["w1"])).add == 7
    assert r.decide(0, ["w1"], tasks=3, jobs=solo(["w1"])).add == 2
    assert r.decide(0, ["w1"], tasks=1, jobs=solo(["w1"])).add == 0
    full = [f"w{k}" for k in range(1, 9)]
    assert r.decide(0, full, tasks=100, jobs=solo(full)).add == 0  # at the maximum


def test_below_the_minimum_grows_without_work():
    r = Rules(3, 8)
    assert r.decide(0, [], tasks=0, jobs=[]).add == 3


def test_idle_workers_go_only_after_wait_and_never_below_minimum():
    r = Rules(1, 8, wait=5)
    names = ["w1", "w2", "w3"]
    r.observe(0, [idle(x) for x in names])
    assert r.decide(4.9, names, tasks=0, jobs=solo(names)).retire == []
    r.observe(5, [idle(x) for x in names])
    d = r.decide(5, names, tasks=0, jobs=solo(names))
    assert d.add == 0 and len(d.retire) == 2


def test_a_worker_holding_work_is_never_retired_while_an_idle_one_can_go():
    r = Rules(0, 8, wait=1)
    names = ["w1", "w2", "w3"]
    r.observe(0, [busy("w1"), idle("w2"), {"name": "w3", "state": "idle", "queued": 2}])
    d = r.decide(10, names, tasks=1, jobs=solo(names))
    assert d.retire == ["w2"]  # w1 runs a task, w3 holds queued ones: only w2 may go
    r.observe(11, [idle("w1"), idle("w2"), idle("w3")])  # w1 just became idle: its clock starts
    assert "w1" not in r.decide(11.5, names, tasks=0, jobs=solo(names)).retire


def test_work_arriving_resets_the_idle_clock():
    r = Rules(1, 4, wait=2)
    r.observe(0, [idle("w1"), idle("w2")])
    r.observe(1, [idle("w1"), busy("w2")])
    r.observe(2.5, [idle("w1"), idle("w2")])
    d = r.decide(3, ["w1", "w2"], tasks=0, jobs=solo(["w1", "w2"]))
    assert d.retire == ["w1"]


def test_batch_grows_in_whole_jobs_within_maximum():
    r = Rules(0, 8, job_size=4)
    assert r.decide(0, [], tasks=1, jobs=[]).add == 4
    assert r.decide(0, [], tasks=5, jobs=[]).add == 8
    assert r.decide(0, ["w1", "w2", "w3", "w4"], tasks=50, jobs=[(["w1", "w2", "w3", "w4"], False)]).add == 4
    r = Rules(0, 6, job_size=4)
    assert r.decide(0, ["w1", "w2", "w3", "w4"], tasks=50, jobs=[]).add == 0  # a whole job would not fit


def test_batch_cancels_pending_jobs_before_running_ones_and_only_whole_jobs():
    r = Rules(0, 16, wait=1, job_size=2)
    running_a, running_b, pending = ["w1", "w2"], ["w3", "w4"], ["w5", "w6"]
    r.observe(0, [idle("w1"), idle("w2"), idle("w3"), busy("w4")])
    jobs = [(running_a, False), (running_b, False), (pending, True)]
    wanted = running_a + running_b + pending
    d = r.decide(5, wanted, tasks=1, jobs=jobs, waiting_since={"w5": 0, "w6": 0})
    assert d.retire == pending + running_a  # pending first; job b holds work in w4, so it stays
    # room for one job only (minimum 4 of 6): the pending one goes
    r2 = Rules(4, 16, wait=1, job_size=2)
    r2.observe(0, [idle("w1"), idle("w2"), idle("w3"), idle("w4")])
    d = r2.decide(5, wanted, tasks=0, jobs=jobs, waiting_since={"w5": 0, "w6": 0})
    assert d.retire == pending


def test_parse_range_and_bad_values():
    assert parse_range("2:64") == (2, 64)
    with pytest.raises(ValueError, match="MIN:MAX"):
        parse_range("2-64")
    from scoop.adaptive import _check
    with pytest.raises(ValueError, match="maximum"):
        _check(4, 2, 1, 1)
    with pytest.raises(ValueError, match="interval"):
        _check(1, 2, 0, 1)
    with pytest.raises(TypeError, match="whole number"):
        _check(1.5, 2, 1, 1)


# ---- a real local cluster --------------------------------------------------------------------------

def test_local_cluster_grows_with_a_burst_and_shrinks_back_with_no_task_lost_or_rerun(no_leak, tmp_path):
    from scoop import futures
    from scoop.cluster import Cluster

    from conftest import PROGRAMS

    log = tmp_path / "starts"

    def log_start_then_sleep(path, i, seconds):  # a closure: travels by value
        import os
        import time
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{i}\n".encode())
        os.close(fd)
        time.sleep(seconds)
        return i

    with Cluster(1, pythonpath=[PROGRAMS]) as c:
        a = c.adapt(1, 4, interval=0.3, wait=1.0)
        assert "1 to 4 workers" in repr(a)
        t0 = time.monotonic()
        fs = [futures.submit(log_start_then_sleep, str(log), i, 0.3) for i in range(40)]
        grew = c.meta.wait_for(lambda s: len(s["workers"]) >= 4, 10)
        took = time.monotonic() - t0
        assert grew is not None and len(grew["workers"]) == 4, "did not grow to 4 workers"
        assert took < 5, f"grew to 4 workers only after {took:.1f} s"
        assert [f.result(timeout=60) for f in fs] == list(range(40))
        done = time.monotonic()
        back = c.meta.wait_for(lambda s: len(s["workers"]) == 1, 10)
        assert back is not None, "did not shrink back to the minimum"
        assert time.monotonic() - done < 2 * 1.0 + 1.5  # within 2x the idle wait (plus a look)
        starts = log.read_text().split()
        assert sorted(map(int, starts)) == list(range(40))  # each task ran exactly once
        assert c.requested == 1
        c.scale(2)  # scaling by hand ends adaptive scaling
        assert c.adaptive is None and not a.active


PROGRAM = """
import time
from scoop import futures

def nap(x):
    time.sleep(0.3)
    return x

fs = [futures.submit(nap, i) for i in range(24)]
print("results", sum(f.result() for f in fs))
"""


def test_cli_adapt_switch_and_its_bad_values(tmp_path, no_leak):
    import subprocess
    import sys
    prog = tmp_path / "burst.py"
    prog.write_text(PROGRAM)
    r = subprocess.run([sys.executable, "-m", "scoop", "--adapt", "1:3", str(prog)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "results 276" in r.stdout
    r = subprocess.run([sys.executable, "-m", "scoop", "--adapt", "5:2", str(prog)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and "adapt" in r.stderr and "5:2" in r.stderr, r.stderr


def test_magic_adapt_grows_shrinks_and_turns_off():
    from kernel_driver import KernelDriver
    k = KernelDriver()
    try:
        k.run("%load_ext scoop_jupyter")
        k.run("%scoop_cluster start -n 1")
        out = k.run("%scoop_cluster adapt --minimum 1 --maximum 3 --interval 0.3 --wait 1").stream()
        assert "adapts between 1 and 3 workers" in out, out
        k.run("import time, scoop_jupyter as _sj\nfrom scoop import futures\n"
              "fs = [futures.submit(time.sleep, 0.3) for _ in range(30)]\n"
              "c = _sj.cluster()\n"
              "grew = c.meta.wait_for(lambda s: len(s['workers']) >= 3, 10) is not None\n"
              "[f.result() for f in fs]\n"
              "back = c.meta.wait_for(lambda s: len(s['workers']) == 1, 10) is not None")
        assert k.value("grew") is True and k.value("back") is True
        assert "stopped adapting" in k.run("%scoop_cluster adapt --off").stream()
        assert k.value("c.adaptive") is None
        err = k.run("%scoop_cluster adapt --minimum 4 --maximum 2", ok=False)
        assert "maximum (2) must be at least" in err.text(), err.text()
    finally:
        k.shutdown()


def test_adaptive_batch_cluster_grows_from_zero_in_whole_jobs_and_shrinks_back(slurm_cluster):
    """On the SLURM test cluster (2 nodes x 2 CPUs): from 0 workers, a burst gets 2 whole 2-worker
    jobs within 5 s; idle again, both jobs end within 2x the idle wait; every task runs once."""
    from scoop import futures
    from scoop.cluster import Cluster
    from tests.conftest import PROGRAMS, TESTS
    c = Cluster(2, slurm=True, cpus_per_job=2, pythonpath=[TESTS, PROGRAMS])
    try:
        c.start(timeout=90)
        c.adapt(0, 4, interval=0.5, wait=2)
        deadline = time.monotonic() + 30
        while (c.requested or slurm_cluster.jobs()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.requested == 0 and slurm_cluster.jobs() == [], "did not shrink to 0 jobs"
        t0 = time.monotonic()
        fs = [futures.submit(abs, -i) for i in range(200)]
        fs += [futures.submit(time.sleep, 0.5) for _ in range(16)]
        grew = c.meta.wait_for(lambda s: len(s["workers"]) >= 4, 30)
        took = time.monotonic() - t0
        assert grew is not None, "did not grow to 4 workers"
        assert took < 5, f"4 workers joined only {took:.1f} s after the burst"
        live = [h for h in c.workers if not h.retired and h.poll() is None]
        assert len(live) == 4 and len({h.job_id for h in live}) == 2  # whole jobs
        assert [f.result(timeout=60) for f in fs[:200]] == list(range(200))
        for f in fs[200:]:
            f.result(timeout=60)
        done = time.monotonic()
        while (c.requested or slurm_cluster.jobs()) and time.monotonic() < done + 20:
            time.sleep(0.1)
        back = time.monotonic() - done
        assert c.requested == 0 and slurm_cluster.jobs() == []
        assert back < 2 * 2 + 1.5, f"back to 0 jobs only {back:.1f} s after the burst"
    finally:
        c.stop()
    assert slurm_cluster.wait_no_jobs(30) == []
