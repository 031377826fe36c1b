"""Round trip of one task: dispatched to a worker, and in place.

    python -m scoop -n 2 bench/workloads/rtt.py --calls 2000
    python bench/peers.py --peer ppe --workload rtt -- --calls 2000
  dispatched_us  median of `submit(ident, i)` then `wait([f], timeout=...)` then `f.result()`:
                 a wait with a timeout is never run in place, so the task crosses the broker to a
                 worker and back (peers: their plain submit(...).result(), always dispatched)
  inplace_us     ours only: median of `submit(ident, i).result()` (the waiting origin runs it)
Prints one JSON line; `dispatched_elsewhere` counts the dispatched calls that really ran in
another process.  The bare ZeroMQ chain to compare with is bench/zmq_chain.py.
"""
import argparse
import json
import os
import time


def ident(x):
    return os.getpid(), x


def _timed(call, n, warmup):
    for i in range(warmup):
        call(i)
    lat, pids = [], []
    pc = time.perf_counter
    for i in range(n):
        t0 = pc()
        pid, r = call(i)
        lat.append(pc() - t0)
        assert r == i, "wrong result"
        pids.append(pid)
    lat.sort()
    return lat[len(lat) // 2] * 1e6, lat[min(n - 1, int(n * 0.9))] * 1e6, pids


def run_api(api, argv):
    ap = argparse.ArgumentParser(prog="rtt")
    ap.add_argument("--calls", dest="n", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=50)
    a = ap.parse_args(argv)
    me = os.getpid()
    res = {"bench": "rtt", "n": a.n}
    med, p90, pids = _timed(lambda i: api.dispatched(ident, i), a.n, a.warmup)
    res.update(dispatched_us=med, dispatched_p90_us=p90, dispatched_elsewhere=sum(p != me for p in pids))
    if api.name == "us":
        med, p90, pids = _timed(lambda i: api.submit(ident, i).result(), a.n, a.warmup)
        res.update(inplace_us=med, inplace_p90_us=p90, inplace_in_origin=sum(p == me for p in pids))
    return res


if __name__ == "__main__":
    import sys

    from bench_api import scoop_api
    print(json.dumps(run_api(scoop_api(), sys.argv[1:])), flush=True)
