"""The public Cluster API: start, stop, scale and observe a SCOOP cluster.

``python -m scoop`` and ``%scoop_cluster`` are thin front ends over this class.  A cluster is
one broker on this machine plus workers here and on remote hosts (over SSH); the process that
calls :meth:`Cluster.start` becomes the origin unless told otherwise.  Every process the
cluster starts holds a pipe or an SSH channel to this one and a heartbeat to the broker, so
none outlives it.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

from . import _globals, _protocol as P
from .errors import ClusterError
from .launch import local as _local
from .launch.hosts import is_local_host
from .meta import MetaSubscriber

def _is_local(host) -> bool:
    return not host or is_local_host(host)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class _WorkerHandle:
    """A worker we started: a local Popen or a remote process, with its label for output."""

    def __init__(self, label, host, proc, remote=False):
        self.label = label
        self.host = host
        self.proc = proc
        self.remote = remote
        self.retired = False

    @property
    def pid(self):
        return getattr(self.proc, "pid", None)

    def poll(self):
        return self.proc.poll()

    def kill(self):
        try:
            self.proc.kill()
        except Exception:
            pass


class Cluster:
    """A SCOOP cluster: one broker here, ``n`` workers spread over ``hosts``.

    ``n`` counts the workers that run tasks; the origin (the program or notebook kernel that
    submits them) comes in addition and runs no queued tasks, so ``-n 2`` on a 2-core machine
    keeps both cores computing while the origin waits.

    ``fork`` (default False): start local broker and workers by forking this process, which
    saves an interpreter start per worker; safe only from a fresh, single-threaded process that
    holds no ZeroMQ context yet -- ``python -m scoop``'s launcher asks for it, a library caller
    or a notebook kernel must not.

    ``inline`` (default True): a process that submits a task and then waits on it at once
    (``submit(f, x).result()``) runs it itself, as SCOOP's origin did, instead of paying a
    round trip through the broker; a task not waited on within ~2 ms goes to the cluster.
    """

    def __init__(self, n: int | None = None, hosts=None, hostfile: str | None = None, *,
                 python: str | None = None, pythonpath=None, path: str | None = None,
                 prolog: str | None = None, nice: int | None = None,
                 external_hostname: str | None = None, tunnel: bool = False,
                 output=None, prefix_output: bool = False, heartbeat_timeout: float = 3.0,
                 connect_timeout: float = 10.0, ssh_config: str | None = None,
                 env: dict | None = None, program_dir: str | None = None, verbose: int = 0,
                 brokers: int = 1, inline: bool = True, fork: bool = False):
        self.n = n
        self.hosts = list(hosts or [])
        self.hostfile = hostfile
        self.python = python or sys.executable
        self.pythonpath = [pythonpath] if isinstance(pythonpath, str) else list(pythonpath or [])
        self.path = os.path.abspath(path) if path else os.getcwd()
        self.prolog = prolog
        self.nice = nice
        self.external_hostname = external_hostname
        self.tunnel = tunnel
        self.heartbeat_timeout = heartbeat_timeout
        self.connect_timeout = connect_timeout
        self.ssh_config = ssh_config
        self.env = dict(env or {})
        self.program_dir = program_dir
        self.verbose = verbose
        self.secret = P.new_secret()
        self.relay = None
        self._output = output
        self._prefix = prefix_output
        self.brokers = max(1, int(brokers))
        self.inline = inline
        self.fork = fork
        self.broker_procs: list = []
        self.broker_ports: list = []
        self._spread = 0
        self.workers: list[_WorkerHandle] = []
        self.remote_hosts: dict = {}
        self.plan: list[tuple[str, int]] = []
        self._meta: MetaSubscriber | None = None
        self.runtime = None
        self.bind_host = "127.0.0.1"
        self.broker_host = "127.0.0.1"
        self.main_port = self.meta_port = None
        self._started = False
        self._fork = False
        self._stopping = False
        self._labels = 0
        self._lock = threading.RLock()
        self.allocation = None

    # ---- planning --------------------------------------------------------------------------
    def _make_plan(self):
        from .launch import hosts as H
        cores = os.cpu_count() or 1
        entries = []
        if self.hostfile:
            entries = H.parse_hostfile(self.hostfile)
        if self.hosts:
            entries += H.parse_hosts_args(self.hosts)
        if not entries:
            alloc = H.detect_allocation(os.environ)
            if alloc:
                self.allocation, entries = alloc[0], list(alloc[1])
        if not entries:
            return [("localhost", self.n if self.n is not None else cores)]
        return [(h, k) for h, k in H.distribute(self.n, entries, cores) if k > 0]

    # ---- start -------------------------------------------------------------------------------
    def start(self, *, connect: bool = True, wait: bool = True, timeout: float = 60.0) -> "Cluster":
        """Starts broker and workers; with ``connect`` this process becomes the origin.
        Returns once every worker has joined (``wait``), or raises ClusterError naming what
        failed, with nothing left running."""
        if self._started:
            raise ClusterError("this cluster is already started")
        self._started = True
        try:
            self._start(connect, wait, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, connect, wait, timeout):
        self.plan = self._make_plan()
        remote = [(h, k) for h, k in self.plan if not _is_local(h)]
        if remote and not self.tunnel:
            self.bind_host = "0.0.0.0"
        # a local cluster started from a single-threaded launcher forks its broker and workers
        # (no interpreter start, no imports); the relay's thread starts only after the forks
        self._fork = (self.fork and not remote and not self.prolog and self.python == sys.executable
                      and _local.can_fork())
        self.relay = _local.OutputRelay(self._output, self._prefix, start=not self._fork)
        if remote:
            self._connect_remote([h for h, _ in remote])
        # ports chosen here so broker and workers start side by side, not one after the other
        for attempt in range(3):
            probe = "127.0.0.1" if self.bind_host == "0.0.0.0" else self.bind_host
            self.broker_ports = [(_free_port(probe), _free_port(probe)) for _ in range(self.brokers)]
            self.main_port, self.meta_port = self.broker_ports[0]
            self.broker_procs = []
            for k, (main, meta) in enumerate(self.broker_ports):
                self._spawn_broker(k, main, meta)
            for host, count in self.plan:
                for _ in range(count):
                    self._spawn_worker(host)
            self._fork = False
            self.relay.start()
            if all(self._await_broker(k) for k in range(self.brokers)):
                break
            self._kill_all()
        else:
            raise ClusterError("the SCOOP broker did not start: " + self.relay.tail("broker"))
        if connect:
            self.connect()
        if wait:
            self.wait_for_workers(sum(k for _, k in self.plan), timeout)
        self._supervisor = threading.Thread(target=self._supervise, name="scoop-supervisor", daemon=True)
        self._supervisor.start()

    def _supervise(self):
        """Replaces workers that die (a crash, ``os._exit`` in a task, a lost host) so the
        cluster keeps its size; their tasks are re-dispatched by the broker.  A crash loop
        (more than 2n+8 deaths a minute) stops the replacing."""
        from . import logger
        deaths = []
        while not self._stopping:
            time.sleep(0.2)
            with self._lock:
                if self._stopping:
                    return
                for k in range(1, len(self.broker_procs)):
                    code = self.broker_procs[k].poll()
                    if code is not None:
                        # a sub-broker died: its tasks are re-dispatched by the root; restart it on
                        # the same ports so its workers' replacements have somewhere to join
                        logger.warning("sub-broker %d exited with status %s; restarting it", k, code)
                        main, meta = self.broker_ports[k]
                        self._spawn_broker(k, main, meta, replace=True)
                for w in list(self.workers):
                    code = w.poll()
                    if code is None or w.retired:
                        continue
                    w.retired = True
                    now = time.monotonic()
                    deaths = [t for t in deaths if now - t < 60] + [now]
                    if len(deaths) > 2 * len(self.workers) + 8:
                        logger.error("worker %s on %s exited with status %s; too many worker deaths "
                                     "this minute, not replacing it", w.label, w.host, code)
                        continue
                    logger.warning("worker %s on %s exited with status %s; starting a replacement",
                                   w.label, w.host, code)
                    try:
                        self._spawn_worker(w.host if w.remote else "localhost")
                    except Exception as exc:
                        logger.error("could not replace worker %s: %s", w.label, exc)

    def _env(self):
        env = dict(os.environ)
        env.update(self.env)
        env.pop(P.SECRET_ENV, None)
        env["PYTHONUNBUFFERED"] = "1"
        # local children import the very scoop this process runs, installed or not
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        paths = self.pythonpath + [here] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        return env

    def _spawn_broker(self, k, main, meta, replace: bool = False):
        """Broker 0 is the root; the others are sub-brokers under it (a federation), each
        serving its share of the workers."""
        cfg = {"secret": self.secret.hex(), "heartbeat_timeout": self.heartbeat_timeout,
               "main": f"tcp://{self.bind_host}:{main}", "meta": f"tcp://{self.bind_host}:{meta}"}
        if k:
            cfg["upstream"] = f"tcp://127.0.0.1:{self.main_port}"
        line = (json.dumps(cfg) + "\n").encode()
        if self._fork:
            proc = _local.fork_spawn("scoop.broker", line, env=self._env(), cwd=self.path)
        else:
            proc = _local.spawn([sys.executable, "-m", "scoop.broker"], line, env=self._env(), cwd=self.path)
        if replace:
            self.broker_procs[k] = proc
        else:
            self.broker_procs.append(proc)
        # stdout carries the ready line; stderr is relayed
        self.relay.add("broker" if not k else f"broker{k}", stderr=proc.stderr)

    @property
    def broker_proc(self):
        return self.broker_procs[0] if self.broker_procs else None

    def _await_broker(self, k) -> bool:
        import select
        deadline = time.monotonic() + 20
        proc = self.broker_procs[k]
        while time.monotonic() < deadline:
            r, _, _ = select.select([proc.stdout], [], [], 0.1)
            if r:
                line = proc.stdout.readline()
                if line:
                    ports = json.loads(line)
                    return ports["main_port"] == self.broker_ports[k][0]
                break
            if proc.poll() is not None:
                break
        self.relay.flush(0.3)
        return False

    def _worker_config(self, host, label, broker_addr):
        sys_path = [p for p in (self.program_dir, self.path) if p]
        return {"secret": self.secret.hex(), "broker": broker_addr, "label": label, "name": label,
                "sys_path": sys_path, "nice": self.nice, "host": None if _is_local(host) else host,
                "broker_timeout": self.heartbeat_timeout,
                "connect_timeout": 15.0, "broker_info": self.broker_info(), "inline": self.inline}

    def broker_info(self) -> dict:
        return {"hostname": self.external_hostname or socket.gethostname(), "task_port": self.main_port,
                "info_port": self.meta_port, "externalHostname": self.external_hostname}

    def _next_label(self, host):
        self._labels += 1
        return f"w{self._labels}" if _is_local(host) else f"w{self._labels}@{host}"

    def _spawn_worker(self, host):
        label = self._next_label(host)
        port = self.broker_ports[self._spread % self.brokers][0]  # workers spread over the brokers
        self._spread += 1
        if _is_local(host):
            addr = f"tcp://127.0.0.1:{port}"
            cfg = self._worker_config(host, label, addr)
            try:
                line = (json.dumps(cfg) + "\n").encode()
                if self._fork:
                    proc = _local.fork_spawn("scoop.worker", line, env=self._env(), cwd=self.path)
                else:
                    proc = _local.spawn([self.python, "-m", "scoop.worker"], line,
                                        env=self._env(), cwd=self.path, prolog=self.prolog)
            except OSError as exc:
                raise ClusterError(f"cannot start a worker with the Python interpreter {self.python!r} "
                                   f"in {self.path!r}: {exc.strerror}") from None
            self.relay.add(label, proc.stdout, proc.stderr)
            handle = _WorkerHandle(label, "localhost", proc)
        else:
            rh = self.remote_hosts[host]
            if self.tunnel:
                key = (host, port)
                rport = self._tunnel_ports.get(key)
                if rport is None:
                    rport = self._tunnel_ports[key] = rh.forward_remote_port("127.0.0.1", port)
                addr = f"tcp://127.0.0.1:{rport}"
            else:
                addr = f"tcp://{self.external_hostname or rh.local_address}:{port}"
            cfg = self._worker_config(host, label, addr)
            env = {"PYTHONUNBUFFERED": "1"}
            if self.pythonpath:
                env["PYTHONPATH"] = os.pathsep.join(self.pythonpath)
            proc = rh.start([self.python, "-m", "scoop.worker"], stdin_data=(json.dumps(cfg) + "\n").encode(),
                            cwd=self.path, env=env, prolog=self.prolog,
                            on_output=lambda stream, line, _l=label: self.relay.emit(_l, stream, line + "\n"))
            handle = _WorkerHandle(label, host, proc, remote=True)
        self.workers.append(handle)
        return handle

    def _connect_remote(self, names):
        from .launch import ssh
        self._tunnel_ports = {}
        unique = list(dict.fromkeys(names))
        try:
            self.remote_hosts = ssh.connect_hosts(unique, config_path=self.ssh_config,
                                                  connect_timeout=self.connect_timeout)
        except ssh.SSHError as exc:
            raise ClusterError(str(exc)) from None
        errors = []
        for name, rh in self.remote_hosts.items():
            try:
                rh.check_python(self.python)
            except ssh.SSHError as exc:
                errors.append(str(exc))
        if errors:
            raise ClusterError("; ".join(errors))

    # ---- origin -----------------------------------------------------------------------------
    def connect(self):
        """Makes this process the origin: ``scoop.futures`` calls now go to this cluster."""
        from ._runtime import Runtime
        if self.runtime is not None:
            return self.runtime
        if _globals.current() is not None:
            raise ClusterError("this process is already the origin of another SCOOP cluster; stop it first")
        rt = Runtime(f"tcp://127.0.0.1:{self.main_port}", self.secret, "origin",
                     broker_timeout=self.heartbeat_timeout, inline=self.inline)
        rt.output_handler = lambda name, stream, text, group: self.relay.emit(name, stream, text)
        rt.connect(timeout=20)
        self.runtime = rt
        _globals.activate(rt, is_origin=True, broker=self.broker_info())
        return rt

    def wait_for_workers(self, count: int, timeout: float = 60.0):
        """Blocks until ``count`` workers have joined; a worker that dies first is reported."""
        deadline = time.monotonic() + timeout
        rt = self.runtime
        while True:
            if rt is not None:
                # the origin hears of every join at once (SIZE records): no waiting for a snapshot
                rt.pump(0.05)
                snap = {"workers": [None] * rt.size} if rt.size >= count else None
            else:
                snap = self.meta.wait_for(lambda s: len(s["workers"]) >= count, 0.1)
            if snap is not None and len(snap["workers"]) >= count:
                if self.runtime is not None:
                    self.runtime.size = len(snap["workers"])
                    import scoop
                    scoop.SIZE = self.runtime.size
                return snap
            for w in self.workers:
                code = w.poll()
                if code is not None and not w.retired:
                    self.relay.flush(0.3)
                    tail = self.relay.tail(w.label)
                    raise ClusterError(f"worker {w.label} on {w.host} exited with status {code} before "
                                       f"joining the cluster" + (f":\n{tail}" if tail else ""))
            if self.broker_proc.poll() is not None:
                raise ClusterError("the SCOOP broker exited: " + self.relay.tail("broker"))
            if time.monotonic() > deadline:
                have = len(snap["workers"]) if snap else 0
                raise ClusterError(f"only {have} of {count} workers joined within {timeout:.0f} s")

    @property
    def meta(self) -> MetaSubscriber:
        """The broker's meta stream, subscribed to on first use (a script never needs it)."""
        if self._meta is None:
            with self._lock:
                if self._meta is None:
                    self._meta = MetaSubscriber(f"tcp://127.0.0.1:{self.meta_port}", self.secret)
                    self._meta.start()
        return self._meta

    # ---- observe -----------------------------------------------------------------------------
    def status(self, timeout: float = 2.0) -> dict:
        """The latest load snapshot from the meta stream (workers, totals)."""
        if self._meta is None and not self.running:
            return {"state": "stopped", "workers": [], "totals": {}}
        snap = self.meta.wait_for(lambda s: True, timeout)
        return snap or {"state": "starting", "workers": [], "totals": {}}

    def subscribe(self, callback):
        """``callback(kind, data)`` for every snapshot and event; returns an unsubscribe function."""
        if self._meta is None and not self.running:
            raise ClusterError("the cluster is not running")
        return self.meta.subscribe(callback)

    @property
    def running(self) -> bool:
        return self._started and not self._stopping and self.broker_proc is not None \
            and self.broker_proc.poll() is None

    @property
    def size(self) -> int:
        return len([w for w in self.workers if not w.retired and w.poll() is None])

    # ---- scale -------------------------------------------------------------------------------
    def scale(self, n: int, timeout: float = 60.0):
        """Adds local workers, or retires workers (newest first) after they finish their running
        tasks; their queued tasks go back to the broker."""
        with self._lock:
            live = [w for w in self.workers if not w.retired and w.poll() is None]
            if n > len(live):
                for _ in range(n - len(live)):
                    host = live[0].host if live and live[0].remote else "localhost"
                    self._spawn_worker(host)
                self.wait_for_workers(n, timeout)
            elif n < len(live):
                if self.runtime is None:
                    raise ClusterError("scaling down needs this process to be the origin")
                victims = live[n:]
                snap = self.status()
                by_pid = {(w["pid"]): int(w["id"]) for w in snap.get("workers", [])}
                for w in victims:
                    w.retired = True
                    idx = by_pid.get(w.pid)
                    if idx is not None:
                        self.runtime.retire(idx)
                    else:
                        w.kill()
                deadline = time.monotonic() + timeout
                for w in victims:
                    while w.poll() is None and time.monotonic() < deadline:
                        self.runtime.pump(0.05)
                    if w.poll() is None:
                        w.kill()
                self.meta.wait_for(lambda s: len(s["workers"]) <= n, 5)

    # ---- stop --------------------------------------------------------------------------------
    def stop(self, timeout: float = 5.0):
        """Ends every process this cluster started, here and on remote hosts."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        rt, self.runtime = self.runtime, None
        if rt is not None:
            try:
                if not rt.broken and rt.sock is not None:
                    rt.out.add(P.SHUTDOWN, b"stopped by the origin")
                    rt.flush()
            except Exception:
                pass
            if _globals.current() is rt:
                _globals.deactivate()
            rt.close(notify=False)
        for bp in self.broker_procs:
            if bp.stdin:
                try:
                    bp.stdin.close()  # a broker's cue to end
                except OSError:
                    pass
        deadline = time.monotonic() + timeout
        procs = [w.proc for w in self.workers if not w.remote] + list(self.broker_procs)
        for w in self.workers:
            if not w.remote and w.proc.stdin:
                try:
                    w.proc.stdin.close()
                except OSError:
                    pass
        for p in procs:
            left = deadline - time.monotonic()
            try:
                p.wait(max(0.05, left))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(2)
        for w in self.workers:
            if w.remote:
                w.kill()
        for rh in self.remote_hosts.values():
            try:
                rh.close()
            except Exception:
                pass
        if self._meta is not None:
            self._meta.stop()
        if self.relay is not None:
            self.relay.flush(0.5)
            self.relay.close()
        for p in procs:
            for f in (p.stdout, p.stderr):
                if f:
                    try:
                        f.close()
                    except OSError:
                        pass

    def _kill_all(self):
        for w in self.workers:
            w.kill()
        for bp in self.broker_procs:
            bp.kill()
            bp.wait()
        self.broker_procs = []
        for w in self.workers:
            if not w.remote:
                w.proc.wait()
        self.workers = []

    def __enter__(self):
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def __repr__(self):
        state = "running" if self.running else ("stopped" if self._stopping else "new")
        hosts = ", ".join(f"{h}:{k}" for h, k in self.plan) or "?"
        return f"<scoop.Cluster {state}, {self.size} workers on {hosts}>"
