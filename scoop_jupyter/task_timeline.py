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
MAX_BARS = 4000


def available() -> bool:
    return hasattr(scoop.origin, "timeline")


def records(since: float = 0.0) -> list[dict]:
    """Finished tasks since ``since`` (epoch s); [] when the core keeps no timeline."""
    fn = getattr(scoop.origin, "timeline", None)
    if fn is None or not scoop.origin.is_attached():
        return []
    try:
        return list(fn(since))
    except Exception:
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
           empty: str | None = None) -> str:
    """The timeline of ``recs`` as an HTML fragment (an SVG plus a legend)."""
    if not recs:
        msg = empty or ("no finished tasks yet" if available()
                        else "the task timeline needs a SCOOP core that records task times")
        return f'<div class="scoop-timeline scoop-timeline-empty" style="color:#757575">timeline: {msg}</div>'
    t0 = min(r["start"] for r in recs)
    t1 = max(max(r["end"] for r in recs), now or 0.0)
    span = max(t1 - t0, 1e-3)
    workers = sorted({r.get("worker") or "?" for r in recs}, key=_worker_key)
    names = []
    for r in sorted(recs, key=lambda r: r["start"]):
        if r.get("name") not in names:
            names.append(r.get("name"))
    colour = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}
    left, top, bottom = 44, 4, 22
    plot_w = width - left - 8
    height = top + row * len(workers) + bottom
    scale = plot_w / span
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
    bars = 0
    by_worker: dict = {}
    for r in sorted(recs, key=lambda r: (r.get("worker") or "?", r["start"])):
        by_worker.setdefault(r.get("worker") or "?", []).append(r)
    for w, rs in by_worker.items():
        y = top + rows[w] * row + 2
        cur = None  # [x0, x1, name, ok, inputs, count]
        for r in rs:
            x0 = left + (r["start"] - t0) * scale
            x1 = left + (r["end"] - t0) * scale
            ok = r.get("ok", True)
            if cur is not None and cur[2] == r.get("name") and cur[3] == ok and x0 - cur[1] < MERGE_PX \
                    and (x1 - x0 < MERGE_PX or cur[1] - cur[0] < MERGE_PX):
                cur[1] = max(cur[1], x1)
                cur[4] += int(r.get("inputs", 1))
                cur[5] += 1
                cur[6] += r["end"] - r["start"]
                continue
            if cur is not None:
                bars += 1
                parts.append(_bar(cur, y, row, colour))
            cur = [x0, x1, r.get("name"), ok, int(r.get("inputs", 1)), 1, r["end"] - r["start"]]
            if bars > MAX_BARS:
                break
        if cur is not None:
            bars += 1
            parts.append(_bar(cur, y, row, colour))
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
    head = (f"{len(recs)} task{'s' if len(recs) != 1 else ''} ({inputs} inputs) on {len(workers)} "
            f"worker{'s' if len(workers) != 1 else ''} over {span:.1f} s")
    return (f'<div class="scoop-timeline"><div>{head} &middot; {legend}</div>'
            f'{"".join(parts)}</div>')


def _bar(cur, y, row, colour) -> str:
    x0, x1, name, ok, inputs, count, secs = cur
    w = max(x1 - x0, 0.6)
    stroke = "" if ok else f' stroke="{FAILED}" stroke-width="1.5"'
    what = f"{count} tasks, {inputs} inputs" if count > 1 else f"{inputs} input{'s' if inputs != 1 else ''}"
    return (f'<rect class="scoop-task" x="{x0:.1f}" y="{y}" width="{w:.1f}" height="{row - 4}" '
            f'fill="{colour.get(name, PALETTE[0])}"{stroke}><title>{html.escape(str(name))}: {what}, '
            f'{secs * 1000:.1f} ms</title></rect>')


def recent(window: float = 60.0) -> list[dict]:
    """The tasks of the last ``window`` seconds (the last maps, for a live view)."""
    return records(time.time() - window)
