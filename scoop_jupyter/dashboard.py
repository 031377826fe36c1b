"""Live load dashboard: a plain-ipywidgets view of the cluster, fed by the status feed.

Everything live is rendered into ``ipywidgets.HTML`` (worker table, totals, an SVG throughput
plot with axes, the progress of running maps, recent worker output), so one refresh is one
small widget state message; the view refreshes only when the rendering changed and at most
``MAX_RATE`` times a second.  The task timeline, the bulky part, is a second HTML widget
refreshed at most ``TIMELINE_RATE`` times a second.  The kernel never polls workers: the data
comes from the broker's meta stream, which already carries every worker's load.
"""
from __future__ import annotations

import html
import math
import re
import threading
import time

import ipywidgets as W

from . import task_timeline as _timeline
from .status import failed_texts, pending_text, safe_maps

MAX_RATE = 10.0
#: the live timeline shows the tasks of this many last seconds, refreshed this many times a second
TIMELINE_WINDOW = 30.0
TIMELINE_RATE = 1.0
#: about how many bars the live timeline draws (its HTML stays ~100 KiB)
LIVE_BARS = 600

_STATE_COLORS = {"busy": "#2e7d32", "idle": "#757575", "joining": "#1565c0", "lost": "#c62828"}
_CELL = "padding:1px 8px;text-align:right"
_CELL_L = "padding:1px 8px;text-align:left"


def _mem(n: int) -> str:
    if not n:
        return "-"
    return f"{n / 2**20:.0f} MiB" if n < 10 * 2**30 else f"{n / 2**30:.1f} GiB"


def sparkline(points, width: int = 300, height: int = 60) -> str:
    """Throughput over time as an inline SVG line chart with axes: a tasks/s scale on the
    left, seconds before now underneath (no plotting library needed)."""
    left, bottom, top = 34, 14, 4
    pw, ph = width - left - 4, height - bottom - top
    parts = [f'<svg class="scoop-throughput" width="{width}" height="{height}" '
             f'xmlns="http://www.w3.org/2000/svg" style="font:9px sans-serif">',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="rgba(127,127,127,0.08)"/>']
    if len(points) >= 2:
        t0, t1 = points[0][0], points[-1][0]
        span = max(t1 - t0, 1e-6)
        top_v = _nice_max(max(v for _, v in points))
        coords = " ".join(f"{left + (t - t0) / span * pw:.1f},{top + ph - v / top_v * ph:.1f}"
                          for t, v in points)
        parts.append(f'<polyline fill="none" stroke="#1976d2" stroke-width="1.5" points="{coords}"/>')
        for v in (0.0, top_v / 2, top_v):
            y = top + ph - v / top_v * ph
            parts.append(f'<text x="{left - 3}" y="{y + 3:.1f}" text-anchor="end" fill="currentColor">'
                         f'{_num(v)}</text><line x1="{left - 2}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" '
                         f'stroke="currentColor" stroke-opacity="0.5"/>')
        for frac in (0.0, 0.5, 1.0):
            x = left + frac * pw
            ago = span * (1 - frac)
            label = "now" if ago < 0.05 else f"-{ago:.0f} s"
            anchor = "start" if frac == 0 else "end" if frac == 1 else "middle"
            parts.append(f'<text x="{x:.1f}" y="{height - 3}" text-anchor="{anchor}" '
                         f'fill="currentColor">{label}</text>')
    axis = 'stroke="currentColor" stroke-opacity="0.5"'
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" {axis}/>'
                 f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" {axis}/></svg>')
    return "".join(parts)


def _nice_max(v: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at or above ``v`` (so the scale reads well)."""
    if v <= 0:
        return 1.0
    k = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 5, 10):
        if m * k >= v:
            return m * k
    return 10 * k


def _num(v: float) -> str:
    return f"{v:.0f}" if v >= 10 or v == int(v) else f"{v:.1f}"


def _bar(done: int, total: int | None, width: int = 160) -> str:
    frac = 0.0 if not total else min(1.0, done / total)
    return (f'<span style="display:inline-block;width:{width}px;height:9px;'
            f'background:rgba(127,127,127,0.2);vertical-align:middle">'
            f'<span style="display:block;width:{frac * 100:.1f}%;height:100%;background:#1976d2">'
            f'</span></span>')


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name or "~")]


def worker_table(workers: list[dict]) -> str:
    cols = ("worker", "host", "pid", "state", "queued", "running", "done", "CPU %", "memory")
    rows = ["<tr>" + "".join(f'<th style="{_CELL_L if c in ("worker", "host", "state") else _CELL}">{c}</th>'
                             for c in cols) + "</tr>"]
    for w in sorted(workers, key=lambda w: _natural(w.get("name") or w["id"])):
        sc = _STATE_COLORS.get(w["state"], "#757575")
        rows.append(
            f'<tr class="scoop-worker" data-state="{w["state"]}">'
            f'<td style="{_CELL_L}">{html.escape(w.get("name") or w["id"] or "-")}</td>'
            f'<td style="{_CELL_L}">{html.escape(w["host"])}</td><td style="{_CELL}">{w["pid"]}</td>'
            f'<td style="{_CELL_L};color:{sc}">{w["state"]}</td>'
            f'<td style="{_CELL}">{w["queued"]}</td><td style="{_CELL}">{w["running"]}</td>'
            f'<td style="{_CELL}">{w["done"]}</td><td style="{_CELL}">{w["cpu"]:.0f}</td>'
            f'<td style="{_CELL}">{_mem(w["mem"])}</td></tr>')
    return f'<table style="border-collapse:collapse;margin:4px 0">{"".join(rows)}</table>'


def headline(status: dict, stale: str | None = None) -> str:
    state = status.get("state", "stopped")
    t = status.get("totals", {})
    color = "#2e7d32" if state == "running" and not stale else "#757575"
    word = stale or state
    head = [f'<b>SCOOP cluster</b> <span class="scoop-dashboard-state" style="color:{color}">'
            f'&#9679; {word}</span>']
    if state == "running" and not stale:
        more = f' (+{t["pending_workers"]} pending)' if t.get("pending_workers") else ""
        head.append(f'{t.get("workers", 0)} workers{more} &middot; '
                    f'busy {t.get("busy", 0.0) * 100:.0f}% &middot; '
                    f'{t.get("done", 0)} done &middot; {t.get("queued", 0)} queued &middot; '
                    f'{t.get("running", 0)} running &middot; {t.get("rate", 0.0):.1f} tasks/s')
    return f'<div>{" &middot; ".join(head)}</div>'


def jobs_lines(status: dict) -> str:
    """Batch jobs: the workers still waiting in the queue, and jobs whose workers failed to start."""
    if status.get("state") != "running":
        return ""
    parts = []
    pending = pending_text(status)
    if pending:
        parts.append(f'<div class="scoop-pending" style="color:#1565c0">&#9203; {html.escape(pending)}</div>')
    for text in failed_texts(status):
        parts.append(f'<div class="scoop-job-failed" style="color:#c62828">{html.escape(text)}</div>')
    return "".join(parts)


def log_table(logs: dict, lines: int = 3) -> str:
    """The last lines each worker printed (the full log: ``%scoop_cluster logs``)."""
    if not logs:
        return ""
    rows = []
    for name in sorted(logs, key=_natural):
        recent = list(logs[name])[-lines:]
        text = "<br>".join(f'<span style="color:{"#c62828" if st == "stderr" else "inherit"}">'
                           f'{html.escape(line[:160])}</span>' for _, st, line in recent)
        rows.append(f'<tr><td style="{_CELL_L};vertical-align:top">{html.escape(name)}</td>'
                    f'<td style="{_CELL_L};font-family:monospace">{text}</td></tr>')
    return (f'<div class="scoop-logs" style="margin-top:4px">recent worker output '
            f'(<code>%scoop_cluster logs</code> for more)<table style="border-collapse:collapse">'
            f'{"".join(rows)}</table></div>')


def render(status: dict, history, maps: list[dict], logs: dict | None = None) -> str:
    """The dashboard's HTML for a normalised status (see :mod:`scoop_jupyter.status`)."""
    state = status.get("state", "stopped")
    parts = [f'<div class="scoop-dashboard" data-state="{state}" style="font-size:12px;line-height:1.4">',
             headline(status)]
    if state == "running":
        parts.append(jobs_lines(status))
        parts.append(worker_table(status.get("workers", [])))
        pts = list(history)
        peak = max((v for _, v in pts), default=0.0)
        span = pts[-1][0] - pts[0][0] if len(pts) > 1 else 0
        parts.append(f'<div>throughput (tasks/s), last {span:.0f} s, peak {peak:.1f}<br>'
                     f'{sparkline(pts)}</div>')
        running = [m for m in maps if not m.get("finished")]
        for m in running[:5]:
            total = m.get("total")
            of = total if total is not None else f'{m.get("submitted", 0)}+'
            parts.append(f'<div>map <code>{html.escape(str(m.get("name")))}</code> '
                         f'{_bar(m.get("done", 0), total or m.get("submitted"))} '
                         f'{m.get("done", 0)}/{of}</div>')
        parts.append(log_table(logs or {}))
    parts.append("</div>")
    return "".join(parts)


class Dashboard(W.VBox):
    """The live dashboard widget; ``close()`` detaches it from the cluster."""

    def __init__(self, feed, logs: dict | None = None, **kwargs):
        self._feed = feed
        self._logs = logs if logs is not None else {}
        self._panel = W.HTML(value=self._render(feed.latest))
        # the timeline is the bulky part: its own widget, refreshed at most TIMELINE_RATE a second
        self._timeline = W.HTML(value=self._render_timeline(feed.latest) or "")
        super().__init__(children=[self._panel, self._timeline], **kwargs)
        self._lock = threading.Lock()
        self._last_sent = 0.0
        self._last_timeline = 0.0
        self.updates = 0
        self._remove = feed.add_listener(self._on_status)

    def _on_status(self, status: dict):
        """Runs on the meta-stream thread at the feed's pace (~5/s); throttled, diffed."""
        with self._lock:
            now = time.monotonic()
            final = status.get("state") != "running"
            if not final and now - self._last_sent < 1.0 / MAX_RATE:
                return  # the next snapshot (0.2 s away) carries this change too
            if not final and now - self._last_timeline >= 1.0 / TIMELINE_RATE:
                tl = self._render_timeline(status)
                if tl is not None and tl != self._timeline.value:
                    self._timeline.value = tl
                self._last_timeline = now
            value = self._render(status)
            if value == self._panel.value:
                return
            self._panel.value = value
            self._last_sent = now
            self.updates += 1

    def _render(self, status: dict) -> str:
        if status.get("state") != "running":
            return render(status, self._feed.history, [])
        return render(status, self._feed.history, safe_maps(), self._logs)

    def _render_timeline(self, status: dict) -> str | None:
        """The live timeline's HTML, or None to leave the last one (a stopped cluster's tasks
        are still worth looking at)."""
        if status.get("state") != "running":
            return None
        recs = _timeline.recent(TIMELINE_WINDOW)
        names = [w.get("name") for w in status.get("workers", []) if w.get("state") in ("idle", "busy")]
        svg = _timeline.render(recs, now=time.time() if recs else None, workers=names, max_bars=LIVE_BARS)
        return (f'<div class="scoop-dashboard-timeline" style="font-size:12px;line-height:1.4">'
                f'<div>task timeline, last {TIMELINE_WINDOW:.0f} s</div>{svg}</div>')

    def close(self):
        remove, self._remove = getattr(self, "_remove", None), None
        if remove is not None:
            remove()
        super().close()
