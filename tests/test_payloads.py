"""numpy-scale payloads through a real cluster: out-of-band buffers, shared memory on one
host, big shared constants, and a clean /dev/shm whatever ends (issue: data path)."""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from scoop import _shm, futures, shared

import tasklib as T
from conftest import PROGRAMS, ROOT, origin_cluster, wait_idle


@pytest.fixture(scope="module")
def cluster():
    yield from origin_cluster(2)


ARRAYS = {
    "f8 C": lambda: np.arange(300_000, dtype="f8"),
    "i4 F": lambda: np.asfortranarray(np.arange(600_000, dtype="i4").reshape(600, 1000)),
    "strided": lambda: np.arange(1_000_000, dtype="f4")[::3],
    "bool": lambda: np.arange(2_000_000) % 3 == 0,
    "complex": lambda: np.arange(200_000) * (1 + 2j),
    "datetime": lambda: np.arange(200_000).astype("datetime64[s]"),
    "structured": lambda: np.zeros(100_000, dtype=[("x", "f8"), ("n", "i2")]),
    "object": lambda: np.array([{"k": i} for i in range(1000)], dtype=object),
    "empty": lambda: np.zeros((0, 7)),
    "scalar": lambda: np.array(3.5),
    "small": lambda: np.arange(10),
    "big": lambda: np.ones(8 << 20, dtype="u1"),
}


@pytest.mark.parametrize("kind", list(ARRAYS))
def test_arrays_of_every_kind_cross_both_ways_intact(cluster, kind):
    a = ARRAYS[kind]()
    back = futures.submit(T.same, a)
    futures.wait([back], timeout=60)  # a wait with a timeout: through a worker, not in place
    b = back.result()
    assert b.dtype == a.dtype and b.shape == a.shape
    assert np.array_equal(a, b) if a.dtype != object else list(a) == list(b)
    assert list(futures.map(T.same, [a]))[0].shape == a.shape


def test_large_arguments_and_results_are_views_not_copies(cluster):
    a = np.arange(4 << 20, dtype="f8")  # 32 MB
    checksum, shape, dtype, owns, writable = futures.submit(T.describe_array, a).result(timeout=60) \
        if False else list(futures.map(T.describe_array, [a]))[0]
    assert checksum == float(a.sum()) and shape == a.shape
    assert not owns, "the worker copied the argument out of its frame or segment"
    r = list(futures.map(T.make_array, [4 << 20]))[0]
    assert not r.flags.owndata and r.flags.writeable and r[-1] == (4 << 20) - 1
    r[0] = 42.0  # a copy-on-write mapping: writable here, nobody else affected


def test_shared_memory_is_freed_as_results_are_taken(cluster):
    wait_idle(cluster)
    arrays = [np.full(1 << 18, k, dtype="f8") for k in range(20)]  # 2 MB each: shared memory
    out = list(futures.map(T.same, arrays))
    assert all(np.array_equal(x, y) for x, y in zip(arrays, out))
    del out
    deadline = time.monotonic() + 5
    while _shm.leftovers(cluster.secret) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _shm.leftovers(cluster.secret) == []


def test_a_big_shared_constant_is_held_once_per_host(cluster):
    table = np.arange(4 << 20, dtype="f8")  # 32 MB
    shared.setConst(big_table=table)
    (fd,) = cluster_segments()._held.values()  # a sealed segment, held by the origin
    held = f"/proc/{os.getpid()}/fd/{fd}"
    assert held in _shm.leftovers(cluster.secret) and os.path.getsize(held) == table.nbytes
    infos = [f.result(timeout=60) for f in [futures.submit(T.const_info, "big_table") for _ in range(6)]]
    assert all(total == float(table.sum()) and not owns for total, owns in infos)
    # the workers map that one file (a mapping holds a descriptor of it): no other copy
    files = {(st.st_dev, st.st_ino) for st in map(os.stat, _shm.leftovers(cluster.secret))}
    assert files == {(os.stat(held).st_dev, os.stat(held).st_ino)}


def cluster_segments():
    """This process's (the origin's) shared-memory segments."""
    return futures._rt().shm


def rewrite_argument(a):
    """Run as a task: tries to change the sealed segment its argument came in, as its user can
    (every segment of the cluster the worker can find), and reads the argument after."""
    tried = []
    for fd_dir in glob.glob("/proc/[0-9]*/fd"):
        for name in os.listdir(fd_dir):
            try:
                if not os.readlink(f"{fd_dir}/{name}").startswith("/memfd:scoop-"):
                    continue
                with open(f"{fd_dir}/{name}", "r+b") as f:
                    f.write(b"\xff" * 8)
                    f.flush()
                tried.append("written")
            except PermissionError:
                tried.append("refused")
            except OSError:
                pass
    return tried, float(a.sum())


def sealed_held() -> set[str]:
    """Sealed segments (of any cluster) that any process holds, as 'pid/fd name'."""
    found = set()
    for fd_dir in glob.glob("/proc/[0-9]*/fd"):
        try:
            for name in os.listdir(fd_dir):
                target = os.readlink(f"{fd_dir}/{name}")
                if target.startswith("/memfd:scoop-"):
                    found.add(f"{fd_dir} {target}")
        except OSError:
            continue
    return found


def _holders(left: list[str]) -> list[str]:
    """Each leftover with the command line and parent of the process holding it."""
    out = []
    for entry in left:
        pid = entry.split("/")[2] if entry.startswith("/proc/") else None
        try:
            p = psutil.Process(int(pid))
            who = f"{' '.join(p.cmdline())[:160]} (parent {p.ppid()}, started {p.create_time():.1f})"
        except (TypeError, ValueError, psutil.Error):
            who = "gone"
        out.append(f"{entry}: {who}")
    return out


def test_a_sent_argument_cannot_be_changed(cluster):
    """Arguments travel in sealed segments: even their user cannot write them after the send."""
    a = np.arange(1 << 18, dtype="f8")  # 2 MB: shared memory
    tried, total = futures.submit(rewrite_argument, a).result(timeout=60)
    assert tried and set(tried) == {"refused"} and total == float(a.sum())


def test_a_result_for_the_origin_is_a_sealed_segment_handed_over(cluster):
    """A result reaches the origin as a sealed memfd whose descriptor the worker handed over
    (it keeps none); the origin frees it once mapped."""
    wait_idle(cluster)
    r = futures.submit(T.make_array, 1 << 18).result(timeout=60)  # 2 MB
    assert r[-1] == (1 << 18) - 1 and not r.flags.owndata and r.flags.writeable
    tag = cluster_segments().tag.hex()
    with open("/proc/self/maps") as f:
        mapped = [line.split()[-2] for line in f if f"/memfd:scoop-{tag}-" in line]
    assert mapped and all(f"-{os.getpid()}-" not in m for m in mapped), mapped
    assert not cluster_segments()._got, "the origin still holds the result's segment"


def test_handed_segments_without_a_cluster(tmp_path):
    """The origin's inbox: a worker's segment arrives sealed and owned by the origin alone; with
    no inbox where the worker looks, it sends a named segment instead."""
    from scoop import _protocol as P
    tag = P.derive(os.urandom(32), "shared memory")
    origin, worker = _shm.Segments(tag), _shm.Segments(tag)
    try:
        origin.listen(str(tmp_path / _shm.INBOX))
        worker.hand_to(str(tmp_path / _shm.INBOX))
        data = np.arange(P.SHM_MIN, dtype="u1")
        seg = worker.to_origin.put(memoryview(data))
        assert worker.held() == 0 and not glob.glob(f"{_shm.DIR}/scoop-{tag[:8].hex()}-*")
        got = origin.open(seg, data.nbytes)
        assert bytes(got) == data.tobytes() and origin.held() == 1
        (fd,) = origin._got.values()
        with pytest.raises(PermissionError):
            with open(f"/proc/self/fd/{fd}", "r+b") as f:
                f.write(b"\xff")
                f.flush()
        origin.unlink(seg)
        assert origin.held() == 0
        with pytest.raises(_shm.SegmentError, match="not found"):
            origin.open(seg, data.nbytes)
        lost = _shm.Segments(tag)
        lost.hand_to(str(tmp_path / "no-inbox"))
        named = lost.to_origin.put(memoryview(data))
        assert bytes(origin.open(named, data.nbytes)) == data.tobytes()
        origin.unlink(named)
    finally:
        for segs in (origin, worker):
            segs.cleanup(os.getpid())
    assert not glob.glob(f"{_shm.DIR}/scoop-{tag[:8].hex()}-*")


def _cli_leaves_no_segment(kill, tmp_path):
    """Runs a program moving big arrays, kills one of its processes, checks /dev/shm and that
    no process holds a sealed segment."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, PROGRAMS]))
    before = set(os.listdir(_shm.DIR))
    held_before = sealed_held()
    err = open(tmp_path / "stderr", "w+")
    p = subprocess.Popen([sys.executable, "-m", "scoop", "-n", "2", "big_payloads.py"], cwd=PROGRAMS,
                         env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert p.stdout.readline().strip() == "READY"
        time.sleep(0.5)
        kids = psutil.Process(p.pid).children(recursive=True)
        err.seek(0)
        assert all(k.status() != psutil.STATUS_ZOMBIE for k in kids), err.read()
        kill(p, kids)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    deadline = time.monotonic() + 15
    left = []
    while time.monotonic() < deadline:
        left = [n for n in set(os.listdir(_shm.DIR)) - before if n.startswith("scoop-")]
        left += sorted(sealed_held() - held_before)
        alive = [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
        if not left and not alive:
            break
        time.sleep(0.2)
    assert not left, f"left in /dev/shm or held: {left}"


def _role(kids, role):
    for k in kids:
        try:
            if k.name() == f"scoop-{role}" or f"scoop.{role}" in " ".join(k.cmdline()):
                return k
        except psutil.Error:
            continue
    raise AssertionError(f"no {role} among {[k.cmdline() for k in kids]}")


@pytest.mark.parametrize("victim", ["normal end", "origin", "worker", "broker"])
def test_no_segment_survives_any_ending(victim, tmp_path, no_leak):
    def kill(p, kids):
        if victim == "normal end":
            p.stdin = None
            os.kill(p.pid, signal.SIGTERM)
        elif victim == "origin":
            os.kill(p.pid, signal.SIGKILL)
        else:
            os.kill(_role(kids, victim).pid, signal.SIGKILL)
            time.sleep(1.0)
            os.kill(p.pid, signal.SIGTERM)
    _cli_leaves_no_segment(kill, tmp_path)


@pytest.mark.parametrize("now", [False, True], ids=["restart", "restart-now"])
def test_a_kernel_restart_leaves_no_segment(now):
    pytest.importorskip("jupyter_client")
    from kernel_driver import KernelDriver
    before = set(os.listdir(_shm.DIR))
    held_before = sealed_held()
    older = set(psutil.pids())  # this module's own cluster (this process is its origin) is not the kernel's
    k = KernelDriver()
    try:
        k.run("%load_ext scoop_jupyter")
        k.run("%scoop_cluster start -n 2", timeout=120)
        k.run("import numpy as np\nfrom scoop import futures\nimport tasklib as T\n"
              "fs = [futures.submit(T.sleep_return, 30, np.ones(1 << 18)) for _ in range(6)]\n"
              "futures.wait(fs, timeout=0.5)")
        made = [n for n in set(os.listdir(_shm.DIR)) - before if n.startswith("scoop-")]
        held = {e for e in sealed_held() - held_before if int(e.split("/")[2]) not in older}
        assert made or held, "the arguments did not go through shared memory"
        k.km.restart_kernel(now=now)
        deadline = time.monotonic() + 15
        left = made + sorted(held)
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = [n for n in made if os.path.exists(os.path.join(_shm.DIR, n))]
            left += sorted(held & sealed_held())
        assert not left, (f"left in /dev/shm or held after a kernel restart (now {time.time():.1f}): "
                          f"{_holders(left)}")
    finally:
        k.shutdown(now=True)
