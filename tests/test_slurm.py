"""SCOOP on a real SLURM cluster (tests/slurm_cluster.py): the cluster itself, job steps inside
allocations, and batch-job clusters started from the login node."""
from __future__ import annotations

import collections
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from tests import batch_clusters
from tests.batch_clusters import origin_process, where
from tests.conftest import PROGRAMS, ROOT, TESTS, scoop_processes, wait_no_new_processes


def test_cluster_runs_jobs_on_both_nodes(slurm_cluster, tmp_path):
    """The test cluster itself: a batch job spans both nodes, and srun inside salloc -N2 too."""
    out = tmp_path / "job.out"
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\nsrun hostname\n")
    r = slurm_cluster.run(["sbatch", "--parsable", "-N2", "-n2", f"--output={out}", str(script)])
    assert r.stdout.strip().split(";")[0].isdigit()
    assert slurm_cluster.wait_no_jobs(60) == []
    assert sorted(out.read_text().split()) == ["node1", "node2"]
    r = slurm_cluster.run(["salloc", "-N2", "srun", "hostname"])
    assert sorted(r.stdout.split()) == ["node1", "node2"]
    assert slurm_cluster.wait_no_jobs() == []


# ---- batch-job clusters from the login node ---------------------------------------------------


def batch_cluster(slurm, n, wait=True, **opts):
    """An origin here whose ``n`` workers are sbatch jobs (:func:`tests.batch_clusters.batch_cluster`)."""
    return batch_clusters.batch_cluster(n, lambda: slurm.wait_no_jobs(15), wait, slurm=True, **opts)


def env_var(name):
    return os.environ.get(name)


def test_sbatch_workers_run_on_both_nodes_and_stop_leaves_no_job(slurm_cluster, tmp_path):
    from scoop import futures
    prolog = tmp_path / "prolog.sh"
    prolog.write_text("export SCOOP_TEST_PROLOG=sourced\n")
    with batch_cluster(slurm_cluster, 4, cpus_per_job=2, prolog=str(prolog)) as c:
        handles = list(c.workers)
        assert len({h.job_id for h in handles}) == 2
        assert sorted(set(futures.map(where, range(40)))) == ["node1", "node2"]
        assert set(futures.map(env_var, ["SCOOP_TEST_PROLOG"] * 8)) == {"sourced"}
        assert {h.state for h in handles} == {"running"}
        assert sorted(h.host for h in handles) == ["node1", "node1", "node2", "node2"]
        # the secret is only in the 0600 config files of a 0700 directory
        secret = c.secret.hex()
        job_dir = c.launcher.dir
        assert stat.S_IMODE(os.stat(job_dir).st_mode) == 0o700
        for entry in os.listdir(job_dir):
            path = os.path.join(job_dir, entry)
            with open(path) as f:
                text = f.read()
            if secret in text:
                assert entry.endswith((".json", ".run")), entry
                assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, entry
        assert any(e.endswith(".sh") for e in os.listdir(job_dir))
    assert {h.state for h in handles} == {"exited"}


def test_jobs_waiting_in_the_queue_are_pending(slurm_cluster):
    """4 CPUs in the cluster, three 2-CPU jobs: one waits, and says so."""
    with batch_cluster(slurm_cluster, 6, wait=False, cpus_per_job=2) as c:
        c.wait_for_workers(4, 90)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # a poll of the scheduler
            states = [h.state for h in c.workers]
            if states.count("running") == 4:
                break
            time.sleep(0.2)
        assert states.count("running") == 4 and states.count("pending") == 2, states
        assert len(c.launcher.pending()) == 1
        assert [j["state"] for j in slurm_cluster.jobs()].count("PENDING") == 1


def _wait_jobs(c, states, timeout=30):
    """Waits until the cluster's jobs (as its poll of the scheduler sees them) are in ``states``."""
    deadline = time.monotonic() + timeout
    while [j["state"] for j in c.jobs()] != states and time.monotonic() < deadline:
        time.sleep(0.2)
    return c.jobs()


def test_held_job_is_pending_start_does_not_wait_and_release_joins(slurm_cluster):
    """A job held in the queue: start and scale return without waiting for it, the status shows
    it pending apart from the running workers; released, its workers join; a job still held
    when the cluster stops is cancelled (batch_cluster checks squeue is empty)."""
    from scoop import futures
    with batch_cluster(slurm_cluster, 2, cpus_per_job=2, sbatch_arg=["--hold"]) as c:
        (job,) = c.jobs()
        assert job["state"] == "pending" and job["workers"] == ["w1", "w2"], job
        assert "held" in job["reason"].lower(), job
        assert time.time() - 120 < job["submitted"] <= time.time()
        snap = c.status()
        assert snap["totals"]["pending_workers"] == 2 and snap["workers"] == [] and c.size == 0, snap
        assert [j["state"] for j in slurm_cluster.jobs()] == ["PENDING"]
        c.scale(4)  # a second held job: scale returns as well
        first, second = c.jobs()
        assert second["state"] == "pending" and second["workers"] == ["w3", "w4"], second
        assert c.status()["totals"]["pending_workers"] == 4
        slurm_cluster.run(["scontrol", "release", job["id"]])
        c.wait_for_workers(2, 90)
        assert list(futures.map(abs, [-1, -2, -3])) == [1, 2, 3]
        jobs = _wait_jobs(c, ["running", "pending"])
        assert [j["state"] for j in jobs] == ["running", "pending"], jobs
        snap = c.status()
        assert snap["totals"]["pending_workers"] == 2 and len(snap["workers"]) == 2, snap
        assert sorted(w["name"] for w in snap["workers"]) == ["w1", "w2"]
        assert c.size == 2
        c.scale(2)  # scaling down cancels the job still in the queue first
        deadline = time.monotonic() + 15
        while len(slurm_cluster.jobs()) > 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [j["id"] for j in slurm_cluster.jobs()] == [job["id"]]
        assert [j["state"] for j in c.jobs()] == ["running"]
        c.scale(3)  # held again: stop must cancel it
        assert [j["state"] for j in _wait_jobs(c, ["running", "pending"])] == ["running", "pending"]


def test_worker_failing_to_start_is_an_error_at_once_or_logged_and_shown(slurm_cluster):
    """Jobs whose worker cannot start: an error at once -- of scale when the job ran before the
    scheduler listed it pending, else of the wait for its workers; a job that starts later (held,
    then released) is a logged error naming the job, listed as ended with that error, and not
    resubmitted over and over."""
    with batch_cluster(slurm_cluster, 1, cpus_per_job=1) as c:
        c.wait_for_workers(1, 60)
        c.launcher.python = "/nonexistent/python"  # what a broken environment on the nodes looks like
        with pytest.raises(Exception, match=r"(?s)exited with status 127.*/nonexistent/python"):
            c.scale(2, timeout=90)
            c.wait_for_workers(2, 60)
        deadline = time.monotonic() + 10
        while c.requested != 1 and time.monotonic() < deadline:  # the supervisor gives it up
            time.sleep(0.1)
        assert c.requested == 1
        c.options.sbatch_arg = ["--hold"]
        import logging

        import scoop
        records = []
        handler = logging.Handler(logging.ERROR)
        handler.emit = records.append
        scoop.logger.addHandler(handler)  # scoop's logger does not propagate to pytest's capture
        try:
            c.scale(2, timeout=90)
            (held,) = [j for j in c.jobs() if j["state"] == "pending"]
            assert held["workers"] == ["w3"]
            slurm_cluster.run(["scontrol", "release", held["id"]])
            deadline = time.monotonic() + 60
            while not any(j["id"] == held["id"] and j.get("error") for j in c.jobs()) \
                    and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            scoop.logger.removeHandler(handler)
        failed = [j for j in c.jobs() if j["id"] == held["id"]]
        assert failed and failed[0]["state"] == "ended", c.jobs()
        assert "/nonexistent/python" in failed[0]["error"], failed
        assert failed[0]["workers"] == ["w3"]
        said = [r.getMessage() for r in records]
        assert any(f"worker w3 (job {held['id']}" in m and "before joining" in m for m in said), said
        assert c.requested == 1 and c.size == 1
        with pytest.raises(Exception, match=r"(?s)only 1 can join.*w3.*/nonexistent/python"):
            c.wait_for_workers(2, 60)
        time.sleep(2)  # the supervisor does not resubmit it
        assert len(c.workers) == 3 and len(slurm_cluster.jobs()) == 1


def test_rejected_sbatch_is_a_clear_error(slurm_cluster):
    from scoop.errors import ClusterError
    with pytest.raises(ClusterError, match=r"(?i)sbatch rejected the job.*invalid partition"):
        with batch_cluster(slurm_cluster, 2, partition="no_such_partition"):
            pass


def test_worker_that_cannot_start_in_its_job_is_a_clear_error(slurm_cluster):
    from scoop.errors import ClusterError
    with pytest.raises(ClusterError, match=r"(?s)exited with status 127.*/nonexistent/python"):
        with batch_cluster(slurm_cluster, 2, python="/nonexistent/python") as c:
            c.wait_for_workers(2, 60)  # if start returned: the job was queued before it ran


def test_killed_origin_leaves_no_job(slurm_cluster, tmp_path):
    """SIGKILL of the origin: its watchdog cancels running and queued jobs."""
    with origin_process(tmp_path, """
        c = Cluster(6, slurm=True, cpus_per_job=2)
        c.start(wait=False)
        c.wait_for_workers(4, 90)
    """) as proc:
        assert len(slurm_cluster.jobs()) == 3
        proc.kill()
        proc.wait(10)
        assert slurm_cluster.wait_no_jobs(15) == []


def test_scale_up_and_down_submits_and_ends_jobs(slurm_cluster):
    from scoop import futures
    with batch_cluster(slurm_cluster, 2, cpus_per_job=1) as c:
        assert len(slurm_cluster.jobs()) == 2
        c.scale(4, timeout=90)
        assert len({h.job_id for h in c.workers}) == 4
        assert sorted(set(futures.map(where, range(40)))) == ["node1", "node2"]
        c.scale(1)
        deadline = time.monotonic() + 30
        while len(slurm_cluster.jobs()) > 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(slurm_cluster.jobs()) == 1  # the retired workers' jobs ended with them
        assert list(futures.map(abs, [-1, -2, -3])) == [1, 2, 3]


def test_cli_slurm_runs_a_program_on_batch_jobs(slurm_cluster):
    from tests.conftest import run_scoop
    r = run_scoop(["--slurm", "-n", "4", "--cpus-per-job", "2", "where_remote.py"], timeout=180)
    assert r.returncode == 0, r.stderr
    assert len([line for line in r.stdout.splitlines() if line.startswith("NS ")]) == 2, r.stdout
    assert "SIZE 4" in r.stdout
    assert slurm_cluster.wait_no_jobs(15) == []


@pytest.fixture
def slurm_kernel(slurm_cluster):
    pytest.importorskip("jupyter_client")
    from tests.kernel_driver import KernelDriver, kernel_env
    k = KernelDriver(env=kernel_env())
    try:
        k.run("%load_ext scoop_jupyter")
        yield k
    finally:
        k.shutdown(now=True)


def test_notebook_kernel_on_the_login_node(slurm_cluster, slurm_kernel):
    """%scoop_cluster start --slurm from a kernel; map on both nodes; scale; SIGKILL of the kernel
    leaves no job in the queue."""
    k = slurm_kernel
    k.run("%scoop_cluster start --slurm -n 4 --cpus-per-job 2", timeout=120)
    assert len(slurm_cluster.jobs()) == 2
    # as the start line says: workers join as their jobs start
    k.run("import scoop_jupyter\nscoop_jupyter.cluster().wait_for_workers(4, 90)", timeout=120)
    k.run("import socket, time, scoop\n"
          "def where(x):\n"
          "    time.sleep(0.05)\n"
          "    return socket.gethostname()\n")
    assert k.value("sorted(set(scoop.futures.map(where, range(40))))", timeout=120) == ["node1", "node2"]
    k.run("%scoop_cluster scale 2", timeout=60)
    deadline = time.monotonic() + 30
    while len(slurm_cluster.jobs()) > 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(slurm_cluster.jobs()) == 1
    k.run("%scoop_cluster scale 4", timeout=120)
    assert len(slurm_cluster.jobs()) == 2
    k.run("scoop_jupyter.cluster().wait_for_workers(4, 90)", timeout=120)
    assert k.value("sorted(set(scoop.futures.map(where, range(40))))", timeout=120) == ["node1", "node2"]
    os.kill(k.pid, signal.SIGKILL)
    assert slurm_cluster.wait_no_jobs(15) == []


def _comm_until(k, cid, t0, pred, timeout=30):
    """The last status the panel comm sent since ``t0`` once one satisfies ``pred``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sent = [d for _, d in k.comm_data(cid, t0) if d.get("type") == "status"]
        if sent and pred(sent[-1]):
            return sent[-1]
        time.sleep(0.2)
    return sent[-1] if sent else None


def test_notebook_shows_a_held_job_pending_apart_from_running_workers(slurm_cluster, slurm_kernel):
    """From a kernel: start returns while the job is held and says so; %scoop_cluster status (text
    and HTML) and the panel's comm data show the workers pending in the queue; released, they
    join; stop leaves nothing in squeue."""
    k = slurm_kernel
    r = k.run("%scoop_cluster start --slurm -n 2 --cpus-per-job 2 --sbatch-arg=--hold", timeout=120)
    (job,) = slurm_cluster.jobs()
    jid = job["id"]
    out = r.stream()
    assert f"1 sbatch job submitted for 2 workers (job {jid})" in out, out
    assert f"2 workers pending in the queue (job {jid}" in out and "join as their jobs start" in out, out
    t0 = time.monotonic()
    cid = k.comm_open("scoop_cluster")
    sent = _comm_until(k, cid, t0, lambda d: d["totals"].get("pending_workers") == 2)
    assert sent["state"] == "running" and sent["workers"] == [] and sent["totals"]["workers"] == 0, sent
    (pj,) = sent["jobs"]
    assert pj["id"] == jid and pj["state"] == "pending" and pj["workers"] == ["w1", "w2"], pj
    assert "held" in pj["reason"].lower(), pj
    r = k.run("%scoop_cluster status")
    text, html = r.text(), "".join(h for h in r.data("text/html") if h)
    assert f"2 workers pending in the queue (job {jid}" in text, text
    assert "scoop-pending" in html and f"2 workers pending in the queue (job {jid}" in html, html
    assert "(+2 pending)" in html
    slurm_cluster.run(["scontrol", "release", jid])
    k.run("import scoop_jupyter\nscoop_jupyter.cluster().wait_for_workers(2, 90)", timeout=120)
    t1 = time.monotonic()
    joined = lambda d: d["totals"]["workers"] == 2 and not d["totals"]["pending_workers"]  # noqa: E731
    sent = _comm_until(k, cid, t1, joined)
    assert sent["totals"]["workers"] == 2 and sent["totals"]["pending_workers"] == 0, sent
    assert [j["state"] for j in sent["jobs"]] == ["running"], sent["jobs"]
    text = k.run("%scoop_cluster status").text()
    assert "pending in the queue" not in text and "2 workers" in text, text
    k.run("%scoop_cluster stop", timeout=60)
    assert slurm_cluster.wait_no_jobs(15) == []


def test_notebook_restart_and_shutdown_leave_no_job(slurm_cluster, slurm_kernel):
    """%scoop_cluster restart cancels the old jobs and submits new ones; a kernel shutdown
    cancels every job."""
    k = slurm_kernel
    k.run("%scoop_cluster start --slurm -n 2 --cpus-per-job 2", timeout=120)
    before = {j["id"] for j in slurm_cluster.jobs()}
    assert len(before) == 1
    k.run("%scoop_cluster restart", timeout=120)
    after = {j["id"] for j in slurm_cluster.jobs()}
    assert len(after) == 1 and not after & before
    k.run("import scoop")
    assert k.value("sum(scoop.futures.map(abs, range(-10, 0)))", timeout=60) == 55
    k.shutdown()
    assert slurm_cluster.wait_no_jobs(15) == []


# ---- inside an allocation: workers are job steps ---------------------------------------------

STEP_PROGRAM = """
import collections, os, socket, time
import scoop
from scoop import futures

def where(i):
    time.sleep(0.05)
    return socket.gethostname(), os.getpid(), os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_STEP_ID")

if __name__ == "__main__":
    seen = collections.defaultdict(set)
    jobs, steps = set(), set()
    for host, pid, job, step in futures.map(where, range(8 * scoop.SIZE)):
        seen[host].add(pid)
        jobs.add(job)
        steps.add(step)
    for host, pids in sorted(seen.items()):
        print("HOST", host, len(pids))
    print("JOBS", sorted(map(str, jobs)), "IN_STEP", None not in steps, "SIZE", scoop.SIZE)
"""


def _run_in_allocation(slurm, tmp_path, alloc_args, scoop_args=(), timeout=180):
    prog = tmp_path / "steps.py"
    prog.write_text(STEP_PROGRAM)
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run(["salloc", *alloc_args, sys.executable, "-m", "scoop", *scoop_args, str(prog)],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=timeout)
    assert slurm.wait_no_jobs(15) == []
    return r


def _hosts(stdout):
    return {line.split()[1]: int(line.split()[2]) for line in stdout.splitlines() if line.startswith("HOST ")}


def test_salloc_workers_are_job_steps_on_both_nodes(slurm_cluster, tmp_path, no_leak):
    r = _run_in_allocation(slurm_cluster, tmp_path, ["-N2", "-n4"])
    assert r.returncode == 0, r.stderr
    assert _hosts(r.stdout) == {"node1": 2, "node2": 2}, r.stdout
    jobs_line = [line for line in r.stdout.splitlines() if line.startswith("JOBS")][0]
    assert "IN_STEP True" in jobs_line and "None" not in jobs_line.split("IN_STEP")[0], jobs_line


def test_salloc_cpus_per_task_gives_a_worker_per_cpu(slurm_cluster, tmp_path, no_leak):
    r = _run_in_allocation(slurm_cluster, tmp_path, ["-N2", "-n2", "--cpus-per-task=2"])
    assert r.returncode == 0, r.stderr
    assert _hosts(r.stdout) == {"node1": 2, "node2": 2}, r.stdout
    assert "SIZE 4" in r.stdout


def test_salloc_more_workers_than_slots_is_an_error(slurm_cluster, tmp_path, no_leak):
    r = _run_in_allocation(slurm_cluster, tmp_path, ["-N2", "-n4"], ["-n", "7"])
    assert r.returncode != 0
    assert "7 workers" in r.stderr and "4 slots" in r.stderr and "--oversubscribe" in r.stderr, r.stderr
    r = _run_in_allocation(slurm_cluster, tmp_path, ["-N2", "-n4"], ["-n", "6", "--oversubscribe"])
    assert r.returncode == 0, r.stderr
    assert sum(_hosts(r.stdout).values()) == 6, r.stdout


def test_sbatch_script_runs_scoop_inside_the_job(slurm_cluster, tmp_path):
    """The README's batch script: the program's origin runs on the job's first node, the workers
    in job steps on both nodes."""
    prog = tmp_path / "steps.py"
    prog.write_text(STEP_PROGRAM)
    script = tmp_path / "job.sh"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        #SBATCH --job-name=scoop-example
        #SBATCH --nodes=2
        #SBATCH --ntasks-per-node=2
        #SBATCH --time=00:10:00
        #SBATCH --output={tmp_path}/job.out
        export PYTHONPATH={ROOT}
        {sys.executable} -m scoop {prog}
        """))
    slurm_cluster.run(["sbatch", "--parsable", str(script)], cwd=str(tmp_path))
    assert slurm_cluster.wait_no_jobs(120) == []
    out = (tmp_path / "job.out").read_text()
    assert _hosts(out) == {"node1": 2, "node2": 2}, out
    assert "IN_STEP True" in out, out


# ---- walltime ------------------------------------------------------------------------------------

def slow_square(x):
    import time
    time.sleep(1.0)
    return x * x


def test_walltime_reached_mid_map_loses_nothing(slurm_cluster):
    """Tasks running across the end of a one-minute job: every result comes back.  With job_replace a
    replacement job is submitted before the first one's end and its workers carry on under the
    same names (the cluster never sees a worker die); the first job's workers leave cleanly at
    their retire_at, before SLURM's limit, instead of being killed by it."""
    from scoop import futures

    def state(job_id):
        argv = ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"]
        return slurm_cluster.run(argv, check=False).stdout.strip()

    with batch_cluster(slurm_cluster, 2, cpus_per_job=2, walltime="1", job_replace=True, inline=False) as c:
        c.wait_for_workers(2, 90)  # the first job runs (start returned once it was queued)
        first = c.workers[0].job_id
        # ~6 one-second tasks in flight until 20 tasks past the first job's end: the work
        # straddles the moment SLURM ends that job
        pending, submitted, left = collections.deque(), 0, None
        deadline = time.monotonic() + 200
        while (left != 0 or pending) and time.monotonic() < deadline:
            if left is None and state(first) not in ("RUNNING", "COMPLETING"):
                left = 20
            while len(pending) < 6 and left != 0:
                pending.append((submitted, futures.submit(slow_square, submitted)))
                submitted += 1
                left = left - 1 if left else left
            k, fut = pending.popleft()
            assert fut.result(timeout=120) == k * k
        assert left == 0 and not pending, f"the first job did not end within 200 s ({state(first)})"
        assert state(first) not in ("RUNNING", "COMPLETING")
        assert len(c.workers) == 2 and all(h.poll() is None for h in c.workers)
        jobs = c.workers[0].jobs
        assert len(jobs) >= 2 and jobs[0].id == first and jobs[1].id != first
        assert {h.jobs[1].id for h in c.workers} == {jobs[1].id}
        out = state(first)
        codes = [h._code(h.jobs[0]) for h in c.workers]
    # the first job's workers retired before SLURM's limit: they exited cleanly and the job completed
    assert out == "COMPLETED" and codes == [0, 0], (out, codes)


def test_walltime_replacements_come_in_whole_jobs(slurm_cluster):
    """Without job_replace, workers leaving at their one-minute walltime are replaced by the
    cluster: 4 workers in 2-CPU jobs come back as 2 jobs of 2, not a job per worker that noticed
    first; the job history lists the first jobs ended with status 0."""
    from scoop import futures
    with batch_cluster(slurm_cluster, 4, cpus_per_job=2, walltime="1") as c:
        first = {j["id"] for j in c.jobs()}
        assert len(first) == 2
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            history = c.jobs(history=True)
            later = [j for j in history if j["id"] not in first]
            if sum(len(j["workers"]) for j in later) >= 4 and all(j["state"] == "ended" for j in history
                                                                 if j["id"] in first):
                break
            time.sleep(0.5)
        assert sorted(len(j["workers"]) for j in later) == [2, 2], history
        ended = [j for j in history if j["id"] in first]
        assert [j["exit_status"] for j in ended] == [0, 0] and all(j["ended"] for j in ended), ended
        c.wait_for_workers(4, 90)
        assert sum(futures.map(abs, range(-10, 0))) == 55


def test_failing_prolog_is_the_jobs_own_status_and_words(slurm_cluster, tmp_path):
    """A job whose prolog fails: its own status (3) and words, as soon as it ended -- from start if
    the job ran before the scheduler listed it pending, else from the wait for its workers (start
    returns once the job is queued)."""
    from scoop.errors import ClusterError
    prolog = tmp_path / "prolog.sh"
    prolog.write_text("echo 'module: gcc/99 not found' >&2\nexit 3\n")
    c = None
    with pytest.raises(ClusterError, match=r"(?s)exited with status 3 before joining.*gcc/99 not found"):
        with batch_cluster(slurm_cluster, 2, prolog=str(prolog)) as c:
            c.wait_for_workers(2, 60)
    said = time.time()
    if c is not None:  # else start itself said it: the scheduler ran the job before listing it
        (job,) = c.jobs(history=True)
        assert job["exit_status"] == 3 and said - job["ended"] < 2.5, (said, job)


def test_job_script_is_what_is_submitted_and_a_site_profile_starts_the_cluster(slurm_cluster, tmp_path,
                                                                              monkeypatch):
    from scoop import futures
    from scoop.cluster import Cluster
    site = tmp_path / "clusters.toml"
    site.write_text('[profiles.short]\nslurm = true\ncpus-per-job = 2\npartition = "debug"\nmemory = "100M"\n'
                    'job-name = "scoop-short"\nwalltime = "00:10:00"\n')
    monkeypatch.setenv("SCOOP_CONFIG", str(site))
    c = Cluster(2, cluster_profile="short", pythonpath=[TESTS, PROGRAMS])
    shown = c.job_script()
    assert "#SBATCH --mem=100M\n" in shown and "#SBATCH --job-name=scoop-short\n" in shown
    assert "#SBATCH --partition=debug\n" in shown and "#SBATCH --time=10\n" in shown
    before = {p.pid for p in scoop_processes()}
    try:
        c.start(timeout=90)
        with open(os.path.join(c.launcher.dir, "job1.sh")) as f:
            assert f.read() == shown
        (job,) = slurm_cluster.jobs()
        assert job["name"] == "scoop-short"
        assert sorted(futures.map(where, range(8))) and c.size == 2
    finally:
        c.stop()
    assert slurm_cluster.wait_no_jobs(15) == []
    wait_no_new_processes(before, 15)
