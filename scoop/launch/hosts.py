"""Host lists: where the workers of a run go.

Everything here is pure Python on purpose: a launcher inside a SLURM, PBS or
SGE allocation must work even where ``scontrol`` is not on PATH (containers,
login wrappers), and a parser that never shells out is easy to test.

A host list is a ``list[tuple[str, int | None]]``: host name and the number
of worker slots on it, ``None`` meaning "not said" (see :func:`distribute`).
"""

from __future__ import annotations

import os
import re
import socket
from typing import Iterable, Mapping, Optional

__all__ = [
    "HostfileError",
    "parse_hostfile",
    "parse_hosts_args",
    "expand_slurm_nodelist",
    "parse_slurm_tasks_per_node",
    "slurm_hosts",
    "pbs_hosts",
    "sge_hosts",
    "detect_allocation",
    "distribute",
    "is_local_host",
]

HostList = list[tuple[str, Optional[int]]]

# Characters a host entry may use: names, IPv4/IPv6 literals, user@host and
# SLURM bracket ranges (expanded by expand_slurm_nodelist).
_HOST_RE = re.compile(r"^[A-Za-z0-9_.:@%\[\],-]+$")


class HostfileError(ValueError):
    """A host file line that cannot be understood.

    The message always names ``file:line`` so a user with a 500-line machine
    file can fix it without guessing.
    """

    def __init__(self, path: str, lineno: int, problem: str):
        self.path = str(path)
        self.lineno = lineno
        self.problem = problem
        super().__init__(f"{self.path}:{lineno}: {problem}")


def _merge(entries: Iterable[tuple[str, Optional[int]]]) -> HostList:
    """Merge repeated hosts, keeping first-seen order.

    A host listed once keeps its count (possibly ``None``); a host listed
    several times gets the sum, a bare listing counting as one slot -- the
    MPICH machine-file convention where repeating a host means more slots.
    """
    order: list[str] = []
    seen: dict[str, list[Optional[int]]] = {}
    for host, count in entries:
        if host not in seen:
            order.append(host)
            seen[host] = []
        seen[host].append(count)
    merged: HostList = []
    for host in order:
        counts = seen[host]
        if len(counts) == 1:
            merged.append((host, counts[0]))
        else:
            merged.append((host, sum(1 if c is None else c for c in counts)))
    return merged


def _parse_count(text: str) -> int:
    if not re.fullmatch(r"[+-]?\d+", text):
        raise ValueError(f"worker count {text!r} is not an integer")
    value = int(text)
    if value <= 0:
        raise ValueError(f"worker count {text!r} must be positive")
    return value


def parse_hostfile(path) -> HostList:
    """Read a SCOOP host file.

    Accepted line forms (``#`` starts a comment anywhere on a line):

    - ``host`` -- slots not said (``None``)
    - ``host N`` -- N workers
    - ``host slots=N`` -- OpenMPI style, so existing MPI host files work
    - ``host=N`` -- what SCOOP 0.7's lenient parser accepted
    - ``node[01-04] N`` -- a SLURM-style range, each node getting N

    Repeated hosts are merged (see :func:`_merge`).
    """
    path = os.fspath(path)
    entries: list[tuple[str, Optional[int]]] = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise HostfileError(path, 0, f"cannot read host file: {e.strerror or e}") from e
    for lineno, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        host = fields[0]
        rest = fields[1:]
        if "=" in host and not rest:
            # SCOOP 0.7 form host=N
            host, _, value = host.partition("=")
            rest = [value]
        if len(rest) > 1:
            raise HostfileError(
                path, lineno, f"too many fields in {line!r} (expected 'host [count]')"
            )
        if not host or not _HOST_RE.match(host):
            raise HostfileError(path, lineno, f"invalid host name {host!r}")
        count: Optional[int] = None
        if rest:
            value = rest[0]
            if value.startswith("slots="):
                value = value[len("slots="):]
            try:
                count = _parse_count(value)
            except ValueError as e:
                raise HostfileError(path, lineno, str(e)) from None
        if "[" in host or "," in host:
            try:
                names = expand_slurm_nodelist(host)
            except ValueError as e:
                raise HostfileError(path, lineno, str(e)) from None
        else:
            names = [host]
        entries.extend((name, count) for name in names)
    return _merge(entries)


def parse_hosts_args(hosts: list[str]) -> HostList:
    """Turn ``--hosts h1 h1 h2`` into ``[("h1", 2), ("h2", 1)]``.

    As in SCOOP, the count is the number of times a host is named, so
    repeating a host is how one asks for more workers on it.  Arguments may
    also be comma lists or SLURM ranges (``node[1-3]``), as people paste
    those from ``squeue``.
    """
    names: list[str] = []
    for arg in hosts:
        arg = arg.strip()
        if not arg:
            continue
        names.extend(expand_slurm_nodelist(arg))
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return list(counts.items())


# --------------------------------------------------------------------------
# SLURM


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets (commas inside ``[..]`` are ranges)."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "[":
            if depth:
                raise ValueError(f"nested '[' in node list {text!r}")
            depth += 1
        elif ch == "]":
            if not depth:
                raise ValueError(f"unbalanced ']' in node list {text!r}")
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth:
        raise ValueError(f"unbalanced '[' in node list {text!r}")
    parts.append("".join(current))
    return parts


def _expand_range_group(group: str, whole: str) -> list[str]:
    values: list[str] = []
    for item in group.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"empty range in node list {whole!r}")
        lo, sep, hi = item.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad range {item!r} in node list {whole!r}")
        if not sep:
            values.append(lo)
            continue
        start, stop = int(lo), int(hi)
        if stop < start:
            raise ValueError(f"descending range {item!r} in node list {whole!r}")
        # SLURM keeps the width of the lower bound: [08-10] -> 08 09 10.
        width = len(lo)
        values.extend(str(i).zfill(width) for i in range(start, stop + 1))
    return values


def _expand_one(name: str, whole: str) -> list[str]:
    pieces = re.split(r"(\[[^\]]*\])", name)
    results = [""]
    for piece in pieces:
        if piece.startswith("["):
            options = _expand_range_group(piece[1:-1], whole)
            results = [r + o for r in results for o in options]
        elif piece:
            results = [r + piece for r in results]
    return results


def expand_slurm_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM host list expression without calling ``scontrol``.

    Handles ``tux[1-3,5]``, zero padding (``nid0[0001-0004]``), several
    bracket groups in one name (``rack[1-2]-node[01-02]``, first group
    outermost, like ``scontrol show hostnames``) and comma lists of any of
    these.  Order is kept and duplicates are not removed.
    """
    text = nodelist.strip()
    if not text:
        return []
    names: list[str] = []
    for part in _split_top_level(text):
        part = part.strip()
        if not part:
            raise ValueError(f"empty host name in node list {nodelist!r}")
        names.extend(_expand_one(part, nodelist))
    return names


def parse_slurm_tasks_per_node(text: str) -> list[int]:
    """Expand ``SLURM_TASKS_PER_NODE`` syntax: ``"2(x3),1"`` -> ``[2, 2, 2, 1]``."""
    counts: list[int] = []
    for item in text.strip().split(","):
        item = item.strip()
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item)
        if not m:
            raise ValueError(f"bad tasks-per-node item {item!r} in {text!r}")
        counts.extend([int(m.group(1))] * int(m.group(2) or 1))
    return counts


def slurm_hosts(env: Optional[Mapping[str, str]] = None) -> HostList:
    """Hosts of the current SLURM job, with the tasks SLURM gave each.

    Uses ``SLURM_JOB_NODELIST`` (older: ``SLURM_NODELIST``) and
    ``SLURM_TASKS_PER_NODE``, falling back to ``SLURM_JOB_CPUS_PER_NODE``
    when the job did not ask for tasks.  Returns ``[]`` outside a job.
    """
    env = os.environ if env is None else env
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        return []
    nodes = expand_slurm_nodelist(nodelist)
    per_node = env.get("SLURM_TASKS_PER_NODE") or env.get("SLURM_JOB_CPUS_PER_NODE")
    if not per_node:
        return _merge((n, None) for n in nodes)
    counts = parse_slurm_tasks_per_node(per_node)
    if len(counts) == 1 and len(nodes) > 1:
        counts = counts * len(nodes)
    if len(counts) != len(nodes):
        raise ValueError(
            f"SLURM node list {nodelist!r} has {len(nodes)} nodes but "
            f"tasks per node {per_node!r} gives {len(counts)} counts"
        )
    return _merge(zip(nodes, counts))


# --------------------------------------------------------------------------
# PBS / Torque, SGE and LSF


def _read_lines(path: str, what: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except OSError as e:
        raise HostfileError(path, 0, f"cannot read {what}: {e.strerror or e}") from e


def pbs_hosts(env: Optional[Mapping[str, str]] = None) -> HostList:
    """Hosts from ``PBS_NODEFILE``: one line per slot, so repeats are counted."""
    env = os.environ if env is None else env
    path = env.get("PBS_NODEFILE")
    if not path:
        return []
    lines = _read_lines(path, "PBS node file")
    counts: dict[str, int] = {}
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        if len(line.split()) != 1 or not _HOST_RE.match(line):
            raise HostfileError(path, lineno, f"expected one host name, got {line!r}")
        counts[line] = counts.get(line, 0) + 1
    return list(counts.items())


def sge_hosts(env: Optional[Mapping[str, str]] = None) -> HostList:
    """Hosts from SGE's ``PE_HOSTFILE`` (``host slots queue processor-range``)."""
    env = os.environ if env is None else env
    path = env.get("PE_HOSTFILE")
    if not path:
        return []
    lines = _read_lines(path, "SGE host file")
    entries: list[tuple[str, Optional[int]]] = []
    for lineno, raw in enumerate(lines, 1):
        fields = raw.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise HostfileError(path, lineno, f"expected 'host slots ...', got {raw.strip()!r}")
        try:
            slots = _parse_count(fields[1])
        except ValueError as e:
            raise HostfileError(path, lineno, str(e)) from None
        entries.append((fields[0], slots))
    return _merge(entries)


def lsf_hosts(env: Optional[Mapping[str, str]] = None) -> HostList:
    """Hosts of the current LSF job from ``LSB_MCPU_HOSTS`` (``"hostA 2 hostB 4"``: each host
    and its slots; LSF sets it in every job, unlike ``LSB_HOSTS``, which long lists omit)."""
    env = os.environ if env is None else env
    text = env.get("LSB_MCPU_HOSTS", "").split()
    if not text:
        return []
    if len(text) % 2:
        raise ValueError(f"LSB_MCPU_HOSTS {' '.join(text)!r} is not pairs of host and slots")
    return _merge((host, _parse_count(count)) for host, count in zip(text[::2], text[1::2]))


def detect_allocation(env: Optional[Mapping[str, str]] = None):
    """Which batch system allocated us, and its hosts.

    Returns ``("slurm" | "pbs" | "sge" | "lsf", hosts)`` or ``None`` outside a job.
    SLURM is checked first because SLURM sites often set PBS compatibility
    variables too.
    """
    env = os.environ if env is None else env
    for kind, reader in (("slurm", slurm_hosts), ("pbs", pbs_hosts), ("sge", sge_hosts), ("lsf", lsf_hosts)):
        hosts = reader(env)
        if hosts:
            return kind, hosts
    return None


# --------------------------------------------------------------------------
# Distribution


def is_local_host(name: str) -> bool:
    """Whether ``name`` is this machine, judged without DNS.

    DNS is avoided on purpose: on cluster login nodes a lookup of a compute
    node's name can hang, and distribution must not.
    """
    host = name.rsplit("@", 1)[-1].strip("[]").lower()
    if host in ("localhost", "localhost.localdomain", "::1", "0.0.0.0") or host.startswith("127."):
        return True
    own = socket.gethostname().lower()
    if host == own or host == own.split(".")[0]:
        return True
    try:
        import psutil

        for addrs in psutil.net_if_addrs().values():
            for addr in addrs:
                if addr.address.split("%")[0].lower() == host:
                    return True
    except Exception:  # pragma: no cover - psutil missing or unsupported
        pass
    return False


def distribute(n: Optional[int], hosts: HostList, local_cores: int) -> list[tuple[str, int]]:
    """Decide how many workers each host runs.

    A host's capacity is its count; when the count is ``None`` it is
    ``local_cores`` for this machine (see :func:`is_local_host`) and 1 for a
    remote host, whose core count cannot be known before connecting -- ask
    explicitly (``host N``) for more.

    - ``n is None``: every host runs its capacity.
    - ``n < len(hosts)``: the first ``n`` hosts run one worker each and the
      others are left out of the result.
    - otherwise every host first gets one worker (a host that was asked for
      is never left idle), then hosts are filled in order up to their
      capacity, and whatever is left beyond the total capacity is dealt out
      one at a time, round-robin, in host order.

    Repeated host names are merged first.  Hosts with no worker are omitted,
    so every returned entry has ``nworkers >= 1``.
    """
    merged = _merge(hosts)
    if not merged:
        raise ValueError("no hosts to distribute workers on")
    if local_cores < 1:
        local_cores = 1
    caps = []
    for host, count in merged:
        if count is None:
            count = local_cores if is_local_host(host) else 1
        if count < 1:
            raise ValueError(f"host {host!r} has a non-positive worker count {count}")
        caps.append(count)
    if n is None:
        return [(host, cap) for (host, _), cap in zip(merged, caps)]
    if n < 1:
        raise ValueError(f"number of workers must be positive, got {n}")
    if n < len(merged):
        return [(host, 1) for host, _ in merged[:n]]
    given = [1] * len(merged)
    left = n - len(merged)
    for i, cap in enumerate(caps):
        extra = min(cap - 1, left)
        given[i] += extra
        left -= extra
    i = 0
    while left > 0:
        given[i % len(given)] += 1
        left -= 1
        i += 1
    return [(host, k) for (host, _), k in zip(merged, given)]
