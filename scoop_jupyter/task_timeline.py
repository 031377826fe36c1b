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
from scoop.snapshot import plural

from .views import seconds

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


#: rows drawn at most: past that, the workers that ran the most (a 1,000-worker timeline
#: would be 16,000 px tall); the headline says how many are left out
MAX_ROWS = 64


def headline(recs: list[dict], empty: str | None = None) -> str:
    """"56 tasks (518 inputs) on 2 workers over 1.2 s": the text every view of the timeline
    uses (a task is a submit or a map chunk; inputs are what ``done`` counts elsewhere)."""
    if not recs:
        return f"timeline: {empty or 'no finished tasks yet'}"
    span = max(r["end"] for r in recs) - min(r["start"] for r in recs)
    inputs = sum(int(r.get("inputs", 1)) for r in recs)
    ran = len({r.get("worker") for r in recs})
    return (f"{plural(len(recs), 'task')} ({plural(inputs, 'input')}) on {plural(ran, 'worker')} "
            f"over {seconds(span)}")


class _Layout:
    """Where things go: the time axis, the rows (workers) and the colours (functions)."""

    def __init__(self, recs, width, row, now, workers, max_rows):
        self.t0 = min(r["start"] for r in recs)
        t1 = max(max(r["end"] for r in recs), now or 0.0)
        self.span = max(t1 - self.t0, 1e-3)
        names = sorted({r.get("worker") or "?" for r in recs} | {w for w in workers if w}, key=_worker_key)
        if len(names) > max_rows:  # the workers that ran the most
            count: dict = {}
            for r in recs:
                count[r.get("worker") or "?"] = count.get(r.get("worker") or "?", 0) + 1
            names = sorted(sorted(names, key=lambda w: -count.get(w, 0))[:max_rows], key=_worker_key)
        self.workers = names
        self.hidden = len({r.get("worker") or "?" for r in recs} | {w for w in workers if w}) - len(names)
        self.rows = {w: i for i, w in enumerate(names)}
        self.functions = []
        for r in sorted(recs, key=lambda r: r["start"]):
            if r.get("name") not in self.functions:
                self.functions.append(r.get("name"))
        self.colour = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(self.functions)}
        self.left, self.top, self.bottom, self.row, self.width = 44, 4, 22, row, width
        self.plot_w = width - self.left - 8
        self.height = self.top + row * len(names) + self.bottom
        self.scale = self.plot_w / self.span


def render(recs: list[dict], width: int = 640, row: int = 16, now: float | None = None,
           empty: str | None = None, workers: list[str] = (), max_bars: int = MAX_BARS,
           max_rows: int = MAX_ROWS) -> str:
    """The timeline of ``recs`` as an HTML fragment (a headline, a legend and an SVG);
    ``workers`` get a row even when they ran nothing (an idle worker is worth seeing).  Bars
    thinner than a pixel, or than the share of the width ``max_bars`` leaves each, merge with
    their neighbours of the same function, so the size stays bounded whatever the number of
    tasks; at most ``max_rows`` rows are drawn."""
    if not recs:
        return (f'<div class="scoop-timeline scoop-timeline-empty" style="color:#757575">'
                f'{html.escape(headline(recs, empty))}</div>')
    lay = _Layout(recs, width, row, now, workers, max_rows)
    parts = [f'<svg class="scoop-timeline-svg" width="{width}" height="{lay.height}" '
             f'xmlns="http://www.w3.org/2000/svg" style="font:10px sans-serif">',
             _rows_svg(lay), _bars_svg(lay, recs, max_bars), _axis_svg(lay), "</svg>"]
    hidden = f" ({lay.hidden} more workers not drawn)" if lay.hidden > 0 else ""
    return (f'<div class="scoop-timeline"><div>{html.escape(headline(recs))}{hidden} &middot; '
            f'{_legend(lay, recs)}</div>{"".join(parts)}</div>')


def _rows_svg(lay: _Layout) -> str:
    parts = []
    for i, w in enumerate(lay.workers):
        y = lay.top + i * lay.row
        if i % 2 == 0:
            parts.append(f'<rect x="{lay.left}" y="{y}" width="{lay.plot_w}" height="{lay.row}" '
                         f'fill="rgba(127,127,127,0.07)"/>')
        parts.append(f'<text x="{lay.left - 4}" y="{y + lay.row * 0.7:.1f}" text-anchor="end" '
                     f'fill="currentColor">{html.escape(w)}</text>')
    return "".join(parts)


def _bars_svg(lay: _Layout, recs: list[dict], max_bars: int) -> str:
    """One bar per task, or per run of tasks too thin to draw apart."""
    n_rows = max(len(lay.workers), 1)
    merge_px = MERGE_PX if len(recs) <= max_bars else max(MERGE_PX, lay.plot_w * n_rows / max_bars)
    dense = len(recs) > max_bars  # then neighbours merge whatever their function
    # a thin light edge keeps neighbouring tasks apart (a failed one is outlined in red)
    parts = ['<g stroke="rgba(255,255,255,0.8)" stroke-width="0.5">']
    by_worker: dict = {}
    for r in sorted(recs, key=lambda r: (r.get("worker") or "?", r["start"])):
        by_worker.setdefault(r.get("worker") or "?", []).append(r)
    for w, rs in by_worker.items():
        if w not in lay.rows:
            continue
        y = lay.top + lay.rows[w] * lay.row + 2
        cur = None
        for r in rs:
            x0 = lay.left + (r["start"] - lay.t0) * lay.scale
            x1 = lay.left + (r["end"] - lay.t0) * lay.scale
            ok, name, secs = r.get("ok", True), r.get("name"), r["end"] - r["start"]
            if cur is not None and cur.ok == ok and x0 - cur.x1 < merge_px \
                    and _merges(cur, name, x1 - x0, merge_px, dense):
                cur.add(x1, name, int(r.get("inputs", 1)), secs)
                continue
            if cur is not None:
                parts.append(cur.svg(y, lay.row, lay.colour))
            cur = _Run(x0, x1, name, ok, int(r.get("inputs", 1)), secs)
        if cur is not None:
            parts.append(cur.svg(y, lay.row, lay.colour))
    parts.append("</g>")
    return "".join(parts)


def _axis_svg(lay: _Layout) -> str:
    axis_y = lay.top + lay.row * len(lay.workers)
    parts = [f'<line x1="{lay.left}" y1="{axis_y}" x2="{lay.left + lay.plot_w}" y2="{axis_y}" '
             f'stroke="currentColor" stroke-opacity="0.5"/>']
    ticks = _ticks(lay.span, lay.plot_w)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else lay.span
    for v in ticks:
        x = lay.left + v * lay.scale
        parts.append(f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 4}" stroke="currentColor" '
                     f'stroke-opacity="0.5"/><text x="{x:.1f}" y="{axis_y + 14}" text-anchor="middle" '
                     f'fill="currentColor">{_fmt_tick(v, step)}</text>')
    return "".join(parts)


def _legend(lay: _Layout, recs: list[dict]) -> str:
    swatch = '<span style="white-space:nowrap"><span style="display:inline-block;width:9px;height:9px;'
    legend = " ".join(f'{swatch}background:{lay.colour[n]};margin-right:3px"></span>'
                      f'{html.escape(str(n))}</span>' for n in lay.functions[:12])
    failed = sum(1 for r in recs if not r.get("ok", True))
    if failed:
        legend += f' {swatch}border:2px solid {FAILED};margin-right:3px"></span>failed ({failed})</span>'
    return legend


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
