"""Shared fixtures: real clusters (broker and worker processes on loopback) and leak checks."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
PROGRAMS = os.path.join(TESTS, "programs")
EXAMPLES = os.path.join(ROOT, "examples")

# every process this test session starts inherits this marker, so leak checks count only ours
SESSION_MARK = "SCOOP_TEST_SESSION"
os.environ.setdefault(SESSION_MARK, f"{os.getpid()}-{time.time_ns()}")


EXIT_GRACE = 60.0  # seconds the session may take to end once its summary is out


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    """A socket a failing test left open makes zmq's Context.term, run by pytest's last garbage
    collection, wait for ever: the run would hang after its summary.  This ends it with the
    session's own status instead, saying so."""
    import threading

    def leave():
        time.sleep(EXIT_GRACE)
        sys.stderr.write(f"\nthe test session did not end within {EXIT_GRACE:.0f} s of its summary "
                         "(a ZeroMQ context whose sockets a test left open?): exiting\n")
        sys.stderr.flush()
        os._exit(int(exitstatus) or 1)

    threading.Thread(target=leave, name="exit-guard", daemon=True).start()


def scoop_processes(exclude=(), session_only: bool = True):
    """Live broker/worker processes by command line (by default only this test session's)."""
    found = []
    mark = os.environ[SESSION_MARK]
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if p.info["status"] == psutil.STATUS_ZOMBIE or p.pid in exclude:
                continue
            env = p.environ()
            # a forked worker keeps its launcher's command line: its environment names it
            if not any(m in cmd for m in ("scoop.worker", "scoop.broker", "scoop.federation")) \
                    and "SCOOP_ROLE" not in env:
                continue
            if session_only and env.get(SESSION_MARK) != mark:
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found.append(p)
    return found


def wait_no_new_processes(before: set, timeout: float = 8.0):
    """Asserts every broker/worker started since ``before`` is gone within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in scoop_processes() if p.pid not in before]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not left, "left running: " + "; ".join(" ".join(p.cmdline()) for p in left if p.is_running())


@pytest.fixture
def no_leak():
    before = {p.pid for p in scoop_processes()}
    yield before
    wait_no_new_processes(before)


def run_scoop(args, *, cwd=None, timeout=120, env=None, input=None):
    """Runs ``python -m scoop ARGS`` as a user would; returns the CompletedProcess."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, e.get("PYTHONPATH")]))
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "scoop", *args], cwd=cwd or PROGRAMS, env=e,
                          capture_output=True, text=True, timeout=timeout, input=input)


def origin_cluster(*args, **kw):
    """Starts a cluster whose origin is this test process; yields it, then stops it and checks
    that every process it started is gone."""
    from scoop.cluster import Cluster
    before = {p.pid for p in scoop_processes()}
    c = Cluster(*args, pythonpath=[TESTS, PROGRAMS], **kw)
    c.start()
    try:
        yield c
    finally:
        c.stop()
        wait_no_new_processes(before)


@pytest.fixture(scope="module")
def cluster():
    """A 2-worker cluster whose origin is this test process."""
    yield from origin_cluster(2)


def end_stdin_process(proc, timeout: float = 10.0):
    """Ends a process that serves until its stdin closes (a broker run on its own), killing it
    if it has not ended within ``timeout``."""
    proc.stdin.close()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_idle(cluster, timeout=30.0):
    """Waits until the broker holds no task in flight, so one test's leftovers cannot
    change the next test's scheduling."""
    snap = cluster.meta.wait_for(lambda s: s["totals"].get("in_flight", 1) == 0, timeout)
    where = [{k: w.get(k) for k in ("name", "state", "assigned", "queued", "running", "blocked", "done")}
             for w in snap.get("workers", [])]
    assert snap["totals"]["in_flight"] == 0, (snap["totals"], where)


# a private SLURM cluster (slurmctld here, two slurmd nodes in network namespaces), made once per session
from tests.slurm_cluster import slurm_cluster_fixture  # noqa: E402

slurm_cluster = slurm_cluster_fixture(nodes=2, cpus=2)
