"""A real SLURM cluster for tests: slurmctld here, slurmd "nodes" in network namespaces.

Why: batch launchers (sbatch, srun inside allocations) can only be trusted against the real
daemons -- real queueing, real job steps, real rejections.  Debian's packages give Slurm 22.05;
this module builds a private cluster from them on one machine:

- munged with its own key, socket, pid and log files (the system munged is never used);
- slurmctld on this host (the "login node"), on a random port, with its own state directory;
- one slurmd per node, each in a network namespace from :mod:`tests.netns` (its own address on
  a private bridge) and its own UTS namespace (``hostname`` inside a job says ``node1``).  slurmd
  is started with ``nsenter --net`` rather than ``ip netns exec``: the latter remounts /sys and
  hides /sys/fs/cgroup, which slurmd 22.05 probes even with the Linux-process proctrack plugin.
  slurmd does not create its per-node spool directory, so it is made here.  No SSH on the nodes.

Client commands find the cluster through ``SLURM_CONF`` (see :meth:`SlurmCluster.env`).  The
filesystem is shared, as on a real cluster with a shared home.  :meth:`cleanup` cancels every job
and removes daemons, namespaces and directories; :func:`sweep_stale` removes what a killed run left.

Usage::

    with SlurmCluster(nodes=2, cpus=2) as sc:
        subprocess.run(["sinfo"], env=sc.env())
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Optional

import psutil

from tests import netns

DAEMONS = {"slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd", "munged": "/usr/sbin/munged"}
CLIENTS = ("sbatch", "srun", "salloc", "squeue", "scancel", "sinfo", "scontrol")
def skip_reason() -> Optional[str]:
    """Why a test SLURM cluster cannot be made here, or None if it can."""
    return netns.daemons_skip_reason("SLURM test cluster", "slurmctld slurmd slurm-client munge",
                                     DAEMONS.values(), CLIENTS)


def _kill_naming(entry: str) -> None:
    for proc in psutil.process_iter(["cmdline"]):
        if any(entry in arg for arg in proc.info["cmdline"] or []):
            try:
                proc.kill()
            except psutil.Error:
                pass


def sweep_stale() -> None:
    """Kill daemons and remove directories of test clusters whose creating process is gone."""
    netns.sweep_stale_dirs("slurm", _kill_naming)


class SlurmCluster:
    """``nodes`` slurmd nodes named node1..nodeN with ``cpus`` CPUs each, one partition
    ``debug`` (default) holding them all, plus an empty partition ``empty``."""

    def __init__(self, nodes: int = 2, cpus: int = 2):
        self.n = nodes
        self.cpus = cpus
        self.names = [f"node{k}" for k in range(1, nodes + 1)]
        self.net: Optional[netns.NetnsCluster] = None
        self.dir = ""
        self.conf = ""
        self.munge_socket = ""
        self.procs: dict[str, subprocess.Popen] = {}
        self._old_env: dict[str, Optional[str]] = {}
        self.started_in = 0.0

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> "SlurmCluster":
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

    def env(self, base: Optional[dict] = None) -> dict:
        """An environment in which Slurm's client commands talk to this cluster."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = self.conf
        for key in [k for k in env if k.startswith("SLURM_") and k != "SLURM_CONF"]:
            del env[key]  # never inherit an outer allocation
        return env

    def activate(self) -> None:
        """Points this process's (and its children's) Slurm commands at this cluster."""
        for key in ["SLURM_CONF"] + [k for k in os.environ if k.startswith("SLURM_")]:
            self._old_env.setdefault(key, os.environ.pop(key, None))
        os.environ["SLURM_CONF"] = self.conf

    def _setup(self) -> None:
        sweep_stale()
        self.net = netns.NetnsCluster(self.n, sshd=False, names=self.names)
        self.net.__enter__()
        self.dir = tempfile.mkdtemp(prefix=f"{self.net.prefix}-slurm-p{os.getpid()}", dir=None)
        # mkdtemp appends random characters: rename to the exact pattern sweep_stale knows
        exact = os.path.join(os.path.dirname(self.dir), f"{self.net.prefix}-slurm-p{os.getpid()}")
        os.rename(self.dir, exact)
        self.dir = exact
        os.chmod(self.dir, 0o755)
        for sub in ("state", "log", "munge", "run"):
            os.makedirs(os.path.join(self.dir, sub), mode=0o700)
        for name in self.names:
            # slurmd does not create its own spool directory
            os.makedirs(os.path.join(self.dir, "spool", name), mode=0o755)
        self._start_munge()
        self._write_conf()
        self._start_slurmctld()
        for host in self.net.hosts:
            self._start_slurmd(host)
        self.wait_nodes_idle()

    def _start_munge(self) -> None:
        mdir = os.path.join(self.dir, "munge")
        key = os.path.join(mdir, "munge.key")
        with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(secrets.token_bytes(1024))
        self.munge_socket = os.path.join(mdir, "munge.socket")
        log = open(os.path.join(self.dir, "log", "munged.out"), "wb")
        self.procs["munged"] = subprocess.Popen(
            [DAEMONS["munged"], "--foreground", "--force", f"--socket={self.munge_socket}",
             f"--key-file={key}", f"--pid-file={os.path.join(mdir, 'munged.pid')}",
             f"--log-file={os.path.join(self.dir, 'log', 'munged.log')}",
             f"--seed-file={os.path.join(mdir, 'munged.seed')}", "--num-threads=4"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self._wait(lambda: os.path.exists(self.munge_socket), "munged", "munged.out", 10)

    def _write_conf(self) -> None:
        d = self.dir
        self.ctld_port, self.slurmd_port = netns.free_port(), netns.free_port()
        ctl = socket.gethostname().split(".")[0]
        lines = [
            f"ClusterName=scoop{self.net.tag}",
            f"SlurmctldHost={ctl}({self.net.gateway_ip})",
            f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={self.slurmd_port}",
            "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={d}/state",
            f"SlurmdSpoolDir={d}/spool/%n",
            f"SlurmctldPidFile={d}/run/slurmctld.pid",
            f"SlurmdPidFile={d}/run/slurmd.%n.pid",
            f"SlurmctldLogFile={d}/log/slurmctld.log",
            f"SlurmdLogFile={d}/log/slurmd.%n.log",
            "SlurmctldDebug=info", "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SchedulerType=sched/builtin",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SlurmdParameters=config_overrides",
            "MpiDefault=none",
            "ReturnToService=2",
            "MailProg=/bin/true",
            "PlugStackConfig=/dev/null",
            "SlurmctldTimeout=30", "SlurmdTimeout=60",
            "InactiveLimit=0", "KillWait=2", "MinJobAge=30", "Waittime=0",
            "MessageTimeout=10",
        ]
        for host in self.net.hosts:
            lines.append(f"NodeName={host.name} NodeAddr={host.ip} NodeHostname={host.name} "
                         f"CPUs={self.cpus} RealMemory=500 State=UNKNOWN")
        lines.append(f"PartitionName=debug Nodes={','.join(self.names)} Default=YES MaxTime=INFINITE "
                     "State=UP OverSubscribe=NO")
        self.conf = os.path.join(d, "slurm.conf")
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def _start_slurmctld(self) -> None:
        log = open(os.path.join(self.dir, "log", "slurmctld.out"), "wb")
        self.procs["slurmctld"] = subprocess.Popen(
            [DAEMONS["slurmctld"], "-D", "-i", "-f", self.conf], env=self.env(),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self._wait(lambda: self._answers(self.net.gateway_ip, self.ctld_port), "slurmctld",
                   "slurmctld.log", 20)

    def _start_slurmd(self, host: netns.TestHost) -> None:
        log = open(os.path.join(self.dir, "log", f"slurmd.{host.name}.out"), "wb")
        # own UTS namespace so the node's hostname is its node name
        argv = host.nsenter(["unshare", "--uts", "sh", "-c",
                             f'hostname "$0" && exec {DAEMONS["slurmd"]} -D -N "$0" -f "$1"',
                             host.name, self.conf])
        self.procs[f"slurmd.{host.name}"] = subprocess.Popen(
            argv, env=self.env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()

    @staticmethod
    def _answers(ip: str, port: int) -> bool:
        try:
            with socket.create_connection((ip, port), timeout=0.5):
                return True
        except OSError:
            return False

    def _wait(self, ready, what: str, logname: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with status {proc.returncode}: {self.log(logname)}")
            time.sleep(0.05)
        raise RuntimeError(f"{what} not ready within {timeout:.0f} s: {self.log(logname)}")

    def wait_nodes_idle(self, timeout: float = 30.0) -> None:
        def idle():
            out = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False).stdout.split()
            states = dict(zip(out[::2], out[1::2]))
            return all(states.get(n) == "idle" for n in self.names)
        self._wait(idle, "slurmd nodes", "slurmctld.log", timeout)

    def log(self, name: str) -> str:
        try:
            with open(os.path.join(self.dir, "log", name), errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    # -- use ------------------------------------------------------------------------------------
    def run(self, argv: list[str], check: bool = True, timeout: float = 60,
            **kw) -> subprocess.CompletedProcess:
        """Runs a Slurm client command against this cluster."""
        proc = subprocess.run(argv, env=kw.pop("env", None) or self.env(), capture_output=True, text=True,
                              timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def jobs(self) -> list[dict]:
        """Jobs in the queue (pending, running, completing): id, name, state, nodes."""
        out = self.run(["squeue", "-h", "-o", "%i|%j|%T|%N"], check=False).stdout
        keys = ("id", "name", "state", "nodes")
        return [dict(zip(keys, line.split("|"))) for line in out.splitlines() if line]

    def wait_no_jobs(self, timeout: float = 15.0) -> list[dict]:
        """Waits until the queue is empty; returns the jobs left."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.jobs()
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.2)

    def cancel_all(self) -> None:
        self.run(["scancel", "--full", "--partition=debug"], check=False)
        ids = [j["id"] for j in self.jobs()]
        if ids:
            self.run(["scancel", *ids], check=False)

    # -- teardown -------------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Cancels jobs and removes daemons, node namespaces and directories; tolerates a half setup."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            try:
                self.cancel_all()
                self.wait_no_jobs(10)
            except Exception:
                pass
        for name in sorted(self.procs, key=lambda n: n == "munged"):  # munge last
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
        if self.dir:
            # job steps (slurmstepd, user tasks) are not in the daemons' process groups
            for proc in psutil.process_iter(["cmdline", "environ"]):
                try:
                    cmd = " ".join(proc.info["cmdline"] or [])
                    env = proc.info["environ"] or {}
                    ours = env.get("SLURM_CONF") == self.conf and "SLURM_JOB_ID" in env
                    if proc.pid != os.getpid() and (self.dir in cmd or ours):
                        proc.kill()
                except psutil.Error:
                    pass
        self.procs = {}
        if self.net is not None:
            self.net.cleanup()  # kills whatever still runs in the node namespaces
            self.net = None
        netns.restore_env(self._old_env)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = ""


def slurm_cluster_fixture(nodes: int = 2, cpus: int = 2, scope: str = "session"):
    """A pytest fixture yielding a running :class:`SlurmCluster` (:func:`netns.cluster_fixture`)."""
    return netns.cluster_fixture(lambda: SlurmCluster(nodes, cpus), skip_reason, scope)
