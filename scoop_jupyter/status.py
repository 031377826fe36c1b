"""One subscription to the cluster's meta stream, fanned out to every notebook view.

The dashboard widget, the JupyterLab panel's comm, the status card and the map progress bars
all want the same ~5 snapshots a second.  Subscribing each of them to the broker would
multiply the decoding work in the kernel and make their views disagree; instead this feed
subscribes once per cluster, turns each broker snapshot into the one model of
:mod:`scoop.snapshot` (``StatusFeed.latest``), keeps a short throughput history for
sparklines, and calls its listeners from the meta-stream thread.  Every view reads
``latest``: the figures they show at one moment are the same figures.
The feed outlives clusters, so a view stays valid across ``%scoop_cluster restart``.
"""
from __future__ import annotations

import socket
import threading
import time
from collections import deque

import scoop.origin
from scoop import snapshot

#: throughput samples kept for sparklines (the meta stream sends ~5 a second)
HISTORY = 150


#: maps started before this time belong to an earlier cluster (set on every start and stop)
_maps_since = 0.0


def forget_maps() -> None:
    """Views stop showing every map started so far (a cluster stopped or started)."""
    global _maps_since
    _maps_since = time.time()


def safe_maps() -> list[dict]:
    """``scoop.origin.maps()`` of the current cluster, read from a thread other than the
    submitting one.

    The map objects are mutated by the kernel's main thread while we read them, so a read
    can meet a container changing size; such a read is simply retried.
    """
    for _ in range(5):
        try:
            return [m for m in scoop.origin.maps() if m.get("started", 0.0) >= _maps_since]
        except RuntimeError:
            time.sleep(0.001)
        except Exception:
            return []
    return []


class StatusFeed:
    """The latest snapshot model (``latest``) plus listeners called as ``fn(model)`` on every
    change.  ``latest`` is the dict documented in :mod:`scoop.snapshot`; the JupyterLab
    panel's comm sends it as it is."""

    def __init__(self):
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._listeners: list = []
        self._unsubscribe = None
        self._cluster = None
        self.model = snapshot.SnapshotModel()
        self.history: deque = deque(maxlen=HISTORY)  # (time, inputs/s) for the sparkline
        self.latest: dict = snapshot.stopped()
        self.raw: dict | None = None
        self.events: deque = deque(maxlen=50)
        self.started = False  # a cluster was started here (stopped views say "stopped", not "none yet")

    @property
    def retired_pids(self) -> set:
        """Workers this kernel scaled away: they leave, they are not lost."""
        return self.model.retired_pids

    # ---- listeners ---------------------------------------------------------------------------
    def add_listener(self, fn):
        """Registers ``fn(model)``; returns the function that removes it."""
        with self._lock:
            self._listeners.append(fn)

        def remove():
            with self._lock:
                if fn in self._listeners:
                    self._listeners.remove(fn)
        return remove

    def _publish(self, status: dict):
        with self._lock:
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn(status)
            except Exception:  # a broken view must not silence the others
                import logging
                logging.getLogger("scoop_jupyter").exception("status listener %r failed", fn)

    # ---- cluster lifecycle ----------------------------------------------------------------------
    def attach(self, cluster):
        """Follows ``cluster`` (a started scoop Cluster) until :meth:`detach`."""
        self.detach(publish=False)
        retired = self.model.retired_pids
        self.model = snapshot.SnapshotModel()
        self.model.retired_pids = retired
        self._cluster = cluster
        self.started = True
        self.history.clear()
        self._unsubscribe = cluster.subscribe(self._on_meta)
        raw = cluster.status(timeout=0)
        if raw.get("workers") is not None and raw.get("state") == "running":
            self._on_meta("status", raw)
        else:  # no snapshot yet: running, its workers joining
            self._publish_raw({"state": "running", "workers": [], "totals": {}})

    def detach(self, publish: bool = True):
        """Stops following the cluster; listeners get one "stopped" model (keeping the done count)."""
        unsub, self._unsubscribe = self._unsubscribe, None
        self._cluster = None
        if unsub is not None:
            try:
                unsub()
            except Exception:
                pass
        self.raw = None
        self.latest = snapshot.stopped(self.started, self.latest.get("totals", {}).get("done", 0))
        if publish:
            self._publish(self.latest)

    def refresh(self):
        """Publishes the latest model again (e.g. for a view that just opened)."""
        self._publish(self.latest)

    def refresh_now(self):
        """Re-derives the model from the last snapshot (after the kernel changed the cluster)."""
        if self.raw is not None and self._cluster is not None:
            self._publish_raw(self.raw)

    def sync(self, raw: dict | None) -> dict:
        """The model of ``raw`` (a snapshot just read from the cluster), published to every
        view if the meta thread had not done so yet: what one view shows, all show."""
        if raw is not None and raw is not self.raw and self._cluster is not None \
                and raw.get("state", "running") == "running":
            self.raw = raw
            self._publish_raw(raw)
        return self.latest

    # ---- meta stream (background thread) -------------------------------------------------------
    def _on_meta(self, kind: str, data: dict):
        if kind == "event":
            self.events.append(data)
            ev = data.get("event")
            w = data.get("worker") or {}
            if ev == "left" and data.get("reason") not in ("left", "retired"):
                self.model.lost(w, time.monotonic())
            if ev in ("joined", "left") and self.raw is not None:
                self._publish_raw(self.raw)  # show joins and leaves without waiting for a snapshot
            return
        if kind != "status" or self._cluster is None or data is self.raw:
            return
        self.raw = data
        status = self._publish_raw(data)
        self.history.append((data.get("time", time.time()), float(status["totals"]["rate"])))

    def _publish_raw(self, raw: dict) -> dict:
        status = self.build(raw)
        self.latest = status
        self._publish(status)
        return status

    def names(self) -> dict:
        """pid -> the worker's one name ("w3"), from the cluster's own handles; snapshots that
        carry a "name" (newer brokers) win over this."""
        cluster = self._cluster
        out = {}
        for h in list(getattr(cluster, "workers", ()) or ()):
            name = getattr(h, "name", None) or getattr(h, "label", None)
            if name and h.pid:
                out[h.pid] = name
        return out

    def _joining(self, names: dict) -> list[dict]:
        """Workers started here but not joined yet: shown as "joining" so a scale-up is visible
        at once."""
        out = []
        for h in list(getattr(self._cluster, "workers", ()) or ()):
            try:
                alive = not h.retired and h.poll() is None
            except Exception:
                continue
            if alive and not h.remote:
                out.append({"id": "", "name": names.get(h.pid, ""), "host": socket.gethostname(),
                            "pid": int(h.pid or 0), "state": "joining", "queued": 0, "running": 0,
                            "done": 0, "cpu": 0.0, "mem": 0})
        return out

    def build(self, raw: dict) -> dict:
        """The snapshot model of a broker snapshot, with this kernel's knowledge added: worker
        names, workers joining, batch jobs, the maps this kernel iterates."""
        cluster = self._cluster
        names = self.names()
        jobs = []
        if cluster is not None:
            try:  # batch jobs: the launcher's last poll of the scheduler, no command run here
                jobs = cluster.jobs()
            except Exception:
                jobs = []
        with self._build_lock:
            return self.model.build(raw, time.monotonic(), names=names, joining=self._joining(names),
                                    jobs=jobs, maps=safe_maps(), wall=time.time())
