"""Progress bars for long ``futures.map`` calls, shown in the cell that runs them.

The cell's thread is blocked inside the map, so the bars are driven from the status feed's
background thread (~5 times a second), reading ``scoop.origin.maps()``.  A bar appears only
once a map has run for ``DELAY`` seconds, so quick maps leave no clutter.
"""
from __future__ import annotations

import html
import threading
import time

from .records import Record
from .status import safe_maps
from .tracebacks import interrupted_work
from .views import progress_bar
from .views import seconds as _seconds

DELAY = 1.0
MIN_INTERVAL = 0.2


_STYLE_COLORS = {"done": "#2e7d32", "interrupted": "#ef6c00", "failed": "#c62828", None: "#1976d2"}


class _Bar:
    """A map's bar: an ipywidgets bar and label while the map runs, then a static record (an
    HTML bar and the summary line, e.g. ``mc_pi: 200 done in 1.5 s (137/s)``) in its place."""

    def __init__(self, info: dict, record: Record | None = None):
        import ipywidgets as W
        total = info.get("total") or max(info.get("submitted", 0), 1)
        self.bar = W.IntProgress(value=0, min=0, max=total, bar_style="info",
                                 layout=W.Layout(width="50%"))
        self.label = W.Label()
        self.box = W.HBox([self.bar, self.label])
        self.started = info.get("started", time.time())
        self.name = info.get("name", "map")
        self.finished = False
        self.record = record
        self.text = ""

    def show(self):
        if self.record is not None:
            self.record.show(self.text or f"{self.name}: starting", self.html(None), self.box)

    def html(self, state: str | None) -> str:
        return (f'<div class="scoop-progress" data-state="{state or "running"}" style="font-size:12px">'
                f'{progress_bar(self.bar.value, self.bar.max, 240, _STYLE_COLORS.get(state, "#1976d2"))} '
                f'{html.escape(self.text)}</div>')

    def update(self, info: dict, state: str | None = None):
        total = info.get("total")
        done = int(info.get("done", 0))
        known = total if total is not None else max(int(info.get("submitted", 0)), done, 1)
        with self.bar.hold_sync():
            if self.bar.max != known:
                self.bar.max = known
            if self.bar.value != min(done, known):
                self.bar.value = min(done, known)
            style = {"done": "success", "interrupted": "warning", "failed": "danger"}.get(state)
            if style and self.bar.bar_style != style:
                self.bar.bar_style = style
        self.finished = self.finished or state is not None
        text = label(self.name, done, total, known, time.time() - self.started, state)
        if self.label.value != text:
            self.label.value = text
        self.text = text
        if state is not None and self.record is not None:
            self.record.freeze(text, self.html(state))


def label(name: str, done: int, total, known: int, elapsed: float, state: str | None = None) -> str:
    """``nap: 80/200 · 12.5/s · ETA 9.6 s`` while running; how it ended afterwards."""
    rate = done / elapsed if elapsed > 0 else 0.0
    pace = f"{rate:.1f}/s" if rate < 100 else f"{rate:,.0f}/s"
    if state == "done":
        return f"{name}: {done} done in {_seconds(elapsed)} ({pace})"
    if state == "interrupted":
        of = f"{done} done" if total is None else f"{done} of {total} done, {max(0, total - done)} dropped"
        return f"{name}: interrupted after {_seconds(elapsed)}: {of}"
    if state == "failed":
        of = f"{known}" if total is not None else f"{known}+"
        return f"{name}: failed after {_seconds(elapsed)}: {done}/{of} done"
    of = f"{known}" if total is not None else f"{known}+"
    eta = ""
    if total is not None and rate > 0 and done < total:
        eta = f" · ETA {_seconds((total - done) / rate)}"
    return f"{name}: {done}/{of} · {pace}{eta} · {_seconds(elapsed)}"


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
        abandoned by an exception, which the bar then shows; an interrupted map says how far
        it got (its progress travels in the KeyboardInterrupt's frames)."""
        with self._lock:
            bars, self._bars = self._bars, {}
        if not bars:
            return
        infos = {(m["name"], m["started"]): m for m in safe_maps()}
        interrupted = {}
        if isinstance(error, KeyboardInterrupt):
            interrupted = {(p["name"], p["started"]): p
                           for kind, p in interrupted_work(error) if kind == "map"}
        for key, bar in bars.items():
            if bar.finished:
                continue
            info = infos.get(key)
            try:
                if key in interrupted:
                    bar.update(interrupted[key], "interrupted")
                elif info is not None and info.get("finished"):
                    bar.update(info, "done")
                elif info is None and error is None:
                    bar.update({"done": bar.bar.max, "total": bar.bar.max}, "done")
                else:
                    state = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
                    total = bar.bar.max if info is None else info.get("total")
                    bar.update(info or {"done": bar.bar.value, "total": total}, state)
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
                    bar = self._bars[key] = _Bar(m, Record(origin, origin._cell_parent))
                    bar.update(m)
                    bar.show()
                if bar.finished:
                    continue
                bar.update(m, "done" if m["finished"] else None)
