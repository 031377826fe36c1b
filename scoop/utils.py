"""SCOOP 0.7.2's ``scoop.utils``: the public host-list helpers, on this package's parsers.

Programs and job scripts written for SCOOP 0.7 call these (``getHosts``, ``getWorkerQte``,
``getCPUcount``, ``parseSLURM``...), and some test for ``from scoop import futures, utils`` to
decide whether to run in parallel at all.  Host lists are 0.7's ``[(host, count), ...]``; a
count of 0 means "not said" (0.7 then started one worker per CPU of that host).

The parsing is :mod:`scoop.launch.hosts`' (SLURM ranges without ``scontrol``), with 0.7's
leniency where its files were laxer: a hostfile line's count is the first integer after the
host name (``host1 worker=8``), and a PBS node file may hold several names on a line.
"""
from __future__ import annotations

import os
import re

from .launch import hosts as _hosts

__all__ = ["getCPUcount", "getEnv", "getHosts", "getHostsFromFile", "getHostsFromList", "parseSLURM",
           "getHostsFromSLURM", "getHostsFromPBS", "getHostsFromSGE", "getWorkerQte", "getDefaultHosts",
           "groupTogether", "isStr", "loopbackReferences"]

loopbackReferences = ["127.0.0.1", "localhost", "::1"]

_HOSTNAME = re.compile(r"^[^ /\t=\n]+")
_COUNT = re.compile(r"\d+")


def getCPUcount() -> int:
    """The number of CPUs this process may use (at least 1)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def getEnv() -> str:
    """The batch system this process runs under: ``"SLURM"``, ``"PBS"``, ``"SGE"`` or ``"other"``."""
    if "SLURM_NODELIST" in os.environ or "SLURM_JOB_NODELIST" in os.environ:
        return "SLURM"
    if "PBS_ENVIRONMENT" in os.environ:
        return "PBS"
    if "PE_HOSTFILE" in os.environ:
        return "SGE"
    return "other"


def getHosts(filename=None, hostlist=None) -> list:
    """The hosts to run on: from a hostfile, a host list, the batch allocation, or this host."""
    if filename:
        return getHostsFromFile(filename)
    if hostlist:
        return getHostsFromList(hostlist)
    env = getEnv()
    if env == "SLURM":
        return getHostsFromSLURM()
    if env == "PBS":
        return getHostsFromPBS()
    if env == "SGE":
        return getHostsFromSGE()
    return getDefaultHosts()


def getHostsFromFile(filename) -> list:
    """A hostfile's hosts: ``host [count]`` lines (``#`` comments), SLURM ranges expanded."""
    found = []
    with open(filename, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if "[" in line:
                name, _, rest = line.partition(" ")
                count = _COUNT.search(rest)
                found += [(h, int(count.group()) if count else 1) for h in _hosts.expand_slurm_nodelist(name)]
                continue
            host = _HOSTNAME.search(line)
            if host:
                count = _COUNT.search(line[host.end():])
                found.append((host.group(), int(count.group()) if count else 0))
    return found


def getHostsFromList(hostlist) -> list:
    """``["a", "a", "b"]`` -> ``[("a", 2), ("b", 1)]``: a host named k times gets k workers."""
    if isinstance(hostlist, str):
        hostlist = hostlist.split()
    return _hosts.parse_hosts_args(list(hostlist))


def parseSLURM(string) -> list:
    """A SLURM node list (``node[01-04,07]``) as hosts, each with its share of
    ``SLURM_TASKS_PER_NODE`` (``2(x3),1``) when that is set, else 1."""
    nodes = _hosts.expand_slurm_nodelist(string)
    per_node = os.environ.get("SLURM_TASKS_PER_NODE")
    if not per_node:
        return [(n, 1) for n in nodes]
    counts = _hosts.parse_slurm_tasks_per_node(per_node)
    if len(counts) == 1:
        counts = counts * len(nodes)
    if len(counts) != len(nodes):
        raise ValueError(f"SLURM node list {string!r} has {len(nodes)} nodes but "
                         f"SLURM_TASKS_PER_NODE {per_node!r} gives {len(counts)} counts")
    return list(zip(nodes, counts))


def getHostsFromSLURM() -> list:
    return parseSLURM(os.environ.get("SLURM_JOB_NODELIST") or os.environ["SLURM_NODELIST"])


def getHostsFromPBS() -> list:
    """``PBS_NODEFILE``'s hosts, a repeat being one more slot."""
    with open(os.environ["PBS_NODEFILE"], encoding="utf-8") as f:
        return getHostsFromList(f.read().split())


def getHostsFromSGE() -> list:
    """``PE_HOSTFILE``'s hosts with their slots."""
    return [(h, n or 0) for h, n in _hosts.sge_hosts()]


def getWorkerQte(hosts) -> int:
    """How many workers to start: the batch system's task count, else the hosts' counts."""
    for var in ("SLURM_NTASKS", "PBS_NP", "NSLOTS"):
        if var in os.environ:
            return int(os.environ[var])
    return sum(n for _, n in hosts)


def getDefaultHosts() -> list:
    return [("127.0.0.1", getCPUcount())]


def groupTogether(in_list) -> list:
    """The list with equal elements brought together, in first-seen order."""
    order: dict = {}
    for x in in_list:
        order[x] = order.get(x, 0) + 1
    return [x for x, k in order.items() for _ in range(k)]


def isStr(string) -> bool:
    return isinstance(string, str)
