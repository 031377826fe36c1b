"""The heart of a Cluster: the spec (the workers it wants) and the one reconcile step.

A cluster is data.  :class:`Spec` lists the workers wanted, each with its one name (``w1``,
``w2``, ... in the order they were asked for, never reused) and its host.  :meth:`Spec.reconcile`
compares that list with what was launched (:class:`Seen`: one entry per worker started and not
yet seen to end) and answers with a :class:`Step`: which workers to start, which to retire,
which dead ones get a successor, and the one line to tell the user about each.

Everything that changes the cluster's size -- ``start``, ``scale``, the supervisor replacing
a dead worker, an adaptive policy (:mod:`scoop.adaptive`) -- only edits the spec and asks for a
step.  Nothing here starts a process, opens a socket or reads a clock: the caller passes ``now``
and carries the step out, so every rule is unit-tested without processes (tests/test_reconcile.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

__all__ = ["Seen", "Notice", "Step", "Spec", "DEATH_WINDOW", "broker_ids"]

#: seconds over which worker deaths are counted to detect a crash loop
DEATH_WINDOW = 60.0


@dataclass(frozen=True)
class Seen:
    """One launched worker as the cluster sees it at this step."""
    name: str
    host: str | None = None
    code: int | None = None      # exit status; None while it runs (or waits in a batch queue)
    retired: bool = False        # retired by the cluster, or given up on: its end is expected
    joined: bool = True          # seen in the cluster at least once (a batch worker may not be yet)
    planned: str | None = None   # why it ended by plan (its walltime), or None for a failure


@dataclass(frozen=True)
class Notice:
    """A line for the user: ``level`` is "info" (a plan carried out), "warning" or "error"."""
    level: str
    text: str


@dataclass
class Step:
    """What to do to make the launched workers match the spec."""
    start: list = field(default_factory=list)     # WorkerSpecs to launch
    retire: list[str] = field(default_factory=list)  # running workers no longer wanted
    ended: list[str] = field(default_factory=list)   # seen to end: no longer launched
    dead: list[str] = field(default_factory=list)    # ended while wanted (replaced or given up)
    failed: list[tuple[str, int]] = field(default_factory=list)  # batch workers that never joined
    notices: list[Notice] = field(default_factory=list)


class Spec:
    """The workers a cluster wants, in order.

    ``make(name, host)`` builds one worker's :class:`~scoop.launch.base.WorkerSpec` (its config
    holds the cluster's secret and broker address, which this core never needs to read)."""

    def __init__(self, make: Callable):
        self._make = make
        self.workers: list = []
        self._names = 0
        self.deaths: list[float] = []   # times of unplanned deaths within DEATH_WINDOW

    # ---- editing ----------------------------------------------------------------------------------
    def new(self, host: str | None):
        """The next worker for ``host``, under a name never used before in this cluster."""
        self._names += 1
        return self._make(f"w{self._names}", host)

    def grow(self, hosts: Iterable[str | None]) -> list:
        """Adds a worker per entry of ``hosts``; returns the new ones."""
        added = [self.new(h) for h in hosts]
        self.workers += added
        return added

    def shrink(self, n: int, prefer: Iterable[str] = ()) -> list[str]:
        """Keeps ``n`` workers: the ones named in ``prefer`` go first (in that order), then the
        newest.  Returns the names removed (the reconcile step retires them)."""
        drop = max(0, len(self.workers) - n)
        names = [s.name for s in self.workers]
        chosen = [p for p in dict.fromkeys(prefer) if p in names][:drop]
        for s in reversed(self.workers):
            if len(chosen) >= drop:
                break
            if s.name not in chosen:
                chosen.append(s.name)
        self.remove(chosen)
        return chosen

    def remove(self, names: Iterable[str]) -> None:
        gone = set(names)
        self.workers = [s for s in self.workers if s.name not in gone]

    def reset(self) -> None:
        self.workers = []
        self._names = 0

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.workers]

    def __len__(self):
        return len(self.workers)

    def per_host(self) -> list[tuple[str, int]]:
        """Requested workers per host, in first-seen order."""
        counts: dict = {}
        for s in self.workers:
            key = s.host or "localhost"
            counts[key] = counts.get(key, 0) + 1
        return list(counts.items())

    # ---- the step --------------------------------------------------------------------------------
    def reconcile(self, seen: Iterable[Seen], now: float, *, queued: bool = False) -> Step:
        """Makes launched match wanted.  A wanted worker that ended is replaced by a new one on
        its host, in its place in the list (a crash, ``os._exit`` in a task, a lost host, or a
        planned end such as its walltime); a batch worker that ended before it ever joined is not
        (its job would fail the same way again); more than 2n+8 unplanned deaths within
        :data:`DEATH_WINDOW` stop the replacing.  Launched workers not wanted are retired; wanted
        workers not launched are started."""
        step = Step()
        seen = list(seen)
        where = {s.name: i for i, s in enumerate(self.workers)}
        running = set()
        for w in seen:
            if w.code is None:
                running.add(w.name)
                continue
            step.ended.append(w.name)
            if w.retired or w.name not in where:
                continue
            step.dead.append(w.name)
            i = where[w.name]
            host = w.host or "localhost"
            if queued and not w.joined:
                step.failed.append((w.name, w.code))
                self._drop(i)
                where = {s.name: i for i, s in enumerate(self.workers)}
                continue
            if w.planned is None:
                self.deaths = [t for t in self.deaths if now - t < DEATH_WINDOW] + [now]
                if len(self.deaths) > 2 * len(self.workers) + 8:
                    text = (f"{w.name} on {host} exited with status {w.code}; too many worker deaths "
                            f"this minute, not replacing it")
                    step.notices.append(Notice("error", text))
                    self._drop(i)
                    where = {s.name: i for i, s in enumerate(self.workers)}
                    continue
            new = self._make_in_place(i)
            if w.planned is not None:
                step.notices.append(Notice("info", f"{w.name} on {host} retired ({w.planned}); "
                                                   f"{new.name} replaces it"))
            else:
                step.notices.append(Notice("warning", f"{w.name} on {host} exited with status {w.code}; "
                                                      f"{new.name} replaces it"))
        wanted = set(self.names)
        step.retire = [w.name for w in seen if w.code is None and not w.retired and w.name not in wanted]
        step.start = [s for s in self.workers if s.name not in running]
        return step

    def _drop(self, i: int) -> None:
        self.workers.pop(i)

    def _make_in_place(self, i: int):
        old = self.workers[i]
        self.workers[i] = new = self.new(old.host)
        return new


def broker_ids(retiring: list[tuple], workers: list[dict], known: set, me: str) -> list[int | None]:
    """The broker's index of each worker to retire (``(name, host, pid)``, host None for this
    machine ``me``), from the workers of a status snapshot: by its one name, else by host and
    pid; None for one the broker does not list yet.  Without names in the snapshot, a worker
    whose pid is not known (one task of a job step) is matched to any worker of its host whose
    ``(host, pid)`` is not in ``known`` (the ones the cluster's launched workers claim)."""
    by_name = {w.get("name"): int(w["id"]) for w in workers if w.get("name")}
    by_pid = {(w.get("host"), w.get("pid")): int(w["id"]) for w in workers}
    unclaimed: dict = {}
    if not by_name:
        for w in workers:
            if (w.get("host"), w.get("pid")) not in known:
                unclaimed.setdefault(w.get("host"), []).append(int(w["id"]))
    ids = []
    for name, host, pid in retiring:
        idx = by_name.get(name)
        if idx is None and pid is not None:
            idx = by_pid.get((host or me, pid))
        elif idx is None and unclaimed.get(host):
            idx = unclaimed[host].pop()
        ids.append(idx)
    return ids
