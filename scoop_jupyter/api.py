"""The Python face of ``%scoop_cluster``, for scripts and for cells that prefer calls to magics."""
from __future__ import annotations

import time

from scoop.cluster import Cluster
from scoop.options import ClusterOptions
from scoop.snapshot import natural

from . import origin as _origin
from . import views
from .progress import ProgressBars


def session() -> _origin.KernelOrigin:
    """The process's KernelOrigin, hooked into IPython if this runs under it, with its map
    progress bars."""
    s = _origin.session()
    if s.progress is None:
        s.progress = ProgressBars(s)
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
    s = session()
    cluster = s.start(n, **options)
    s.progress.enabled = bool(progress)
    return cluster


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
    """The cluster's snapshot model (see :mod:`scoop.snapshot`: ``workers``, ``totals``,
    ``summary``, ``jobs``, ``maps``), the one every view shows; prints as a table, displays
    as HTML."""
    s = session()
    raw = s.status()
    if raw.get("state") != "running":
        return Status(s.feed.latest)
    return Status(s.feed.sync(raw))


def dashboard():
    """A live dashboard widget of the cluster (display it, or make it a cell's last value)."""
    from .dashboard import Dashboard
    s = session()
    return Dashboard(s.feed, s.logs, origin=s)


def timeline(last: float = 60.0) -> "Timeline":
    """The task timeline of the last ``last`` seconds: one row per worker, one bar per task or
    map chunk, coloured by function (displays as SVG)."""
    from . import task_timeline as _tl
    return Timeline(_tl.recent(last), last)


def logs(worker: str | None = None, lines: int = 50) -> str:
    """Recent output of each worker (or of ``worker``, e.g. "w3"), oldest first."""
    s = session()
    names = [worker] if worker else sorted(s.logs, key=natural)
    if worker and worker not in s.logs:
        known = ", ".join(sorted(s.logs, key=natural)) or "none yet"
        raise ValueError(f"no output from a worker named {worker!r} (workers with output: {known})")
    out = []
    for name in names:
        recent = list(s.logs[name])[-lines:]
        out.append(f"--- {name} ({len(recent)} of {len(s.logs[name])} kept lines)")
        out.extend(f"{time.strftime('%H:%M:%S', time.localtime(t))} {'!' if st == 'stderr' else ' '} {line}"
                   for t, st, line in recent)
    return "\n".join(out) if out else "no worker output yet"


class Timeline(list):
    """Finished tasks (dicts) that display as the timeline chart."""

    def __init__(self, recs, last):
        super().__init__(recs)
        self.last = last

    def _repr_html_(self):
        from . import task_timeline as _tl
        return _tl.render(list(self), empty=f"no task finished in the last {self.last:.0f} s")

    def __repr__(self):
        from . import task_timeline as _tl
        return _tl.headline(list(self), empty=f"no task finished in the last {self.last:.0f} s")

    def _repr_pretty_(self, p, cycle):
        p.text(repr(self))


class Status(dict):
    """A cluster snapshot model (``workers``, ``totals``, ``summary``...) that prints as a
    readable table and displays as HTML."""

    def __str__(self):
        return views.status_text(self)

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))

    def _repr_html_(self):
        return views.status_html(self)

    def _ipython_display_(self):
        from .reprs import show_status
        show_status(self)


def format_status(snap: dict) -> str:
    """``snap`` as the text ``%scoop_cluster status`` prints."""
    return views.status_text(snap)
