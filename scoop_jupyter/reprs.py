"""Rich displays: a cluster object or ``%scoop_cluster status`` as the last value of a cell
shows an HTML card (workers, hosts, load, where to look next), like dask's Client repr.

``scoop.cluster.Cluster`` knows nothing of notebooks, so its HTML comes from an IPython
formatter registered for the type here rather than from a ``_repr_html_`` method.
"""
from __future__ import annotations

import html
import socket

from .dashboard import _mem, headline, jobs_lines, worker_table
from .status import pending_text

#: where the panel and the cards send a user who wants to read more
DOCS_URL = "https://scoop.readthedocs.io/en/latest/usage.html"

_BOX = ("font-size:12px;line-height:1.4;border-left:3px solid #1976d2;padding:4px 10px;"
        "background:rgba(127,127,127,0.05)")


def _hosts_table(workers: list[dict]) -> str:
    hosts: dict = {}
    for w in workers:
        h = hosts.setdefault(w.get("host", "?"), [0, 0, 0, 0])
        h[0] += 1
        h[1] += w.get("state") == "busy"
        h[2] += w.get("done", 0)
        h[3] += w.get("mem", 0) or 0
    if len(hosts) < 2:
        return ""
    me = socket.gethostname()
    rows = "".join(f"<tr><td style='padding:1px 8px'>{html.escape(h)}{' (here)' if h == me else ''}</td>"
                   f"<td style='padding:1px 8px;text-align:right'>{k}</td>"
                   f"<td style='padding:1px 8px;text-align:right'>{b}</td>"
                   f"<td style='padding:1px 8px;text-align:right'>{d}</td>"
                   f"<td style='padding:1px 8px;text-align:right'>{_mem(m)}</td></tr>"
                   for h, (k, b, d, m) in sorted(hosts.items()))
    th = "<th style='padding:1px 8px'>"
    return ("<table style='border-collapse:collapse;margin:4px 0'><tr>"
            f"<th style='padding:1px 8px;text-align:left'>host</th>{th}workers</th>{th}busy</th>"
            f"{th}done</th>{th}memory</th></tr>{rows}</table>")


def status_html(snap: dict) -> str:
    """``%scoop_cluster status`` / ``scoop_jupyter.status()`` as HTML."""
    if snap.get("state") != "running":
        return (f'<div class="scoop-status" style="{_BOX};border-left-color:#757575"><b>SCOOP cluster</b> '
                f'<span style="color:#757575">&#9679; stopped</span> &middot; start one with '
                f'<code>%scoop_cluster start -n N</code></div>')
    workers = snap.get("workers", [])
    t = snap.get("totals", {})
    extra = f' &middot; {t["in_flight"]} in flight' if "in_flight" in t else ""
    return (f'<div class="scoop-status" style="{_BOX}">{headline(snap)}'
            f'<div style="color:#757575">total memory {_mem(sum(w.get("mem", 0) or 0 for w in workers))}'
            f'{extra}'
            f'</div>{jobs_lines(snap)}{_hosts_table(workers)}{worker_table(workers)}</div>')


def cluster_html(cluster) -> str:
    """The HTML card of a ``scoop.cluster.Cluster``."""
    from .origin import session
    s = session()
    mine = s.cluster is cluster
    running = bool(getattr(cluster, "running", False))
    state = "running" if running else "stopped"
    color = "#2e7d32" if running else "#757575"
    plan = getattr(cluster, "plan", None) or []
    hosts = ", ".join(f"{html.escape(str(h))}: {k}" for h, k in plan)
    size = cluster.size if running else 0
    queued = bool(getattr(cluster, "queued", False))
    if queued:  # batch jobs: no host is planned, the scheduler places them
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
    if mine and running:
        t = s.feed.latest.get("totals", {})
        rows.append(("load", f"busy {t.get('busy', 0.0) * 100:.0f}% &middot; {t.get('done', 0)} tasks done "
                             f"&middot; {t.get('rate', 0.0):.1f} tasks/s"))
        rows.append(("memory", _mem(sum(w.get("mem", 0) or 0 for w in s.feed.latest.get("workers", [])))))
    if s.start_seconds is not None and mine:
        rows.append(("started in", f"{s.start_seconds:.2f} s"))
    table = "".join(f"<tr><td style='padding:1px 8px 1px 0;color:#757575;text-align:left'>{k}</td>"
                    f"<td style='text-align:left'>{v}</td></tr>" for k, v in rows)
    more = ""
    if mine and running:
        from .api import _natural
        names = sorted((str(w.get("name") or w.get("id")) for w in s.feed.latest.get("workers", [])),
                       key=_natural)
        if names:
            more = f"<div>workers: {html.escape(', '.join(str(n) for n in names))}</div>"
    return (f'<div class="scoop-cluster-repr" style="{_BOX};border-left-color:{color}">'
            f'<b>SCOOP Cluster</b> <span style="color:{color}">&#9679; {state}</span>'
            f'<table style="border-collapse:collapse;margin:4px 0">{table}</table>{more}'
            f'<div style="color:#757575"><code>%scoop_cluster dashboard</code> live view &middot; '
            f'<code>%scoop_cluster timeline</code> task timeline &middot; '
            f'<code>%scoop_cluster scale N</code> resize &middot; '
            f'<a href="{DOCS_URL}" target="_blank" rel="noopener">documentation</a></div></div>')


def _secs(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


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
        parts.append(f"queued {_secs(max(0.0, start - sub))}")
    if start is not None and end is not None:
        parts.append(f"ran {_secs(max(0.0, end - start))}")
    return f'<span class="scoop-future">Future {" &middot; ".join(parts)}</span>'


def _types():
    from scoop._future import Future
    from scoop.cluster import Cluster
    return ((Cluster, cluster_html), (Future, future_html))


def register(shell) -> bool:
    """Registers the cards with ``shell``'s HTML formatter."""
    try:
        for cls, fn in _types():
            shell.display_formatter.formatters["text/html"].for_type(cls, fn)
        return True
    except Exception:
        return False


def unregister(shell) -> None:
    try:
        for cls, _ in _types():
            shell.display_formatter.formatters["text/html"].pop(cls, None)
    except Exception:
        pass
