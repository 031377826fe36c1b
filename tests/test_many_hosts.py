"""Many SSH hosts at once: 16 sshd test hosts in network namespaces (tests/netns.py) x 8 workers.

CI runs this size (16 agent interpreters, 128 forked workers); bench/many_hosts.py runs the full
32 hosts x 8 workers and prints the time until all joined, with the launch's timeline.  The
namespaces, sshd and every process are removed by the fixture and the run helper, also when a
check fails.
"""
from __future__ import annotations

import many_hosts

from netns import netns_hosts_fixture

HOSTS, PER_HOST = 16, 8

hosts = netns_hosts_fixture(HOSTS)


def test_every_host_runs_its_workers_over_one_ssh_connection_and_keeps_nothing(hosts):
    r = many_hosts.run(hosts, PER_HOST, timeout=240)
    assert r.joined_s is not None, f"the program never started: {r.stderr[-3000:]}"
    names = [h.name for h in hosts.hosts]
    assert r.workers == {n: PER_HOST for n in names}, r.workers
    # one connection per host, however many workers it runs (its sshd forks one process per
    # connection; channels of one connection share it)
    assert r.connections == {n: 1 for n in names}, r.connections
    assert r.sessions == {n: 1 for n in names}, r.sessions
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.answered >= 1 and r.map_s is not None, r.stdout
    assert not r.left, f"left running after the stop: {r.left}"
    print(f"{HOSTS} hosts x {PER_HOST}: all joined after {r.joined_s:.1f} s, map {r.map_s:.2f} s")
