"""Progress bars for long ``futures.map`` calls, shown in the cell that runs them.

The cell's thread is blocked inside the map, so the bars are driven from the status feed's
background thread (~5 times a second), reading ``scoop.origin.maps()``.  A bar appears only
once a map has run for ``DELAY`` seconds, so quick maps leave no clutter.
"""
from __future__ import annotations

import threading
import time

from .status import safe_maps

DELAY = 1.0
MIN_INTERVAL = 0.2


class _Bar:
    def __init__(self, info: dict):
        import ipywidgets as W
        total = info.get("total") or max(info.get("submitted", 0), 1)
        self.bar = W.IntProgress(value=0, min=0, max=total, bar_style="info",
                                 layout=W.Layout(width="50%"))
        self.label = W.Label()
        self.box = W.HBox([self.bar, self.label])
        self.started = info.get("started", time.time())
        self.name = info.get("name", "map")
        self.finished = False

    def update(self, info: dict, state: str | None = None):
        total = info.get("total")
        done = int(info.get("done", 0))
        known = total if total is not None else max(int(info.get("submitted", 0)), done, 1)
        with self.bar.hold_sync():
            if self.bar.max != known:
                self.bar.max = known
            if self.bar.value != min(done, known):
                self.bar.value = min(done, known)
            if state == "done" and self.bar.bar_style != "success":
                self.bar.bar_style = "success"
            elif state in ("interrupted", "failed") and self.bar.bar_style != "danger":
                self.bar.bar_style = "danger"
        elapsed = time.time() - self.started
        of = f"{known}" if total is not None else f"{known}+"
        suffix = {"done": " done", "interrupted": " interrupted", "failed": " failed"}.get(state, "")
        text = f"{self.name}: {done}/{of} in {elapsed:.1f} s{suffix}"
        if self.label.value != text:
            self.label.value = text


class ProgressBars:
    """Per-cell map progress bars (on by default; ``%scoop_cluster progress off``)."""

    def __init__(self, origin):
        self.origin = origin
        self.enabled = True
        self._bars: dict[tuple, _Bar] = {}
        self._lock = threading.Lock()
        self._last = 0.0
        self._remove = origin.feed.add_listener(self._on_status)

    def cell_started(self):
        with self._lock:
            self._bars = {}

    def cell_finished(self, error: BaseException | None = None):
        """Freezes this cell's bars in their final state (the feed may be quiet by now).

        A map whose iterator is gone was either consumed to the end (the cell succeeded) or
        abandoned by an exception, which the bar then shows."""
        with self._lock:
            bars, self._bars = self._bars, {}
        if not bars:
            return
        infos = {(m["name"], m["started"]): m for m in safe_maps()}
        for key, bar in bars.items():
            if bar.finished:
                continue
            info = infos.get(key)
            try:
                if info is not None and info.get("finished"):
                    bar.update(info, "done")
                elif info is None and error is None:
                    bar.update({"done": bar.bar.max, "total": bar.bar.max}, "done")
                else:
                    state = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
                    bar.update(info or {"done": bar.bar.value, "total": bar.bar.max}, state)
            except Exception:
                pass

    def _on_status(self, status: dict):
        origin = self.origin
        if not self.enabled or not origin.cell_running or origin.kernel is None:
            return
        now = time.monotonic()
        if now - self._last < MIN_INTERVAL:
            return
        self._last = now
        cell_start = origin.cell_started
        wall = time.time()
        with self._lock:
            for m in safe_maps():
                key = (m["name"], m["started"])
                bar = self._bars.get(key)
                if bar is None:
                    if m["finished"] or wall - max(m["started"], cell_start) < DELAY:
                        continue
                    if m["started"] < cell_start and m["done"] >= (m["total"] or m["submitted"]):
                        continue
                    bar = self._bars[key] = _Bar(m)
                    self._display(bar.box)
                if bar.finished:
                    continue
                bar.finished = bool(m["finished"])
                bar.update(m, "done" if bar.finished else None)

    def _display(self, widget):
        """Displays in the running cell, although we are on a background thread."""
        shell = self.origin.shell
        parent = self.origin._cell_parent
        pub = getattr(shell, "display_pub", None)
        if parent is not None and hasattr(pub, "set_thread_parent"):
            pub.set_thread_parent(parent)
        from IPython.display import display
        display(widget)
