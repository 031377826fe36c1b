"""SCOOP on a real Grid Engine cluster (tests/sge_cluster.py): workers started with ``qrsh
-inherit`` inside a job, and batch-job clusters (``--launcher sge``) started from this host."""
from __future__ import annotations

import collections
import os
import sys
import time

import pytest

from tests import batch_clusters
from tests.batch_clusters import origin_process, where
from tests.conftest import PROGRAMS, ROOT, TESTS, scoop_processes, wait_no_new_processes
from tests.sge_cluster import sge_cluster_fixture

sge_cluster = sge_cluster_fixture(nodes=2, cpus=2, scope="module")


def batch_cluster(sge, n, wait=True, **opts):
    """An origin here whose ``n`` workers are SGE jobs (:func:`tests.batch_clusters.batch_cluster`);
    the node names resolve only on the nodes: the address they reach this host at is given."""
    return batch_clusters.batch_cluster(n, lambda: sge.wait_no_jobs(20), wait, launcher="sge",
                                        external_hostname=sge.net.gateway_ip, **opts)


def test_cluster_runs_a_pe_job_on_a_node(sge_cluster, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\nhostname\necho slots $NSLOTS\n")
    out = tmp_path / "job.out"
    r = sge_cluster.run(["qsub", "-pe", "smp", "2", "-o", str(out), "-j", "y", str(script)])
    assert r.stdout.startswith("Your job ")
    assert sge_cluster.wait_no_jobs(60) == []
    words = out.read_text().split()
    assert words[0] in ("node1", "node2") and words[1:] == ["slots", "2"], words


def test_sge_workers_on_both_nodes_job_script_is_what_is_submitted_stop_leaves_no_job(sge_cluster):
    from scoop import futures
    from scoop.cluster import Cluster
    c = Cluster(4, launcher="sge", cpus_per_job=2, walltime="00:20:00", memory="200M",
                pythonpath=[TESTS, PROGRAMS], external_hostname=sge_cluster.net.gateway_ip)
    shown = c.job_script()
    assert "#$ -pe smp 2\n" in shown and "#$ -l h_rt=00:20:00\n" in shown and "#$ -l h_vmem=100M\n" in shown
    before = {p.pid for p in scoop_processes()}
    try:
        c.start(timeout=90)
        with open(os.path.join(c.launcher.dir, "job1.sh")) as f:
            assert f.read() == shown
        c.wait_for_workers(4, 90)
        assert sorted(set(futures.map(where, range(40)))) == ["node1", "node2"]
        assert len(sge_cluster.jobs()) == 2 and {h.state for h in c.workers} == {"running"}
        history = c.jobs(history=True)
        assert sorted(j["nodes"] for j in history) == ["node1", "node2"], history
    finally:
        c.stop()
    assert sge_cluster.wait_no_jobs(20) == []
    wait_no_new_processes(before, 15)
    assert [j["state"] for j in c.jobs(history=True)] == ["ended", "ended"]


def test_scale_up_and_down_submits_and_ends_jobs(sge_cluster):
    from scoop import futures
    with batch_cluster(sge_cluster, 2, cpus_per_job=1) as c:
        c.wait_for_workers(2, 90)
        c.scale(4, timeout=90)
        c.wait_for_workers(4, 90)
        assert len(sge_cluster.jobs()) == 4
        assert sorted(set(futures.map(where, range(40)))) == ["node1", "node2"]
        c.scale(1)
        deadline = time.monotonic() + 30
        while len(sge_cluster.jobs()) > 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(sge_cluster.jobs()) == 1
        assert list(futures.map(abs, [-1, -2, -3])) == [1, 2, 3]


def test_held_job_is_pending_then_joins(sge_cluster):
    from scoop import futures
    with batch_cluster(sge_cluster, 2, job_extra_directive=["-h"]) as c:
        (job,) = c.jobs()
        assert job["state"] == "pending" and job["reason"] == "held", job
        sge_cluster.run(["qrls", job["id"]])
        c.wait_for_workers(2, 90)
        assert sum(futures.map(abs, range(-4, 0))) == 10


def test_rejected_and_failing_jobs_are_clear_errors(sge_cluster, tmp_path):
    from scoop.errors import ClusterError
    with pytest.raises(ClusterError, match=r"qsub rejected the job for workers w1, w2: .*no_such_queue"):
        with batch_cluster(sge_cluster, 2, queue="no_such_queue"):
            pass
    # SGE lists a new job "qw" until its scheduler's next pass: start returns with it queued, and
    # its failure a moment later is the error of the wait for its workers (or of start, when the
    # pass came first)
    prolog = tmp_path / "prolog.sh"
    prolog.write_text("echo 'module: gcc/99 not found'\nexit 3\n")
    c = None
    with pytest.raises(ClusterError, match=r"(?s)exited with status 3 before joining.*gcc/99 not found"):
        with batch_cluster(sge_cluster, 2, prolog=str(prolog)) as c:
            c.wait_for_workers(2, 60)
    said = time.time()
    if c is not None:  # else start itself said it: the scheduler ran the job before listing it
        (job,) = c.jobs(history=True)
        assert job["exit_status"] == 3 and said - job["ended"] < 2.5, (said, job)


def test_start_returns_once_the_jobs_are_queued_and_says_how_many_wait(sge_cluster):
    """Three 2-slot jobs on 4 slots: start returns as soon as the scheduler lists every job (a new
    SGE job is "qw", with no reason given), without waiting for any; the cluster says how many
    workers wait; the third job waits while the first two run."""
    from scoop import futures
    t0 = time.monotonic()
    with batch_cluster(sge_cluster, 6, cpus_per_job=2) as c:
        took = time.monotonic() - t0
        waiting = [j for j in c.jobs() if j["state"] == "pending"]
        assert waiting and c.pending == sum(len(j["workers"]) for j in waiting), c.jobs()
        assert f", {c.pending} pending in the queue>" in repr(c), repr(c)
        assert took < 3, f"start took {took:.1f} s"
        c.wait_for_workers(4, 90)
        assert sorted(set(futures.map(where, range(40)))) == ["node1", "node2"]
        assert [j["state"] for j in c.jobs()].count("pending") == 1 and c.pending == 2, c.jobs()
        assert ", 2 pending in the queue>" in repr(c)


def test_killed_origin_leaves_no_job(sge_cluster, tmp_path):
    with origin_process(tmp_path, f"""
        c = Cluster(4, launcher="sge", cpus_per_job=2, external_hostname={sge_cluster.net.gateway_ip!r})
        c.start()
        c.wait_for_workers(4, 90)
    """) as proc:
        assert len(sge_cluster.jobs()) == 2
        proc.kill()
        proc.wait(10)
        assert sge_cluster.wait_no_jobs(20) == []


STEP_PROGRAM = """
import collections, os, socket, time
import scoop
from scoop import futures

def where(i):
    time.sleep(0.05)
    return socket.gethostname(), os.getpid(), os.environ.get("JOB_ID")

if __name__ == "__main__":
    seen = collections.defaultdict(set)
    jobs = set()
    for host, pid, job in futures.map(where, range(8 * scoop.SIZE)):
        seen[host].add(pid)
        jobs.add(job)
    for host, pids in sorted(seen.items()):
        print("HOST", host, len(pids))
    print("JOBS", sorted(map(str, jobs)), "SIZE", scoop.SIZE)
"""


def test_qrsh_inherit_starts_workers_inside_a_job(sge_cluster, tmp_path):
    """python -m scoop inside a PE job spanning both nodes: its workers are qrsh -inherit tasks of
    that job (the job's id in their environment), they join and run the map, and they end when
    the cluster stops -- before the job ends, not killed by SGE at its end."""
    prog = tmp_path / "steps.py"
    prog.write_text(STEP_PROGRAM)
    check = f"{PROGRAMS}/workers_left.py JOB_ID"
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/sh\nexport PYTHONPATH={ROOT}\n{sys.executable} -m scoop -v {prog}\n"
                      f"echo EXIT $?\n{sys.executable} {check}\n")
    out = tmp_path / "job.out"
    before = {p.pid for p in scoop_processes()}
    r = sge_cluster.run(["qsub", "-pe", "mpi", "4", "-V", "-cwd", "-o", str(out), "-j", "y", str(script)],
                        cwd=str(tmp_path))
    jid = r.stdout.split()[2]
    assert sge_cluster.wait_no_jobs(120) == []
    text = out.read_text()
    hosts = {line.split()[1]: int(line.split()[2]) for line in text.splitlines() if line.startswith("HOST ")}
    assert hosts == {"node1": 2, "node2": 2}, text
    assert f"JOBS ['{jid}'] SIZE 4" in text and "started by qrsh" in text, text
    assert "EXIT 0" in text and "LEFT 0 " in text, text
    wait_no_new_processes(before, 10)


def test_walltime_reached_mid_map_runs_every_task_once(sge_cluster, tmp_path):
    """Tasks running across the end of a one-minute h_rt: every result comes back, each task
    started once (a log line per start), and the first job's workers left before SGE's limit."""
    from scoop import futures
    log = tmp_path / "starts.log"
    with batch_cluster(sge_cluster, 2, cpus_per_job=2, walltime="1", job_replace=True, inline=False) as c:
        first = c.workers[0].job_id
        pending, submitted, left = collections.deque(), 0, None
        deadline = time.monotonic() + 200
        while (left != 0 or pending) and time.monotonic() < deadline:
            if left is None and first not in {j["id"] for j in sge_cluster.jobs()}:
                left = 20
            while len(pending) < 6 and left != 0:
                pending.append((submitted, futures.submit(logged_square, submitted, str(log))))
                submitted += 1
                left = left - 1 if left else left
            k, fut = pending.popleft()
            assert fut.result(timeout=120) == k * k
        assert left == 0 and not pending, "the first job did not end within 200 s"
        codes = [h._code(h.jobs[0]) for h in c.workers]
    starts = collections.Counter(log.read_text().split())
    assert len(starts) == submitted and set(starts.values()) == {1}, [k for k, v in starts.items() if v > 1]
    assert codes == [0, 0], codes


def logged_square(x, path):
    import time
    with open(path, "a") as f:
        f.write(f"{x}\n")
    time.sleep(1.0)
    return x * x
