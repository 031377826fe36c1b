"""Live load dashboard: a plain-ipywidgets view of the cluster, fed by the status feed.

Everything live is rendered into ``ipywidgets.HTML`` from the snapshot model (worker list,
totals, a CPU histogram and the busiest and idle workers when there are many, an SVG
throughput plot with axes, the progress of running maps, recent worker output), so one
refresh is one small widget state message; the view refreshes only when the rendering
changed.  Its pace adapts to its cost: at most ``MAX_RATE`` times a second, and never more
often than keeps rendering under ``CPU_SHARE`` of one core (a dashboard of 1,000 workers
refreshes less often than one of 4).  The task timeline, the bulky part, is a second HTML
widget refreshed at most ``TIMELINE_RATE`` times a second.  The kernel never polls workers:
the data comes from the broker's meta stream.

The dashboard is displayed with a static rendering beside the widget (:mod:`records`); it
refreshes that rendering when its cell ends and, when the cluster stops, leaves its last
state as a static record, so a saved notebook shows it without a kernel.  The next start in
the same kernel brings it back to life: what a dask user expects of a dashboard that
reconnects to the new cluster.
"""
from __future__ import annotations

import html
import threading
import time

import ipywidgets as W

from scoop.snapshot import natural

from . import task_timeline as _timeline
from .records import Record
from .views import (
    first_rows,
    headline_html,
    jobs_html,
    progress_bar,
    sparkline,
    status_text,
    summary_html,
    worker_table,
)

MAX_RATE = 10.0
#: the share of one core the dashboard's rendering may take
CPU_SHARE = 0.02
#: the live timeline shows the tasks of this many last seconds, refreshed this many times a second
TIMELINE_WINDOW = 30.0
TIMELINE_RATE = 1.0
#: about how many bars the live timeline draws (its HTML stays ~100 KiB)
LIVE_BARS = 600
#: worker rows the live dashboard lists (busiest first beyond): its HTML stays small at any size
LIVE_ROWS = 100
_CELL_L = "padding:1px 8px;text-align:left"


def log_table(logs: dict, lines: int = 3, workers: int = 16) -> str:
    """The last lines the first ``workers`` workers printed (all of it: ``%scoop_cluster logs``)."""
    if not logs:
        return ""
    rows = []
    names = sorted(logs, key=natural)
    for name in names[:workers]:
        recent = list(logs[name])[-lines:]
        text = "<br>".join(f'<span style="color:{"#c62828" if st == "stderr" else "inherit"}">'
                           f'{html.escape(line[:160])}</span>' for _, st, line in recent)
        rows.append(f'<tr><td style="{_CELL_L};vertical-align:top">{html.escape(name)}</td>'
                    f'<td style="{_CELL_L};font-family:monospace">{text}</td></tr>')
    more = f"<div>... and {len(names) - workers} more workers</div>" if len(names) > workers else ""
    return (f'<div class="scoop-logs" style="margin-top:4px">recent worker output '
            f'(<code>%scoop_cluster logs</code> for more)<table style="border-collapse:collapse">'
            f'{"".join(rows)}</table>{more}</div>')


def render(status: dict, history, maps: list[dict] | None = None, logs: dict | None = None,
           stale: str | None = None) -> str:
    """The dashboard's HTML for a snapshot model (see :mod:`scoop.snapshot`); ``maps``
    defaults to the model's own."""
    state = status.get("state", "stopped")
    parts = [f'<div class="scoop-dashboard" data-state="{"stale" if stale else state}" '
             f'style="font-size:12px;line-height:1.4">', headline_html(status, stale)]
    if state == "running" or stale:
        parts.append(jobs_html(status))
        parts.append(summary_html(status))
        workers = status.get("workers", [])
        shown = first_rows(workers, LIVE_ROWS)
        parts.append(worker_table(shown))
        if len(workers) > len(shown):
            parts.append(f'<div>{len(shown)} of {len(workers)} workers listed, busiest first '
                         f'(<code>%scoop_cluster status</code> lists them all)</div>')
        pts = list(history)
        peak = max((v for _, v in pts), default=0.0)
        span = pts[-1][0] - pts[0][0] if len(pts) > 1 else 0
        parts.append(f'<div>throughput (inputs/s), last {span:.0f} s, peak {peak:.1f}<br>'
                     f'{sparkline(pts)}</div>')
        maps = status.get("maps", []) if maps is None else maps
        running = [m for m in maps if not m.get("finished")]
        for m in running[:5]:
            total = m.get("total")
            of = total if total is not None else f'{m.get("submitted", 0)}+'
            parts.append(f'<div>map <code>{html.escape(str(m.get("name")))}</code> '
                         f'{progress_bar(m.get("done", 0), total or m.get("submitted"))} '
                         f'{m.get("done", 0)}/{of}</div>')
        parts.append(log_table(logs or {}))
    parts.append("</div>")
    return "".join(parts)


def _figures(status: dict) -> tuple:
    """What a dashboard's static part is kept up to date on."""
    totals = status.get("totals") or {}
    return status.get("state"), totals.get("done"), totals.get("workers"), totals.get("pending_workers")


class Dashboard(W.VBox):
    """The live dashboard widget; ``close()`` detaches it from the cluster."""

    def __init__(self, feed, logs: dict | None = None, origin=None, **kwargs):
        self._feed = feed
        self._logs = logs if logs is not None else {}
        self._origin = origin
        self._record: Record | None = None
        self._static_key: tuple = ()  # the figures of the static part last sent
        self._lock = threading.Lock()
        self._last_running = feed.latest if feed.latest.get("state") == "running" else None
        self._cost = 0.0  # seconds the last rendering took
        self._panel = W.HTML(value=self._render(feed.latest))
        # the timeline is the bulky part: its own widget, refreshed at most TIMELINE_RATE a second
        self._timeline = W.HTML(value=self._render_timeline(feed.latest) or "")
        super().__init__(children=[self._panel, self._timeline], **kwargs)
        self._last_sent = 0.0
        self._last_timeline = 0.0
        self.updates = 0
        self._remove = feed.add_listener(self._on_status)

    # ---- display: live, with a static rendering beside it ------------------------------------------
    def _ipython_display_(self):
        origin = self._origin
        if origin is None or self._record is not None:
            from IPython.display import display
            display(self._repr_mimebundle_(), raw=True)
            return
        self._record = Record(origin)
        self._static_key = _figures(self._feed.latest)
        self._record.show(*self.static(), widget=self)
        origin.displays.append(self)

    def static(self, stale: str | None = None) -> tuple[str, str]:
        """The dashboard's current (or last running) state as text and HTML."""
        snap = self._feed.latest
        if snap.get("state") != "running" and self._last_running is not None:
            snap, stale = self._last_running, stale or "stopped"
        when = time.strftime("%H:%M:%S", time.localtime(snap.get("time") or time.time()))
        text = status_text(snap, stale) + f"\n(SCOOP dashboard as of {when})"
        tl = self._render_timeline(snap) or ""
        # shown only where the widget is not (a saved notebook): say when this was
        note = (f'<div class="scoop-record-when" style="color:#757575;font-size:11px">'
                f'SCOOP dashboard as of {when}</div>')
        return text, note + render(snap, self._feed.history, logs=self._logs, stale=stale) + tl

    def cell_finished(self):
        """A cell ended: the static part beside the widget shows the dashboard's state as of
        now, if its figures changed."""
        self._refresh_static(parent=getattr(self._origin, "_cell_parent", None))

    def _refresh_static(self, status: dict | None = None, parent=None):
        """Brings the static part beside the widget up to date when the figures it shows
        changed (done, workers): a notebook saved while the dashboard is live keeps its last
        state, which is what shows once the kernel is gone.  Once per change: an update makes
        the front end render the output again."""
        if self._record is None:
            return
        key = _figures(status or self._feed.latest)
        if key == self._static_key:
            return
        self._static_key = key
        self._record.update(*self.static(), parent=parent)

    def stopped(self):
        """The cluster stopped: the display becomes the dashboard's last state, as a record,
        until the next start in this kernel revives it."""
        origin = self._origin
        if origin is not None and getattr(origin, "restarting", False):
            return  # a restart: the dashboard follows the new cluster
        record = self._record
        if record is not None:
            record.freeze(*self.static("stopped"))
            dormant = getattr(origin, "dormant", None)
            if dormant is not None:
                feed, logs = self._feed, self._logs
                dormant.append(lambda: Dashboard.revive(record, feed, logs, origin))
        self.close()

    @classmethod
    def revive(cls, record: Record, feed, logs: dict, origin) -> "Dashboard":
        """A new dashboard widget in the place of a stopped one's ``record`` (a cluster started
        again): the old output follows the new cluster."""
        d = cls(feed, logs, origin=origin)
        d._record = record
        if record.revive(*d.static(), widget=d):
            origin.displays.append(d)
        else:
            d.close()
        return d

    # ---- live updates ------------------------------------------------------------------------------
    def _on_status(self, status: dict):
        """Runs on the meta-stream thread at the feed's pace (~5/s); throttled, diffed."""
        with self._lock:
            now = time.monotonic()
            final = status.get("state") != "running"
            if not final:
                self._last_running = status
            interval = max(1.0 / MAX_RATE, self._cost / CPU_SHARE)
            if not final and now - self._last_sent < interval:
                return  # a later snapshot carries this change too
            t0 = time.process_time()
            if not final and now - self._last_timeline >= max(1.0 / TIMELINE_RATE, interval):
                tl = self._render_timeline(status)
                if tl is not None and tl != self._timeline.value:
                    self._timeline.value = tl
                self._last_timeline = now
            value = self._render(status)
            totals = status.get("totals") or {}
            if not final and not totals.get("running") and not totals.get("queued"):
                self._refresh_static(status)  # the cluster went quiet: a state worth keeping
            self._cost = time.process_time() - t0
            if value == self._panel.value:
                return
            self._panel.value = value
            self._last_sent = now
            self.updates += 1

    def _render(self, status: dict) -> str:
        if status.get("state") != "running":
            return render(status, self._feed.history, [])
        return render(status, self._feed.history, logs=self._logs)

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
        origin = getattr(self, "_origin", None)
        if origin is not None and self in origin.displays:
            origin.displays.remove(self)
        super().close()
