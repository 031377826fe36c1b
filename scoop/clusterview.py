"""The observing side of a Cluster: its processes, counts, meta stream, status and batch jobs.

:class:`scoop.cluster.Cluster` derives from :class:`ClusterView`, as dask's ``SpecCluster``
derives from its observing ``Cluster``: the methods here read what the cluster runs and how it
is doing, and change nothing of what it wants (the spec) or runs.  Three counts are kept apart:
*requested* (the spec), *launched* (workers started and not ended) and *joined* (workers the
broker knows).  Every view reads the broker's meta stream (:mod:`scoop.meta`), subscribed to
on first use; :meth:`ClusterView.status` adds the batch queue (:mod:`scoop.jobqueue`).
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from .addresses import broker_info, local_address
from .errors import ClusterError
from .meta import JoinedNames, MetaSubscriber

if TYPE_CHECKING:
    from ._runtime import Runtime
    from .brokers import Brokers
    from .jobqueue import QueueView
    from .launch.base import Handle, Launcher
    from .launch.relay import OutputRelay
    from .options import ClusterOptions
    from .reconcile import Spec
    from .supervisor import Supervisor

__all__ = ["ClusterView"]


class ClusterView:
    """What a cluster runs and how it is doing; the state it reads is kept by ``Cluster``."""

    options: ClusterOptions
    secret: bytes
    launcher: Launcher | None
    relay: OutputRelay | None
    runtime: Runtime | None        # this process's connection, when it is the origin
    main_port: int | None
    meta_port: int | None
    _spec: Spec                    # requested
    _live: dict[str, Handle]       # launched and not yet seen to end
    _brokers: Brokers | None
    _queue: QueueView | None       # a batch cluster's queue view
    _joined: JoinedNames           # names of the workers seen in the cluster at least once
    _meta: MetaSubscriber | None
    _supervisor: Supervisor | None
    _lock: threading.RLock
    _started: bool
    _stopping: bool

    # ---- the processes -------------------------------------------------------------------------
    @property
    def broker_procs(self) -> list:
        """The broker processes: the root first, then the sub-brokers."""
        return self._brokers.procs if self._brokers is not None else []

    @property
    def broker_ports(self) -> list[tuple[int, int]]:
        return self._brokers.ports if self._brokers is not None else []

    @property
    def broker_proc(self):
        return self._brokers.root if self._brokers is not None else None

    def broker_info(self) -> dict:
        return broker_info(self.launcher.external_hostname(), self.main_port, self.meta_port)

    def _broker_exited(self) -> str:
        if self.broker_proc.poll() is not None:
            return "the SCOOP broker exited: " + self.relay.tail("broker")
        return ""

    # ---- counts -------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Started, not stopped, and its broker alive."""
        return self._started and not self._stopping and self.broker_proc is not None \
            and self.broker_proc.poll() is None

    @property
    def requested(self) -> int:
        """Workers the spec wants."""
        return len(self._spec)

    @property
    def launched(self) -> int:
        """Workers started and not ended (nor retired)."""
        return len([h for h in list(self._live.values()) if not h.retired and h.poll() is None])

    @property
    def size(self) -> int:
        """Workers launched and running (not retired); batch workers still in the queue are not."""
        if self.queued:
            return len([h for h in list(self._live.values()) if not h.retired and h.state == "running"])
        return self.launched

    @property
    def queued(self) -> bool:
        """Whether workers wait in a batch queue (sbatch, qsub) before they start."""
        return bool(getattr(self.launcher, "queues", False))

    @property
    def joined(self) -> int:
        """Workers the broker knows (the origin hears of every join at once)."""
        if self.runtime is not None:
            self.runtime.pump(0)
            return self.runtime.size
        snap = self.meta.wait_for(lambda s: True, 0.5)
        return len(snap["workers"]) if snap else 0

    @property
    def pending(self) -> int:
        """Workers whose batch jobs still wait in the queue (0 for other launchers)."""
        return self._queue.pending_workers() if self._queue is not None else 0

    # ---- waiting for workers ---------------------------------------------------------------------
    def _pump(self, seconds: float) -> None:
        if self.runtime is not None:
            self.runtime.pump(seconds)
        else:
            time.sleep(seconds)

    def _sync_size(self) -> None:
        if self.runtime is not None:
            import scoop
            scoop.SIZE = self.runtime.size

    def wait_for_workers(self, count: int, timeout: float = 60.0):
        """Blocks until ``count`` workers have joined; a worker that dies first is reported."""
        deadline = time.monotonic() + timeout
        rt = self.runtime
        meta = self.meta   # from now on joins are noted: a worker lost after joining did start
        have = 0
        while True:
            if rt is not None:
                rt.pump(0.05)
                have = rt.size
            else:
                snap = meta.wait_for(lambda s: len(s["workers"]) >= count, 0.1)
                if snap is not None:
                    have = len(snap["workers"])
            if have >= count:
                if rt is not None:
                    # the views read the meta stream, which is published at a bounded rate:
                    # return once it shows the workers too, so status() agrees with this call
                    meta.wait_for(lambda s: len(s.get("workers", ())) >= count,
                                  max(0.0, min(2.0, deadline - time.monotonic())))
                self._sync_size()
                return have
            for h in list(self._live.values()):
                code = h.poll()
                if code is not None and not h.retired:
                    if h.name in self._joined and self._supervisor is not None:
                        continue   # lost after joining: the supervisor replaces it
                    if self._queue is not None and h.name not in self._joined:
                        raise ClusterError(self._queue.start_failure(h, code))  # its job's id and words
                    self.relay.flush(0.3)
                    tail = self.relay.tail(h.name)
                    where = h.host or "localhost"
                    joined = h.name in self._joined
                    when = "while waiting for workers" if joined else "before joining the cluster"
                    if not joined and self.options.prolog:
                        when += f" (its prolog {self.options.prolog!r} was sourced first: --prolog)"
                    raise ClusterError(f"worker {h.name} on {where} exited with status {code} {when}"
                                       + (f":\n{tail}" if tail else ""))
            why = self._broker_exited()
            if why:
                raise ClusterError(why)
            if self.queued and count > len(self._spec):
                # batch workers that failed to start after start() returned are not replaced
                failed = [j["error"] for j in self.jobs() if j.get("error")]
                if failed:
                    raise ClusterError(f"waiting for {count} workers, but only {len(self._spec)} can join: "
                                       f"{failed[-1]}")
            if time.monotonic() > deadline:
                raise ClusterError(f"only {have} of {count} workers joined within {timeout:.0f} s")

    # ---- the meta stream and status ------------------------------------------------------------
    @property
    def meta(self) -> MetaSubscriber:
        """The broker's meta stream, subscribed to on first use (a script never needs it)."""
        if self._meta is None:
            with self._lock:
                if self._meta is None:
                    self._meta = MetaSubscriber(local_address(self.meta_port), self.secret,
                                                encryption=self.options.encryption)
                    self._meta.subscribe(self._joined.note)
                    self._meta.start()
        return self._meta

    def subscribe(self, callback):
        """``callback(kind, data)`` for every snapshot and event; returns an unsubscribe function."""
        if self._meta is None and not self.running:
            raise ClusterError("the cluster is not running")
        return self.meta.subscribe(callback)

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

    def jobs(self, history: bool = False) -> list[dict]:
        """Batch jobs of this cluster (empty for other launchers): ``id``, ``state`` (pending,
        running, ended), ``workers`` (the names it brings), ``submitted`` (epoch s), ``reason``
        (why it waits, from the scheduler), ``nodes``; ``error`` for one whose workers failed to
        start, ``replaces`` for a walltime replacement.  Read from the launcher's last poll of
        the scheduler (every 0.5 s): no scheduler command runs here.  ``history=True``: every
        job of this session, ended and cancelled ones too, with ``started``, ``ended`` and
        ``exit_status`` (see :meth:`scoop.launch.batch.BatchLauncher.job_history`)."""
        if history:
            fn = getattr(self.launcher, "job_history", None)
            return fn() if fn is not None else []
        return self._queue.jobs() if self._queue is not None else []
