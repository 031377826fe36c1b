"""Workers on many SSH hosts: 32 sshd test hosts (network namespaces, tests/netns.py) x 8 workers.

    sudo python bench/many_hosts.py --hosts 32 --per-host 8

Prints the time from `python -m scoop --hostfile` to all workers joined (goal: 256 within 10 s),
the SSH connections the launcher holds to each host while they run (goal: one per host), a map of
4 tiny tasks per worker, and what is left on the hosts after the launcher ends (goal: nothing).
Needs root (namespaces) and OpenSSH's sshd; the hosts and everything on them are removed after.

Then a timeline of the launch from its trace (scoop/_launchtrace.py): for each milestone (SSH
connected, agent running, imported and seen ready, workers sent, forked, running, joined), when the first, the
median and the last of them happened, in seconds from the launcher's start.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import many_hosts  # noqa: E402

from netns import NetnsCluster, skip_reason  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=32)
    ap.add_argument("--per-host", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=300)
    a = ap.parse_args()
    why = skip_reason()
    if why:
        sys.exit(f"many_hosts.py: {why}")
    trace = tempfile.NamedTemporaryFile(prefix="scoop-launch-trace-", delete=False)
    trace.close()
    os.environ["SCOOP_LAUNCH_TRACE"] = trace.name
    t = time.perf_counter()
    with NetnsCluster(a.hosts) as cluster:
        made = time.perf_counter() - t
        print(f"# {a.hosts} hosts made in {made:.1f} s; {os.cpu_count()} cores, load average "
              f"{os.getloadavg()[0]:.1f}", flush=True)
        r = many_hosts.run(cluster, a.per_host, timeout=a.timeout)
    n = a.hosts * a.per_host
    conns = sorted(set(r.connections.values()))
    workers = sorted(set(r.workers.values()))
    print(f"| hosts x workers | all joined (s) (goal <= 10) | SSH connections per host (goal 1) | "
          f"sshd connection processes per host | workers per host | map of {4 * n} (s) | left on hosts |")
    print("|---|---|---|---|---|---|---|")
    joined = f"{r.joined_s:.1f}" if r.joined_s is not None else "never"
    print(f"| {a.hosts} x {a.per_host} | {joined} | {conns} | {sorted(set(r.sessions.values()))} | "
          f"{workers} | {r.map_s if r.map_s is not None else '-'} | {len(r.left) or 'nothing'} |")
    print(timeline(trace.name, r.started_at, r.joined_s))
    print("| processes (when all joined) | count | CPU s | CPU ms each | CPU s of their ended children |\n"
          "|---|---|---|---|---|")
    for name, (count, cpu, ended) in sorted(r.cpu.items(), key=lambda kv: -kv[1][1] - kv[1][2]):
        print(f"| {name} | {count} | {cpu:.2f} | {1000 * cpu / count:.0f} | {ended:.2f} |")
    os.unlink(trace.name)
    if r.returncode != 0:
        print(f"# the run failed ({r.returncode}): {r.stderr[-2000:]}", file=sys.stderr)
        sys.exit(1)


ORDER = ("ssh connected", "workers sent", "agent runs", "agent imported", "agent ready", "agent forked",
         "worker runs", "worker joined")


def timeline(path: str, t0: float, joined_s: float | None) -> str:
    """The trace's milestones as a table: how many, first, median and last (s from the start)."""
    at = defaultdict(list)
    with open(path) as f:
        for line in f:
            stamp, _pid, *words = line.split()
            event = " ".join(words[:2])
            at[event].append(float(stamp) - t0)
    rows = ["| milestone (s from the launcher's start) | count | first | median | last |",
            "|---|---|---|---|---|"]
    for event in sorted(at, key=lambda e: (ORDER.index(e) if e in ORDER else len(ORDER), e)):
        v = sorted(at[event])
        rows.append(f"| {event} | {len(v)} | {v[0]:.2f} | {statistics.median(v):.2f} | {v[-1]:.2f} |")
    if joined_s is not None:
        rows.append(f"| the program runs (all joined) | 1 | {joined_s:.2f} | | |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
