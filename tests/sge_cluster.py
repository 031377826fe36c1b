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
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Optional

import psutil

from tests import netns

LIB = "/usr/lib/gridengine"
DEBIAN_ROOT = "/var/lib/gridengine"  # the packages' SGE_ROOT: per-arch links to LIB
DAEMONS = {"sge_qmaster": "/usr/sbin/sge_qmaster", "sge_execd": "/usr/sbin/sge_execd"}
CLIENTS = ("qsub", "qstat", "qdel", "qconf", "qrsh")
def skip_reason() -> Optional[str]:
    """Why a test SGE cluster cannot be made here, or None if it can."""
    return netns.daemons_skip_reason("SGE test cluster",
                                     "gridengine-master gridengine-exec gridengine-client",
                                     DAEMONS.values(), CLIENTS)


def sweep_stale() -> None:
    """Kill daemons and remove directories of test cells whose creating process is gone."""
    netns.sweep_stale_dirs("sge", _kill_using)


def _kill_using(root: str) -> None:
    """Kills every process whose command line or environment names ``root`` (daemons, shepherds, jobs)."""
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            if proc.pid == os.getpid():
                continue
            cmd = " ".join(proc.info["cmdline"] or [])
            env = proc.info["environ"] or {}
            if root in cmd or env.get("SGE_ROOT") == root:
                proc.kill()
        except psutil.Error:
            pass


class SgeCluster:
    """``nodes`` execution hosts node1..nodeN with ``cpus`` slots each."""

    def __init__(self, nodes: int = 2, cpus: int = 2):
        self.n = nodes
        self.cpus = cpus
        self.names = [f"node{k}" for k in range(1, nodes + 1)]
        self.master = socket.gethostname()
        self.net: Optional[netns.NetnsCluster] = None
        self.root = ""
        self.procs: dict[str, subprocess.Popen] = {}
        self._old_env: dict[str, Optional[str]] = {}
        self.started_in = 0.0

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> "SgeCluster":
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
        """An environment in which Grid Engine's client commands talk to this cell."""
        env = dict(os.environ if base is None else base)
        env.update(SGE_ROOT=self.root, SGE_CELL="default", SGE_QMASTER_PORT=str(self.qmaster_port),
                   SGE_EXECD_PORT=str(self.execd_port))
        for key in ("JOB_ID", "PE_HOSTFILE", "SGE_TASK_ID"):
            env.pop(key, None)  # never inherit an outer job
        return env

    def activate(self) -> None:
        """Points this process's (and its children's) Grid Engine commands at this cell."""
        for key, value in self.env({}).items():
            self._old_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def _setup(self) -> None:
        sweep_stale()
        self.net = netns.NetnsCluster(self.n, sshd=False, names=self.names)
        self.net.__enter__()
        self.root = os.path.join(tempfile.gettempdir(), f"{self.net.prefix}-sge-p{os.getpid()}")
        os.mkdir(self.root, 0o755)
        self.qmaster_port, self.execd_port = netns.free_port(), netns.free_port()
        common = os.path.join(self.root, "default", "common")
        spool_dirs = [os.path.join(self.root, "spool", d) for d in ("qmaster", "execd")]
        for d in (common, *spool_dirs,
                  os.path.join(self.root, "log")):
            os.makedirs(d, mode=0o755)
        # the layout of Debian's SGE_ROOT: the shepherd of a ``qrsh -inherit`` task execs
        # $SGE_ROOT/utilbin/<arch>/qrsh_starter, and fails silently (the client sees a dropped
        # connection) when it is missing
        os.symlink("/usr/share/gridengine/util", os.path.join(self.root, "util"))
        for d in ("bin", "lib", "utilbin"):
            os.symlink(os.path.join(DEBIAN_ROOT, d), os.path.join(self.root, d))
        # here this host is 127.0.0.1 (clients here connect from it), on the nodes the bridge's address
        nodes = "".join(f"{h.ip} {h.name}\n" for h in self.net.hosts)
        self.hosts_files = {"master": os.path.join(self.root, "hosts.master"),
                            "node": os.path.join(self.root, "hosts.node")}
        self._write(self.hosts_files["master"], f"127.0.0.1 {self.master} localhost\n{nodes}")
        here = f"{self.net.gateway_ip} {self.master}"
        self._write(self.hosts_files["node"], f"127.0.0.1 localhost\n{here}\n{nodes}")
        spool = os.path.join(self.root, "spool", "qmaster")
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
        conf_file = os.path.join(self.root, "configuration")
        self._write(conf_file, conf)
        env = self.env()
        self._tool([f"{LIB}/spoolinit", "classic", "libspoolc", f"{common};{spool}", "init"], env)
        self._tool([f"{LIB}/spooldefaults", "configuration", conf_file], env)
        self._tool([f"{LIB}/spooldefaults", "complexes", "/usr/share/gridengine/util/resources/centry"], env)
        self._tool([f"{LIB}/spooldefaults", "usersets", "/usr/share/gridengine/util/resources/usersets"], env)
        self._tool([f"{LIB}/spooldefaults", "managers", "root"], env)
        for kind in ("adminhosts", "submithosts"):
            d = os.path.join(self.root, kind)
            os.mkdir(d)
            for name in (self.master, *self.names):
                self._write(os.path.join(d, name), f"hostname {name}\n")
            self._tool([f"{LIB}/spooldefaults", kind, d], env)
        self._start_qmaster()
        self._configure()
        for host in self.net.hosts:
            self._start_execd(host)
        self.wait_nodes_up()

    @staticmethod
    def _write(path: str, text: str) -> None:
        import textwrap
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))

    def _tool(self, argv: list[str], env: dict) -> None:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")

    def _private_hosts(self, cmd: str, where: str) -> list[str]:
        """``sh -c cmd`` in a mount namespace of its own, with this cell's /etc/hosts for ``where``
        (master or node)."""
        return ["unshare", "--mount", "sh", "-c", f'mount --bind "$0" /etc/hosts && {cmd}',
                self.hosts_files[where]]

    def _start_qmaster(self) -> None:
        log = open(os.path.join(self.root, "log", "qmaster.out"), "wb")
        env = dict(self.env(), SGE_ND="1")
        self.procs["sge_qmaster"] = subprocess.Popen(
            self._private_hosts(f"exec {DAEMONS['sge_qmaster']}", "master"), env=env,
            stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
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
            pe = os.path.join(self.root, f"pe.{name}")
            self._write(pe, files["pe"].replace("smp", name).replace("$pe_slots", rule))
            self.admin(["qconf", "-Ap", pe])
        hg = os.path.join(self.root, "hostgroup")
        self._write(hg, files["hostgroup"])
        self.admin(["qconf", "-Ahgrp", hg])
        queue = self.admin(["qconf", "-sq"], check=False).stdout  # the template of a new queue
        q = os.path.join(self.root, "queue.all")
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
        sc = os.path.join(self.root, "sconf")
        self._write(sc, sconf)
        self.admin(["qconf", "-Msconf", sc])

    def admin(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        """A configuration command, run with the master's /etc/hosts (it resolves the node names)."""
        return self.run(["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"',
                         self.hosts_files["master"], *argv], check=check)

    def _start_execd(self, host: netns.TestHost) -> None:
        log = open(os.path.join(self.root, "log", f"execd.{host.name}.out"), "wb")
        env = dict(self.env(), SGE_ND="1")
        cmd = f'hostname {host.name} && exec {DAEMONS["sge_execd"]}'
        argv = host.nsenter(["unshare", "--uts", *self._private_hosts(cmd, "node")])
        self.procs[f"sge_execd.{host.name}"] = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()

    def _wait(self, ready, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with status {proc.returncode}: {self.log(name)}")
            time.sleep(0.1)
        raise RuntimeError(f"{what} not ready within {timeout:.0f} s: {self.log(what)}")

    def wait_nodes_up(self, timeout: float = 40.0) -> None:
        def up():
            out = self.run(["qstat", "-f", "-q", "all.q"], check=False).stdout
            ok = [line for line in out.splitlines() if line.startswith("all.q@") and len(line.split()) == 5]
            return len(ok) == self.n
        self._wait(up, "sge_execd nodes", timeout)

    def log(self, name: str) -> str:
        out = []
        for path in [os.path.join(self.root, "log", f"{name.replace('sge_', '')}.out"),
                     os.path.join(self.root, "spool", "qmaster", "messages")]:
            try:
                with open(path, errors="replace") as f:
                    out.append(f.read()[-2000:])
            except OSError:
                pass
        return "\n".join(out)

    # -- use ------------------------------------------------------------------------------------
    def run(self, argv: list[str], check: bool = True, timeout: float = 60,
            **kw) -> subprocess.CompletedProcess:
        """Runs a Grid Engine client command against this cell."""
        proc = subprocess.run(argv, env=kw.pop("env", None) or self.env(), capture_output=True, text=True,
                              timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc

    def jobs(self) -> list[dict]:
        """Jobs in the cell (pending, running, being deleted): id, name, state."""
        out = self.run(["qstat", "-u", "*"], check=False).stdout
        jobs = []
        for line in out.splitlines()[2:]:
            parts = line.split()
            if len(parts) >= 5 and parts[0].isdigit():
                jobs.append({"id": parts[0], "name": parts[2], "state": parts[4]})
        return jobs

    def wait_no_jobs(self, timeout: float = 15.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            left = self.jobs()
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.2)

    # -- teardown -------------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Deletes jobs and removes daemons, node namespaces and directories; tolerates a half setup."""
        if "sge_qmaster" in self.procs and self.procs["sge_qmaster"].poll() is None:
            try:
                self.run(["qdel", "-f", "-u", "*"], check=False, timeout=10)
                self.wait_no_jobs(10)
            except Exception:
                pass
        for name in sorted(self.procs, key=lambda n: n == "sge_qmaster"):  # the master last
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
        if self.root:
            _kill_using(self.root)  # shepherds and jobs are not in the daemons' process groups
        if self.net is not None:
            self.net.cleanup()
            self.net = None
        netns.restore_env(self._old_env)
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = ""


def sge_cluster_fixture(nodes: int = 2, cpus: int = 2, scope: str = "session"):
    """A pytest fixture yielding a running :class:`SgeCluster` (:func:`netns.cluster_fixture`)."""
    return netns.cluster_fixture(lambda: SgeCluster(nodes, cpus), skip_reason, scope)
