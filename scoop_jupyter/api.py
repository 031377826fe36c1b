"""The Python face of ``%scoop_cluster``, for scripts and for cells that prefer calls to magics."""
from __future__ import annotations

import socket
import time

from scoop.cluster import Cluster
from scoop.options import ClusterOptions

from . import origin as _origin


def session() -> _origin.KernelOrigin:
    """The process's KernelOrigin, hooked into IPython if this runs under it."""
    s = _origin.session()
    if s.shell is None:
        try:
            from IPython import get_ipython
            ip = get_ipython()
        except ImportError:
            ip = None
        if ip is not None:
            s.install(ip)
    return s


def start(n: int | None = None, *, progress: bool = True, **options) -> Cluster:
    """Starts a cluster of ``n`` workers (default: one per core) whose origin is this process
    and returns it; ``scoop.futures`` calls then run on it.  The options are those of
    ``python -m scoop`` as keywords (``hosts=["a", "b"]``, ``launcher="sbatch"``, ...), each
    declared once in ``scoop.options.ClusterOptions``; an unknown one is a TypeError, a bad value
    a ValueError."""
    ClusterOptions.from_kwargs(n=n, **options)  # every mistake reported before anything starts
    return session().start(n, progress=progress, **options)


def stop() -> bool:
    """Stops the cluster; False if none was running."""
    return session().stop()


def restart() -> Cluster:
    """Stops the cluster and starts one with the same options."""
    return session().restart()


def scale(n: int) -> None:
    """Adds local workers or retires workers (after their running tasks) to reach ``n``."""
    session().scale(n)


def cluster() -> Cluster | None:
    """The running cluster, or None."""
    return session().cluster


def status() -> "Status":
    """The cluster's latest load snapshot; prints as a table, displays as HTML."""
    s = session()
    raw = s.status()
    if raw.get("state") != "running":
        return Status(state="stopped", workers=[], totals={})
    snap = s.feed.normalise(raw)
    snap["totals"] = dict(raw.get("totals", {}), **snap["totals"])
    return Status(snap)


def dashboard():
    """A live dashboard widget of the cluster (display it, or make it a cell's last value)."""
    from .dashboard import Dashboard
    s = session()
    return Dashboard(s.feed, s.logs)


def timeline(last: float = 60.0) -> "Timeline":
    """The task timeline of the last ``last`` seconds: one row per worker, one bar per task or
    map chunk, coloured by function (displays as SVG)."""
    from . import task_timeline as _tl
    return Timeline(_tl.recent(last), last)


def logs(worker: str | None = None, lines: int = 50) -> str:
    """Recent output of each worker (or of ``worker``, e.g. "w3"), oldest first."""
    s = session()
    names = [worker] if worker else sorted(s.logs, key=_natural)
    if worker and worker not in s.logs:
        known = ", ".join(sorted(s.logs, key=_natural)) or "none yet"
        raise ValueError(f"no output from a worker named {worker!r} (workers with output: {known})")
    out = []
    for name in names:
        recent = list(s.logs[name])[-lines:]
        out.append(f"--- {name} ({len(recent)} of {len(s.logs[name])} kept lines)")
        out.extend(f"{time.strftime('%H:%M:%S', time.localtime(t))} {'!' if st == 'stderr' else ' '} {line}"
                   for t, st, line in recent)
    return "\n".join(out) if out else "no worker output yet"


def _natural(name: str):
    import re
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


class Timeline(list):
    """Finished tasks (dicts) that display as the timeline chart."""

    def __init__(self, recs, last):
        super().__init__(recs)
        self.last = last

    def _repr_html_(self):
        from . import task_timeline as _tl
        return _tl.render(list(self), empty=f"no task finished in the last {self.last:.0f} s")

    def __repr__(self):
        if not self:
            return f"<no task finished in the last {self.last:.0f} s>"
        workers = {r.get("worker") for r in self}
        return f"<timeline: {len(self)} tasks on {len(workers)} workers>"

    def _repr_pretty_(self, p, cycle):
        p.text(repr(self))


class Status(dict):
    """A cluster snapshot (``workers``, ``totals``) that prints as a readable table and
    displays as HTML."""

    def __str__(self):
        return format_status(self)

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))

    def _repr_html_(self):
        from .reprs import status_html
        return status_html(self)


def _mem(n) -> str:
    if not n:
        return "-"
    return f"{n / 2**20:.0f} MiB" if n < 10 * 2**30 else f"{n / 2**30:.1f} GiB"


def format_status(snap: dict) -> str:
    if snap.get("state") != "running":
        return "no SCOOP cluster is running"
    workers = [w for w in snap.get("workers", []) if w.get("role", "worker") == "worker"]
    t = snap.get("totals", {})
    me = socket.gethostname()
    lines = [f"SCOOP cluster: {t.get('workers', len(workers))} workers, "
             f"busy {t.get('busy', 0.0) * 100:.0f}%, {t.get('done', 0)} tasks done, "
             f"{t.get('queued', 0)} queued, {t.get('in_flight', 0)} in flight, "
             f"{t.get('rate', 0.0):.1f} tasks/s"]
    from .status import failed_texts, pending_text
    lines += [x for x in [pending_text(snap)] + failed_texts(snap) if x]  # batch jobs not started
    hosts: dict = {}
    for w in workers:
        h = hosts.setdefault(w.get("host", "?"), [0, 0, 0])
        h[0] += 1
        h[1] += w.get("state") == "busy"
        h[2] += w.get("done", 0)
    lines.append("")
    lines.append(f"{'host':<24}{'workers':>8}{'busy':>6}{'done':>10}")
    for host, (k, b, d) in sorted(hosts.items()):
        label = host + (" (here)" if host == me else "")
        lines.append(f"{label:<24}{k:>8}{b:>6}{d:>10}")
    lines.append("")
    lines.append(f"{'worker':<8}{'host':<16}{'pid':>8}  {'state':<8}{'queued':>7}{'running':>8}"
                 f"{'done':>8}{'cpu %':>7}{'memory':>10}")
    for w in sorted(workers, key=lambda w: _natural(w.get("name") or str(w.get("id", "")))):
        name = w.get("name") or w.get("id", "?")
        lines.append(f"{name:<8}{str(w.get('host', '?'))[:15]:<16}{w.get('pid', 0):>8}  "
                     f"{w.get('state', '?'):<8}{w.get('queued', 0):>7}{w.get('running', 0):>8}"
                     f"{w.get('done', 0):>8}{w.get('cpu', 0.0):>7.0f}{_mem(w.get('mem')):>10}")
    return "\n".join(lines)
