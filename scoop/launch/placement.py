"""Where workers go: slots per host, the first placement, and where added workers go.

Pure functions (no processes, no DNS), so the rules are unit-tested directly:

- a host's *slots* are its count from ``--hosts``/the host file, or the batch allocation's;
  inside a SLURM allocation a node's slots are its tasks times ``SLURM_CPUS_PER_TASK`` (a worker
  runs one task at a time, so every allocated CPU gets a worker);
- inside an allocation the slots are a limit: more workers than slots is an error naming both
  numbers, unless ``oversubscribe``; with hosts given by hand they are only a preference
  (:func:`scoop.launch.hosts.distribute` deals the excess out round-robin, as SCOOP did);
- workers added later (``scale``) go to the host with the most free slots, so they spread over
  the nodes instead of piling onto the first.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

from .hosts import HostList, detect_allocation, distribute, is_local_host

__all__ = ["PlacementError", "allocation_slots", "capacities", "first_placement", "add_placement"]


class PlacementError(ValueError):
    """More workers than slots (inside an allocation, without ``oversubscribe``)."""


def allocation_slots(env: Optional[Mapping[str, str]] = None):
    """``(kind, [(host, slots)])`` of the batch allocation we run in, or None."""
    env = os.environ if env is None else env
    found = detect_allocation(env)
    if not found:
        return None
    kind, hosts = found
    if kind == "slurm" and env.get("SLURM_TASKS_PER_NODE"):
        cpt = env.get("SLURM_CPUS_PER_TASK", "")
        per_task = int(cpt) if cpt.isdigit() and int(cpt) > 0 else 1
        hosts = [(h, (k or 1) * per_task) for h, k in hosts]
    return kind, [(h, k if k else 1) for h, k in hosts]


def capacities(hosts: HostList, local_cores: int) -> list[tuple[str, int]]:
    """Slots per host; a host without a count has this machine's cores if it is this machine,
    else 1 (a remote host's cores are unknown before connecting: ask for more explicitly)."""
    return [(h, k if k is not None else (max(1, local_cores) if is_local_host(h) else 1)) for h, k in hosts]


def _describe(caps) -> str:
    shown = ", ".join(f"{h}: {k}" for h, k in caps[:6])
    return shown + (f", ... ({len(caps)} hosts)" if len(caps) > 6 else "")


def first_placement(n: Optional[int], hosts: HostList, local_cores: int, *, strict: bool = False,
                    oversubscribe: bool = False, where: str = "the allocation") -> list[tuple[str, int]]:
    """Workers per host at start.  ``strict``: the slots are a limit (inside an allocation)."""
    if strict and n is not None and not oversubscribe:
        caps = capacities(hosts, local_cores)
        total = sum(k for _, k in caps)
        if n > total:
            plural = "s" if total != 1 else ""
            raise PlacementError(f"{n} workers asked for, but {where} has {total} slot{plural} "
                                 f"({_describe(caps)}); ask for at most {total} or allow it with "
                                 "--oversubscribe")
    return distribute(n, hosts, local_cores)


def add_placement(k: int, caps: list[tuple[str, int]], current: Mapping[str, int], *, strict: bool = False,
                  oversubscribe: bool = False, where: str = "the allocation") -> list[str]:
    """Hosts for ``k`` more workers: each goes where the most slots are free (earlier host on
    ties); once every slot is taken, where the fewest workers per slot run."""
    if k < 0:
        raise ValueError(f"cannot add {k} workers")
    counts = {h: current.get(h, 0) for h, _ in caps}
    for h, c in current.items():
        counts.setdefault(h, c)
    cap = dict(caps)
    free = sum(max(0, cap[h] - counts[h]) for h in cap)
    if strict and not oversubscribe and k > free:
        total = sum(cap.values())
        have = sum(counts[h] for h in cap)
        raise PlacementError(f"{have + k} workers asked for, but {where} has {total} slot"
                             f"{'s' if total != 1 else ''} ({_describe(caps)}); allow more with "
                             "--oversubscribe")
    order = [h for h, _ in caps]
    out = []
    for _ in range(k):
        if any(cap[h] > counts[h] for h in order):
            best = max(order, key=lambda h: (cap[h] - counts[h], -order.index(h)))
        else:
            best = min(order, key=lambda h: (counts[h] / cap[h], order.index(h)))
        counts[best] += 1
        out.append(best)
    return out
