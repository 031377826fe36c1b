"""The Python face of ``%scoop_cluster``, for scripts and for cells that prefer calls to magics."""
from __future__ import annotations

import socket

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
    ``python -m scoop`` as keywords (``hosts``, ``hostfile``, ``python`` (the workers'
    interpreter), ``pythonpath``, ``path``, ``prolog``, ``nice``, ``external_hostname``, ``tunnel``,
    ``ssh_config``, ``heartbeat_timeout``, ``brokers``, ``inline``, ``launcher``, ``env``, ...: see
    ``scoop.options.ClusterOptions``); an unknown one is a TypeError, a bad value a ValueError."""
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
    """The cluster's latest load snapshot; prints as a table."""
    return Status(session().status())


def dashboard():
    """A live dashboard widget of the cluster (display it, or make it a cell's last value)."""
    from .dashboard import Dashboard
    return Dashboard(session().feed)


class Status(dict):
    """A broker snapshot (``workers``, ``totals``) that prints as a readable table."""

    def __str__(self):
        return format_status(self)

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))


def _mem(n) -> str:
    return f"{(n or 0) / 2**20:.0f} MiB" if n else "-"


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
    lines.append(f"{'worker':<8}{'host':<16}{'pid':>8}  {'state':<6}{'queued':>7}{'running':>8}"
                 f"{'done':>8}{'cpu %':>7}{'memory':>9}")
    for w in sorted(workers, key=lambda w: int(w["id"]) if str(w.get("id", "")).isdigit() else 0):
        lines.append(f"{w.get('id', '?'):<8}{str(w.get('host', '?'))[:15]:<16}{w.get('pid', 0):>8}  "
                     f"{w.get('state', '?'):<6}{w.get('queued', 0):>7}{w.get('running', 0):>8}"
                     f"{w.get('done', 0):>8}{w.get('cpu', 0.0):>7.0f}{_mem(w.get('mem')):>9}")
    return "\n".join(lines)
