"""One ``python -m scoop --hostfile`` run over many SSH test hosts (tests/netns.py), watched from
outside: the time until all workers joined, the workers and the SSH connections on each host
while it runs, and what is left on each host after it.  Used by tests/test_many_hosts.py (a
size that fits CI) and bench/many_hosts.py (32 hosts x 8 workers)."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = os.path.join(ROOT, "tests", "programs", "many_hosts.py")


@dataclass
class Run:
    joined_s: float | None = None       # launcher start -> its program runs (all workers joined)
    started_at: float = 0.0             # time.time() of the launcher's start (for a launch trace)
    map_s: float | None = None          # a map of 4 tiny tasks per worker
    answered: int = 0                   # distinct workers that ran a task of that map
    workers: dict = field(default_factory=dict)      # host -> its scoop-worker processes
    connections: dict = field(default_factory=dict)  # host -> the launcher's TCP connections to its sshd
    sessions: dict = field(default_factory=dict)     # host -> its sshd's connection processes
    left: dict = field(default_factory=dict)         # host -> what still ran there after the stop
    cpu: dict = field(default_factory=dict)          # name -> (count, CPU s, ended children's CPU s)
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""


def _ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def _ns_pids(netns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _describe(pid: int) -> str:
    try:
        p = psutil.Process(pid)
        return f"{pid} {p.name()} {' '.join(p.cmdline())[:120]}"
    except psutil.Error:
        return f"{pid} (gone)"


def leftovers(cluster) -> dict:
    """Per host, every process in its namespace but its sshd listener."""
    left = {}
    for h in cluster.hosts:
        keep = {h.sshd.pid} if h.sshd is not None else set()
        try:  # `ip netns exec` execs sshd: the listener is that pid (or its only child)
            keep |= {c.pid for c in psutil.Process(h.sshd.pid).children() if c.name() == "ip"}
        except (psutil.Error, AttributeError):
            pass
        pids = [p for p in _ns_pids(h.netns) if p not in keep and psutil.pid_exists(p)]
        pids = [p for p in pids if psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if pids:
            left[h.name] = [_describe(p) for p in pids]
    return left


def cpu_by_name(cluster, launcher: int) -> dict:
    """CPU seconds (user + system) spent so far by the launcher's processes and by every process on
    the hosts, by process name, with what their children that ended spent (a login shell's rc
    files, run by each SSH session): where a launch's work went."""
    nets = {_ns(h.sshd.pid) for h in cluster.hosts}
    procs = [psutil.Process(launcher)]
    try:
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        pass
    seen = {p.pid for p in procs}
    procs += [p for p in psutil.process_iter() if p.pid not in seen and _ns(p.pid) in nets]
    out: dict = {}
    for p in procs:
        try:
            name, t = p.name(), p.cpu_times()
        except psutil.Error:
            continue
        count, cpu, ended = out.get(name, (0, 0.0, 0.0))
        out[name] = (count + 1, cpu + t.user + t.system, ended + t.children_user + t.children_system)
    return out


def run(cluster, per_host: int, *, python: str = sys.executable, timeout: float = 300.0,
        extra_args=()) -> Run:
    """Runs the program on every host of ``cluster`` with ``per_host`` workers each; always ends
    the launcher's process group, and waits (up to 15 s) for the hosts to be empty again."""
    hostfile = os.path.join(cluster.tmp, "hostfile")
    with open(hostfile, "w") as f:
        f.writelines(f"{h.name} {per_host}\n" for h in cluster.hosts)
    go = os.path.join(cluster.tmp, "go")
    if os.path.exists(go):
        os.unlink(go)
    env = dict(os.environ, HOME=cluster.home, GO=go,
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    env.pop("SSH_AUTH_SOCK", None)
    r = Run()
    r.started_at = time.time()
    t0 = time.perf_counter()
    p = subprocess.Popen([python, "-m", "scoop", "--hostfile", hostfile, *extra_args, PROGRAM],
                         cwd=cluster.tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    err: list[str] = []
    out: list[str] = []

    def read(stream, into):
        for line in stream:
            into.append(line)
            if into is out:
                lines.put(line)
        if into is out:
            lines.put(None)

    readers = [threading.Thread(target=read, args=(p.stdout, out), daemon=True),
               threading.Thread(target=read, args=(p.stderr, err), daemon=True)]
    for t in readers:
        t.start()
    deadline = t0 + timeout
    try:
        while r.joined_s is None:
            line = lines.get(timeout=max(0.1, deadline - time.perf_counter()))
            if line is None:
                break
            if line.startswith("JOINED"):
                r.joined_s = time.perf_counter() - t0
        if r.joined_s is not None:
            by_ns = {_ns(h.sshd.pid): h.name for h in cluster.hosts}
            workers = Counter()
            for w in psutil.process_iter(["name"]):
                if w.info["name"] == "scoop-worker" and _ns(w.pid) in by_ns:
                    workers[by_ns[_ns(w.pid)]] += 1
            r.workers = dict(workers)
            r.cpu = cpu_by_name(cluster, p.pid)
            ips = {h.ip: h.name for h in cluster.hosts}
            conns = Counter(ips[c.raddr.ip] for c in psutil.Process(p.pid).net_connections("tcp")
                            if c.raddr and c.raddr.ip in ips and c.raddr.port == 22
                            and c.status == psutil.CONN_ESTABLISHED)
            r.connections = {h.name: conns.get(h.name, 0) for h in cluster.hosts}
            r.sessions = {h.name: len(cluster.sessions(h)) for h in cluster.hosts}
            open(go, "w").close()
        p.wait(max(1.0, deadline - time.perf_counter()))
    except (queue.Empty, subprocess.TimeoutExpired):
        pass
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        for t in readers:
            t.join(5)
    r.returncode = p.returncode
    r.stdout, r.stderr = "".join(out), "".join(err)
    for line in out:
        if line.startswith("MAPPED"):
            _, seconds, answered = line.split()
            r.map_s, r.answered = float(seconds), int(answered)
    end = time.monotonic() + 15
    while True:
        r.left = leftovers(cluster)
        if not r.left or time.monotonic() > end:
            return r
        time.sleep(0.2)
