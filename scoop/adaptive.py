"""Adaptive scaling: a policy that edits the cluster's spec as work comes and goes.

The policy only decides; the cluster's reconcile step (:mod:`scoop.reconcile`) starts and retires
the workers, as it does for ``scale``.  The rules, in :class:`Rules` (pure, unit-tested without
processes in tests/test_adaptive.py):

- **grow at once** when the broker holds more tasks (queued or in flight) than the cluster has
  workers: towards one worker per task, up to ``maximum``.  A burst gets workers on the next
  look (every ``interval`` seconds, 1 by default), not after a wait.
- **shrink** only workers that stayed idle -- no task running, assigned or queued on them --
  for ``wait`` seconds, down to what the tasks in flight need and never below ``minimum``.  A
  worker holding work is never chosen while an idle one can go; a retired worker finishes what
  it runs and hands its queue back (the broker's retire), so no task is lost or run twice.
- **batch clusters act in whole jobs**: growth is rounded up to whole jobs (within
  ``maximum``), and a job goes only when all its workers may go -- jobs still waiting in the
  queue first (cancelling them costs nothing), then running jobs whose workers all idle.

:class:`Adaptive` binds the rules to a running :class:`~scoop.cluster.Cluster`: the cluster's
supervisor calls it every ``interval`` seconds with the broker's latest meta snapshot.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

__all__ = ["Rules", "Decision", "Adaptive", "parse_range"]


@dataclass
class Decision:
    """``add`` workers (whole jobs), or retire the workers named in ``retire``."""
    add: int = 0
    retire: list[str] = field(default_factory=list)


def _check(minimum, maximum, interval, wait):
    for what, v in (("minimum", minimum), ("maximum", maximum)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"adapt: {what} must be a whole number of workers, not {v!r}")
    if minimum < 0:
        raise ValueError(f"adapt: minimum must be 0 or more, not {minimum}")
    if maximum < max(1, minimum):
        raise ValueError(f"adapt: maximum ({maximum}) must be at least 1 and at least minimum ({minimum})")
    if not interval > 0:
        raise ValueError(f"adapt: interval must be a positive number of seconds, not {interval!r}")
    if not wait >= 0:
        raise ValueError(f"adapt: wait must be 0 or more seconds, not {wait!r}")


def parse_range(text: str) -> tuple[int, int]:
    """``"2:64"`` -> (2, 64): the command line's MIN:MAX."""
    lo, sep, hi = str(text).partition(":")
    try:
        if not sep:
            raise ValueError
        return int(lo), int(hi)
    except ValueError:
        raise ValueError(f"expected MIN:MAX such as 2:64, got {text!r}") from None


class Rules:
    """The adaptive rules over plain data: no cluster, processes or clock of their own.

    ``job_size``: workers per batch job (1 for other launchers)."""

    def __init__(self, minimum: int, maximum: int, wait: float = 5.0, job_size: int = 1):
        self.minimum, self.maximum, self.wait, self.job_size = minimum, maximum, wait, max(1, job_size)
        self.idle_since: dict[str, float] = {}

    def observe(self, now: float, workers: list[dict]) -> None:
        """Notes which joined workers idle since when (from a meta snapshot's ``workers``)."""
        present = set()
        for w in workers:
            name = w.get("name")
            if not name:
                continue
            present.add(name)
            if _holds_work(w):
                self.idle_since.pop(name, None)
            else:
                self.idle_since.setdefault(name, now)
        for name in list(self.idle_since):
            if name not in present:
                del self.idle_since[name]

    def decide(self, now: float, wanted: list[str], tasks: int, jobs: list[tuple[list[str], bool]],
               waiting_since: dict[str, float] | None = None) -> Decision:
        """``wanted``: the spec's worker names; ``tasks``: tasks the broker holds (queued or in
        flight); ``jobs``: (worker names, pending) per job, each wanted worker in one (a worker
        of a local or SSH cluster is a job of its own); ``waiting_since``: when each pending
        worker was asked for."""
        n = len(wanted)
        floor = max(self.minimum, 0)
        if tasks > n and n < self.maximum or n < floor:
            target = min(self.maximum, max(floor, tasks))
            add = target - n
            if self.job_size > 1:
                whole = math.ceil(add / self.job_size) * self.job_size
                fits = (self.maximum - n) // self.job_size * self.job_size
                add = whole if n + whole <= self.maximum else fits
                if add <= 0 and n < floor:
                    add = floor - n  # the minimum is kept even if it splits a job
            return Decision(add=max(0, add))
        spare = n - max(floor, min(n, tasks))
        if spare <= 0:
            return Decision()
        waiting_since = waiting_since or {}

        def gone_for(name):  # how long a worker has been free to go, or None while it holds work
            if name in self.idle_since:
                return now - self.idle_since[name]
            if name in waiting_since:
                return now - waiting_since[name]
            return None

        pending = [names for names, is_pending in jobs if is_pending]
        running = [names for names, is_pending in jobs if not is_pending]
        order = []  # pending jobs first (newest first), then the running ones idle longest
        for names in reversed(pending):
            ages = [gone_for(x) for x in names]
            if all(a is not None and a >= self.wait for a in ages):
                order.append((names, 0))
        idle_jobs = []
        for names in running:
            ages = [gone_for(x) for x in names]
            if all(a is not None and a >= self.wait for a in ages):
                idle_jobs.append((min(ages), names))
        order += [(names, 1) for _, names in sorted(idle_jobs, key=lambda t: -t[0])]
        retire: list[str] = []
        for names, _ in order:
            if len(retire) + len(names) > spare:
                continue
            retire += names
        return Decision(retire=retire)


def _holds_work(w: dict) -> bool:
    return bool(w.get("running") or w.get("assigned") or w.get("queued")) or w.get("state") == "busy"


class Adaptive:
    """Adaptive scaling of one running cluster (made by :meth:`Cluster.adapt
    <scoop.cluster.Cluster.adapt>`); :meth:`stop` ends it and leaves the workers as they are."""

    def __init__(self, cluster, minimum: int = 1, maximum: int | None = None, *, interval: float = 1.0,
                 wait: float = 5.0):
        if maximum is None:
            maximum = max(minimum, 1, cluster._plan.capacity())
        _check(minimum, maximum, interval, wait)
        self.cluster = cluster
        self.interval, self.wait = float(interval), float(wait)
        job_size = cluster.launcher.job_size()
        self.rules = Rules(minimum, maximum, self.wait, job_size)
        self._next = 0.0
        self._asked: dict[str, float] = {}
        self.active = True

    @property
    def minimum(self) -> int:
        return self.rules.minimum

    @property
    def maximum(self) -> int:
        return self.rules.maximum

    def __repr__(self):
        state = "active" if self.active else "stopped"
        return (f"<scoop.Adaptive {state}: {self.minimum} to {self.maximum} workers, every "
                f"{self.interval:g} s, idle workers retired after {self.wait:g} s>")

    @property
    def running(self) -> bool:
        return self.active

    def due(self, now: float) -> bool:
        return self.active and now >= self._next

    def stop(self) -> None:
        self.active = False
        c = self.cluster
        if c._supervisor is not None:
            c._supervisor.remove_policy(self)
        if c.adaptive is self:
            c.adaptive = None

    def tick(self, now: float | None = None) -> Decision:
        """One look: reads the broker's latest snapshot, decides, and edits the cluster's spec."""
        now = time.monotonic() if now is None else now
        self._next = now + self.interval
        c = self.cluster
        snap = c._meta.latest if c._meta is not None else None
        if not self.active or not c.running or not snap:
            return Decision()
        totals = snap.get("totals") or {}
        tasks = max(int(totals.get("in_flight") or 0), int(totals.get("queued") or 0))
        self.rules.observe(now, snap.get("workers") or [])
        wanted = [s.name for s in c.spec]
        jobs, waiting = self._jobs(wanted, now)
        decision = self.rules.decide(now, wanted, tasks, jobs, waiting)
        if decision.add:
            for s in c._grow(decision.add):
                self._asked[s.name] = now
        elif decision.retire:
            c._shrink(decision.retire)
        return decision

    def _jobs(self, wanted: list[str], now: float):
        """(names, pending) per job of the wanted workers, and since when each pending (not yet
        joined) worker was asked for."""
        live = dict(self.cluster._live)
        joined = set(self.rules.idle_since)
        groups: dict = {}
        waiting = {}
        for name in wanted:
            h = live.get(name)
            key = getattr(h, "job_id", None) or name if h is not None else name
            pending = h is not None and getattr(h, "state", "running") == "pending"
            g = groups.setdefault(key, ([], []))
            g[0].append(name)
            g[1].append(pending)
            if pending and name not in joined:
                waiting[name] = self._asked.setdefault(name, now)
        for name in list(self._asked):
            if name not in wanted:
                del self._asked[name]
        return [(names, all(flags)) for names, flags in groups.values()], waiting
