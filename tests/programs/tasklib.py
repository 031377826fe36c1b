"""Task functions for the tests (importable by workers through the cluster's pythonpath)."""
import os
import time

import scoop
from scoop import futures, shared


def square(x):
    return x * x


def add(a, b):
    return a + b


def ident(x):
    return x


def sleep_return(seconds, value=None):
    time.sleep(seconds)
    return value if value is not None else seconds


def fail_on(x, bad=3):
    if x == bad:
        raise ValueError(f"bad value {x}")
    return x


def nested_fail(x):
    return futures.submit(fail_on, x).result()


def tree(depth):
    """Binary recursion: 2**(depth+1)-1 futures in all."""
    if depth == 0:
        return 1
    a = futures.submit(tree, depth - 1)
    b = futures.submit(tree, depth - 1)
    return a.result() + b.result()


def map_tree(depth):
    if depth == 0:
        return 1
    return sum(futures.map(map_tree, [depth - 1] * 2))


def where():
    return {"is_origin": scoop.IS_ORIGIN, "running": scoop.IS_RUNNING, "size": scoop.SIZE,
            "worker": scoop.worker, "pid": os.getpid(), "broker": tuple(scoop.BROKER or ())}


def use_const(name, x):
    return shared.getConst(name, timeout=5)(x)


def get_const(name, timeout=0.1):
    return shared.getConst(name, timeout=timeout)


def unpicklable_result():
    import threading
    return threading.Lock()


def die(code=7):
    os._exit(code)


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


def as_completed_inside(n):
    fs = [futures.submit(sleep_return, 0.01 * (n - i), i) for i in range(n)]
    return sorted(f.result() for f in futures.as_completed(fs))


def wait_inside(n):
    fs = [futures.submit(square, i) for i in range(n)]
    done, not_done = futures.wait(fs)
    return sorted(f.result() for f in done), len(not_done)


class Scaler:
    def __init__(self, k):
        self.k = k

    def scale(self, x):
        return self.k * x


def work_ms(ms, value):
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass
    return value


def netns():
    """Identity of the network namespace this task ran in (which test host)."""
    return os.readlink("/proc/self/ns/net")


def env_var(name):
    return os.environ.get(name)


def slow_tree(depth, pause):
    """Binary recursion with a pause per node, so a tree spans several workers for a while."""
    time.sleep(pause)
    if depth == 0:
        return 1
    a = futures.submit(slow_tree, depth - 1, pause)
    b = futures.submit(slow_tree, depth - 1, pause)
    return a.result() + b.result()


def hold_gil(seconds, value=None):
    """A C call that keeps the GIL (libc usleep through PyDLL): heartbeats from Python threads
    starve, ZeroMQ's do not."""
    import ctypes
    ctypes.PyDLL(None).usleep(int(seconds * 1e6))
    return value


class CustomError(Exception):
    """An exception whose __init__ does not take its own args: unpickling it fails."""

    def __init__(self, code, url):
        super().__init__(f"HTTP {code} for {url}")
        self.code = code
        self.url = url


def raise_custom(x):
    raise CustomError(404, f"http://example.invalid/{x}")


def array_sum(a):
    return float(a.sum())


def make_array(n, dtype="float64"):
    import numpy as np
    return np.arange(n, dtype=dtype)


def same(a):
    return a


def make_lock():
    import threading
    return threading.Lock()


def crash_worker():
    os._exit(13)


def describe_array(a):
    """What a worker received: its values' checksum and whether it owns its memory (a view on
    a frame or a shared-memory segment does not)."""
    import numpy as np
    return (float(np.asarray(a, dtype="float64").sum()) if a.dtype.kind in "biuf" else None,
            a.shape, a.dtype.str, bool(a.flags.owndata), bool(a.flags.writeable))


def const_info(name):
    import numpy as np
    a = shared.getConst(name, timeout=10)
    return float(np.asarray(a).sum()), bool(a.flags.owndata)
