"""The public Cluster API: start, stop, scale and observe a SCOOP cluster.

``python -m scoop`` and ``%scoop_cluster`` are thin front ends over this class.  A cluster is
one broker (or a federation of them) on this machine plus workers started by a launcher
(:mod:`scoop.launch.base`): here, over SSH, or by the batch system inside an allocation.  The
process that calls :meth:`Cluster.start` becomes the origin unless told otherwise.

The cluster is data: :attr:`Cluster.spec` lists the workers it wants (a name and a host each).
:meth:`start`, :meth:`scale` and the supervisor thread only edit that list and call one
reconcile step, which makes the launched workers match it -- it starts the missing ones,
replaces the dead ones and retires the extra ones.  Three counts are kept apart: *requested*
(the spec), *launched* (workers started and not ended) and *joined* (workers the broker knows).
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time

from . import _globals
from . import _protocol as P
from .errors import ClusterError
from .launch import local as _local
from .launch.base import Handle, WorkerSpec, launcher_class, terminate
from .launch.hosts import HostfileError, is_local_host
from .launch.placement import PlacementError, add_placement, allocation_slots, capacities, first_placement
from .meta import MetaSubscriber
from .options import ClusterOptions

#: launchers that start workers through a batch system, also on this very node
ALLOCATION_LAUNCHERS = {"slurm": "srun", "pbs": "pbsdsh", "sge": "qrsh"}


#: seconds a batch job pending without a reason may be starting at once (then start waits for it)
QUEUE_GRACE = 5.0


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Cluster:
    """A SCOOP cluster: one broker here, ``n`` workers spread over ``hosts``.

    ``n`` counts the workers that run tasks; the origin (the program or notebook kernel that
    submits them) comes in addition and runs no queued tasks, so ``-n 2`` on a 2-core machine
    keeps both cores computing while the origin waits.

    Every keyword of :class:`scoop.options.ClusterOptions` is accepted (``python -m scoop
    --help`` describes them); bad values raise ValueError naming the option at once.  Besides:
    ``output`` (callable(name, stream, text) receiving worker output), ``program_dir`` (put on
    the workers' sys.path) and ``fork`` (start local broker and workers by forking this process,
    which saves an interpreter start per worker; safe only from a fresh, single-threaded process
    that holds no ZeroMQ context yet -- ``python -m scoop``'s launcher asks for it, a library
    caller or a notebook kernel must not).

    ``inline`` (default True): a process that submits a task and then waits on it at once
    (``submit(f, x).result()``) runs it itself, as SCOOP's origin did, instead of paying a
    round trip through the broker; a task not waited on within ~2 ms goes to the cluster.
    """

    def __init__(self, n: int | None = None, hosts=None, hostfile: str | None = None, *, output=None,
                 program_dir: str | None = None, fork: bool = False, **options):
        self.options = o = ClusterOptions.from_kwargs(n=n, hosts=hosts or [], hostfile=hostfile, **options)
        self.n = o.n
        self.hosts = o.hosts
        self.hostfile = o.hostfile
        self.python = o.python or sys.executable
        self.path = os.path.abspath(o.path) if o.path else os.getcwd()
        self.heartbeat_timeout = o.heartbeat_timeout
        self.program_dir = program_dir
        self.fork = fork
        self.brokers = o.brokers
        self.inline = o.inline
        self._output = output
        self.secret = P.new_secret()
        self.relay = None
        self.launcher = None
        self.spec: list[WorkerSpec] = []          # requested
        self._live: dict[str, Handle] = {}         # launched and not yet seen to end
        self.workers: list[Handle] = []            # every worker ever launched, in start order
        self.broker_procs: list = []
        self.broker_ports: list = []
        self.allocation = None
        self._caps: list[tuple[str, int]] = []
        self._strict = False
        self._names = 0
        self._spread = 0
        self._deaths: list[float] = []
        self._joined_names: set = set()           # workers seen in the cluster (batch jobs: joined at all)
        self._meta: MetaSubscriber | None = None
        self.runtime = None
        self.bind_host = "127.0.0.1"
        self.main_port = self.meta_port = None
        self._started = False
        self._stopping = False
        self._supervisor = None
        self._lock = threading.RLock()

    # ---- planning --------------------------------------------------------------------------
    def _choose_launcher(self, allocation: str | None, hosts: list[str]) -> str:
        name = self.options.launcher
        if name == "local":
            return "fork" if self.fork else "spawn"
        if name != "auto":
            return name
        if allocation and not (self.options.hosts or self.options.hostfile):
            batch = ALLOCATION_LAUNCHERS[allocation]
            import shutil
            if shutil.which(batch) and launcher_class(batch).in_allocation_env(os.environ):
                return batch
        if any(not is_local_host(h) for h in hosts):
            return "ssh"
        return "fork" if self.fork else "spawn"

    def _make_plan(self) -> list[tuple[str, int]]:
        """Decides the launcher and the first placement: a list of (host, workers)."""
        from .launch import hosts as H
        o = self.options
        cores = os.cpu_count() or 1
        entries = []
        if o.hostfile:
            entries = H.parse_hostfile(o.hostfile)
            if not entries:
                raise ClusterError(f"host file {o.hostfile!r} lists no hosts")
        if o.hosts:
            entries += H.parse_hosts_args(o.hosts)
        where = "the host list"
        if not entries and o.launcher != "local":
            alloc = allocation_slots(os.environ)
            if alloc:
                self.allocation, entries = alloc[0], list(alloc[1])
                where = f"the {self.allocation.upper()} allocation"
        if not entries:
            entries = [("localhost", None)]
        name = self._choose_launcher(self.allocation, [h for h, _ in entries])
        self.launcher = launcher_class(name)(o, self.relay, env=self._env(), cwd=self.path,
                                             python=self.python)
        self._strict = self.allocation is not None  # an allocation's slots are a limit, however reached
        try:
            plan = first_placement(o.n, entries, cores, strict=self._strict, oversubscribe=o.oversubscribe,
                                   where=where)
        except ValueError as exc:
            raise ClusterError(str(exc)) from None
        self._caps = capacities([(h, k) for h, k in entries], cores)
        return [(h, k) for h, k in plan if k > 0]

    def _host_key(self, host: str) -> str | None:
        """None (this machine) unless the launcher must start even local workers itself."""
        if self.launcher.in_allocation or not is_local_host(host):
            return host
        return None

    @property
    def plan(self) -> list[tuple[str, int]]:
        """Requested workers per host."""
        counts: dict = {}
        for s in self.spec:
            key = s.host or "localhost"
            counts[key] = counts.get(key, 0) + 1
        return list(counts.items())

    # ---- start -------------------------------------------------------------------------------
    def start(self, *, connect: bool = True, wait: bool = True, timeout: float = 60.0) -> "Cluster":
        """Starts broker and workers; with ``connect`` this process becomes the origin.
        Returns once every worker has joined (``wait``), or raises ClusterError naming what
        failed, with nothing left running.

        Batch-job clusters (sbatch, qsub) do not wait for the queue: they return once every job
        is submitted and either waits in the queue or has its workers joined (a job that starts at
        once and fails is still an error here); :meth:`wait_for_workers` blocks explicitly."""
        if self._started:
            raise ClusterError("this cluster is already started" if not self._stopping
                               else "this cluster was stopped; make a new Cluster")
        self._started = True
        try:
            self._start(connect, wait, timeout)
        except HostfileError as exc:
            self.stop()
            raise ClusterError(str(exc)) from None
        except BaseException:
            self.stop()
            raise
        return self

    def _check_dirs(self):
        if self.launcher.remote:
            return  # the directory is the hosts'; a worker there names it if it is missing
        for what, d in (("working directory (--path)", self.path), ("program directory", self.program_dir)):
            if d and not os.path.isdir(d):
                raise ClusterError(f"the {what} {d!r} does not exist")

    def _start(self, connect, wait, timeout):
        fork = self.fork and _local.can_fork()
        # the relay's thread starts only after the forks (a forked child must not inherit threads)
        self.relay = _local.OutputRelay(self._output, self.options.prefix_output, start=not fork)
        plan = self._make_plan()
        self._check_dirs()
        self.launcher.prepare([self._host_key(h) for h, _ in plan])
        self.bind_host = self.launcher.bind_host()
        # ports chosen here so broker and workers start side by side, not one after the other
        for _attempt in range(3):
            # probed where the broker binds: a port free on loopback may be taken on another address
            self.broker_ports = [(_free_port(self.bind_host), _free_port(self.bind_host))
                                 for _ in range(self.brokers)]
            self.main_port, self.meta_port = self.broker_ports[0]
            self.broker_procs = []
            for k, (main, meta) in enumerate(self.broker_ports):
                self._spawn_broker(k, main, meta, fork=fork)
            self._names = self._spread = 0
            self.spec = [self._new_spec(self._host_key(h)) for h, k in plan for _ in range(k)]
            self._reconcile()
            self.relay.start()
            if all(self._await_broker(k) for k in range(self.brokers)):
                break
            self._restart_launcher()
        else:
            raise ClusterError("the SCOOP broker did not start: " + self.relay.tail("broker"))
        if connect:
            self.connect()
        if self.queued:
            self.meta.subscribe(self._note_joins)
        if wait and self.queued:
            self._settle(list(self.workers), timeout)
        elif wait:
            self.wait_for_workers(len(self.spec), timeout)
        self._supervisor = threading.Thread(target=self._supervise, name="scoop-supervisor", daemon=True)
        self._supervisor.start()

    def _restart_launcher(self):
        """After a broker failed to start: ends what was started and begins again."""
        self.launcher.stop(2.0)
        for bp in self.broker_procs:
            bp.kill()
            bp.wait()
        self.broker_procs = []
        self._live.clear()
        self.workers = []
        self.launcher = type(self.launcher)(self.options, self.relay, env=self._env(), cwd=self.path,
                                            python=self.python)
        self.launcher.prepare(list(dict.fromkeys(s.host for s in self.spec)))

    # ---- the one reconcile step ----------------------------------------------------------------
    def _reconcile(self) -> None:
        """Makes the launched workers match :attr:`spec`: replaces the dead (a crash, ``os._exit``
        in a task, a lost host; their tasks are re-dispatched by the broker), retires the extra,
        starts the missing.  A crash loop (more than 2n+8 deaths a minute) stops the replacing."""
        from . import logger
        with self._lock:
            if self._stopping:
                return
            wanted = {s.name: i for i, s in enumerate(self.spec)}
            for name, h in list(self._live.items()):
                code = h.poll()
                if code is None:
                    continue
                del self._live[name]
                if h.retired or name not in wanted:
                    continue
                h.retired = True
                if self.queued and name not in self._joined_names:
                    # a job whose worker cannot start would fail again the same way: say why, once
                    logger.error("%s", self._start_failure(h, code))
                    self.spec.pop(wanted[name])
                    wanted = {s.name: i for i, s in enumerate(self.spec)}
                    continue
                now = time.monotonic()
                self._deaths = [t for t in self._deaths if now - t < 60] + [now]
                where = h.host or "localhost"
                if len(self._deaths) > 2 * len(self.spec) + 8:
                    logger.error("worker %s on %s exited with status %s; too many worker deaths this minute, "
                                 "not replacing it", name, where, code)
                    self.spec.pop(wanted[name])
                    wanted = {s.name: i for i, s in enumerate(self.spec)}
                    continue
                new = self._new_spec(self.spec[wanted[name]].host)
                logger.warning("worker %s on %s exited with status %s; starting %s to replace it",
                               name, where, code, new.name)
                self.spec[wanted[name]] = new
                wanted = {s.name: i for i, s in enumerate(self.spec)}
            extra = [h for name, h in list(self._live.items()) if name not in wanted and not h.retired]
            if extra:
                self._retire(extra)
            missing = [s for s in self.spec if s.name not in self._live]
            if missing:
                for h in self.launcher.start(missing):
                    self._live[h.name] = h
                    self.workers.append(h)

    def _retire(self, handles: list[Handle]) -> None:
        """Asks the broker to retire these workers (they finish their running task and hand their
        queue back); a worker the broker does not list yet is killed."""
        from . import logger
        snap = self.status() if self.runtime is not None else {}
        by_name = {w.get("name"): int(w["id"]) for w in snap.get("workers", []) if w.get("name")}
        by_pid = {(w.get("host"), w.get("pid")): int(w["id"]) for w in snap.get("workers", [])}
        me = socket.gethostname()
        # without names in the snapshot, a worker whose pid we do not know (one task of a job
        # step) is matched to any worker of its host that no handle of ours claims
        known = {(x.host or me, x.pid) for x in self._live.values() if x.pid is not None}
        unclaimed: dict = {}
        if not by_name:
            for w in snap.get("workers", []):
                if (w.get("host"), w.get("pid")) not in known:
                    unclaimed.setdefault(w.get("host"), []).append(int(w["id"]))
        for h in handles:
            h.retired = True
            idx = by_name.get(h.name)
            if idx is None and h.pid is not None:
                idx = by_pid.get((h.host or me, h.pid))
            elif idx is None and unclaimed.get(h.host):
                idx = unclaimed[h.host].pop()
            if idx is not None and self.runtime is not None:
                self.runtime.retire(idx)
            elif h.pid is not None or h.state == "pending":
                h.kill()  # a job still in the queue is cancelled once none of its workers is wanted
            else:
                logger.warning("worker %s is not known to the broker yet; it ends with its step", h.name)

    def _supervise(self):
        from . import logger
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
                try:
                    self._reconcile()
                except Exception as exc:
                    logger.error("could not start replacement workers: %s", exc)

    # ---- processes -----------------------------------------------------------------------------
    def _env(self):
        env = dict(os.environ)
        env.update(self.options.env or {})
        env.pop(P.SECRET_ENV, None)
        env["PYTHONUNBUFFERED"] = "1"
        # local children import the very scoop this process runs, installed or not
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        inherited = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        paths = self.options.pythonpath + [here] + inherited
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        return env

    def _spawn_broker(self, k, main, meta, replace: bool = False, fork: bool = False):
        """Broker 0 is the root; the others are sub-brokers under it (a federation), each
        serving its share of the workers."""
        cfg = {"secret": self.secret.hex(), "heartbeat_timeout": self.heartbeat_timeout,
               "main": f"tcp://{self.bind_host}:{main}", "meta": f"tcp://{self.bind_host}:{meta}",
               "encryption": self.options.encryption}
        if k:
            cfg["upstream"] = f"tcp://127.0.0.1:{self.main_port}"
        line = (json.dumps(cfg) + "\n").encode()
        proc = _local.start_process("scoop.broker", line, env=self._env(), cwd=None, fork=fork)
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

    def _new_spec(self, host: str | None) -> WorkerSpec:
        """The next worker: its one name (``w<k>``, in start order), its broker and its config."""
        self._names += 1
        name = f"w{self._names}"
        port = self.broker_ports[self._spread % self.brokers][0]  # workers spread over the brokers
        self._spread += 1
        sys_path = [p for p in (self.program_dir, self.path) if p]
        config = {"secret": self.secret.hex(), "broker": self.launcher.broker_address(host, port),
                  "name": name, "label": name, "sys_path": sys_path, "nice": self.options.nice,
                  "host": host, "broker_timeout": self.heartbeat_timeout,
                  "connect_timeout": 15.0, "broker_info": self.broker_info(), "inline": self.inline,
                  "encryption": self.options.encryption}
        return WorkerSpec(name, host, config)

    def broker_info(self) -> dict:
        hostname = self.options.external_hostname or socket.gethostname()
        return {"hostname": hostname, "task_port": self.main_port, "info_port": self.meta_port,
                "externalHostname": self.options.external_hostname}

    # ---- origin -----------------------------------------------------------------------------
    def connect(self):
        """Makes this process the origin: ``scoop.futures`` calls now go to this cluster."""
        from ._runtime import Runtime
        if self.runtime is not None:
            return self.runtime
        if _globals.current() is not None:
            raise ClusterError("this process is already the origin of another SCOOP cluster; stop it first")
        rt = Runtime(f"tcp://127.0.0.1:{self.main_port}", self.secret, "origin",
                     broker_timeout=self.heartbeat_timeout, inline=self.inline,
                     encryption=self.options.encryption)
        rt.output_handler = rt.default_output_handler = \
            lambda name, stream, text, group: self.relay.emit(name, stream, text)
        rt.connect(timeout=20)
        self.runtime = rt
        _globals.activate(rt, is_origin=True, broker=self.broker_info())
        return rt

    @property
    def joined(self) -> int:
        """Workers the broker knows (the origin hears of every join at once)."""
        if self.runtime is not None:
            self.runtime.pump(0)
            return self.runtime.size
        snap = self.meta.wait_for(lambda s: True, 0.5)
        return len(snap["workers"]) if snap else 0

    def wait_for_workers(self, count: int, timeout: float = 60.0):
        """Blocks until ``count`` workers have joined; a worker that dies first is reported."""
        deadline = time.monotonic() + timeout
        rt = self.runtime
        have = 0
        while True:
            if rt is not None:
                rt.pump(0.05)
                have = rt.size
            else:
                snap = self.meta.wait_for(lambda s: len(s["workers"]) >= count, 0.1)
                if snap is not None:
                    have = len(snap["workers"])
            if have >= count:
                if rt is not None:
                    import scoop
                    scoop.SIZE = rt.size
                return have
            for h in list(self._live.values()):
                code = h.poll()
                if code is not None and not h.retired:
                    self.relay.flush(0.3)
                    tail = self.relay.tail(h.name)
                    where = h.host or "localhost"
                    raise ClusterError(f"worker {h.name} on {where} exited with status {code} "
                                       f"before joining the cluster" + (f":\n{tail}" if tail else ""))
            if self.broker_proc.poll() is not None:
                raise ClusterError("the SCOOP broker exited: " + self.relay.tail("broker"))
            if self.queued and count > len(self.spec):
                # batch workers that failed to start after start() returned are not replaced
                failed = [j["error"] for j in self.jobs() if j.get("error")]
                if failed:
                    raise ClusterError(f"waiting for {count} workers, but only {len(self.spec)} can join: "
                                       f"{failed[-1]}")
            if time.monotonic() > deadline:
                raise ClusterError(f"only {have} of {count} workers joined within {timeout:.0f} s")

    @property
    def queued(self) -> bool:
        """Whether workers wait in a batch queue (sbatch, qsub) before they start."""
        return bool(getattr(self.launcher, "queues", False))

    def _note_joins(self, kind: str, data: dict) -> None:
        """Meta-stream thread: remembers every worker that joined (a batch worker that ends
        without having joined failed to start)."""
        if kind == "event" and data.get("event") == "joined":
            name = (data.get("worker") or {}).get("name")
            if name:
                self._joined_names.add(name)
        elif kind == "status":
            self._joined_names.update(w["name"] for w in data.get("workers", ()) if w.get("name"))

    def _start_failure(self, h: Handle, code) -> str:
        """The message for a batch worker that ended before joining; also kept on its job, so
        the views show it."""
        self.relay.flush(0.3)
        tail = self.relay.tail(h.name)
        # the scheduler writes a job's output file on its own schedule, which can be after the
        # job's exit marker: give the words that explain the failure a moment to arrive
        deadline = time.monotonic() + 2.0
        while not tail and time.monotonic() < deadline:
            time.sleep(0.1)
            h.poll()  # a batch handle relays what its job's output file holds by now
            tail = self.relay.tail(h.name)
        where = f" on {h.host}" if h.host else ""
        msg = (f"worker {h.name} (job {h.job_id}{where}) exited with status {code} before joining the "
               f"cluster" + (f":\n{tail}" if tail else ""))
        job = getattr(h, "job", None)
        if job is not None and not job.error:
            job.error = msg
        return msg

    @staticmethod
    def _queued_for_good(job) -> bool:
        """Whether the scheduler has said the job waits (a reason such as Resources, Priority or
        JobHeldUser), or it has waited a few seconds: a new job is listed pending for a moment
        before the scheduler's first pass, even with free nodes."""
        return job.polled and (bool(job.reason) or time.time() - job.submitted > QUEUE_GRACE)

    def _settle(self, handles: list[Handle], timeout: float) -> None:
        """Batch jobs: waits until each of ``handles`` either waits in the queue (the scheduler
        said so) or has joined; raises ClusterError for one that ended first (its job rejected
        at start, a worker that cannot start) -- so a bad job is an error at once, and a full
        queue is not."""
        deadline = time.monotonic() + timeout
        rt = self.runtime
        next_refresh = 0.0
        while True:
            if time.monotonic() >= next_refresh:
                self.launcher.refresh()
                next_refresh = time.monotonic() + 0.5
            if self._meta is not None and self._meta.latest:
                self._note_joins("status", self._meta.latest)
            failed = [(h, h.poll()) for h in handles if not h.retired and h.name not in self._joined_names]
            failed = [(h, code) for h, code in failed if code is not None]
            if failed:
                h, code = failed[0]
                msg = self._start_failure(h, code)
                with self._lock:
                    for f, _ in failed:
                        f.retired = True
                    gone = {f.name for f, _ in failed}
                    self.spec = [s for s in self.spec if s.name not in gone]
                raise ClusterError(msg)
            waiting = [h for h in handles if not h.retired and h.name not in self._joined_names
                       and not (h.state == "pending" and self._queued_for_good(h.job))]
            if not waiting:
                if rt is not None:
                    import scoop
                    scoop.SIZE = rt.size
                return
            if self.broker_proc.poll() is not None:
                raise ClusterError("the SCOOP broker exited: " + self.relay.tail("broker"))
            if time.monotonic() > deadline:
                names = ", ".join(h.name for h in waiting)
                raise ClusterError(f"workers {names} of started jobs did not join within {timeout:.0f} s")
            if rt is not None:
                rt.pump(0.05)
            else:
                time.sleep(0.05)

    @property
    def meta(self) -> MetaSubscriber:
        """The broker's meta stream, subscribed to on first use (a script never needs it)."""
        if self._meta is None:
            with self._lock:
                if self._meta is None:
                    self._meta = MetaSubscriber(f"tcp://127.0.0.1:{self.meta_port}", self.secret,
                                                encryption=self.options.encryption)
                    self._meta.start()
        return self._meta

    # ---- observe -----------------------------------------------------------------------------
    def status(self, timeout: float = 2.0) -> dict:
        """The latest load snapshot from the meta stream (workers, totals)."""
        if self._meta is None and not self.running:
            return {"state": "stopped", "workers": [], "totals": {}}
        snap = self.meta.wait_for(lambda s: True, timeout)
        snap = dict(snap or {"state": "starting", "workers": [], "totals": {}})
        if self.queued:
            # jobs waiting in the queue are shown apart from the workers that run
            snap["jobs"] = jobs = self.jobs()
            snap["totals"] = dict(snap.get("totals") or {},
                                  pending_workers=sum(len(j["workers"]) for j in jobs
                                                      if j["state"] == "pending" and not j.get("replaces")))
        return snap

    def jobs(self) -> list[dict]:
        """Batch jobs of this cluster (empty for other launchers): ``id``, ``state`` (pending,
        running, ended), ``workers`` (the names it brings), ``submitted`` (epoch s), ``reason``
        (why it waits, from the scheduler), ``nodes``; ``error`` for one whose workers failed to
        start, ``replaces`` for a walltime replacement.  Read from the launcher's last poll of
        the scheduler (every 0.5 s): no scheduler command runs here."""
        fn = getattr(self.launcher, "jobs_status", None)
        return fn() if fn is not None else []

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
    def requested(self) -> int:
        return len(self.spec)

    @property
    def launched(self) -> int:
        return len([h for h in list(self._live.values()) if not h.retired and h.poll() is None])

    @property
    def size(self) -> int:
        """Workers launched and running (not retired); batch workers still in the queue are not."""
        if self.queued:
            return len([h for h in list(self._live.values()) if not h.retired and h.state == "running"])
        return self.launched

    # ---- scale -------------------------------------------------------------------------------
    def scale(self, n: int, timeout: float = 60.0, wait: bool = True):
        """Grows the cluster to ``n`` workers (new ones go where the most slots are free), or
        retires workers (newest first) after they finish their running tasks; their queued tasks
        go back to the broker.  Batch-job clusters submit jobs and return as :meth:`start` does
        (a job left waiting in the queue is not waited for); scaling down cancels queued jobs.
        ``wait=False`` returns once the workers are started or told to retire, and is safe from
        a thread other than the origin's (a notebook panel scales while a cell waits on a map)."""
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"scale: the number of workers must be an int, not {type(n).__name__}")
        if n < 1:
            raise ValueError(f"scale: a cluster needs at least 1 worker, not {n}")
        if self._stopping:
            raise ClusterError("scale: this cluster is stopped")
        if not self._started:
            raise ClusterError("scale: this cluster is not started")
        with self._lock:
            have = len(self.spec)
            if n > have:
                counts: dict = {}
                for s in self.spec:
                    counts[s.host or "localhost"] = counts.get(s.host or "localhost", 0) + 1
                where = f"the {self.allocation.upper()} allocation" if self.allocation else "the host list"
                try:
                    hosts = add_placement(n - have, self._caps, counts, strict=self._strict,
                                          oversubscribe=self.options.oversubscribe, where=where)
                except PlacementError as exc:
                    raise ClusterError(str(exc)) from None
                keys = [self._host_key(h) for h in hosts]
                known = {s.host for s in self.spec}
                self.launcher.prepare([k for k in dict.fromkeys(keys) if k not in known])  # hosts new here
                self.spec += [self._new_spec(k) for k in keys]
                before = len(self.workers)
                self._reconcile()
                if not wait:
                    return
                if self.queued:  # jobs submitted: their workers join as the scheduler starts them
                    self._settle(self.workers[before:], timeout)
                else:
                    self.wait_for_workers(n, timeout)
            elif n < have:
                if self.runtime is None:
                    raise ClusterError("scaling down needs this process to be the origin")
                names = {s.name for s in self.spec[n:]}
                del self.spec[n:]
                victims = [h for h in list(self._live.values()) if h.name in names]
                self._reconcile()
                if not wait:
                    return
                deadline = time.monotonic() + timeout
                for h in victims:
                    if not h.separate:
                        continue
                    while h.poll() is None and time.monotonic() < deadline:
                        self.runtime.pump(0.05)
                    if h.poll() is None:
                        h.kill()
                self.meta.wait_for(lambda s: len(s["workers"]) <= n, max(5.0, deadline - time.monotonic()))

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
        if self.launcher is not None:
            self.launcher.stop(timeout)
        terminate(self.broker_procs, max(0.05, deadline - time.monotonic()))
        if self._meta is not None:
            self._meta.stop()
        from ._shm import cleanup_cluster
        cleanup_cluster(self.secret)  # whatever a killed process left in /dev/shm
        if self.relay is not None:
            self.relay.flush(0.5)
            self.relay.close()
        _local.close_pipes(self.broker_procs)

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
