"""Safe on a shared host, with real processes: another local user can neither connect to the
origin nor exhaust any process's descriptors; a shared-memory segment rewritten after the send
is refused; the processes tasks start end with their worker; a worker declared lost starts
nothing more; bad ``--prolog`` and ``-n`` fail at once, naming the problem."""
from __future__ import annotations

import glob
import json
import os
import pickle
import resource
import secrets
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from scoop import _protocol as P
from scoop import _shm, futures
from tests.conftest import PROGRAMS, ROOT, TESTS, origin_cluster, run_scoop


# ---- helpers run as tasks ---------------------------------------------------------------------
def start_children():
    """A task's child, and a grandchild its shell leaves behind (reparented when the shell ends)."""
    child = subprocess.Popen(["sleep", "300"])
    sh = subprocess.run(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True)
    return os.getpid(), [child.pid, int(sh.stdout)]


def logged_nap(log, i, seconds):
    with open(log, "a") as f:
        f.write(f"{i} {os.getpid()}\n")
    time.sleep(seconds)
    return i


def gone(pids, timeout):
    """Waits until none of ``pids`` runs (a zombie has ended); returns those still running."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def kill_all(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# ---- C. a task's children end with its worker ----------------------------------------------------
def test_task_children_end_when_the_cluster_stops_or_their_worker_is_killed():
    left = []
    try:
        gen = origin_cluster(2)
        c = next(gen)
        try:
            victim, killed_kids = futures.submit(start_children).result(60)
            os.kill(victim, signal.SIGKILL)
            left += killed_kids
            assert not gone(killed_kids, 2.0), "a task's processes outlived their worker killed with SIGKILL"
            c.wait_for_workers(2, 60)  # replaced
            outs = [f.result(60) for f in [futures.submit(start_children) for _ in range(4)]]
            kids = [pid for _, ks in outs for pid in ks]
            left += kids
        finally:
            t0 = time.monotonic()
            next(gen, None)  # stops the cluster, checks that broker and workers are gone
        alive = gone(kids, max(0.0, 2.0 - (time.monotonic() - t0)))
        assert not alive, f"task processes still running 2 s after the cluster stopped: {alive}"
    finally:
        kill_all(left)


# ---- D. fencing: a worker declared lost starts nothing more ---------------------------------------
def test_a_frozen_worker_resumed_after_the_timeout_starts_no_task(tmp_path):
    timeout = 1.0
    log = tmp_path / "starts"
    n = 200
    gen = origin_cluster(2, heartbeat_timeout=timeout, inline=False)
    next(gen)
    victim = None
    try:
        # short tasks: each worker keeps a spare or two waiting behind the one it runs
        fs = [futures.submit(logged_nap, str(log), i, 0.05) for i in range(n)]
        deadline = time.monotonic() + 60
        while not (log.exists() and log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.01)
        victim = int(log.read_text().split()[1])
        time.sleep(0.5)
        os.kill(victim, signal.SIGSTOP)
        # the signal lands when the victim next enters the kernel: what it logs before counts
        while psutil.Process(victim).status() != psutil.STATUS_STOPPED and time.monotonic() < deadline:
            time.sleep(0.001)
        frozen = [line.split() for line in log.read_text().splitlines()]
        time.sleep(3 * timeout + 1)  # declared lost, its tasks run elsewhere
        os.kill(victim, signal.SIGCONT)
        done, _ = futures.wait(fs, timeout=120)
        assert sorted(f.result() for f in done) == list(range(n))
        assert not gone([victim], 10.0), "the fenced worker did not exit"
        starts = [line.split() for line in log.read_text().splitlines()]
        after = [s for s in starts[len(frozen):] if int(s[1]) == victim]
        assert not after, f"the worker declared lost started {after} after it resumed"
        counts = {str(i): sum(1 for s in starts if s[0] == str(i)) for i in range(n)}
        running = {s[0] for s in frozen if int(s[1]) == victim}  # started before the freeze
        twice = {i for i, k in counts.items() if k > 1 and i not in running}
        assert not twice, f"tasks started twice: {twice} ({starts})"
    finally:
        if victim is not None:
            try:
                os.kill(victim, signal.SIGCONT)
            except OSError:
                pass
        next(gen, None)


# ---- B. shared memory is checked as frames are ---------------------------------------------------
class _Trap:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _received(packed):
    box = P.Outbox()
    box.add(P.TASK_HEADER.pack(P.TASK, 1, 0, b"\0" * 16, 1, 0), packed=packed)
    data, frames = box.take()
    (rec,) = P.parse(data, frames, start=0)
    return rec


@pytest.fixture
def segments():
    if not _shm.available():
        pytest.skip("no writable /dev/shm")
    segs = _shm.Segments(P.derive(os.urandom(32), "shared memory"))
    try:
        yield segs
    finally:
        segs.cleanup()
    assert not glob.glob(f"{_shm.DIR}/scoop-{segs.tag.hex()}-*") and not segs.held()


def _rewrite(segs, data_at):
    """Rewrites the segment as its user (or root) would: a named one in /dev/shm; a sealed one
    through /proc, which its seals refuse (PermissionError), also to root."""
    paths = glob.glob(f"{_shm.DIR}/scoop-{segs.tag.hex()}-{os.getpid()}-*")
    (path,) = paths or [f"/proc/self/fd/{fd}" for fd in segs._held.values()]
    with open(path, "r+b") as f:
        for offset, data in data_at:
            f.seek(offset)
            f.write(data)
            f.flush()


def _sealed_cannot_change(segs):
    """Every other way to change a sealed segment fails too: shrink, grow, a shared writable map."""
    import mmap
    (fd,) = segs._held.values()
    fd = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        for change in (lambda: os.ftruncate(fd, size - 1), lambda: os.ftruncate(fd, size + 1),
                       lambda: mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_WRITE)):
            with pytest.raises(PermissionError):
                change()
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", ["sealed", "named"])
def test_an_array_segment_rewritten_after_the_send_is_refused(segments, kind):
    a = np.arange(P.SHM_MIN // 8 + 100, dtype=np.float64)
    rec = _received(P.pack(a, shm=segments if kind == "sealed" else segments.results))
    assert rec.refs[0][0] & P.REF_SHM
    np.testing.assert_array_equal(P.unpack(rec, segments), a)  # as sent: accepted
    if kind == "sealed":  # arguments, constants: nobody can change them
        with pytest.raises(PermissionError):
            _rewrite(segments, [(P.SHM_MIN // 2, b"\1")])
        _sealed_cannot_change(segments)
        np.testing.assert_array_equal(P.unpack(rec, segments), a)
        return
    _rewrite(segments, [(P.SHM_MIN // 2, b"\1")])
    with pytest.raises(_shm.SegmentError, match="rewritten after the send"):
        P.unpack(rec, segments)


@pytest.mark.parametrize("kind", ["sealed", "named"])
def test_a_pickle_segment_rewritten_after_the_send_is_refused_before_unpickling(segments, tmp_path, kind):
    trap_file = tmp_path / "pwned"
    data = pickle.dumps(list(range(300_000)))
    assert len(data) >= P.SHM_MIN
    rec = _received(P.packed_bytes(data, segments if kind == "sealed" else segments.results))
    assert rec.refs[0][0] == P.REF_BODY | P.REF_SHM
    hostile = pickle.dumps(_Trap(str(trap_file)))
    if kind == "sealed":
        with pytest.raises(PermissionError):
            _rewrite(segments, [(0, hostile + b"\0" * (len(data) - len(hostile)))])
        assert P.unpack(rec, segments) == list(range(300_000))
    else:
        _rewrite(segments, [(0, hostile + b"\0" * (len(data) - len(hostile)))])
        with pytest.raises(_shm.SegmentError, match="before unpickling"):
            P.unpack(rec, segments)
    assert not trap_file.exists(), "a rewritten segment was unpickled"


# ---- E. bad --prolog and -n fail at once, naming the problem -----------------------------------------
def test_a_missing_prolog_is_named(tmp_path):
    missing = str(tmp_path / "no_such_prolog.sh")
    r = run_scoop(["-n", "2", "--prolog", missing, "exit_code.py"], timeout=60)
    assert r.returncode != 0
    assert "prolog" in r.stderr and "no_such_prolog.sh" in r.stderr and "does not exist" in r.stderr
    assert "Broken pipe" not in r.stderr


def test_a_prolog_that_fails_is_named(tmp_path):
    prolog = tmp_path / "failing.sh"
    prolog.write_text("echo 'module: command not found' >&2\nfalse\n")
    r = run_scoop(["-n", "1", "--prolog", str(prolog), "exit_code.py"], timeout=60)
    assert r.returncode != 0
    assert "prolog" in r.stderr and "module: command not found" in r.stderr, r.stderr


def test_too_many_workers_fail_at_once_naming_the_limit():
    t0 = time.monotonic()
    r = run_scoop(["-n", "100000", "exit_code.py"], timeout=60)
    took = time.monotonic() - t0
    assert r.returncode != 0
    assert "cannot start 100000 local workers" in r.stderr and "allows" in r.stderr, r.stderr
    assert any(w in r.stderr for w in ("open files", "processes", "memory"))
    print(f"-n 100000 failed after {took:.1f} s: {r.stderr.strip()}")


# ---- A. another local user: no connection to the origin, no descriptor exhaustion ----------------------
ATTACKER = r"""
import errno, json, os, resource, selectors, socket, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
cfg = json.loads(sys.argv[1])
report = {"uid": os.getuid(), "unix": {}, "tcp": {}}
paths = set(cfg["unix"])
with open("/proc/net/unix") as f:  # world-readable: every listening socket with "scoop" in its name
    for line in f.readlines()[1:]:
        parts = line.split()
        if len(parts) >= 8 and int(parts[3], 16) & 0x10000 and "scoop" in parts[7]:
            paths.add(parts[7])
for path in sorted(paths):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect("\0" + path[1:] if path.startswith("@") else path)
        report["unix"][path] = "connected"
    except OSError as exc:
        report["unix"][path] = errno.errorcode.get(exc.errno, str(exc.errno))
    finally:
        s.close()
sel = selectors.DefaultSelector()
def opened(port):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    sel.register(s, selectors.EVENT_READ, port)
    return s
held = {port: 0 for port in cfg["tcp"]}
for port in cfg["tcp"]:
    for _ in range(cfg["n"]):
        opened(port)
        held[port] += 1
report["tcp"] = {str(p): k for p, k in held.items()}
print(json.dumps(report), flush=True)
reopened = 0
while True:  # idle: never a byte sent; a connection the server drops is opened again
    for key, _ in sel.select(0.5):
        try:
            data = key.fileobj.recv(65536)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if not data:
            sel.unregister(key.fileobj)
            key.fileobj.close()
            opened(key.data)
            reopened += 1
"""

PROGRAM = r"""
import json, os, sys, time
import scoop
from scoop import futures

def work(x):
    t = time.perf_counter() + 0.001
    while time.perf_counter() < t:
        pass
    return x * x

def timed(n=600):
    t0 = time.perf_counter()
    assert list(futures.map(work, range(n))) == [x * x for x in range(n)]
    return time.perf_counter() - t0

if __name__ == "__main__":
    ctl = sys.argv[1]
    timed()
    base = min(timed() for _ in range(3))
    from scoop import _globals, direct
    rt = _globals.current()
    info = {"main": scoop.BROKER.task_port, "meta": scoop.BROKER.info_port, "pid": os.getpid(),
            "direct": direct.address(rt.secret)[len("ipc://"):] if rt.direct_in else None, "base": base}
    with open(os.path.join(ctl, "info.json"), "w") as f:
        json.dump(info, f)
    while not os.path.exists(os.path.join(ctl, "go")):
        time.sleep(0.05)
    # a worker dies under the flood: its connections drop, and its replacement must get in
    killed = futures.submit(os.getpid).result(timeout=60)  # a timeout: run by a worker, not in place
    assert killed != os.getpid()
    os.kill(killed, 9)
    t0 = time.monotonic()
    while scoop.SIZE > 1 and time.monotonic() - t0 < 30:
        rt.pump(0.05)
    while scoop.SIZE < 2 and time.monotonic() - t0 < 60:
        rt.pump(0.05)
    rejoined = time.monotonic() - t0
    under = min(timed() for _ in range(3))
    direct_in = rt.direct_in.received if rt.direct_in else 0
    with open(os.path.join(ctl, "done.json"), "w") as f:
        json.dump({"under": under, "size": scoop.SIZE, "direct_received": direct_in, "killed": killed,
                   "rejoined": rejoined}, f)
    while not os.path.exists(os.path.join(ctl, "finish")):
        time.sleep(0.05)
"""


@pytest.fixture
def stranger():
    """An unprivileged local user made for this test, removed afterwards (also on failure)."""
    if os.geteuid() != 0 or not (os.path.exists("/usr/sbin/useradd") or os.path.exists("/sbin/useradd")):
        pytest.skip("needs root and useradd to make another local user")
    name = "scoopx" + secrets.token_hex(4)
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        import pwd
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        subprocess.run(["userdel", name], capture_output=True)


def _python_for(user) -> str:
    """An interpreter the other user may run (ours may sit in root's home)."""
    for exe in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        try:
            r = subprocess.run([exe, "-c", "pass"], user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                               cwd="/", capture_output=True)
        except OSError:
            continue
        if r.returncode == 0:
            return exe
    pytest.skip("no Python interpreter the other user can run")


def _name(pid):
    try:
        return psutil.Process(pid).name()
    except psutil.NoSuchProcess:
        return None


def _low_fd_limit():
    """The cluster starts where a login node puts it: 1024 open files, more allowed on request."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 8192))


def test_another_local_user_cannot_connect_to_the_origin_nor_exhaust_any_socket(stranger, tmp_path):
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    prog = tmp_path / "victim.py"
    prog.write_text(PROGRAM)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS, PROGRAMS]))
    p = subprocess.Popen([sys.executable, "-m", "scoop", "-n", "2", str(prog), str(ctl)], cwd=str(tmp_path),
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=_low_fd_limit)
    attacker = None
    try:
        deadline = time.monotonic() + 120
        while not (ctl / "info.json").exists():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the program never started"
            time.sleep(0.05)
        time.sleep(0.1)
        info = json.loads((ctl / "info.json").read_text())
        cluster = [info["pid"]] + [c.pid for c in psutil.Process(p.pid).children(recursive=True)]
        names = {pid: _name(pid) for pid in cluster}
        listening = set()
        for pid in cluster:
            try:
                for conn in psutil.Process(pid).net_connections("tcp"):
                    if conn.status == psutil.CONN_LISTEN:
                        listening.add(conn.laddr.port)
            except psutil.NoSuchProcess:
                pass
        assert {info["main"], info["meta"]} <= listening
        assert info["direct"] and not info["direct"].startswith("@"), "the origin's socket is not a path"
        ours = set()  # every Unix socket a process of this cluster has bound
        for pid in cluster:
            try:
                ours.update(c.laddr for c in psutil.Process(pid).net_connections("unix") if c.laddr)
            except psutil.NoSuchProcess:
                pass
        ours = {"@" + a[1:] if a.startswith("\0") else a for a in ours}
        # the origin's socket, and the inbox where its workers hand it their results' segments
        inbox = os.path.join(os.path.dirname(info["direct"]), _shm.INBOX)
        assert ours == {info["direct"], inbox}, f"Unix sockets of the cluster: {ours}"
        cfg = {"tcp": sorted(listening), "unix": sorted(ours), "n": 2000}
        attacker = subprocess.Popen([_python_for(stranger), "-c", ATTACKER, json.dumps(cfg)], cwd="/",
                                    user=stranger.pw_uid, group=stranger.pw_gid, extra_groups=[],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = attacker.stdout.readline()
        assert line, attacker.communicate()
        report = json.loads(line)
        assert report["uid"] == stranger.pw_uid
        assert {a: report["unix"][a] for a in ours} == {a: "EACCES" for a in ours}, report["unix"]
        assert all(k == 2000 for k in report["tcp"].values()), report["tcp"]
        time.sleep(1.0)  # the flood is in place (and the first connections timed out and came back)
        (ctl / "go").write_text("")
        deadline = time.monotonic() + 180
        while not (ctl / "done.json").exists():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the maps under attack did not finish"
            time.sleep(0.05)
        time.sleep(0.1)
        done = json.loads((ctl / "done.json").read_text())
        down = [pid for pid in cluster if pid not in gone(cluster, 0.0) and pid != done["killed"]]
        down = [pid for pid in down if names[pid] != "scoop-guard"]  # the killed worker's went with it
        assert not down, f"processes of the cluster died under the flood: {down}"
        assert attacker.poll() is None, "the attack ended early"
        (ctl / "finish").write_text("")
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert done["size"] == 2, f"the killed worker's replacement did not join under the flood: {done}"
        # how long it took is reported, not asserted (a shared machine): a fraction of a second
        # alone, ~14 s when the broker is left at 1,024 descriptors (it accepts only as the
        # flood's handshakes time out), and up to 30 s seen late in a loaded full run
        print(f"the killed worker's replacement joined under the flood in {done['rejoined']:.1f} s")
        print(f"map of 600 x 1 ms on 2 workers: {info['base']:.3f} s alone, {done['under']:.3f} s with "
              f"2,000 idle connections per port from another user ({done['under'] / info['base']:.2f}x); "
              f"a killed worker replaced in {done['rejoined']:.2f} s; listening ports {sorted(listening)}; "
              f"origin socket: {report['unix'][info['direct']]}")
        assert "Too many open files" not in err and "EMFILE" not in err, err
    finally:
        if attacker is not None:
            attacker.kill()
            attacker.wait()
        if p.poll() is None:
            p.kill()
            p.wait()
