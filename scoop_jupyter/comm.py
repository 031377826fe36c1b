"""The ``scoop_cluster`` comm target: the kernel side of the JupyterLab cluster panel.

The panel's commands must work while a cell runs, which is when a user wants more workers.  The
frontend sends them on a kernel subshell (JEP 91, ipykernel 7), so they are handled on the
subshell's thread while the main thread waits on a map; nothing here may block or touch the
origin's task socket from that thread.  Scaling only asks for workers (they join on their own) and
the status says "scaling to N" until they have; starting runs on the main thread when it is free;
stopping interrupts a cell that waits on the cluster's work, then stops on the main thread.
A kernel without subshells (ipykernel 6, or an older JupyterLab) hands the commands to the
main thread once the running cell ends: they then run there like any comm message, the cell
is never interrupted, and the panel says the command waits for the cell.

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
    (workers of jobs waiting in the queue)},
    "request": null or {"action": "start"|"scale"|"stop", "n", "text": "scaling to 4…", "since"}
    (a panel command not done yet),
    "adapt": null or {"minimum", "maximum"} (adaptive scaling is on),
    "kernel_session": the kernel process's message-session id, as live outputs carry it}``
    once on open, then up to ``MAX_RATE`` times a second while a cluster runs (``LARGE_RATE``
    above ``LARGE`` workers), and once when it stops.
    ``{"type": "error", "message": str}`` when an action failed.
    ``{"type": "tasks", "reset": bool, "workers": [name], "names": [function name],
    "tasks": [[worker index, name index, start (epoch s), duration (s), inputs, ok, group]]}``:
    finished tasks and map chunks not sent yet, while the panel's task stream is open.

frontend -> kernel
    ``{"action": "start", "n": int}`` (a local cluster, as ``%scoop_cluster start -n n``),
    ``{"action": "scale", "n": int}`` (as ``%scoop_cluster scale n``),
    ``{"action": "adapt", "minimum": int, "maximum": int}`` or ``{"action": "adapt", "off": true}``,
    ``{"action": "stop"}``, ``{"action": "refresh"}`` (send the current status now),
    ``{"action": "stream", "on": bool}`` (send finished tasks as they come, for the task stream).
"""
from __future__ import annotations

import os
import signal
import threading
import time

from . import task_timeline
from .records import kernel_session

TARGET = "scoop_cluster"
MAX_RATE = 10.0
#: above this many workers a status is large: it goes out at ``LARGE_RATE`` a second
LARGE = 200
LARGE_RATE = 2.0
#: seconds a panel command may take before the panel is told it did not finish
REQUEST_TIMEOUT = 120.0
#: seconds between two task-stream messages
STREAM_INTERVAL = 0.25
#: finished tasks per task-stream message at most
STREAM_CHUNK = 5000
#: a task that ended this long before the newest one sent is taken as sent already
STREAM_SLACK = 10.0


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _follow_frontend_subshell(comm) -> None:
    """ipykernel routes an incoming comm message to the subshell of whatever message the comm
    last published under -- for a widget, the cell that displayed it.  This comm publishes from
    the meta-stream thread under the running cell's header, which would send the panel's
    commands back to the busy main shell.  Route them where the frontend sent them instead."""
    if hasattr(comm, "_reply_subshell_for"):
        comm._reply_subshell_for = lambda data, default: default


class _Request:
    """The panel command in progress (one per kernel, shown by every panel): done when a
    status shows its effect, dropped with an error after ``REQUEST_TIMEOUT``."""

    def __init__(self):
        self.lock = threading.Lock()
        self.value: dict | None = None

    def set(self, action: str, n: int | None, text: str):
        with self.lock:
            self.value = {"action": action, "n": n, "text": text, "since": time.time()}

    def clear(self):
        with self.lock:
            self.value = None

    def check(self, status: dict) -> tuple[dict | None, str]:
        """(the request still pending or None, an error message or "")."""
        with self.lock:
            req = self.value
            if req is None:
                return None, ""
            if _done(req, status):
                self.value = None
                return None, ""
            if time.time() - req["since"] > REQUEST_TIMEOUT:
                self.value = None
                return None, f"{req['text'].rstrip('…')} did not finish within {REQUEST_TIMEOUT:.0f} s"
            return dict(req), ""


def _done(req: dict, status: dict) -> bool:
    action, running = req["action"], status.get("state") == "running"
    if action == "stop":
        return not running
    if not running:
        return False
    if action == "start":
        return True
    live = sum(w.get("state") in ("busy", "idle") for w in status.get("workers") or ())
    joining = sum(w.get("state") == "joining" for w in status.get("workers") or ())
    pending = int((status.get("totals") or {}).get("pending_workers") or 0)
    return joining == 0 and live + pending == req["n"]


def _adapt_state(cluster) -> dict | None:
    policy = getattr(cluster, "adaptive", None) if cluster is not None else None
    if policy is None or getattr(policy, "stopped", False) or getattr(policy, "running", True) is False:
        return None
    lo, hi = getattr(policy, "minimum", None), getattr(policy, "maximum", None)
    return {"minimum": lo, "maximum": hi}


class TaskStream:
    """Finished tasks not sent yet, read from ``scoop.origin.timeline()`` (the origin keeps the
    last few thousand): what the panel's live task stream draws."""

    def __init__(self):
        self.workers: dict[str, int] = {}
        self.names: dict[str, int] = {}
        self.sent: set = set()
        self.newest = 0.0
        self.last = 0.0
        self.reset = True

    def take(self) -> list[dict]:
        """Messages with the tasks that finished since the last call."""
        since = max(0.0, self.newest - STREAM_SLACK)
        recs = task_timeline.records(since)
        keys = set()
        rows = []
        workers, names = self.workers, self.names
        for r in recs:
            key = (r["worker"], r["start"], r["end"], r["name"])
            keys.add(key)
            if key in self.sent:
                continue
            w = workers.setdefault(str(r["worker"] or "?"), len(workers))
            n = names.setdefault(str(r["name"] or "?"), len(names))
            rows.append([w, n, r["start"], max(0.0, r["end"] - r["start"]), int(r["inputs"] or 1),
                         bool(r["ok"]), r.get("group") or 0])
            if r["end"] > self.newest:
                self.newest = r["end"]
        self.sent = keys
        out = []
        for i in range(0, len(rows), STREAM_CHUNK):
            out.append({"type": "tasks", "reset": self.reset, "workers": list(workers),
                        "names": list(names), "tasks": rows[i:i + STREAM_CHUNK]})
            self.reset = False
        if self.reset:  # a stream just opened with nothing to show yet says so
            out.append({"type": "tasks", "reset": True, "workers": [], "names": [], "tasks": []})
            self.reset = False
        return out


_request = _Request()


class PanelComm:
    """One open panel: forwards the status feed, runs the panel's actions."""

    def __init__(self, comm, origin):
        self.comm = comm
        self.origin = origin
        self._lock = threading.Lock()
        self._last = 0.0
        self._closed = False
        self.stream: TaskStream | None = None
        _follow_frontend_subshell(comm)
        comm.on_msg(self._on_msg)
        comm.on_close(self._on_close)
        self._send_status(origin.feed.latest)
        self._remove = origin.feed.add_listener(self._on_status)

    def _send(self, data: dict):
        if not self._closed:
            self.comm.send(data)

    def _send_status(self, status: dict):
        req, error = _request.check(status)
        out = dict(status, request=req, adapt=_adapt_state(self.origin.cluster),
                   kernel_session=kernel_session(self.origin))
        self._send(out)
        if error:
            self._send({"type": "error", "message": error})

    def _on_status(self, status: dict):
        """Meta-stream thread: throttled to ``MAX_RATE`` (``LARGE_RATE`` for a large cluster);
        state changes and the end of a request always go out."""
        with self._lock:
            now = time.monotonic()
            rate = MAX_RATE if len(status.get("workers") or ()) <= LARGE else LARGE_RATE
            urgent = _request.value is not None
            if status.get("state") == "running" and now - self._last < 1.0 / rate and not urgent:
                self._send_tasks(now)
                return
            self._last = now
            self._send_status(status)
            self._send_tasks(now)

    def _send_tasks(self, now: float):
        stream = self.stream
        if stream is None or now - stream.last < STREAM_INTERVAL:
            return
        stream.last = now
        for msg in stream.take():
            self._send(msg)

    # ---- the panel's commands ----------------------------------------------------------------
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
                    self._scale(n)
                else:
                    self._start(n)
            elif action == "stop":
                self._stop()
            elif action == "adapt":
                self._adapt(data)
            elif action == "stream":
                self.stream = TaskStream() if data.get("on") else None
                if self.stream is not None:
                    self._send_tasks(time.monotonic())
                return
            elif action != "refresh":
                raise ValueError(f"unknown action {action!r} (expected start, scale, adapt, stop, "
                                 f"stream or refresh)")
            self._send_status(self.origin.feed.latest)
        except Exception as exc:
            self._send({"type": "error", "message": f"{type(exc).__name__}: {exc}"})

    def _scale(self, n: int):
        origin = self.origin
        if not origin.running:
            from scoop.errors import ClusterError
            raise ClusterError("no SCOOP cluster is running in this kernel")
        verb = "scaling to" if n != origin.cluster.size else "keeping"
        _request.set("scale", n, f"{verb} {n} worker{'' if n == 1 else 's'}…")
        try:
            origin.scale(n, wait=False)
        except Exception:
            _request.clear()
            raise

    def _start(self, n: int | None):
        origin = self.origin
        if origin.running:
            return
        _request.set("start", n, f"starting {n} worker{'' if n == 1 else 's'}…" if n else "starting…")
        self._on_main(lambda: origin.start(n))

    def _stop(self):
        origin = self.origin
        if origin.cluster is None:
            return
        _request.set("stop", None, "stopping…")
        if not _on_main_thread() and origin.cell_running and _waits_on_cluster():
            # the running cell waits on this cluster's work: interrupt it as Kernel > Interrupt
            # does (its map says how far it got), so the stop below runs at once
            os.kill(os.getpid(), signal.SIGINT)
        self._on_main(origin.stop)

    def _adapt(self, data: dict):
        cluster = self.origin.cluster
        if cluster is None or not self.origin.running:
            from scoop.errors import ClusterError
            raise ClusterError("no SCOOP cluster is running in this kernel")
        if data.get("off"):
            policy = getattr(cluster, "adaptive", None)
            if policy is not None:
                policy.stop()
            return
        adapt = getattr(cluster, "adapt", None)
        if adapt is None:
            raise RuntimeError("this version of scoop has no adaptive scaling (Cluster.adapt)")
        lo, hi = data.get("minimum"), data.get("maximum")
        for name, v, least in (("minimum", lo, 0), ("maximum", hi, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < least:
                raise ValueError(f"adapt: {name!r} must be an integer of at least {least}, not {v!r}")
        if hi < lo:
            raise ValueError(f"adapt: the maximum ({hi}) is below the minimum ({lo})")
        adapt(minimum=lo, maximum=hi)

    def _on_main(self, fn):
        """Runs ``fn`` on the kernel's main thread (which owns the origin's socket and event
        loop): now when already there, else as soon as the main thread is free."""
        def run():
            try:
                fn()
            except Exception as exc:
                _request.clear()
                self._send({"type": "error", "message": f"{type(exc).__name__}: {exc}"})
            self._send_status(self.origin.feed.latest)
        io_loop = getattr(self.origin.kernel, "io_loop", None)
        if _on_main_thread() or io_loop is None:
            run()
        else:
            io_loop.add_callback(run)

    def _on_close(self, msg=None):
        self._closed = True
        self.stream = None
        remove, self._remove = self._remove, None
        if remove is not None:
            remove()


def _waits_on_cluster() -> bool:
    import scoop.origin
    try:
        return scoop.origin.is_attached() and scoop.origin.outstanding() > 0
    except Exception:
        return False


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
