"""Live load dashboard: a plain-ipywidgets view of the cluster, fed by the status feed.

Everything live is rendered into one ``ipywidgets.HTML`` (worker table, totals, an SVG
throughput sparkline and the progress of running maps), so one refresh is one small widget
state message; the view refreshes only when the rendering changed and at most
``MAX_RATE`` times a second.  The kernel never polls workers: the data comes from the broker's
meta stream, which already carries every worker's load.
"""
from __future__ import annotations

import html
import threading
import time

import ipywidgets as W

from .status import safe_maps

MAX_RATE = 10.0

_STATE_COLORS = {"busy": "#2e7d32", "idle": "#757575", "joining": "#1565c0", "lost": "#c62828"}
_CELL = "padding:1px 8px;text-align:right"
_CELL_L = "padding:1px 8px;text-align:left"


def _mem(n: int) -> str:
    if not n:
        return "-"
    return f"{n / 2**20:.0f} MiB" if n < 10 * 2**30 else f"{n / 2**30:.1f} GiB"


def sparkline(points, width: int = 260, height: int = 40) -> str:
    """An inline SVG polyline of ``(time, value)`` points (no plotting library needed)."""
    if len(points) < 2:
        return f'<svg width="{width}" height="{height}"></svg>'
    t0, t1 = points[0][0], points[-1][0]
    span = max(t1 - t0, 1e-6)
    top = max(max(v for _, v in points), 1e-9)
    coords = " ".join(f"{(t - t0) / span * (width - 2) + 1:.1f},{height - 2 - v / top * (height - 4):.1f}"
                      for t, v in points)
    return (f'<svg width="{width}" height="{height}" style="background:rgba(127,127,127,0.08)">'
            f'<polyline fill="none" stroke="#1976d2" stroke-width="1.5" points="{coords}"/></svg>')


def _bar(done: int, total: int | None, width: int = 160) -> str:
    frac = 0.0 if not total else min(1.0, done / total)
    return (f'<span style="display:inline-block;width:{width}px;height:9px;'
            f'background:rgba(127,127,127,0.2);vertical-align:middle">'
            f'<span style="display:block;width:{frac * 100:.1f}%;height:100%;background:#1976d2"></span></span>')


def render(status: dict, history, maps: list[dict]) -> str:
    """The dashboard's HTML for a normalised status (see :mod:`scoop_jupyter.status`)."""
    state = status.get("state", "stopped")
    t = status.get("totals", {})
    color = "#2e7d32" if state == "running" else "#757575"
    head = [f'<b>SCOOP cluster</b> <span style="color:{color}">&#9679; {state}</span>']
    if state == "running":
        head.append(f'{t.get("workers", 0)} workers &middot; busy {t.get("busy", 0.0) * 100:.0f}% &middot; '
                    f'{t.get("done", 0)} done &middot; {t.get("queued", 0)} queued &middot; '
                    f'{t.get("running", 0)} running &middot; {t.get("rate", 0.0):.1f} tasks/s')
    parts = [f'<div class="scoop-dashboard" style="font-size:12px;line-height:1.4">'
             f'<div>{" &middot; ".join(head)}</div>']
    workers = status.get("workers", [])
    if state == "running":
        cols = ("worker", "host", "pid", "state", "queued", "running", "done", "CPU %", "memory")
        rows = ["<tr>" + "".join(f'<th style="{_CELL_L if c in ("worker", "host", "state") else _CELL}">{c}</th>'
                                 for c in cols) + "</tr>"]
        for w in sorted(workers, key=lambda w: (w["id"] == "", int(w["id"]) if w["id"].isdigit() else 0)):
            sc = _STATE_COLORS.get(w["state"], "#757575")
            rows.append(
                f'<tr class="scoop-worker" data-state="{w["state"]}">'
                f'<td style="{_CELL_L}">{html.escape(w["id"] or "-")}</td>'
                f'<td style="{_CELL_L}">{html.escape(w["host"])}</td><td style="{_CELL}">{w["pid"]}</td>'
                f'<td style="{_CELL_L};color:{sc}">{w["state"]}</td>'
                f'<td style="{_CELL}">{w["queued"]}</td><td style="{_CELL}">{w["running"]}</td>'
                f'<td style="{_CELL}">{w["done"]}</td><td style="{_CELL}">{w["cpu"]:.0f}</td>'
                f'<td style="{_CELL}">{_mem(w["mem"])}</td></tr>')
        parts.append(f'<table style="border-collapse:collapse;margin:4px 0">{"".join(rows)}</table>')
        pts = list(history)
        peak = max((v for _, v in pts), default=0.0)
        parts.append(f'<div>throughput, last {pts[-1][0] - pts[0][0] if len(pts) > 1 else 0:.0f} s '
                     f'(peak {peak:.1f} tasks/s)<br>{sparkline(pts)}</div>')
        running = [m for m in maps if not m.get("finished")]
        for m in running[:5]:
            total = m.get("total")
            of = total if total is not None else f'{m.get("submitted", 0)}+'
            parts.append(f'<div>map <code>{html.escape(str(m.get("name")))}</code> '
                         f'{_bar(m.get("done", 0), total or m.get("submitted"))} {m.get("done", 0)}/{of}</div>')
    parts.append("</div>")
    return "".join(parts)


class Dashboard(W.VBox):
    """The live dashboard widget; ``close()`` detaches it from the cluster."""

    def __init__(self, feed, **kwargs):
        self._feed = feed
        self._panel = W.HTML(value=render(feed.latest, feed.history, []))
        super().__init__(children=[self._panel], **kwargs)
        self._lock = threading.Lock()
        self._last_sent = 0.0
        self.updates = 0
        self._remove = feed.add_listener(self._on_status)

    def _on_status(self, status: dict):
        """Runs on the meta-stream thread at the feed's pace (~5/s); throttled, diffed."""
        with self._lock:
            now = time.monotonic()
            final = status.get("state") != "running"
            if not final and now - self._last_sent < 1.0 / MAX_RATE:
                return  # the next snapshot (0.2 s away) carries this change too
            maps = [] if final else safe_maps()
            value = render(status, self._feed.history, maps)
            if value == self._panel.value:
                return
            self._panel.value = value
            self._last_sent = now
            self.updates += 1

    def close(self):
        remove, self._remove = getattr(self, "_remove", None), None
        if remove is not None:
            remove()
        super().close()
