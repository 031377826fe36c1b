"""Rich displays: a cluster object or ``%scoop_cluster status`` as the last value of a cell
shows an HTML card (workers, hosts, load, where to look next), like dask's Client repr.

``scoop.cluster.Cluster`` knows nothing of notebooks, so its card comes from an IPython
formatter registered for the type here rather than from a ``_repr_html_`` method.  Cards
describe a moment; when their cluster stops, each card displayed in this kernel is updated to
say so (a saved notebook never shows a stale "running" card).
"""
from __future__ import annotations

import html
import time

from scoop._future import Future
from scoop.cluster import Cluster

from . import origin as _origin
from .records import Record
from .views import BOX, docs_url, mem, pending_text, plural, seconds, status_html, status_text

#: cards kept up to date when their cluster stops (older ones keep what they said)
MAX_CARDS = 50


class Card:
    """A card in a cell that turns into "stopped at HH:MM:SS" when its cluster stops."""

    def __init__(self, origin, render):
        self.origin = origin
        self.render = render  # render(stale: str | None) -> (text, html)
        self.record = Record(origin)

    def show(self):
        self.record.show(*self.render(None))
        displays = self.origin.displays
        cards = [d for d in displays if isinstance(d, Card)]
        if len(cards) >= MAX_CARDS:
            displays.remove(cards[0])
        displays.append(self)

    def cell_finished(self):
        pass

    def stopped(self):
        self.record.freeze(*self.render(f"stopped at {time.strftime('%H:%M:%S')}"))
        if self in self.origin.displays:
            self.origin.displays.remove(self)


def show_status(snap: dict) -> None:
    """Displays a status card (``%scoop_cluster status``, ``scoop_jupyter.status()``)."""
    origin = _origin.session()
    if snap.get("state") != "running" or origin.kernel is None:
        from IPython.display import display
        display({"text/plain": status_text(snap), "text/html": status_html(snap)}, raw=True)
        return
    Card(origin, lambda stale: (status_text(snap, stale), status_html(snap, stale))).show()


def cluster_html(cluster, stale: str | None = None) -> str:
    """The HTML card of a ``scoop.cluster.Cluster``."""
    s = _origin.session()
    mine = s.cluster is cluster
    running = bool(getattr(cluster, "running", False)) and not stale
    state = "running" if running else stale or "stopped"
    color = "#2e7d32" if running else "#757575"
    plan = getattr(cluster, "plan", None) or []
    hosts = ", ".join(f"{html.escape(str(h))}: {k}" for h, k in plan)
    size = cluster.size if running else 0
    if getattr(cluster, "queued", False):  # batch jobs: no host is planned, the scheduler places them
        jobs = cluster.jobs() if running else []
        pending = pending_text({"jobs": jobs})
        ids = ", ".join(str(j["id"]) for j in jobs if j["state"] != "ended")
        workers = f"{size} running" + (f", {html.escape(pending)}" if pending else "") + \
            (f" &middot; jobs {html.escape(ids)}" if ids and not pending else "")
    else:
        workers = f"{size} running" + (f" (planned: {hosts})" if hosts else "")
    rows = [("workers", workers),
            ("broker", f"port {getattr(cluster, 'main_port', '?')}, meta stream port "
                       f"{getattr(cluster, 'meta_port', '?')}" if running else "-"),
            ("origin", "this kernel" if mine else "the process that started it")]
    snap = s.feed.latest
    if mine and running:
        t = snap.get("totals", {})
        rows.append(("load", f"busy {t.get('busy', 0.0) * 100:.0f}% &middot; {t.get('done', 0)} done "
                             f"&middot; {t.get('rate', 0.0):.1f} inputs/s"))
        rows.append(("memory", mem(sum(w["mem"] for w in snap.get("workers", [])))))
    if s.start_seconds is not None and mine:
        rows.append(("started in", f"{s.start_seconds:.2f} s"))
    table = "".join(f"<tr><td style='padding:1px 8px 1px 0;color:#757575;text-align:left'>{k}</td>"
                    f"<td style='text-align:left'>{v}</td></tr>" for k, v in rows)
    more = ""
    if mine and running:
        names = [w["name"] for w in snap.get("workers", []) if w["name"]]
        if names:
            shown = ", ".join(names[:12])
            if len(names) > 12:
                shown += f" ... ({plural(len(names), 'worker')})"
            more = f"<div>workers: {html.escape(shown)}</div>"
    return (f'<div class="scoop-cluster-repr" style="{BOX};border-left-color:{color}">'
            f'<b>SCOOP Cluster</b> <span style="color:{color}">&#9679; {state}</span>'
            f'<table style="border-collapse:collapse;margin:4px 0">{table}</table>{more}'
            f'<div style="color:#757575"><code>%scoop_cluster dashboard</code> live view &middot; '
            f'<code>%scoop_cluster timeline</code> task timeline &middot; '
            f'<code>%scoop_cluster scale N</code> resize &middot; '
            f'<code>%scoop_cluster?</code> help &middot; '
            f'<a href="{docs_url()}" target="_blank" rel="noopener">documentation</a></div></div>')


def cluster_text(cluster, stale: str | None = None) -> str:
    running = bool(getattr(cluster, "running", False)) and not stale
    if not running:
        return f"<SCOOP Cluster: {stale or 'stopped'}>"
    return f"<SCOOP Cluster: running, {plural(cluster.size, 'worker')}, broker port {cluster.main_port}>"


def _display_cluster(cluster) -> bool:
    """IPython's display formatter for a Cluster: a card that says so when it stops."""
    origin = _origin.session()
    if origin.kernel is None or origin.cluster is not cluster or not cluster.running:
        return False  # the plain HTML formatter shows it
    Card(origin, lambda stale: (cluster_text(cluster, stale), cluster_html(cluster, stale))).show()
    return True


def future_html(fut) -> str:
    """A future as one line: its task, state, and when and where it ran (queued / ran times)."""
    state = "cancelled" if fut.cancelled() else "pending"
    if fut.done() and not fut.cancelled():
        state = "raised " + type(fut.exception()).__name__ if fut.exception() is not None else "finished"
    elif getattr(fut, "started", None) is not None:
        state = "running"
    color = {"finished": "#2e7d32", "running": "#1565c0", "pending": "#757575"}.get(state, "#c62828")
    parts = [f'<code>{html.escape(str(getattr(fut, "name", None) or fut._name))}</code> '
             f'<span style="color:{color}">{html.escape(state)}</span>']
    worker = getattr(fut, "worker", None)
    if worker:
        parts.append(f"on {html.escape(str(worker))}")
    sub, start, end = (getattr(fut, k, None) for k in ("submitted", "started", "finished"))
    if sub is not None and start is not None:
        parts.append(f"queued {seconds(max(0.0, start - sub))}")
    if start is not None and end is not None:
        parts.append(f"ran {seconds(max(0.0, end - start))}")
    return f'<span class="scoop-future">Future {" &middot; ".join(parts)}</span>'


def _types():
    return ((Cluster, cluster_html), (Future, future_html))


def register(shell) -> bool:
    """Registers the cards with ``shell``'s formatters."""
    try:
        for cls, fn in _types():
            shell.display_formatter.formatters["text/html"].for_type(cls, fn)
        shell.display_formatter.ipython_display_formatter.for_type(Cluster, _display_cluster)
        return True
    except Exception:
        return False


def unregister(shell) -> None:
    try:
        for cls, _ in _types():
            shell.display_formatter.formatters["text/html"].pop(cls, None)
        shell.display_formatter.ipython_display_formatter.pop(Cluster, None)
    except Exception:
        pass
