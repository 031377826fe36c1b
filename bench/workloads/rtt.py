"""Round trip of one task, dispatched and in place, beside a bare ZeroMQ chain in the same process.

    python -m scoop -n 2 bench/workloads/rtt.py --calls 2000
    python bench/peers.py --peer ppe --workload rtt -- --calls 2000
  dispatched_us  median of `submit(ident, i)` then `wait([f], timeout=...)` then `f.result()`:
                 a wait with a timeout is never run in place, so the task crosses the broker to a
                 worker and back (peers: their plain submit(...).result(), always dispatched)
  chain_us       median round trip of the bare ZeroMQ chain (bench/zmq_chain.py: client -> ROUTER
                 broker -> worker -> broker -> client, TCP loopback, 64-byte messages), whose broker
                 and worker this process starts; measured in blocks alternating with the executor's
                 blocks, so both see the same load on the machine
  vs_chain       dispatched_us / chain_us
  inplace_us     ours only: median of `submit(ident, i).result()` (the waiting origin runs it)
Prints one JSON line; `dispatched_elsewhere` counts the dispatched calls that really ran in
another process.
"""
import argparse
import json
import os
import time

from zmq_chain import Chain


def ident(x):
    return os.getpid(), x


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def _p90(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.9))]


def _block(call, start, n, lat, pids):
    pc = time.perf_counter
    for i in range(start, start + n):
        t0 = pc()
        pid, r = call(i)
        lat.append(pc() - t0)
        assert r == i, "wrong result"
        if pids is not None:
            pids.append(pid)


def run_api(api, argv):
    ap = argparse.ArgumentParser(prog="rtt")
    ap.add_argument("--calls", dest="n", type=int, default=2000)
    ap.add_argument("--blocks", type=int, default=10, help="alternations with the bare chain")
    ap.add_argument("--warmup", type=int, default=50)
    a = ap.parse_args(argv)
    me = os.getpid()
    res = {"bench": "rtt", "n": a.n}
    dispatched = lambda i: api.dispatched(ident, i)
    with Chain() as chain:
        chain_call = lambda i: (0, chain.call(i))
        _block(dispatched, 0, a.warmup, [], None)
        _block(chain_call, 0, a.warmup, [], None)
        lat, pids, clat = [], [], []
        per = max(1, a.n // a.blocks)
        for b in range(a.blocks):
            _block(dispatched, b * per, per, lat, pids)
            _block(chain_call, b * per, per, clat, None)
    us = 1e6
    res.update(dispatched_us=_median(lat) * us, dispatched_p90_us=_p90(lat) * us,
               chain_us=_median(clat) * us, chain_p90_us=_p90(clat) * us,
               vs_chain=_median(lat) / _median(clat),
               dispatched_elsewhere=sum(p != me for p in pids), calls=len(lat))
    if res["dispatched_elsewhere"] < len(lat):
        res["note"] = f"{len(lat) - res['dispatched_elsewhere']} dispatched calls ran in the origin"
    if api.name == "us":
        lat, pids = [], []
        _block(lambda i: api.submit(ident, i).result(), 0, a.warmup, [], None)
        _block(lambda i: api.submit(ident, i).result(), 0, a.n, lat, pids)
        res.update(inplace_us=_median(lat) * us, inplace_p90_us=_p90(lat) * us,
                   inplace_in_origin=sum(p == me for p in pids))
    return res


if __name__ == "__main__":
    import sys

    from bench_api import scoop_api
    print(json.dumps(run_api(scoop_api(), sys.argv[1:])), flush=True)
