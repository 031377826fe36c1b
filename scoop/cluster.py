"""The public Cluster API: start, stop, scale, adapt and observe a SCOOP cluster.

``python -m scoop`` and ``%scoop_cluster`` are thin front ends over this class.  A cluster is
one broker (or a federation of them) on this machine plus workers started by a launcher
(:mod:`scoop.launch.base`): here, over SSH, or by the batch system inside an allocation.  The
process that calls :meth:`Cluster.start` becomes the origin unless told otherwise.

The cluster is data: :attr:`Cluster.spec` lists the workers it wants (a name and a host each).
:meth:`start`, :meth:`scale`, an adaptive policy and the supervisor only edit that list and ask
for one reconcile step (:mod:`scoop.reconcile`), which says what makes the launched workers match
it; this class carries the step out.  Three counts are kept apart: *requested* (the spec),
*launched* (workers started and not ended) and *joined* (workers the broker knows).

This module holds what the cluster wants and how it gets there: start, the reconcile step
carried out, scale, adapt, stop.  The rest, each in its module: the observing side -- counts,
meta stream, status, batch jobs, waiting for workers (:mod:`scoop.clusterview`, the base
class) --, the side facing the launcher -- which launcher, the environment and each worker's
config, a batch job's script (:mod:`scoop.clusterlaunch`, the next base) --, the spec and the
reconcile step (:mod:`scoop.reconcile`, pure), the supervisor thread (:mod:`scoop.supervisor`),
ports and addresses (:mod:`scoop.addresses`), the broker processes (:mod:`scoop.brokers`), the
launcher choice and placement (:mod:`scoop.launch.plan`), the batch queue view
(:mod:`scoop.jobqueue`) and adaptive scaling (:mod:`scoop.adaptive`).
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time

from . import _globals
from . import _protocol as P
from .addresses import broker_ports, local_address
from .brokers import Brokers
from .clusterlaunch import ClusterLaunch
from .errors import ClusterError
from .jobqueue import QueueView
from .launch import local as _local
from .launch.base import Handle, WorkerSpec, launcher_class
from .launch.hosts import HostfileError
from .launch.plan import ALLOCATION_LAUNCHERS, Plan, make_plan  # noqa: F401 - ALLOCATION_LAUNCHERS: ditto
from .launch.relay import OutputRelay
from .meta import JoinedNames, MetaSubscriber
from .options import ClusterOptions
from .reconcile import Seen, Spec, Step, broker_ids
from .supervisor import Supervisor, notice


class Cluster(ClusterLaunch):
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
        if o.adapt and o.n is None:
            o.n = max(1, o.adapt[0])  # an adaptive cluster starts at its minimum
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
        self._plan: Plan | None = None
        self._spec = Spec(self._worker_spec)       # requested
        self._live: dict[str, Handle] = {}         # launched and not yet seen to end
        self.workers: list[Handle] = []            # every worker ever launched, in start order
        self._brokers: Brokers | None = None
        self._spread = 0
        self._queue: QueueView | None = None
        self._joined = JoinedNames()
        self._meta: MetaSubscriber | None = None
        self.runtime = None
        self.bind_host = "127.0.0.1"
        self.main_port = self.meta_port = None
        self._started = False
        self._stopping = False
        self._supervisor: Supervisor | None = None
        self._lock = threading.RLock()
        self.adaptive = None                       # the adaptive policy, while one runs

    # ---- what the cluster wants ------------------------------------------------------------------
    @property
    def spec(self) -> list[WorkerSpec]:
        """The workers this cluster wants (a name and a host each), in order."""
        return list(self._spec.workers)

    @property
    def plan(self) -> list[tuple[str, int]]:
        """Requested workers per host."""
        return self._spec.per_host()

    @property
    def allocation(self) -> str | None:
        """"slurm", "pbs" or "sge" when the workers run in this process's batch allocation."""
        return self._plan.allocation if self._plan else None

    # ---- start -------------------------------------------------------------------------------
    def start(self, *, connect: bool = True, wait: bool = True, timeout: float = 60.0) -> "Cluster":
        """Starts broker and workers; with ``connect`` this process becomes the origin.
        Returns once every worker has joined (``wait``), or raises ClusterError naming what
        failed, with nothing left running.

        Batch-job clusters (sbatch, qsub) do not wait for the queue: they return once every job
        is submitted and either waits in the queue or has its workers joined (a job that starts at
        once and fails is still an error here); :attr:`pending` says how many workers still wait,
        and :meth:`wait_for_workers` blocks explicitly."""
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

    def _start(self, connect, wait, timeout):
        fork = self.fork and _local.can_fork()
        # the relay's thread starts only after the forks (a forked child must not inherit threads)
        self.relay = OutputRelay(self._output, self.options.prefix_output, start=not fork)
        self._plan = make_plan(self.options, fork=self.fork)
        if type(self.launcher) is not launcher_class(self._plan.launcher):  # job_script() made it already
            self.launcher = self._new_launcher(self._plan.launcher)
        self.launcher.relay = self.relay
        first = [(self._host_key(h), k) for h, k in self._plan.first]
        self._check_dirs()
        self.launcher.prepare([h for h, _ in first])
        self.bind_host = self.launcher.bind_host()
        self._brokers = Brokers(self.secret, self.heartbeat_timeout, self.relay, self._env,
                                encryption=self.options.encryption)
        for _attempt in range(3):
            # ports chosen here so broker and workers start side by side, not one after the other
            ports = broker_ports(self.bind_host, self.brokers)
            self.main_port, self.meta_port = ports[0]
            self._brokers.spawn_all(ports, self.bind_host, fork=fork)
            self._spread = 0
            self._spec.reset()
            self._spec.grow(h for h, k in first for _ in range(k))
            self._reconcile()
            self.relay.start()
            if self._brokers.all_ready():
                break
            self._restart_launcher()
        else:
            raise ClusterError("the SCOOP broker did not start: " + self.relay.tail("broker"))
        if connect:
            self.connect()
        if self.queued:
            self._queue = QueueView(self.launcher, self.relay, self._joined)
            self.meta   # noqa: B018 -- subscribed now, so every join is noted
        if wait and self.queued:
            self._settle(list(self.workers), timeout)
        elif wait:
            self.wait_for_workers(len(self._spec), timeout)
        self._supervisor = Supervisor(self._supervise_step, self._lock)
        self._supervisor.start()
        if self.options.adapt and self.runtime is not None:
            self.adapt(*self.options.adapt)

    def _restart_launcher(self):
        """After a broker failed to start: ends what was started and begins again."""
        self.launcher.stop(2.0)
        self._brokers.kill()
        self._live.clear()
        self.workers = []
        self.launcher = self._new_launcher(self.launcher.name)
        self.launcher.prepare(list(dict.fromkeys(s.host for s in self._spec.workers)))

    # ---- the one reconcile step ----------------------------------------------------------------
    def _seen(self) -> list[Seen]:
        """What the launched workers look like now, for the reconcile step."""
        joined = self._queue.joined if self._queue is not None else None
        seen = []
        for name, h in list(self._live.items()):
            code = h.poll()
            seen.append(Seen(name, h.host, code, h.retired, joined is None or name in joined,
                             self.launcher.planned_end(code)))
        return seen

    def _reconcile(self) -> Step | None:
        """Asks the spec for a step and carries it out: replaces the dead, retires the extra,
        starts the missing (:meth:`scoop.reconcile.Spec.reconcile`)."""
        with self._lock:
            if self._stopping:
                return None
            step = self._spec.reconcile(self._seen(), time.monotonic(), queued=self.queued)
            for name in step.dead:
                self._live[name].retired = True
            for name, code in step.failed:
                # a job whose worker cannot start would fail again the same way: say why, once
                notice("error", self._queue.start_failure(self._live[name], code))
            for name in step.ended:
                del self._live[name]
            for n in step.notices:
                notice(n.level, n.text)
            if step.retire:
                self._retire([self._live[name] for name in step.retire])
            if step.start:
                for h in self.launcher.start(step.start):
                    self._live[h.name] = h
                    self.workers.append(h)
            return step

    def _supervise_step(self):
        if self._stopping:
            return
        self._brokers.restart_dead_subbrokers(notice)
        self._reconcile()

    def _retire(self, handles: list[Handle]) -> None:
        """Asks the broker to retire these workers (they finish their running task and hand their
        queue back); a worker the broker does not list yet is killed."""
        snap = self.status() if self.runtime is not None else {}
        me = socket.gethostname()
        known = {(x.host or me, x.pid) for x in self._live.values() if x.pid is not None}
        ids = broker_ids([(h.name, h.host, h.pid) for h in handles], snap.get("workers", []), known, me)
        for h, idx in zip(handles, ids):
            h.retired = True
            if idx is not None and self.runtime is not None:
                self.runtime.retire(idx)
            elif h.pid is not None or h.state == "pending":
                h.kill()  # a job still in the queue is cancelled once none of its workers is wanted
            else:
                notice("warning", f"{h.name} is not known to the broker yet; it ends with its step")

    # ---- origin -----------------------------------------------------------------------------
    def connect(self):
        """Makes this process the origin: ``scoop.futures`` calls now go to this cluster."""
        from ._runtime import Runtime
        if self.runtime is not None:
            return self.runtime
        if _globals.current() is not None:
            raise ClusterError("this process is already the origin of another SCOOP cluster; stop it first")
        rt = Runtime(local_address(self.main_port), self.secret, "origin",
                     broker_timeout=self.heartbeat_timeout, inline=self.inline,
                     encryption=self.options.encryption)
        rt.output_handler = rt.default_output_handler = \
            lambda name, stream, text, group: self.relay.emit(name, stream, text)
        rt.connect(timeout=20)
        self.runtime = rt
        _globals.activate(rt, is_origin=True, broker=self.broker_info())
        return rt

    def _settle(self, handles: list[Handle], timeout: float) -> None:
        """Batch jobs: returns once each of ``handles`` waits in the queue or has joined
        (:meth:`scoop.jobqueue.QueueView.settle`)."""
        def give_up(failed):
            with self._lock:
                for f in failed:
                    f.retired = True
                self._spec.remove(f.name for f in failed)

        self._queue.settle(handles, timeout, latest=lambda: self._meta.latest if self._meta else None,
                           pump=self._pump, broker_exited=self._broker_exited, give_up=give_up)
        self._sync_size()

    # ---- scale -------------------------------------------------------------------------------
    def _check_scalable(self, what: str) -> None:
        if self._stopping:
            raise ClusterError(f"{what}: this cluster is stopped")
        if not self._started:
            raise ClusterError(f"{what}: this cluster is not started")

    def scale(self, n: int, timeout: float = 60.0, wait: bool = True):
        """Grows the cluster to ``n`` workers (new ones go where the most slots are free), or
        retires workers (newest first) after they finish their running tasks; their queued tasks
        go back to the broker.  Batch-job clusters submit jobs and return as :meth:`start` does
        (a job left waiting in the queue is not waited for); scaling down cancels queued jobs.
        ``wait=False`` returns once the workers are started or told to retire, and is safe from
        a thread other than the origin's (a notebook panel scales while a cell waits on a map).
        Scaling by hand ends adaptive scaling (:meth:`adapt`)."""
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"scale: the number of workers must be an int, not {type(n).__name__}")
        if n < 1:
            raise ValueError(f"scale: a cluster needs at least 1 worker, not {n}")
        self._check_scalable("scale")
        if self.adaptive is not None:
            self.adaptive.stop()
        with self._lock:
            have = len(self._spec)
            if n > have:
                before = len(self.workers)
                self._grow(n - have)
                if not wait:
                    return
                if self.queued:  # jobs submitted: their workers join as the scheduler starts them
                    self._settle(self.workers[before:], timeout)
                else:
                    self.wait_for_workers(n, timeout)
            elif n < have:
                if self.runtime is None:
                    raise ClusterError("scaling down needs this process to be the origin")
                names = set(self._spec.shrink(n))
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

    def _grow(self, k: int) -> list[WorkerSpec]:
        """Adds ``k`` workers to the spec where the most slots are free and starts them (one
        reconcile step); returns their specs.  Does not wait for them."""
        with self._lock:
            keys = [self._host_key(h) for h in self._plan.add(k, self._spec.per_host())]
            known = {s.host for s in self._spec.workers}
            self.launcher.prepare([h for h in dict.fromkeys(keys) if h not in known])  # hosts new here
            added = self._spec.grow(keys)
            self._reconcile()
            return added

    def _shrink(self, names: list[str]) -> list[str]:
        """Removes these workers from the spec and retires them (one reconcile step), without
        waiting for them to end; returns the names removed.  The seam for policies that choose
        which workers go (:mod:`scoop.adaptive`)."""
        with self._lock:
            chosen = [s for s in names if s in set(self._spec.names)]
            self._spec.remove(chosen)
            self._reconcile()
            return chosen

    def adapt(self, minimum: int = 1, maximum: int | None = None, *, interval: float = 1.0,
              wait: float = 5.0):
        """Scales with the work: grows towards ``maximum`` as soon as tasks wait, retires workers
        that stayed idle for ``wait`` seconds, never below ``minimum`` (looking every ``interval``
        seconds).  A worker holding work is never retired while an idle one can go; batch
        clusters add and remove whole jobs, cancelling jobs still in the queue first.  Returns
        the policy (:class:`scoop.adaptive.Adaptive`; its ``stop()`` ends it, as :meth:`scale`
        does).  Needs this process to be the origin."""
        from .adaptive import Adaptive
        self._check_scalable("adapt")
        if self.runtime is None:
            raise ClusterError("adapt: adaptive scaling needs this process to be the origin")
        if self.adaptive is not None:
            self.adaptive.stop()
        policy = Adaptive(self, minimum, maximum, interval=interval, wait=wait)
        self.adaptive = policy
        self._supervisor.add_policy(policy)
        return policy

    # ---- stop --------------------------------------------------------------------------------
    def stop(self, timeout: float = 5.0):
        """Ends every process this cluster started, here and on remote hosts."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        if self._supervisor is not None:
            self._supervisor.stop()
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
        deadline = time.monotonic() + timeout
        brokers = self._brokers
        if brokers is not None:
            brokers.ask_to_end()
        if self.launcher is not None:
            self.launcher.stop(timeout)
        if brokers is not None:
            brokers.wait(max(0.05, deadline - time.monotonic()))
        if self._meta is not None:
            self._meta.stop()
        from ._shm import cleanup_cluster
        cleanup_cluster(self.secret)  # whatever a killed process left in /dev/shm
        if self.relay is not None:
            self.relay.flush(0.5)
            self.relay.close()
        if brokers is not None:
            brokers.close()

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
        pending = f", {self.pending} pending in the queue" if self._queue is not None and self.pending else ""
        return f"<scoop.Cluster {state}, {self.size} workers on {hosts}{pending}>"
