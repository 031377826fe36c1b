"""One subscription to the cluster's meta stream, fanned out to every notebook view.

The dashboard widget, the JupyterLab panel's comm and the map progress bars all want the
same ~5 snapshots a second.  Subscribing each of them to the broker would multiply the
decoding work in the kernel and make their views disagree; instead this feed subscribes once
per cluster, normalises the snapshot into the panel protocol's shape, keeps a short
throughput history for sparklines, and calls its listeners from the meta-stream thread.
The feed outlives clusters, so a view stays valid across ``%scoop_cluster restart``.
"""
from __future__ import annotations

import re
import socket
import threading
import time
from collections import deque

import scoop.origin

#: how long a worker that vanished without saying goodbye stays listed as "lost"
LOST_LINGER = 6.0
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


def stopped_status() -> dict:
    return {"type": "status", "state": "stopped", "workers": [], "jobs": [],
            "totals": {"workers": 0, "busy": 0.0, "done": 0, "queued": 0, "running": 0, "rate": 0.0,
                       "pending_workers": 0}}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def pending_jobs(status: dict) -> list[dict]:
    """Batch jobs waiting in the queue that will bring new workers (not walltime replacements)."""
    return [j for j in status.get("jobs") or [] if j.get("state") == "pending" and not j.get("replaces")]


def pending_text(status: dict) -> str:
    """"4 workers pending in the queue (jobs 12, 13: Resources)", or "" when none wait: the one
    wording every view uses for workers not started yet."""
    jobs = pending_jobs(status)
    if not jobs:
        return ""
    n = sum(len(j.get("workers") or ()) for j in jobs)
    ids = ", ".join(str(j["id"]) for j in jobs)
    reasons = sorted({j["reason"] for j in jobs if j.get("reason")})
    why = f": {', '.join(reasons)}" if reasons else ""
    return f"{_plural(n, 'worker')} pending in the queue ({'jobs' if len(jobs) > 1 else 'job'} {ids}{why})"


def failed_texts(status: dict) -> list[str]:
    """One line per batch job whose workers failed to start: its id, workers and the error."""
    out = []
    for j in status.get("jobs") or []:
        if j.get("error"):
            lines = [x for x in str(j["error"]).splitlines() if x.strip()]
            detail = lines[0] + (f" ... {lines[-1].strip()}" if len(lines) > 1 else "")
            out.append(f"job {j['id']} ({', '.join(j.get('workers') or ())}) failed: {detail}")
    return out


def _job_row(j: dict) -> dict:
    row = {"id": str(j.get("id", "")), "state": str(j.get("state", "")),
           "workers": [str(w) for w in j.get("workers") or ()], "submitted": float(j.get("submitted") or 0.0),
           "reason": str(j.get("reason") or ""), "nodes": str(j.get("nodes") or "")}
    for key in ("error", "replaces"):
        if j.get(key):
            row[key] = str(j[key])
    return row


class StatusFeed:
    """Latest normalised status plus listeners called as ``fn(status)`` on every change."""

    def __init__(self):
        self._lock = threading.Lock()
        self._listeners: list = []
        self._unsubscribe = None
        self._cluster = None
        self._lost: dict[str, tuple[float, dict]] = {}
        self.retired_pids: set = set()  # workers this kernel scaled away: they leave, they are not lost
        self.history: deque = deque(maxlen=HISTORY)  # (time, tasks/s)
        self.latest: dict = stopped_status()
        self.raw: dict | None = None
        self.events: deque = deque(maxlen=50)

    # ---- listeners ---------------------------------------------------------------------------
    def add_listener(self, fn):
        """Registers ``fn(status)``; returns the function that removes it."""
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
        self._cluster = cluster
        self._lost.clear()
        self.history.clear()
        self._unsubscribe = cluster.subscribe(self._on_meta)
        raw = cluster.status(timeout=0)
        if raw.get("workers") is not None and raw.get("state") == "running":
            self._on_meta("status", raw)

    def detach(self, publish: bool = True):
        """Stops following the cluster; listeners get one "stopped" status."""
        unsub, self._unsubscribe = self._unsubscribe, None
        self._cluster = None
        if unsub is not None:
            try:
                unsub()
            except Exception:
                pass
        self.raw = None
        self.latest = stopped_status()
        if publish:
            self._publish(self.latest)

    def refresh(self):
        """Publishes the latest status again (e.g. for a view that just opened)."""
        self._publish(self.latest)

    def refresh_now(self):
        """Re-derives the status from the last snapshot (after the kernel changed the cluster)."""
        if self.raw is not None and self._cluster is not None:
            self._publish_raw(self.raw)

    # ---- meta stream (background thread) -------------------------------------------------------
    def _on_meta(self, kind: str, data: dict):
        if kind == "event":
            self.events.append(data)
            ev = data.get("event")
            w = data.get("worker") or {}
            if ev == "left" and w.get("role") == "worker" and data.get("reason") not in ("left", "retired") \
                    and w.get("pid") not in self.retired_pids:
                self._lost[str(w.get("id"))] = (time.monotonic(), w)
            if ev in ("joined", "left") and self.raw is not None:
                self._publish_raw(self.raw)  # show joins and leaves without waiting for a snapshot
            return
        if kind != "status" or self._cluster is None:
            return
        self.raw = data
        self.history.append((data.get("time", time.time()), float(data.get("totals", {}).get("rate", 0.0))))
        self._publish_raw(data)

    def _publish_raw(self, raw: dict):
        status = self.normalise(raw)
        self.latest = status
        self._publish(status)

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

    def normalise(self, raw: dict) -> dict:
        """The panel protocol's status message (see scoop_jupyter.comm) from a broker snapshot."""
        workers = []
        seen_pids = set()
        names = self.names()
        for w in raw.get("workers", []):
            if w.get("role", "worker") != "worker" or w.get("pid") in self.retired_pids:
                continue
            seen_pids.add(w.get("pid"))
            workers.append(_worker_row(w, _busy(w), names))
        now = time.monotonic()
        ids = {w["id"] for w in workers}
        for wid, (when, w) in list(self._lost.items()):
            if now - when > LOST_LINGER or wid in ids:
                del self._lost[wid]
            else:
                workers.append(_worker_row(w, "lost", names))
        cluster = self._cluster
        if cluster is not None:
            # started but not joined yet: shown as "joining" so a scale-up is visible at once
            for h in list(getattr(cluster, "workers", ())):
                try:
                    alive = not h.retired and h.poll() is None
                except Exception:
                    continue
                if alive and not h.remote and h.pid not in seen_pids:
                    host = h.host if h.remote else socket.gethostname()
                    workers.append({"id": "", "name": names.get(h.pid, ""), "host": host,
                                    "pid": int(h.pid or 0), "state": "joining", "queued": 0, "running": 0,
                                    "done": 0, "cpu": 0.0, "mem": 0})
        workers.sort(key=lambda w: (w["name"] == "", _natural(w["name"])))
        jobs = []
        if cluster is not None:
            try:  # batch jobs: the launcher's last poll of the scheduler, no command run here
                jobs = [_job_row(j) for j in cluster.jobs()]
            except Exception:
                jobs = []
        t = raw.get("totals", {})
        live = [w for w in workers if w["state"] in ("busy", "idle")]
        # busy from the rows: the broker's own figure lags behind the workers' load reports
        busy = sum(w["state"] == "busy" for w in live) / len(live) if live else 0.0
        totals = {"workers": len(live) if raw.get("workers") is not None else int(t.get("workers", 0)),
                  "busy": float(busy), "done": int(t.get("done", 0)), "queued": int(t.get("queued", 0)),
                  "running": int(t.get("running", 0)), "rate": float(t.get("rate", 0.0))}
        status = {"type": "status", "workers": workers, "jobs": jobs}
        totals["pending_workers"] = sum(len(j["workers"]) for j in pending_jobs(status))
        status["state"] = "running" if raw.get("state", "running") == "running" else "stopped"
        status["totals"] = totals
        return status


def _natural(name: str):
    """Natural order: w2 before w10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _busy(w: dict) -> str:
    """A worker is busy while the broker has tasks assigned to it (the broker's own, current
    count); the worker's load report, sent now and then, can still say "running" just after."""
    if "assigned" in w:
        return "busy" if int(w.get("assigned") or 0) > 0 else "idle"
    return "busy" if w.get("state") == "busy" else "idle"


def _worker_row(w: dict, state: str, names: dict | None = None) -> dict:
    pid = int(w.get("pid") or 0)
    running, queued = int(w.get("running", 0)), int(w.get("queued", 0))
    if "assigned" in w:
        # the broker's count is current; the worker's load report can be a moment behind it
        held = int(w.get("assigned") or 0)
        running = min(running, held)
        queued = min(queued, held - running)
    name = w.get("name") or (names or {}).get(pid)
    if not name:
        name = f"#{w.get('id')}" if w.get("id") not in (None, "") else ""
    return {"id": str(w.get("id", "")), "name": str(name), "host": str(w.get("host", "")), "pid": pid,
            "state": state, "queued": queued, "running": running, "done": int(w.get("done", 0)),
            "cpu": float(w.get("cpu", 0.0) or 0.0),
            "mem": int(w.get("mem", 0) or 0)}
