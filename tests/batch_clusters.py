"""What the tests of batch systems share: the base of the real test clusters, and the ways a test
drives an origin whose workers are batch jobs.

:class:`DaemonCluster` is what tests/slurm_cluster.py and tests/sge_cluster.py have in common: nodes
in network namespaces (:mod:`tests.netns`), daemons started in sessions of their own with their
output in log files, waiting for them while checking that none died, client commands run against
the cluster, and a teardown that deletes every job and removes daemons, job processes, namespaces
and directories even after a half setup.  Each subclass says how its system is configured,
started, asked for its jobs and told to delete them.

:func:`batch_cluster` and :func:`origin_process` are the two ways the SLURM, SGE and transcript
(PBS, LSF) tests use a cluster: an origin in the test process, checked afterwards for anything
left (jobs, processes, the secret files' directory), and an origin in a process of its own that a
test can kill.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Callable, Optional

import psutil

from tests import netns


def kill_processes(mark: str, is_job: Callable[[dict], bool] = lambda env: False) -> None:
    """Kills every process but this one whose command line names ``mark`` or whose environment
    ``is_job`` says belongs to a job of the cluster (shepherds, job steps and user tasks are not in
    the daemons' process groups)."""
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            if proc.pid == os.getpid():
                continue
            if mark in " ".join(proc.info["cmdline"] or []) or is_job(proc.info["environ"] or {}):
                proc.kill()
        except psutil.Error:
            pass


class DaemonCluster:
    """``nodes`` nodes node1..nodeN with ``cpus`` CPUs each, in network namespaces, run by a batch
    system's daemons.  Subclasses set ``KIND`` (the directory's tag), ``CONTROLLER`` (the daemon
    that must answer to delete jobs at teardown) and ``LAST`` (the daemon stopped last), and write
    ``_start`` (everything after the namespaces and the directory exist), ``jobs``, ``cancel_all``,
    ``env``, ``activate`` and how a job's processes are recognised (``_stale_job``, ``_is_job``)."""

    KIND = ""
    CONTROLLER = ""
    LAST = ""

    def __init__(self, nodes: int = 2, cpus: int = 2):
        self.n = nodes
        self.cpus = cpus
        self.names = [f"node{k}" for k in range(1, nodes + 1)]
        self.net: Optional[netns.NetnsCluster] = None
        self.dir = ""
        self.procs: dict[str, subprocess.Popen] = {}
        self._old_env: dict[str, Optional[str]] = {}
        self.started_in = 0.0

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self):
        t0 = time.monotonic()
        try:
            self._setup()
        except BaseException:
            self.cleanup()
            raise
        self.started_in = time.monotonic() - t0
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def _setup(self) -> None:
        self.sweep_stale()
        self.net = netns.NetnsCluster(self.n, sshd=False, names=self.names)
        self.net.__enter__()
        # the exact name netns.sweep_stale_dirs knows: a run killed before its teardown is swept
        self.dir = os.path.join(tempfile.gettempdir(), f"{self.net.prefix}-{self.KIND}-p{os.getpid()}")
        os.mkdir(self.dir)
        os.chmod(self.dir, 0o755)
        os.mkdir(os.path.join(self.dir, "log"), 0o755)
        self._start()

    def _start(self) -> None:
        raise NotImplementedError

    @classmethod
    def sweep_stale(cls) -> None:
        """Kills daemons and jobs, and removes directories, of test clusters of this kind whose
        creating process is gone."""
        netns.sweep_stale_dirs(cls.KIND, lambda d: kill_processes(d, cls._stale_job(d)))

    @staticmethod
    def _stale_job(directory: str) -> Callable[[dict], bool]:
        """How to recognise, from its environment, a job of a stale cluster in ``directory``."""
        return lambda env: False

    def _is_job(self, env: dict) -> bool:
        """Whether a process with environment ``env`` belongs to a job of this cluster."""
        return self._stale_job(self.dir)(env)

    def _daemon(self, name: str, argv: list[str], env: Optional[dict] = None) -> None:
        """Starts daemon ``name`` in a session of its own, its output in log/<name>.out."""
        with open(os.path.join(self.dir, "log", f"{name}.out"), "wb") as log:
            self.procs[name] = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)

    def _wait(self, ready, what: str, timeout: float, log: Optional[str] = None) -> None:
        """Waits until ``ready()``; a daemon that exits meanwhile, or the time running out, is an
        error carrying the log ``log`` (default: ``what``'s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with status {proc.returncode}: "
                                       f"{self.log(log or name)}")
            time.sleep(0.05)
        raise RuntimeError(f"{what} not ready within {timeout:.0f} s: {self.log(log or what)}")

    def log(self, name: str) -> str:
        """The end of log/<name>.out (``name`` may also be a file name in log/)."""
        for path in (os.path.join(self.dir, "log", f"{name}.out"), os.path.join(self.dir, "log", name)):
            try:
                with open(path, errors="replace") as f:
                    return f.read()[-3000:]
            except OSError:
                pass
        return ""

    # -- use ------------------------------------------------------------------------------------
    def env(self, base: Optional[dict] = None) -> dict:
        raise NotImplementedError

    def run(self, argv: list[str], check: bool = True, timeout: float = 60,
            **kw) -> subprocess.CompletedProcess:
        """Runs a client command against this cluster."""
        proc = subprocess.run(argv, env=kw.pop("env", None) or self.env(), capture_output=True, text=True,
                              timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): "
                               f"{(proc.stdout + proc.stderr).strip()}")
        return proc

    def jobs(self) -> list[dict]:
        raise NotImplementedError

    def cancel_all(self) -> None:
        raise NotImplementedError

    def wait_no_jobs(self, timeout: float = 15.0) -> list[dict]:
        """Waits until no job is left; returns the jobs left."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.jobs()
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.2)

    # -- teardown -------------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Deletes jobs and removes daemons, job processes, node namespaces and directories;
        tolerates a half setup."""
        if self.CONTROLLER in self.procs and self.procs[self.CONTROLLER].poll() is None:
            try:
                self.cancel_all()
                self.wait_no_jobs(10)
            except Exception:
                pass
        for name in sorted(self.procs, key=lambda n: n == self.LAST):
            proc = self.procs[name]
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
        self.procs = {}
        if self.dir:
            kill_processes(self.dir, self._is_job)
        if self.net is not None:
            self.net.cleanup()  # kills whatever still runs in the node namespaces
            self.net = None
        netns.restore_env(self._old_env)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = ""

    @classmethod
    def fixture(cls, skip_reason, nodes: int = 2, cpus: int = 2, scope: str = "session"):
        """A pytest fixture yielding a running cluster (:func:`netns.cluster_fixture`)."""
        return netns.cluster_fixture(lambda: cls(nodes, cpus), skip_reason, scope)


# -- origins whose workers are batch jobs ------------------------------------------------------

@contextlib.contextmanager
def batch_cluster(n: int, jobs_left: Callable[[], list], wait: bool = True, timeout: float = 90, **opts):
    """A started Cluster here (``opts`` are Cluster's: the launcher and its options) whose ``n``
    workers are batch jobs; afterwards ``jobs_left()`` (waiting for the jobs to go) must be empty,
    and no worker process or secret files' directory may be left."""
    # here, not at the top: tests.conftest imports this module (through tests.slurm_cluster)
    from scoop.cluster import Cluster
    from tests.conftest import PROGRAMS, TESTS, scoop_processes, wait_no_new_processes
    before = {p.pid for p in scoop_processes()}
    opts.setdefault("cpus_per_job", 2)
    c = Cluster(n, pythonpath=[TESTS, PROGRAMS], **opts)
    try:
        c.start(wait=wait, timeout=timeout)
        yield c
    finally:
        c.stop()
        assert jobs_left() == []
        wait_no_new_processes(before, 15)
        if c.launcher is not None and c.launcher.dir:
            assert not os.path.exists(c.launcher.dir)


@contextlib.contextmanager
def origin_process(tmp_path, start: str):
    """An origin in a process of its own, for tests that kill it: ``start`` (indented freely) makes
    and starts a Cluster ``c``; the process then says it is ready and sleeps.  Yields the process
    once ready; kills it afterwards if it still runs."""
    from tests.conftest import ROOT
    prog = tmp_path / "origin.py"
    prog.write_text("import time\nfrom scoop.cluster import Cluster\n" + textwrap.dedent(start)
                    + 'print("ready", flush=True)\ntime.sleep(600)\n')
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, str(prog)], stdout=subprocess.PIPE, env=env, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def where(x):
    """The host a task ran on (a little slow, so that a map spreads over every worker)."""
    import socket
    import time
    time.sleep(0.05)
    return socket.gethostname()
