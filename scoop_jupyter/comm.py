"""The ``scoop_cluster`` comm target: the kernel side of the JupyterLab cluster panel.

Protocol (JSON ``data`` of comm messages), frontend-initiated:

kernel -> frontend
    ``{"type": "status", "state": "running"|"stopped", "workers": [{"id", "name" (e.g. "w3": the
    worker's one name, as in its output prefix and tracebacks), "host", "pid",
    "state": "idle"|"busy"|"joining"|"lost", "queued", "running", "done", "cpu", "mem" (bytes)}],
    "jobs": [{"id", "state": "pending"|"running"|"ended", "workers" (names it brings), "submitted"
    (epoch s), "reason" (why it waits, from the scheduler), "nodes", optional "error" (its workers
    failed to start), optional "replaces" (a walltime replacement of that job)}] (batch-job
    clusters; empty otherwise),
    "totals": {"workers", "busy" (0..1), "done", "queued", "running", "rate", "pending_workers"
    (workers of jobs waiting in the queue)}}`` once on open,
    then up to ``MAX_RATE`` times a second while a cluster runs, and once when it stops.
    ``{"type": "error", "message": str}`` when an action failed.

frontend -> kernel
    ``{"action": "start", "n": int}`` (a local cluster, as ``%scoop_cluster start -n n``),
    ``{"action": "scale", "n": int}`` (as ``%scoop_cluster scale n``),
    ``{"action": "stop"}``, ``{"action": "refresh"}`` (send the current status now).
"""
from __future__ import annotations

import threading
import time

TARGET = "scoop_cluster"
MAX_RATE = 10.0


class PanelComm:
    """One open panel: forwards the status feed, runs the panel's actions."""

    def __init__(self, comm, origin):
        self.comm = comm
        self.origin = origin
        self._lock = threading.Lock()
        self._last = 0.0
        self._closed = False
        comm.on_msg(self._on_msg)
        comm.on_close(self._on_close)
        self._send(origin.feed.latest)
        self._remove = origin.feed.add_listener(self._on_status)

    def _send(self, status: dict):
        if not self._closed:
            self.comm.send(status)

    def _on_status(self, status: dict):
        """Meta-stream thread: throttled to ``MAX_RATE``; state changes always go out."""
        with self._lock:
            now = time.monotonic()
            if status.get("state") == "running" and now - self._last < 1.0 / MAX_RATE:
                return
            self._last = now
            self._send(status)

    def _on_msg(self, msg):
        data = (msg.get("content") or {}).get("data") or {}
        action = data.get("action")
        try:
            if action in ("start", "scale"):
                n = data.get("n")
                bad = not isinstance(n, int) or isinstance(n, bool) or n < 1
                if (n is not None or action == "scale") and bad:
                    raise ValueError(f"'n' must be a positive integer, not {n!r}")
                if action == "scale":
                    self.origin.scale(n)
                elif not self.origin.running:
                    self.origin.start(n)
                self._send(self.origin.feed.latest)
            elif action == "stop":
                self.origin.stop()
                self._send(self.origin.feed.latest)
            elif action == "refresh":
                self._send(self.origin.feed.latest)
            else:
                raise ValueError(f"unknown action {action!r} (expected start, scale, stop or refresh)")
        except Exception as exc:
            self._send({"type": "error", "message": f"{type(exc).__name__}: {exc}"})

    def _on_close(self, msg=None):
        self._closed = True
        remove, self._remove = self._remove, None
        if remove is not None:
            remove()


def register(kernel, origin):
    """Registers the comm target on ``kernel``; returns a function that unregisters it."""
    manager = getattr(kernel, "comm_manager", None)
    if manager is None:
        return lambda: None
    panels = []

    def on_open(comm, open_msg):
        panels.append(PanelComm(comm, origin))

    manager.register_target(TARGET, on_open)

    def unregister():
        try:
            manager.unregister_target(TARGET, on_open)
        except Exception:
            pass
        for p in panels:
            p._on_close()
    return unregister
