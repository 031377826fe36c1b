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
and removes daemons, namespaces and directories; :meth:`SlurmCluster.sweep_stale` removes what a
killed run left.

Usage::

    with SlurmCluster(nodes=2, cpus=2) as sc:
        subprocess.run(["sinfo"], env=sc.env())
"""
from __future__ import annotations

import os
import secrets
import socket
from typing import Optional

from tests import netns
from tests.batch_clusters import DaemonCluster

DAEMONS = {"slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd", "munged": "/usr/sbin/munged"}
CLIENTS = ("sbatch", "srun", "salloc", "squeue", "scancel", "sinfo", "scontrol")


def skip_reason() -> Optional[str]:
    """Why a test SLURM cluster cannot be made here, or None if it can."""
    return netns.daemons_skip_reason("SLURM test cluster", "slurmctld slurmd slurm-client munge",
                                     DAEMONS.values(), CLIENTS)


class SlurmCluster(DaemonCluster):
    """``nodes`` slurmd nodes named node1..nodeN with ``cpus`` CPUs each, one partition
    ``debug`` (default) holding them all, plus an empty partition ``empty``."""

    KIND = "slurm"
    CONTROLLER = "slurmctld"   # cancels the jobs
    LAST = "munged"            # the others authenticate through it until they end

    def __init__(self, nodes: int = 2, cpus: int = 2):
        super().__init__(nodes, cpus)
        self.conf = ""
        self.munge_socket = ""

    def _is_job(self, env: dict) -> bool:
        """Job steps (slurmstepd, user tasks) of this cluster, not this session's own processes
        (which have SLURM_CONF from activate())."""
        return env.get("SLURM_CONF") == self.conf and "SLURM_JOB_ID" in env

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

    def _start(self) -> None:
        for sub in ("state", "munge", "run"):
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
        self._daemon("munged", [
            DAEMONS["munged"], "--foreground", "--force", f"--socket={self.munge_socket}",
            f"--key-file={key}", f"--pid-file={os.path.join(mdir, 'munged.pid')}",
            f"--log-file={os.path.join(self.dir, 'log', 'munged.log')}",
            f"--seed-file={os.path.join(mdir, 'munged.seed')}", "--num-threads=4"])
        self._wait(lambda: os.path.exists(self.munge_socket), "munged", 10)

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
        self._daemon("slurmctld", [DAEMONS["slurmctld"], "-D", "-i", "-f", self.conf], self.env())
        self._wait(lambda: self._answers(self.net.gateway_ip, self.ctld_port), "slurmctld", 20,
                   log="slurmctld.log")

    def _start_slurmd(self, host: netns.TestHost) -> None:
        # own UTS namespace so the node's hostname is its node name
        self._daemon(f"slurmd.{host.name}", host.nsenter(
            ["unshare", "--uts", "sh", "-c", f'hostname "$0" && exec {DAEMONS["slurmd"]} -D -N "$0" -f "$1"',
             host.name, self.conf]), self.env())

    @staticmethod
    def _answers(ip: str, port: int) -> bool:
        try:
            with socket.create_connection((ip, port), timeout=0.5):
                return True
        except OSError:
            return False

    def wait_nodes_idle(self, timeout: float = 30.0) -> None:
        def idle():
            out = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False).stdout.split()
            states = dict(zip(out[::2], out[1::2]))
            return all(states.get(n) == "idle" for n in self.names)
        self._wait(idle, "slurmd nodes", timeout, log="slurmctld.log")

    # -- use ------------------------------------------------------------------------------------
    def jobs(self) -> list[dict]:
        """Jobs in the queue (pending, running, completing): id, name, state, nodes."""
        out = self.run(["squeue", "-h", "-o", "%i|%j|%T|%N"], check=False).stdout
        keys = ("id", "name", "state", "nodes")
        return [dict(zip(keys, line.split("|"))) for line in out.splitlines() if line]

    def cancel_all(self) -> None:
        self.run(["scancel", "--full", "--partition=debug"], check=False)
        ids = [j["id"] for j in self.jobs()]
        if ids:
            self.run(["scancel", *ids], check=False)


def slurm_cluster_fixture(nodes: int = 2, cpus: int = 2, scope: str = "session"):
    """A pytest fixture yielding a running :class:`SlurmCluster` (:func:`netns.cluster_fixture`)."""
    return SlurmCluster.fixture(skip_reason, nodes, cpus, scope)
