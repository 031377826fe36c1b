"""Remote launch over real SSH: sshd test hosts in network namespaces (tests/netns.py)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import psutil
import pytest

from conftest import PROGRAMS, ROOT, run_scoop, scoop_processes
from netns import netns_hosts_fixture

hosts = netns_hosts_fixture(2)


def _ns_of(pid):
    return os.readlink(f"/proc/{pid}/ns/net")


def _host_ns(hosts, name):
    return _ns_of(hosts[name].sshd.pid)


def _counts(stdout):
    return {ns: int(k) for ns, k in re.findall(r"^NS (\S+) (\d+)$", stdout, re.M)}


@pytest.fixture
def env(hosts, monkeypatch):
    monkeypatch.setenv("HOME", hosts.home)
    return {"HOME": hosts.home}


def test_hosts_option_spreads_workers_and_repeats_give_more(hosts, env, no_leak):
    r = run_scoop(["--hosts", "h1", "h2", "h2", "where_remote.py"], env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    counts = _counts(r.stdout)
    assert counts == {_host_ns(hosts, "h1"): 1, _host_ns(hosts, "h2"): 2}, (counts, r.stdout)
    assert "SIZE 3" in r.stdout
    assert "probe 0 on" in r.stdout  # remote workers' output comes back to the origin


def test_hostfile_with_counts_and_n(hosts, env, tmp_path, no_leak):
    hf = tmp_path / "hosts.txt"
    hf.write_text("# lab machines\nh1 1\nh2 2   # the big one\n\n")
    r = run_scoop(["--hostfile", str(hf), "where_remote.py"], env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert _counts(r.stdout) == {_host_ns(hosts, "h1"): 1, _host_ns(hosts, "h2"): 2}
    r = run_scoop(["-n", "2", "--hostfile", str(hf), "where_remote.py"], env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sum(_counts(r.stdout).values()) == 2


def test_bad_hostfile_line_names_file_and_line(tmp_path, no_leak):
    hf = tmp_path / "hosts.txt"
    hf.write_text("h1 2\nh2 two\n")
    r = run_scoop(["--hostfile", str(hf), "exit_code.py", "0"])
    assert r.returncode != 0
    assert str(hf) in r.stderr and ":2" in r.stderr


def test_tunnel_and_prolog(hosts, env, tmp_path, no_leak):
    prolog = tmp_path / "prolog.sh"
    prolog.write_text("export SCOOP_TEST_PROLOG=loaded\n")
    r = run_scoop(["--tunnel", "--prolog", str(prolog), "--hosts", "h1", "h2", "where_remote.py"],
                  env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert _counts(r.stdout) == {_host_ns(hosts, "h1"): 1, _host_ns(hosts, "h2"): 1}
    assert "PROLOG ['loaded']" in r.stdout


def test_unreachable_host_is_named_quickly(hosts, env, tmp_path, no_leak):
    cfg = hosts.write_config(str(tmp_path / "config"), hosts.config_entry("ghost", hosts.unused_ip()))
    t0 = time.monotonic()
    r = run_scoop(["--ssh-config", cfg, "--hosts", "h1", "ghost", "exit_code.py", "0"], env=env, timeout=60)
    assert r.returncode != 0
    assert "host 'ghost'" in r.stderr
    assert time.monotonic() - t0 < 30
    # the good host's connection was closed too (its sshd session ends a moment after the client)
    deadline = time.monotonic() + 10
    while hosts.sessions("h1") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not hosts.sessions("h1")


def test_refused_key_is_named(hosts, env, tmp_path, no_leak):
    bad_key = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(bad_key)], check=True)
    cfg = hosts.write_config(str(tmp_path / "config"),
                             hosts.config_entry("h1bad", hosts["h1"].ip, IdentityFile=str(bad_key)))
    r = run_scoop(["--ssh-config", cfg, "--hosts", "h1bad", "exit_code.py", "0"], env=env, timeout=60)
    assert r.returncode != 0
    assert "host 'h1bad'" in r.stderr and "auth" in r.stderr.lower()


def test_missing_interpreter_is_named(hosts, env, no_leak):
    r = run_scoop(["--python-interpreter", "/opt/nowhere/python3", "--hosts", "h1", "exit_code.py", "0"],
                  env=env, timeout=60)
    assert r.returncode != 0
    assert "host 'h1'" in r.stderr and "/opt/nowhere/python3" in r.stderr


def test_killing_the_origin_leaves_no_orphans_on_the_hosts(hosts, env, no_leak):
    e = dict(os.environ, PYTHONPATH=ROOT, **env)
    p = subprocess.Popen([sys.executable, "-m", "scoop", "--hosts", "h1", "h2", "long_running.py"],
                         cwd=PROGRAMS, env=e, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert p.stdout.readline().strip() == "READY"
        remote = [w for w in scoop_processes(session_only=False) if _ns_of(w.pid) in
                  (_host_ns(hosts, "h1"), _host_ns(hosts, "h2"))]
        assert len([w for w in remote if w.name() == "scoop-worker"]) == 2  # plus their sh wrappers
        p.kill()
        p.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE
                                                  for w in remote):
            time.sleep(0.2)
        assert not [w.pid for w in remote if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    finally:
        p.kill()
        p.wait()


def test_cut_link_mid_map_loses_nothing(hosts, env, no_leak):
    """A host falls off the network mid-map: its tasks run elsewhere, each result once."""
    from scoop import futures
    from scoop.cluster import Cluster

    import tasklib as T
    c = Cluster(hosts=["localhost", "h1", "h2"], pythonpath=[PROGRAMS], connect_timeout=5)
    c.start()
    assert c.meta is not None  # subscribed now, to see the "left" event of the cut host
    try:
        fs = [futures.submit(T.work_ms, 20, i) for i in range(240)]
        counts = {}
        for i, f in enumerate(fs):
            f.add_done_callback(lambda fut, i=i: counts.__setitem__(i, counts.get(i, 0) + 1))
        time.sleep(1.0)
        hosts.cut_link("h2")
        t0 = time.monotonic()
        assert [f.result(timeout=120) for f in fs] == list(range(240))
        assert counts == {i: 1 for i in range(240)}
        snap = c.meta.wait_for(lambda s: all(w["host"] != "h2" for w in s["workers"]), 10)
        assert all(w["host"] != "h2" for w in snap["workers"])
        assert any(e.get("event") == "left" and e["worker"]["host"] == "h2" for e in c.meta.events)
        assert time.monotonic() - t0 < 60
    finally:
        c.stop()
        hosts.restore_link("h2")


def test_slurm_allocation_is_used_without_hosts(hosts, env, no_leak):
    slurm = dict(env, SLURM_JOB_NODELIST="h[1-2]", SLURM_TASKS_PER_NODE="2,1")
    r = run_scoop(["where_remote.py"], env=slurm, timeout=120)
    assert r.returncode == 0, r.stderr
    assert _counts(r.stdout) == {_host_ns(hosts, "h1"): 2, _host_ns(hosts, "h2"): 1}


def test_external_hostname_is_the_address_workers_dial(hosts, env, no_leak):
    r = run_scoop(["--external-hostname", hosts.gateway_ip, "--hosts", "h1", "where_remote.py"],
                  env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert _counts(r.stdout) == {_host_ns(hosts, "h1"): 1}
    r = run_scoop(["--external-hostname", "10.213.254.254", "--heartbeat-timeout", "2",
                   "--hosts", "h1", "exit_code.py", "0"], env=env, timeout=120)
    assert r.returncode != 0  # an address the workers cannot reach: they never join
    assert "worker w1 on h1" in r.stderr and "no answer from the broker at tcp://10.213.254.254" in r.stderr


def test_scale_up_reaches_a_host_the_start_did_not_use(hosts, env, no_leak):
    """-n 1 over two hosts uses only the first; scaling to 2 connects to the second and puts the
    new worker there (the free slot), not on the first."""
    from scoop import futures
    from scoop.cluster import Cluster
    c = Cluster(1, hosts=["h1", "h2"], pythonpath=[PROGRAMS], connect_timeout=5)
    c.start()
    try:
        assert c.plan == [("h1", 1)]
        c.scale(2)
        assert c.plan == [("h1", 1), ("h2", 1)] and [w.name for w in c.workers] == ["w1", "w2"]
        assert sorted(futures.map(abs, range(-3, 3))) == [0, 1, 1, 2, 2, 3]
        snap = c.meta.wait_for(lambda s: len(s["workers"]) == 2, 10)
        assert sorted(w["host"] for w in snap["workers"]) == ["h1", "h2"]
    finally:
        c.stop()
