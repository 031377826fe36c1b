"""A real Grid Engine cluster for tests: sge_qmaster here, sge_execd "nodes" in network namespaces.

Why: the SGE launchers (``--launcher sge`` batch jobs, ``qrsh -inherit`` inside a job) can only be
trusted against the real daemons.  Debian's gridengine-master/-exec/-client (Son of Grid Engine
8.1.9; scripts/test.sh installs them) give the programs; this module builds a private cell from
them and installs nothing itself:

- a cell in a temporary SGE_ROOT with classic (file) spooling, root as the admin user, random
  qmaster/execd ports (``SGE_QMASTER_PORT``, ``SGE_EXECD_PORT``), a queue ``all.q`` with
  ``cpus`` slots per node and parallel environments ``smp`` (``$pe_slots``: one node) and ``mpi``
  (``$round_robin``: across nodes), both with control_slaves for ``qrsh -inherit``;
- one sge_execd per node, each in a network namespace from :mod:`tests.netns`, its own UTS
  namespace (``hostname`` says ``node1``) and its own mount namespace, where a private
  /etc/hosts names the nodes and this host.  Grid Engine resolves every host by name, and the
  machine's /etc/hosts is never edited: the daemons see the private file bind-mounted over it.
  sge_qmaster runs here with the same private file.

Client commands find the cell through :meth:`SgeCluster.env` (SGE_ROOT, SGE_CELL, ports).
:meth:`cleanup` deletes every job and removes daemons, namespaces and directories.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import textwrap
from typing import Optional

from tests import netns
from tests.batch_clusters import DaemonCluster

LIB = "/usr/lib/gridengine"
DEBIAN_ROOT = "/var/lib/gridengine"  # the packages' SGE_ROOT: per-arch links to LIB
DAEMONS = {"sge_qmaster": "/usr/sbin/sge_qmaster", "sge_execd": "/usr/sbin/sge_execd"}
CLIENTS = ("qsub", "qstat", "qdel", "qconf", "qrsh")


def skip_reason() -> Optional[str]:
    """Why a test SGE cluster cannot be made here, or None if it can."""
    return netns.daemons_skip_reason("SGE test cluster",
                                     "gridengine-master gridengine-exec gridengine-client",
                                     DAEMONS.values(), CLIENTS)


class SgeCluster(DaemonCluster):
    """``nodes`` execution hosts node1..nodeN with ``cpus`` slots each; the cell is ``self.dir``."""

    KIND = "sge"
    CONTROLLER = LAST = "sge_qmaster"   # deletes the jobs, and stops after the execds

    def __init__(self, nodes: int = 2, cpus: int = 2):
        super().__init__(nodes, cpus)
        self.master = socket.gethostname()

    @staticmethod
    def _stale_job(directory: str):
        return lambda env: env.get("SGE_ROOT") == directory   # shepherds and jobs

    def env(self, base: Optional[dict] = None) -> dict:
        """An environment in which Grid Engine's client commands talk to this cell."""
        env = dict(os.environ if base is None else base)
        env.update(SGE_ROOT=self.dir, SGE_CELL="default", SGE_QMASTER_PORT=str(self.qmaster_port),
                   SGE_EXECD_PORT=str(self.execd_port))
        for key in ("JOB_ID", "PE_HOSTFILE", "SGE_TASK_ID"):
            env.pop(key, None)  # never inherit an outer job
        return env

    def activate(self) -> None:
        """Points this process's (and its children's) Grid Engine commands at this cell."""
        for key, value in self.env({}).items():
            self._old_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def _start(self) -> None:
        self.qmaster_port, self.execd_port = netns.free_port(), netns.free_port()
        common = os.path.join(self.dir, "default", "common")
        spool_dirs = [os.path.join(self.dir, "spool", d) for d in ("qmaster", "execd")]
        for d in (common, *spool_dirs):
            os.makedirs(d, mode=0o755)
        # the layout of Debian's SGE_ROOT: the shepherd of a ``qrsh -inherit`` task execs
        # $SGE_ROOT/utilbin/<arch>/qrsh_starter, and fails silently (the client sees a dropped
        # connection) when it is missing
        os.symlink("/usr/share/gridengine/util", os.path.join(self.dir, "util"))
        for d in ("bin", "lib", "utilbin"):
            os.symlink(os.path.join(DEBIAN_ROOT, d), os.path.join(self.dir, d))
        # here this host is 127.0.0.1 (clients here connect from it), on the nodes the bridge's address
        nodes = "".join(f"{h.ip} {h.name}\n" for h in self.net.hosts)
        self.hosts_files = {"master": os.path.join(self.dir, "hosts.master"),
                            "node": os.path.join(self.dir, "hosts.node")}
        self._write(self.hosts_files["master"], f"127.0.0.1 {self.master} localhost\n{nodes}")
        here = f"{self.net.gateway_ip} {self.master}"
        self._write(self.hosts_files["node"], f"127.0.0.1 localhost\n{here}\n{nodes}")
        spool = os.path.join(self.dir, "spool", "qmaster")
        self._write(os.path.join(common, "bootstrap"), f"""\
            admin_user              none
            default_domain          none
            ignore_fqdn             true
            spooling_method         classic
            spooling_lib            libspoolc
            spooling_params         {common};{spool}
            binary_path             /usr/sbin
            qmaster_spool_dir       {spool}
            security_mode           none
            listener_threads        2
            worker_threads          2
            scheduler_threads       1
            """)
        self._write(os.path.join(common, "act_qmaster"), f"{self.master}\n")
        # clients here connect from 127.0.0.1, which this machine's /etc/hosts calls localhost
        self._write(os.path.join(common, "host_aliases"), f"{self.master} localhost\n")
        self._write(os.path.join(common, "cluster_name"), f"scoop{self.net.tag}\n")
        with open("/usr/share/gridengine/default-configuration") as f:
            conf = f.read()
        for key, value in {"execd_spool_dir": spool_dirs[1], "mailer": "/bin/true",
                           "min_uid": "0", "min_gid": "0", "load_report_time": "00:00:02",
                           "max_unheard": "00:00:20", "reporting_params": "accounting=false reporting=false "
                           "flush_time=00:00:15 joblog=false sharelog=00:00:00"}.items():
            conf = re.sub(rf"(?m)^{key}\s+.*$", f"{key}  {value}", conf)
        conf_file = os.path.join(self.dir, "configuration")
        self._write(conf_file, conf)
        def spool_tool(*argv: str) -> None:
            self.run([f"{LIB}/{argv[0]}", *argv[1:]], timeout=30)
        spool_tool("spoolinit", "classic", "libspoolc", f"{common};{spool}", "init")
        spool_tool("spooldefaults", "configuration", conf_file)
        spool_tool("spooldefaults", "complexes", "/usr/share/gridengine/util/resources/centry")
        spool_tool("spooldefaults", "usersets", "/usr/share/gridengine/util/resources/usersets")
        spool_tool("spooldefaults", "managers", "root")
        for kind in ("adminhosts", "submithosts"):
            d = os.path.join(self.dir, kind)
            os.mkdir(d)
            for name in (self.master, *self.names):
                self._write(os.path.join(d, name), f"hostname {name}\n")
            spool_tool("spooldefaults", kind, d)
        self._start_qmaster()
        self._configure()
        for host in self.net.hosts:
            self._start_execd(host)
        self.wait_nodes_up()

    @staticmethod
    def _write(path: str, text: str) -> None:
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))

    def _private_hosts(self, cmd: str, where: str) -> list[str]:
        """``sh -c cmd`` in a mount namespace of its own, with this cell's /etc/hosts for ``where``
        (master or node)."""
        return ["unshare", "--mount", "sh", "-c", f'mount --bind "$0" /etc/hosts && {cmd}',
                self.hosts_files[where]]

    def _start_qmaster(self) -> None:
        self._daemon("sge_qmaster", self._private_hosts(f"exec {DAEMONS['sge_qmaster']}", "master"),
                     dict(self.env(), SGE_ND="1"))
        answers = lambda: self.run(["qconf", "-sh"], check=False, timeout=10).returncode == 0  # noqa: E731
        self._wait(answers, "sge_qmaster", 30)

    def _configure(self) -> None:
        files = {
            "pe": """\
                pe_name            smp
                slots              999
                user_lists         NONE
                xuser_lists        NONE
                start_proc_args    NONE
                stop_proc_args     NONE
                allocation_rule    $pe_slots
                control_slaves     TRUE
                job_is_first_task  FALSE
                urgency_slots      min
                accounting_summary FALSE
                qsort_args         NONE
                """,
            "hostgroup": f"group_name @allhosts\nhostlist {' '.join(self.names)}\n",
            "sconf": None,
        }
        for name, rule in (("smp", "$pe_slots"), ("mpi", "$round_robin")):
            pe = os.path.join(self.dir, f"pe.{name}")
            self._write(pe, files["pe"].replace("smp", name).replace("$pe_slots", rule))
            self.admin(["qconf", "-Ap", pe])
        hg = os.path.join(self.dir, "hostgroup")
        self._write(hg, files["hostgroup"])
        self.admin(["qconf", "-Ahgrp", hg])
        queue = self.admin(["qconf", "-sq"], check=False).stdout  # the template of a new queue
        q = os.path.join(self.dir, "queue.all")
        template = self.admin(["qconf", "-sq", "all.q"], check=False)
        text = template.stdout if template.returncode == 0 else queue
        for key, value in {"qname": "all.q", "hostlist": "@allhosts", "slots": str(self.cpus),
                           "pe_list": "smp mpi", "shell": "/bin/sh", "load_thresholds": "NONE"}.items():
            text = re.sub(rf"(?m)^{key}\s+.*$", f"{key}  {value}", text)
        self._write(q, text)
        self.admin(["qconf", "-Aq", q])
        sconf = self.admin(["qconf", "-ssconf"]).stdout
        sconf = re.sub(r"(?m)^schedule_interval\s+.*$", "schedule_interval 0:0:1", sconf)
        sconf = re.sub(r"(?m)^flush_submit_sec\s+.*$", "flush_submit_sec 1", sconf)
        sconf = re.sub(r"(?m)^flush_finish_sec\s+.*$", "flush_finish_sec 1", sconf)
        sc = os.path.join(self.dir, "sconf")
        self._write(sc, sconf)
        self.admin(["qconf", "-Msconf", sc])

    def admin(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        """A configuration command, run with the master's /etc/hosts (it resolves the node names)."""
        return self.run(["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"',
                         self.hosts_files["master"], *argv], check=check)

    def _start_execd(self, host: netns.TestHost) -> None:
        cmd = f'hostname {host.name} && exec {DAEMONS["sge_execd"]}'
        self._daemon(f"sge_execd.{host.name}",
                     host.nsenter(["unshare", "--uts", *self._private_hosts(cmd, "node")]),
                     dict(self.env(), SGE_ND="1"))

    def wait_nodes_up(self, timeout: float = 40.0) -> None:
        def up():
            out = self.run(["qstat", "-f", "-q", "all.q"], check=False).stdout
            ok = [line for line in out.splitlines() if line.startswith("all.q@") and len(line.split()) == 5]
            return len(ok) == self.n
        self._wait(up, "sge_execd nodes", timeout)

    def log(self, name: str) -> str:
        """A daemon's output, then the end of the qmaster's messages."""
        try:
            with open(os.path.join(self.dir, "spool", "qmaster", "messages"), errors="replace") as f:
                messages = f.read()[-2000:]
        except OSError:
            messages = ""
        return f"{super().log(name)[-2000:]}\n{messages}"

    # -- use ------------------------------------------------------------------------------------
    def jobs(self) -> list[dict]:
        """Jobs in the cell (pending, running, being deleted): id, name, state."""
        out = self.run(["qstat", "-u", "*"], check=False).stdout
        jobs = []
        for line in out.splitlines()[2:]:
            parts = line.split()
            if len(parts) >= 5 and parts[0].isdigit():
                jobs.append({"id": parts[0], "name": parts[2], "state": parts[4]})
        return jobs

    def cancel_all(self) -> None:
        self.run(["qdel", "-f", "-u", "*"], check=False, timeout=10)


def sge_cluster_fixture(nodes: int = 2, cpus: int = 2, scope: str = "session"):
    """A pytest fixture yielding a running :class:`SgeCluster` (:func:`netns.cluster_fixture`)."""
    return SgeCluster.fixture(skip_reason, nodes, cpus, scope)
