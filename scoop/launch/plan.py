"""Which launcher starts a cluster's workers, and where they go first.

Read once at start from the options, the host list or file, and the batch allocation this
process runs in (if any): the launcher (the batch system's own launcher inside an allocation,
SSH for remote hosts, else local), the hosts' slots, and the first placement.  Later growth
(``scale``, an adaptive policy) asks :meth:`Plan.add` where new workers go.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

from ..errors import ClusterError
from . import hosts as H
from .base import launcher_class
from .placement import PlacementError, add_placement, allocation_slots, capacities, first_placement

__all__ = ["ALLOCATION_LAUNCHERS", "Plan", "make_plan", "choose_launcher"]

#: launchers that start workers through a batch system, also on this very node
ALLOCATION_LAUNCHERS = {"slurm": "srun", "pbs": "pbsdsh", "sge": "qrsh", "lsf": "blaunch"}


@dataclass
class Plan:
    """The launcher's name, the first placement [(host, workers)], and the slots to grow into."""
    launcher: str
    first: list[tuple[str, int]]
    caps: list[tuple[str, int]] = field(default_factory=list)
    allocation: str | None = None   # "slurm", "pbs", "sge" or "lsf" inside an allocation
    oversubscribe: bool = False

    @property
    def strict(self) -> bool:
        """An allocation's slots are a limit, however it was reached."""
        return self.allocation is not None

    @property
    def where(self) -> str:
        return f"the {self.allocation.upper()} allocation" if self.allocation else "the host list"

    def capacity(self) -> int:
        """Slots of every host (an allocation's, or this machine's cores)."""
        return sum(k for _, k in self.caps)

    def add(self, k: int, per_host: list[tuple[str, int]]) -> list[str]:
        """The hosts of ``k`` more workers (where the most slots are free)."""
        try:
            return add_placement(k, self.caps, dict(per_host), strict=self.strict,
                                 oversubscribe=self.oversubscribe, where=self.where)
        except PlacementError as exc:
            raise ClusterError(str(exc)) from None


def choose_launcher(name: str, fork: bool, allocation: str | None, explicit_hosts: bool,
                    hosts: list[str], env=None) -> str:
    """``auto``: the batch system's own launcher inside an allocation (when its command is here
    and the allocation is really ours), SSH when a host is remote, else local."""
    env = os.environ if env is None else env
    if name == "local":
        return "fork" if fork else "spawn"
    if name != "auto":
        return name
    if allocation and not explicit_hosts:
        batch = ALLOCATION_LAUNCHERS[allocation]
        if shutil.which(batch) and launcher_class(batch).in_allocation_env(env):
            return batch
    if any(not H.is_local_host(h) for h in hosts):
        return "ssh"
    return "fork" if fork else "spawn"


def make_plan(options, fork: bool = False, env=None) -> Plan:
    """Decides the launcher and the first placement from the options and the environment."""
    o = options
    env = os.environ if env is None else env
    cores = os.cpu_count() or 1
    entries = []
    if o.hostfile:
        entries = H.parse_hostfile(o.hostfile)
        if not entries:
            raise ClusterError(f"host file {o.hostfile!r} lists no hosts")
    if o.hosts:
        entries += H.parse_hosts_args(o.hosts)
    allocation = None
    if not entries and o.launcher != "local":
        alloc = allocation_slots(env)
        if alloc:
            allocation, entries = alloc[0], list(alloc[1])
    if not entries:
        entries = [("localhost", None)]
    name = choose_launcher(o.launcher, fork, allocation, bool(o.hosts or o.hostfile),
                           [h for h, _ in entries], env)
    plan = Plan(name, [], capacities(list(entries), cores), allocation, o.oversubscribe)
    try:
        first = first_placement(o.n, entries, cores, strict=plan.strict, oversubscribe=o.oversubscribe,
                                where=plan.where)
    except ValueError as exc:
        raise ClusterError(str(exc)) from None
    plan.first = [(h, k) for h, k in first if k > 0]
    return plan
