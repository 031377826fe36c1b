"""The task timeline: one row per worker, one bar per task or map chunk, coloured by function.

Where did the time go: idle gaps, stragglers, one slow function among fast ones, a worker
that joined late.  Drawn as inline SVG from ``scoop.origin.timeline()`` (finished tasks with
their worker, function and start/end times), so it needs no plotting library and renders in
the dashboard widget, in ``%scoop_cluster timeline`` and in a saved notebook alike.
"""
from __future__ import annotations

import html
import re
import time

import scoop.origin

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f", "#aec7e8")
FAILED = "#d62728"
#: bars narrower than this many pixels merge with their neighbours of the same function
MERGE_PX = 1.0
#: about how many bars a timeline draws at most: denser ones merge runs of the same function
MAX_BARS = 1500


def records(since: float = 0.0) -> list[dict]:
    """Finished tasks since ``since`` (epoch s); [] when no cluster runs."""
    if not scoop.origin.is_attached():
        return []
    for _ in range(5):  # read from a view's thread while the kernel's thread appends: retried
        try:
            return list(scoop.origin.timeline(since))
        except RuntimeError:
            time.sleep(0.001)
        except Exception:
            return []
    return []


def _worker_key(name: str):
    """Natural order: w2 before w10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _ticks(span: float, width: float) -> list[float]:
    """Round tick steps (1, 2, 5 x 10^k) about 80 px apart."""
    target = span * 80 / max(width, 1)
    step = 1e-3
    for k in range(-3, 6):
        for m in (1, 2, 5):
            step = m * 10 ** k
            if step >= target:
                return [i * step for i in range(int(span / step) + 1)]
    return [0.0]


def _fmt_tick(v: float, step: float) -> str:
    return f"{v:.0f} s" if step >= 1 else f"{v:.1f} s" if step >= 0.1 else f"{v * 1000:.0f} ms"


def render(recs: list[dict], width: int = 640, row: int = 16, now: float | None = None,
           empty: str | None = None, workers: list[str] = (), max_bars: int = MAX_BARS) -> str:
    """The timeline of ``recs`` as an HTML fragment (an SVG plus a legend); ``workers`` get a
    row even when they ran nothing (an idle worker is worth seeing).  Bars thinner than a pixel,
    or than the share of the width ``max_bars`` leaves each, merge with their neighbours of the
    same function, so the size stays bounded whatever the number of tasks."""
    if not recs:
        msg = empty or "no finished tasks yet"
        return f'<div class="scoop-timeline scoop-timeline-empty" style="color:#757575">timeline: {msg}</div>'
    t0 = min(r["start"] for r in recs)
    t1 = max(max(r["end"] for r in recs), now or 0.0)
    span = max(t1 - t0, 1e-3)
    workers = sorted({r.get("worker") or "?" for r in recs} | {w for w in workers if w}, key=_worker_key)
    names = []
    for r in sorted(recs, key=lambda r: r["start"]):
        if r.get("name") not in names:
            names.append(r.get("name"))
    colour = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}
    left, top, bottom = 44, 4, 22
    plot_w = width - left - 8
    height = top + row * len(workers) + bottom
    scale = plot_w / span
    merge_px = MERGE_PX if len(recs) <= max_bars else max(MERGE_PX, plot_w * len(workers) / max_bars)
    parts = [f'<svg class="scoop-timeline-svg" width="{width}" height="{height}" '
             f'xmlns="http://www.w3.org/2000/svg" style="font:10px sans-serif">']
    for i, w in enumerate(workers):
        y = top + i * row
        if i % 2 == 0:
            parts.append(f'<rect x="{left}" y="{y}" width="{plot_w}" height="{row}" '
                         f'fill="rgba(127,127,127,0.07)"/>')
        parts.append(f'<text x="{left - 4}" y="{y + row * 0.7:.1f}" text-anchor="end" fill="currentColor">'
                     f'{html.escape(w)}</text>')
    rows = {w: i for i, w in enumerate(workers)}
    # a thin light edge keeps neighbouring tasks apart (a failed one is outlined in red)
    parts.append('<g stroke="rgba(255,255,255,0.8)" stroke-width="0.5">')
    by_worker: dict = {}
    for r in sorted(recs, key=lambda r: (r.get("worker") or "?", r["start"])):
        by_worker.setdefault(r.get("worker") or "?", []).append(r)
    dense = len(recs) > max_bars  # then neighbours merge whatever their function
    for w, rs in by_worker.items():
        y = top + rows[w] * row + 2
        cur = None
        for r in rs:
            x0 = left + (r["start"] - t0) * scale
            x1 = left + (r["end"] - t0) * scale
            ok = r.get("ok", True)
            name = r.get("name")
            secs = r["end"] - r["start"]
            if cur is not None and cur.ok == ok and x0 - cur.x1 < merge_px and _merges(cur, name, x1 - x0,
                                                                                     merge_px, dense):
                cur.add(x1, name, int(r.get("inputs", 1)), secs)
                continue
            if cur is not None:
                parts.append(cur.svg(y, row, colour))
            cur = _Run(x0, x1, name, ok, int(r.get("inputs", 1)), secs)
        if cur is not None:
            parts.append(cur.svg(y, row, colour))
    parts.append("</g>")
    axis_y = top + row * len(workers)
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" stroke="currentColor" '
                 f'stroke-opacity="0.5"/>')
    ticks = _ticks(span, plot_w)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else span
    for v in ticks:
        x = left + v * scale
        parts.append(f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 4}" stroke="currentColor" '
                     f'stroke-opacity="0.5"/><text x="{x:.1f}" y="{axis_y + 14}" text-anchor="middle" '
                     f'fill="currentColor">{_fmt_tick(v, step)}</text>')
    parts.append("</svg>")
    swatch = '<span style="white-space:nowrap"><span style="display:inline-block;width:9px;height:9px;'
    legend = " ".join(f'{swatch}background:{colour[n]};margin-right:3px"></span>{html.escape(str(n))}</span>'
                      for n in names[:12])
    failed = sum(1 for r in recs if not r.get("ok", True))
    if failed:
        legend += f' {swatch}border:2px solid {FAILED};margin-right:3px"></span>failed ({failed})</span>'
    inputs = sum(int(r.get("inputs", 1)) for r in recs)
    ran = len({r.get("worker") for r in recs})
    head = (f"{len(recs)} task{'s' if len(recs) != 1 else ''} ({inputs} inputs) on {ran} "
            f"worker{'s' if ran != 1 else ''} over {span:.1f} s")
    return (f'<div class="scoop-timeline"><div>{head} &middot; {legend}</div>'
            f'{"".join(parts)}</div>')


def _merges(cur, name, width, merge_px, dense) -> bool:
    """Whether a task joins the bar before it: a thin one joins a run of its own function;
    when tasks are too many, a thin one also joins a bar of other functions up to ``merge_px``
    wide (so a row holds at most ~width / merge_px of those)."""
    narrow = width < merge_px
    cur_narrow = cur.x1 - cur.x0 < merge_px
    if len(cur.secs) == 1 and name in cur.secs:
        return narrow or cur_narrow
    return dense and narrow and cur_narrow


class _Run:
    """One bar: a task, or neighbouring tasks too thin to draw apart."""

    __slots__ = ("x0", "x1", "ok", "inputs", "count", "secs")

    def __init__(self, x0, x1, name, ok, inputs, secs):
        self.x0, self.x1, self.ok, self.inputs, self.count = x0, x1, ok, inputs, 1
        self.secs = {name: secs}

    def add(self, x1, name, inputs, secs):
        self.x1 = max(self.x1, x1)
        self.inputs += inputs
        self.count += 1
        self.secs[name] = self.secs.get(name, 0.0) + secs

    def svg(self, y, row, colour) -> str:
        name = max(self.secs, key=self.secs.get)  # coloured by the function that took most of it
        names = ", ".join(str(n) for n in self.secs)
        stroke = "" if self.ok else f' stroke="{FAILED}" stroke-width="1.5"'
        n = self.inputs
        what = f"{self.count} tasks, {n} inputs" if self.count > 1 else f"{n} input{'s' if n != 1 else ''}"
        width = max(self.x1 - self.x0, 0.6)
        return (f'<rect class="scoop-task" x="{self.x0:.1f}" y="{y}" width="{width:.1f}" '
                f'height="{row - 4}" fill="{colour.get(name, PALETTE[0])}"{stroke}><title>'
                f'{html.escape(names)}: {what}, {sum(self.secs.values()) * 1000:.1f} ms</title></rect>')


def recent(window: float = 60.0) -> list[dict]:
    """The tasks of the last ``window`` seconds (the last maps, for a live view)."""
    return records(time.time() - window)
