"""PBS and LSF batch-job clusters against the commands' documented answers (tests/fakebatch:
qsub/qstat/qdel and bsub/bjobs/bkill that replay what the real tools print and really run the
job script here), plus the pure parts of every batch system: job scripts, resource directives,
the schedulers' listings as their documentation shows them."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from scoop.errors import ClusterError
from scoop.options import ClusterOptions, OptionError, memory_mb
from tests import batch_clusters
from tests.batch_clusters import origin_process
from tests.conftest import PROGRAMS, ROOT, TESTS, scoop_processes, wait_no_new_processes

FAKE = os.path.join(TESTS, "fakebatch")
SYSTEMS = {"pbs": "qsub", "lsf": "lsf"}


@pytest.fixture
def fakebatch(tmp_path, monkeypatch):
    """PATH finds the fake commands; their state lives in tmp_path.  Afterwards every job the
    fakes ran is ended."""
    state = tmp_path / "fakebatch"
    state.mkdir()
    monkeypatch.setenv("FAKEBATCH_DIR", str(state))
    monkeypatch.setenv("FAKEBATCH_PYTHON", sys.executable)
    monkeypatch.setenv("PATH", FAKE + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("SCOOP_JOB_DIR", str(tmp_path / "jobs"))
    try:
        yield state
    finally:
        for job in _jobs(state):
            if job["state"] == "running" and job.get("pgid"):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job["pgid"], signal.SIGKILL)
        # a cancelled job kills its script's group; each worker leads a group of its own and must
        # leave by itself, as it does when a real batch system cancels it: none may linger
        left = _job_processes(str(tmp_path), wait=15)
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        assert not left, "left running: " + "; ".join(f"{p.pid} {p.info['name']}" for p in left)


def _job_processes(mark: str, wait: float) -> list:
    deadline = time.monotonic() + wait
    while True:
        left = [p for p in psutil.process_iter(["cmdline", "name", "status"])
                if p.info["status"] != psutil.STATUS_ZOMBIE and mark in " ".join(p.info["cmdline"] or ())]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _jobs(state) -> list[dict]:
    out = []
    for path in sorted(glob.glob(os.path.join(str(state), "jobs", "*.json"))):
        with open(path) as f:
            out.append(json.load(f))
    return out


def _live(state) -> list[dict]:
    return [j for j in _jobs(state) if j["state"] != "finished"]


def _wait_no_live(state, timeout=15.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while _live(state) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _live(state)


def batch_cluster(state, system, n, wait=True, **opts):
    """An origin here whose ``n`` workers are jobs of the fake ``system``
    (:func:`tests.batch_clusters.batch_cluster`)."""
    return batch_clusters.batch_cluster(n, lambda: _wait_no_live(state), wait, timeout=60,
                                        launcher=SYSTEMS[system], **opts)


def square(x):
    return x * x


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_cluster_on_jobs_submits_what_job_script_shows_and_stop_leaves_no_job(fakebatch, system):
    from scoop import futures
    from scoop.cluster import Cluster
    c = Cluster(4, launcher=SYSTEMS[system], cpus_per_job=2, walltime="00:30:00", memory="1G",
                pythonpath=[TESTS, PROGRAMS])
    shown = c.job_script()
    assert c.dry_run().endswith(shown)
    with batch_cluster(fakebatch, system, 4, walltime="00:30:00", memory="1G") as c2:
        pass  # a second cluster, started: jobs of its own
    assert len(_jobs(fakebatch)) == 2
    c2_jobs = c2.jobs(history=True)
    assert [j["state"] for j in c2_jobs] == ["ended", "ended"], c2_jobs
    assert all(j["ended"] and j["exit_status"] is not None for j in c2_jobs), c2_jobs
    # the cluster whose script was shown submits exactly that script
    before = {p.pid for p in scoop_processes()}
    try:
        c.start(timeout=60)
        assert list(futures.map(square, range(20))) == [x * x for x in range(20)]
        first = [j for j in _jobs(fakebatch) if j["id"] == c.jobs()[0]["id"]][0]
        with open(first["script"]) as f:
            assert f.read() == shown
        prefix = "#PBS" if system == "pbs" else "#BSUB"
        assert (f"{prefix} -l walltime=00:30:00" if system == "pbs" else f"{prefix} -W 0:30") in shown
        assert (f"{prefix} -l mem=1024mb" if system == "pbs" else f"{prefix} -M 1024MB") in shown
        assert len(_live(fakebatch)) == 2 and {h.state for h in c.workers} == {"running"}
        assert c.secret.hex() not in shown
        history = c.jobs(history=True)
        assert [j["state"] for j in history] == ["running", "running"]
        assert all(j["nodes"] and j["started"] and j["exit_status"] is None for j in history), history
    finally:
        c.stop()
    assert _wait_no_live(fakebatch) == []
    wait_no_new_processes(before, 15)
    ended = c.jobs(history=True)
    assert [j["state"] for j in ended] == ["ended", "ended"] and all(j["ended"] for j in ended), ended


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_rejected_submission_is_the_tools_own_words(fakebatch, system):
    words = "Unknown queue" if system == "pbs" else "No such queue. Job not submitted."
    with pytest.raises(ClusterError, match=rf"rejected the job for workers w1, w2: .*{words}"):
        with batch_cluster(fakebatch, system, 2, queue="no_such_queue"):
            pass


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_failing_prolog_reports_the_jobs_status_and_output(fakebatch, system, tmp_path):
    prolog = tmp_path / "prolog.sh"
    prolog.write_text("echo 'module: gcc/99 not found'\nexit 3\n")
    with pytest.raises(ClusterError, match=r"(?s)exited with status 3 before joining.*gcc/99 not found"):
        with batch_cluster(fakebatch, system, 2, prolog=str(prolog)):
            pass


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_held_job_is_pending_with_the_schedulers_reason_then_joins(fakebatch, system):
    from scoop import futures
    hold = "-h" if system == "pbs" else "-H"
    with batch_cluster(fakebatch, system, 2, job_extra_directive=[hold]) as c:
        (job,) = c.jobs()
        assert job["state"] == "pending" and job["workers"] == ["w1", "w2"], job
        assert "held" in job["reason"].lower() or "suspended by user" in job["reason"], job
        assert c.launcher.pending() == [job["id"]] and c.size == 0
        subprocess.run([sys.executable, os.path.join(FAKE, "fakebatch.py"), "release", job["id"]], check=True)
        c.wait_for_workers(2, 60)
        assert sum(futures.map(square, range(5))) == 30
        assert [j["state"] for j in c.jobs()] == ["running"]


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_scale_submits_whole_jobs_and_scaling_down_ends_them(fakebatch, system):
    from scoop import futures
    with batch_cluster(fakebatch, system, 2) as c:
        c.scale(6)
        assert len(_live(fakebatch)) == 3
        assert sorted(futures.map(square, range(30))) == sorted(x * x for x in range(30))
        c.scale(2)
        deadline = time.monotonic() + 20
        while len(_live(fakebatch)) > 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_live(fakebatch)) == 1
        assert sum(futures.map(square, range(5))) == 30


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_killed_origin_leaves_no_job(fakebatch, system, tmp_path):
    with origin_process(tmp_path, f"""
        c = Cluster(4, launcher={SYSTEMS[system]!r}, cpus_per_job=2)
        c.start()
    """) as proc:
        assert len(_live(fakebatch)) == 2
        proc.kill()
        proc.wait(10)
        assert _wait_no_live(fakebatch, 15) == []


BLAUNCH_PROGRAM = """
import os, time
import scoop
from scoop import futures

def where(i):
    time.sleep(0.05)
    return os.getpid(), os.environ.get("LSB_JOBID")

if __name__ == "__main__":
    seen = set(futures.map(where, range(12 * scoop.SIZE)))
    pids, jobs = {pid for pid, _ in seen}, sorted({job for _, job in seen})
    print("WORKERS", len(pids), "JOBS", jobs, "SIZE", scoop.SIZE)
"""

def test_blaunch_starts_workers_inside_an_lsf_job(fakebatch, tmp_path):
    """python -m scoop inside an LSF job of 3 slots: the allocation is read from LSB_MCPU_HOSTS,
    its workers are blaunch tasks of the job (its id in their environment), they join and run the
    map, and they end when the cluster stops, before the job does."""
    prog = tmp_path / "tasks.py"
    prog.write_text(BLAUNCH_PROGRAM)
    check = f"{PROGRAMS}/workers_left.py LSB_JOBID"
    out = tmp_path / "job.out"
    script = (f"#!/bin/sh\n#BSUB -n 3\n#BSUB -o {out}\nexport PYTHONPATH={ROOT}\n"
              f"{sys.executable} -m scoop -v {prog}\necho EXIT $?\n{sys.executable} {check}\n")
    before = {p.pid for p in scoop_processes()}
    r = subprocess.run(["bsub"], input=script, capture_output=True, text=True, cwd=str(tmp_path), timeout=30)
    jid = r.stdout.split("<")[1].split(">")[0]
    assert _wait_no_live(fakebatch, 90) == []
    text = out.read_text()
    assert f"WORKERS 3 JOBS ['{jid}'] SIZE 3" in text and "started by blaunch" in text, text
    assert "EXIT 0" in text and "LEFT 0" in text, text
    wait_no_new_processes(before, 10)


def test_blaunch_is_chosen_inside_an_lsf_job_and_reads_its_slots(monkeypatch):
    from scoop.launch.hosts import lsf_hosts
    from scoop.launch.plan import make_plan
    monkeypatch.setenv("PATH", FAKE + os.pathsep + os.environ["PATH"])  # blaunch is here
    env = {"LSB_JOBID": "1234", "LSB_MCPU_HOSTS": "hostA 2 hostB 4"}
    assert lsf_hosts(env) == [("hostA", 2), ("hostB", 4)]
    plan = make_plan(ClusterOptions(n=5), env=env)
    assert plan.launcher == "blaunch" and plan.allocation == "lsf", plan
    assert plan.first == [("hostA", 2), ("hostB", 3)], plan
    with pytest.raises(ValueError, match="not pairs of host and slots"):
        lsf_hosts({"LSB_MCPU_HOSTS": "hostA 2 hostB"})


def test_cli_dry_run_prints_what_would_be_submitted_and_submits_nothing(fakebatch):
    from tests.conftest import run_scoop
    r = run_scoop(["--launcher", "lsf", "-n", "3", "--cpus-per-job", "2", "--job-name", "fit", "--dry-run"])
    assert r.returncode == 0, r.stderr
    assert "# 2 LSF jobs (w1-w2; w3), each submitted as: bsub < " in r.stdout, r.stdout
    assert "#BSUB -J fit\n" in r.stdout and "#BSUB -n 2\n" in r.stdout
    assert _jobs(fakebatch) == []


# ---- pure parts: no process ---------------------------------------------------------------------

def _launcher(name, **opts):
    from scoop.launch.base import launcher_class
    return launcher_class(name)(ClusterOptions(launcher=name, **opts), None, env={}, cwd="/work")


def test_slurm_writes_every_resource():
    launcher = _launcher("sbatch", memory="16G", gpus="a100:2", qos="long", constraint="ib", gres="gpu:1",
                         walltime="01:30:00", job_name="fit", job_extra_directive=["--exclusive"])
    lines = launcher.header_lines(2, "/s")
    for line in ["--mem=16384M", "--gpus=a100:2", "--qos=long", "--constraint=ib", "--gres=gpu:1",
                 "--time=90", "--job-name=fit", "--exclusive", "--ntasks=2", "--output=/s.out"]:
        assert f"#SBATCH {line}" in lines, lines


@pytest.mark.parametrize("name, option, value, line", [
    ("qsub", "walltime", "2-00:00:00", "#PBS -l walltime=48:00:00"),
    ("qsub", "gpus", "2", "#PBS -l ngpus=2"),
    ("qsub", "qos", "high", "#PBS -l qos=high"),
    ("sge", "walltime", "90", "#$ -l h_rt=01:30:00"),
    ("sge", "memory", "8G", "#$ -l h_vmem=2048M"),  # per slot: 4 slots
    ("sge", "account", "proj", "#$ -P proj"),
    ("lsf", "walltime", "01:30:01", "#BSUB -W 1:31"),
    ("lsf", "constraint", "avx512", '#BSUB -R "select[avx512]"'),
    ("lsf", "gpus", "1", '#BSUB -gpu "num=1"'),
])
def test_each_system_writes_resources_its_way(name, option, value, line):
    assert line in _launcher(name, **{option: value}).header_lines(4, "/s")


@pytest.mark.parametrize("name, option, value", [
    ("qsub", "gres", "gpu:1"), ("qsub", "constraint", "ib"), ("sge", "qos", "low"), ("lsf", "gres", "gpu:1"),
])
def test_a_resource_a_system_cannot_write_is_an_error_naming_it(name, option, value):
    flag = "--" + option.replace("_", "-")
    with pytest.raises(ClusterError, match=rf"has no {flag}: give the directive yourself with --job-extra"):
        _launcher(name, **{option: value})


def test_gpus_must_be_a_count_where_the_system_counts_them():
    with pytest.raises(ClusterError, match="number of GPUs"):
        _launcher("qsub", gpus="a100:2")


@pytest.mark.parametrize("text, mb", [("4G", 4096), ("4 GB", 4096), ("1.5GiB", 1536), ("500M", 500),
                                      ("2T", 2097152), ("300", 300)])
def test_memory_amounts(text, mb):
    assert memory_mb(text) == mb


@pytest.mark.parametrize("text", ["lots", "4X", "-1G", "0"])
def test_bad_memory_is_an_option_error(text):
    with pytest.raises(OptionError, match=r"memory \(--memory\): expected an amount of memory"):
        ClusterOptions(memory=text)


def test_sge_qstat_table_as_documented():
    out = textwrap.dedent("""\
        job-ID  prior   name       user  state submit/start at     queue           slots ja-task-ID
        ------------------------------------------------------------------------------------------
             41 0.55500 scoop-ab   alice r     12/05/2026 07:00:01 all.q@node1         2
             42 0.55500 scoop-ab   alice hqw   12/05/2026 07:00:02                     2
             43 0.55500 scoop-ab   alice Eqw   12/05/2026 07:00:03                     2
             44 0.00000 other      alice qw    12/05/2026 07:00:04                     1
        """)
    got = _launcher("sge").parse_query(out, ["41", "42", "43"])
    assert got == {"41": ("r", "node1", ""), "42": ("qw", "", "held"),
                   "43": ("qw", "", "error: see qstat -j")}


def test_pbs_qstat_f_blocks_as_documented():
    out = textwrap.dedent("""\
        Job Id: 1234.pbsserver.example.com
            Job_Name = scoop-ab
            job_state = R
            exec_host = node3/0*2+node4/0*2

        Job Id: 1235.pbsserver.example.com
            Job_Name = scoop-ab
            job_state = Q
            comment = Not Running: Insufficient amount of resource: ncpus
        """)
    got = _launcher("qsub").parse_query(out, ["1234.pbsserver", "1235.pbsserver"])
    assert got == {"1234.pbsserver": ("R", "node3,node4", ""),
                   "1235.pbsserver": ("Q", "", "Not Running: Insufficient amount of resource: ncpus")}


def test_lsf_bjobs_o_lines_as_documented():
    out = "101|RUN|4*hostA:2*hostB|-\n102|PEND|-|New job is waiting for scheduling;\n"
    got = _launcher("lsf").parse_query(out, ["101", "102"])
    assert got == {"101": ("RUN", "hostA,hostB", ""),
                   "102": ("PEND", "", "New job is waiting for scheduling;")}


def test_a_worker_gone_at_its_walltime_ends_with_its_job(tmp_path):
    """A worker that left at its walltime (status 0 past its retire time) reads as running while
    another worker of its job still runs, so the cluster replaces the job as a whole; a crash
    before the retire time is seen at once."""
    from scoop.launch.batch import BatchHandle, BatchJob
    launcher = _launcher("qsub", walltime="10")
    launcher.dir = str(tmp_path)
    job = BatchJob("job1", ["w1", "w2"], [])
    job.id, job.state, job.started = "1.server", "running", time.time() - 600
    job.handles = [BatchHandle(launcher, job, 0), BatchHandle(launcher, job, 1)]
    (tmp_path / "job1.0.exit").write_text("0\n")
    assert [h.poll() for h in job.handles] == [None, None]
    (tmp_path / "job1.1.exit").write_text("0\n")
    assert [h.poll() for h in job.handles] == [0, 0]
    job.started = time.time()  # before the retire time: a worker that ends is news at once
    (tmp_path / "job1.1.exit").unlink()
    (tmp_path / "job1.0.exit").write_text("1\n")
    assert [h.poll() for h in job.handles] == [1, None]
