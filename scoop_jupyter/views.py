"""The snapshot model (:mod:`scoop.snapshot`) as text and HTML, for every notebook view.

The dashboard, ``%scoop_cluster status``, the status and cluster cards and the static records
left in saved notebooks all render from here, so they word and count things the same way.
Views stay readable at 1,000 workers: totals first, a CPU histogram, the busiest and the
idle workers, then a scrollable list (text output lists ``TEXT_ROWS`` of them).

Only the standard library: these functions are pure, cheap and unit-tested on synthetic
snapshots (tests/test_views.py).
"""
from __future__ import annotations

import html
import math
import socket
import time

from scoop.snapshot import CPU_BINS, natural, plural

#: worker rows printed by the text status (the HTML lists every worker in a scrollable box)
TEXT_ROWS = 24
#: from this many workers on, views lead with the summary (histogram, busiest, idle)
MANY = 16
#: where the cards send a user who wants to read more: the documentation this package ships
#: inside its JupyterLab extension (built by docs/build.py), served offline by the Jupyter server
DOCS_PATH = "lab/extensions/scoop-jupyter/static/docs/index.html"

STATE_COLORS = {"busy": "#2e7d32", "idle": "#757575", "joining": "#1565c0", "lost": "#c62828"}
BOX = ("font-size:12px;line-height:1.4;border-left:3px solid #1976d2;padding:4px 10px;"
       "background:rgba(127,127,127,0.05)")
_CELL = "padding:1px 8px;text-align:right"
_CELL_L = "padding:1px 8px;text-align:left"


# ---- words and numbers ---------------------------------------------------------------------------
def docs_url() -> str:
    """The shipped documentation's address on this Jupyter server (JupyterHub's prefix too)."""
    import os
    return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/").rstrip("/") + "/" + DOCS_PATH


def mem(n) -> str:
    if not n:
        return "-"
    return f"{n / 2**20:.0f} MiB" if n < 10 * 2**30 else f"{n / 2**30:.1f} GiB"


def seconds(s: float) -> str:
    """A duration as people read it: "20 ms", "1.5 s", "42 s", "3 min 05 s"."""
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    m, s = divmod(int(s + 0.5), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def rate(r: float) -> str:
    return f"{r:.1f}/s" if r < 100 else f"{r:,.0f}/s"


def state_word(snap: dict, stale: str | None = None) -> str:
    """"running", "stopped", or "no cluster yet" when none was ever started here."""
    if stale:
        return stale
    if snap.get("state") == "running":
        return "running"
    return "stopped" if snap.get("started") else "no cluster yet"


def totals_text(snap: dict) -> str:
    """The one-line figures every view leads with: ``4 workers (+2 pending) · busy 50% ·
    518 done · 3 queued · 2 running · 24.7/s``."""
    t = snap.get("totals", {})
    more = []
    if t.get("pending_workers"):
        more.append(f"+{t['pending_workers']} pending")
    if t.get("joining"):
        more.append(f"+{t['joining']} joining")
    if t.get("lost"):
        more.append(f"{t['lost']} lost")
    extra = f" ({', '.join(more)})" if more else ""
    return (f"{plural(int(t.get('workers', 0)), 'worker')}{extra} · busy {t.get('busy', 0.0) * 100:.0f}% · "
            f"{t.get('done', 0)} done · {t.get('queued', 0)} queued · {t.get('running', 0)} running · "
            f"{rate(float(t.get('rate', 0.0)))}")


def pending_text(snap: dict) -> str:
    """"4 workers pending in the queue (jobs 12, 13: Resources)", or "" when none wait: the one
    wording every view uses for workers not started yet."""
    jobs = [j for j in snap.get("jobs") or () if j.get("state") == "pending" and not j.get("replaces")]
    if not jobs:
        return ""
    n = sum(len(j.get("workers") or ()) for j in jobs)
    ids = ", ".join(str(j["id"]) for j in jobs)
    reasons = sorted({j["reason"] for j in jobs if j.get("reason")})
    why = f": {', '.join(reasons)}" if reasons else ""
    return f"{plural(n, 'worker')} pending in the queue ({'jobs' if len(jobs) > 1 else 'job'} {ids}{why})"


def failed_texts(snap: dict) -> list[str]:
    """One line per batch job whose workers failed to start: its id, workers and the error."""
    out = []
    for j in snap.get("jobs") or ():
        if j.get("error"):
            lines = [x for x in str(j["error"]).splitlines() if x.strip()]
            detail = lines[0] + (f" ... {lines[-1].strip()}" if len(lines) > 1 else "")
            out.append(f"job {j['id']} ({', '.join(j.get('workers') or ())}) failed: {detail}")
    return out


# ---- text ---------------------------------------------------------------------------------------
def status_text(snap: dict, stale: str | None = None) -> str:
    """``%scoop_cluster status`` as text: totals, jobs, hosts, then the workers (the first
    ``TEXT_ROWS``, busiest first, when there are more)."""
    if snap.get("state") != "running" and not stale:
        return ("no SCOOP cluster yet: start one with %scoop_cluster start -n N" if not snap.get("started")
                else "no SCOOP cluster is running (stopped)")
    lines = [f"SCOOP cluster{' (' + stale + ')' if stale else ''}: {totals_text(snap).replace(' · ', ', ')}"]
    lines += [x for x in [pending_text(snap)] + failed_texts(snap) if x]
    s = snap.get("summary", {})
    workers = snap.get("workers", [])
    if len(workers) >= MANY:
        lines.append(f"CPU % histogram ({CPU_BINS} bands of {100 // CPU_BINS}): "
                     f"{' '.join(str(x) for x in s.get('cpu_histogram', []))}")
        if s.get("busiest"):
            lines.append(f"busiest: {', '.join(s['busiest'])}")
        if s.get("idle"):
            idle = s.get("states", {}).get("idle", 0)
            lines.append(f"idle ({idle}): {', '.join(s['idle'])}{' ...' if idle > len(s['idle']) else ''}")
    hosts = s.get("hosts") or []
    if hosts:
        me = socket.gethostname()
        lines += ["", f"{'host':<24}{'workers':>8}{'busy':>6}{'done':>10}"]
        for h in hosts[:TEXT_ROWS]:
            label = h["host"] + (" (here)" if h["host"] == me else "")
            lines.append(f"{label:<24}{h['workers']:>8}{h['busy']:>6}{h['done']:>10}")
        if len(hosts) > TEXT_ROWS:
            lines.append(f"... and {len(hosts) - TEXT_ROWS} more hosts")
    lines += ["", f"{'worker':<8}{'host':<16}{'pid':>8}  {'state':<8}{'queued':>7}{'running':>8}"
                  f"{'done':>8}{'cpu %':>7}{'memory':>10}"]
    shown = first_rows(workers, TEXT_ROWS)
    for w in shown:
        lines.append(f"{w['name'] or w['id'] or '-':<8}{w['host'][:15]:<16}{w['pid']:>8}  "
                     f"{w['state']:<8}{w['queued']:>7}{w['running']:>8}"
                     f"{w['done']:>8}{w['cpu']:>7.0f}{mem(w['mem']):>10}")
    if len(workers) > len(shown):
        lines.append(f"... and {len(workers) - len(shown)} more workers "
                     f"(scoop_jupyter.status()['workers'] lists them all)")
    return "\n".join(lines)


def first_rows(workers: list[dict], n: int) -> list[dict]:
    """All rows in name order when they fit; else the busiest, then the rest, ``n`` in all (in
    name order)."""
    if len(workers) <= n:
        return workers
    order = {"busy": 0, "lost": 1, "joining": 2, "idle": 3}
    chosen = sorted(workers, key=lambda w: (order.get(w["state"], 4), -w["running"], natural(w["name"])))[:n]
    return sorted(chosen, key=lambda w: natural(w["name"]))


# ---- HTML ---------------------------------------------------------------------------------------
def headline_html(snap: dict, stale: str | None = None) -> str:
    word = state_word(snap, stale)
    color = "#2e7d32" if word == "running" else "#757575"
    head = (f'<b>SCOOP cluster</b> <span class="scoop-dashboard-state" style="color:{color}">'
            f'&#9679; {word}</span>')
    if snap.get("state") == "running" or stale:
        head += f' &middot; {html.escape(totals_text(snap)).replace(" · ", " &middot; ")}'
    return f"<div>{head}</div>"


def jobs_html(snap: dict) -> str:
    """Batch jobs: the workers still waiting in the queue, and jobs whose workers failed to start."""
    if snap.get("state") != "running":
        return ""
    parts = []
    pending = pending_text(snap)
    if pending:
        parts.append(f'<div class="scoop-pending" style="color:#1565c0">&#9203; {html.escape(pending)}</div>')
    for text in failed_texts(snap):
        parts.append(f'<div class="scoop-job-failed" style="color:#c62828">{html.escape(text)}</div>')
    return "".join(parts)


def histogram_html(counts: list[int], width: int = 200, height: int = 36) -> str:
    """Workers per CPU band as a small SVG bar chart (0 % left, 100 % right)."""
    top = max(counts or [0]) or 1
    bw = width / max(len(counts), 1)
    bars = "".join(f'<rect x="{i * bw + 1:.1f}" y="{height - 12 - c / top * (height - 14):.1f}" '
                   f'width="{bw - 2:.1f}" height="{c / top * (height - 14):.1f}" fill="#1976d2">'
                   f'<title>{c} at {i * 100 // len(counts)}-{(i + 1) * 100 // len(counts)} % CPU'
                   f'</title></rect>'
                   for i, c in enumerate(counts))
    return (f'<svg class="scoop-histogram" width="{width}" height="{height}" '
            f'xmlns="http://www.w3.org/2000/svg" '
            f'style="font:9px sans-serif;vertical-align:middle">{bars}'
            f'<text x="0" y="{height - 2}" fill="currentColor">0%</text>'
            f'<text x="{width}" y="{height - 2}" text-anchor="end" fill="currentColor">100% CPU</text></svg>')


def summary_html(snap: dict) -> str:
    """For many workers: the CPU histogram, the busiest and the idle ones."""
    workers = snap.get("workers", [])
    if len(workers) < MANY:
        return ""
    s = snap.get("summary", {})
    idle_n = s.get("states", {}).get("idle", 0)
    parts = [f'<div class="scoop-summary" style="display:flex;gap:16px;align-items:center;margin:4px 0">'
             f'<span>{histogram_html(s.get("cpu_histogram", []))}</span><span>']
    if s.get("busiest"):
        parts.append(f'busiest: {html.escape(", ".join(s["busiest"]))}<br>')
    if idle_n:
        more = " ..." if idle_n > len(s.get("idle", ())) else ""
        parts.append(f'idle ({idle_n}): {html.escape(", ".join(s.get("idle", ())))}{more}')
    parts.append("</span></div>")
    return "".join(parts)


def hosts_html(snap: dict) -> str:
    hosts = snap.get("summary", {}).get("hosts") or []
    if len(hosts) < 2:
        return ""
    me = socket.gethostname()
    rows = "".join(f"<tr><td style='{_CELL_L}'>{html.escape(h['host'])}"
                   f"{' (here)' if h['host'] == me else ''}</td>"
                   f"<td style='{_CELL}'>{h['workers']}</td><td style='{_CELL}'>{h['busy']}</td>"
                   f"<td style='{_CELL}'>{h['done']}</td><td style='{_CELL}'>{mem(h['mem'])}</td></tr>"
                   for h in hosts)
    th = f"<th style='{_CELL}'>"
    box = "max-height:160px;overflow:auto" if len(hosts) > 8 else ""
    return (f"<div style='{box}'><table style='border-collapse:collapse;margin:4px 0'><tr>"
            f"<th style='{_CELL_L}'>host</th>{th}workers</th>{th}busy</th>{th}done</th>{th}memory</th></tr>"
            f"{rows}</table></div>")


def worker_table(workers: list[dict], max_height: int = 320) -> str:
    """Every worker, in name order; past ~12 rows the table scrolls inside its box."""
    cols = ("worker", "host", "pid", "state", "queued", "running", "done", "CPU %", "memory")
    rows = ["<tr>" + "".join(f'<th style="{_CELL_L if c in ("worker", "host", "state") else _CELL};'
                             f'position:sticky;top:0;background:var(--jp-layout-color1,#fff)">{c}</th>'
                             for c in cols) + "</tr>"]
    for w in workers:
        sc = STATE_COLORS.get(w["state"], "#757575")
        rows.append(
            f'<tr class="scoop-worker" data-state="{w["state"]}">'
            f'<td style="{_CELL_L}">{html.escape(w.get("name") or w["id"] or "-")}</td>'
            f'<td style="{_CELL_L}">{html.escape(w["host"])}</td><td style="{_CELL}">{w["pid"]}</td>'
            f'<td style="{_CELL_L};color:{sc}">{w["state"]}</td>'
            f'<td style="{_CELL}">{w["queued"]}</td><td style="{_CELL}">{w["running"]}</td>'
            f'<td style="{_CELL}">{w["done"]}</td><td style="{_CELL}">{w["cpu"]:.0f}</td>'
            f'<td style="{_CELL}">{mem(w["mem"])}</td></tr>')
    box = f"max-height:{max_height}px;overflow:auto" if len(workers) > 12 else ""
    return (f'<div class="scoop-workers" style="{box}"><table style="border-collapse:collapse;margin:4px 0">'
            f'{"".join(rows)}</table></div>')


def status_html(snap: dict, stale: str | None = None) -> str:
    """``%scoop_cluster status`` / ``scoop_jupyter.status()`` as an HTML card."""
    if snap.get("state") != "running" and not stale:
        return (f'<div class="scoop-status" style="{BOX};border-left-color:#757575"><b>SCOOP cluster</b> '
                f'<span style="color:#757575">&#9679; {state_word(snap)}</span> &middot; start one with '
                f'<code>%scoop_cluster start -n N</code></div>')
    workers = snap.get("workers", [])
    color = "#757575" if stale else "#1976d2"
    when = time.strftime("%H:%M:%S", time.localtime(snap["time"])) if snap.get("time") else ""
    return (f'<div class="scoop-status" style="{BOX};border-left-color:{color}">{headline_html(snap, stale)}'
            f'<div style="color:#757575">total memory {mem(sum(w["mem"] for w in workers))}'
            f'{" &middot; as of " + when if when else ""}</div>'
            f'{jobs_html(snap)}{summary_html(snap)}{hosts_html(snap)}{worker_table(workers)}</div>')


# ---- charts -------------------------------------------------------------------------------------
def nice_max(v: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at or above ``v`` (so a scale reads well)."""
    if v <= 0:
        return 1.0
    k = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 5, 10):
        if m * k >= v:
            return m * k
    return 10 * k


def _num(v: float) -> str:
    return f"{v:.0f}" if v >= 10 or v == int(v) else f"{v:.1f}"


def sparkline(points, width: int = 300, height: int = 60) -> str:
    """Throughput over time as an inline SVG line chart with axes: a scale on the left,
    seconds before now underneath (no plotting library needed)."""
    left, bottom, top = 34, 14, 4
    pw, ph = width - left - 4, height - bottom - top
    parts = [f'<svg class="scoop-throughput" width="{width}" height="{height}" '
             f'xmlns="http://www.w3.org/2000/svg" style="font:9px sans-serif">',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="rgba(127,127,127,0.08)"/>']
    if len(points) >= 2:
        t0, t1 = points[0][0], points[-1][0]
        span = max(t1 - t0, 1e-6)
        top_v = nice_max(max(v for _, v in points))
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
            label = "now" if ago < 0.05 else f"-{ago:.1f} s" if ago < 9.95 else f"-{ago:.0f} s"
            anchor = "start" if frac == 0 else "end" if frac == 1 else "middle"
            parts.append(f'<text x="{x:.1f}" y="{height - 3}" text-anchor="{anchor}" '
                         f'fill="currentColor">{label}</text>')
    axis = 'stroke="currentColor" stroke-opacity="0.5"'
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" {axis}/>'
                 f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" {axis}/></svg>')
    return "".join(parts)


def progress_bar(done: int, total: int | None, width: int = 160, color: str = "#1976d2") -> str:
    frac = 0.0 if not total else min(1.0, done / total)
    return (f'<span style="display:inline-block;width:{width}px;height:9px;'
            f'background:rgba(127,127,127,0.2);vertical-align:middle">'
            f'<span style="display:block;width:{frac * 100:.1f}%;height:100%;background:{color}">'
            f'</span></span>')
