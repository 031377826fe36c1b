"""Large numpy payloads: arrays as map ARGUMENTS and as map RESULTS, GB/s and peak RSS growth.

    python -m scoop -n 2 bench/workloads/payload.py --sizes 1,32 --counts 64,16
    python -m scoop -n 2 bench/workloads/payload.py --sizes 256 --counts 4
    python -m scoop -n 2 bench/workloads/payload.py --sizes "" --big 512
    python bench/peers.py --peer dask --workload payload -- --sizes 32 --counts 16

For each size S (MiB) and count K:
  args_S     K distinct float64 arrays of S MiB, made in the origin beforehand, as map arguments;
             the task returns a tiny tuple.  GB/s = K*S bytes / wall time of the map.
  results_S  map over K small inputs; each task makes an S MiB array and returns it.
Every received array has each of its pages read inside the timed window (touch()): data that
arrived as a view on shared memory is only usable, and only counted in RSS, once faulted in.
Peak RSS growth (kernel high-water mark, see memwatch.py) during each map, of the origin and of
the largest-growing other process (worker, broker, nanny; ours: the broker also apart), in MiB,
and the origin's as a multiple of the data the map moves; shm_mb: the peak growth of the
machine's /dev/shm (Shmem), which a segment written with write() and not mapped adds to no RSS;
origin_shm_x: the peak growth of (origin private RSS + machine Shmem), sampled every 2 ms, over
the data moved (big: over the 1 GiB held).
--big B: one B MiB argument submitted and a B MiB result returned (the task adds 1): the origin's
peak growth over the data it ends up holding (2*B MiB; the argument is created inside the window).
GB/s are 10^9 bytes per second.  Every map uses the executor's defaults (bench_api.py).
Prints one JSON line.
"""
import argparse
import json
import os
import time

import numpy as np
from memwatch import PeakWatch, settle

MiB = 2**20


def touch(a):
    """Read one byte of every page: a received array counts as arrived once it is usable.

    An array that arrived as a view on shared memory (or on a lazily mapped frame) costs page
    faults when first read, and counts in the reader's RSS only from then on; a copied array is
    already resident and this costs a few milliseconds per GB."""
    return int(a.reshape(-1).view(np.uint8)[::4096].sum())


def consume(a):
    """The task of the ARGUMENTS direction: read the array's pages, return something tiny."""
    touch(a)
    return os.getpid(), a.nbytes, float(a[0]), float(a[-1])


def produce(i, nbytes):
    """The task of the RESULTS direction: make a fresh array and return it."""
    a = np.empty(nbytes // 8, dtype=np.float64)
    a.fill(i)
    return os.getpid(), a


def produce_args(args):
    return produce(*args)


def bump(a):
    return os.getpid(), a + 1.0  # reads every page of the argument


def _gbps(nbytes, seconds):
    return nbytes / seconds / 1e9


def _record(out, notes, phase, size, total, dt, w, inline, count):
    """One phase's figures (GB/s, peak memory per process kind) under ``<phase>_<metric>_<size>``."""
    out[f"{phase}_gbps_{size}"] = _gbps(total, dt)
    out[f"{phase}_origin_mb_{size}"] = w.origin_mb
    out[f"{phase}_origin_x_{size}"] = w.origin_mb * MiB / total
    out[f"{phase}_worker_mb_{size}"] = w.others_mb
    out[f"{phase}_shm_mb_{size}"] = w.shm_mb
    out[f"{phase}_origin_shm_x_{size}"] = w.origin_shm_mb * MiB / total
    if w.named_mb("broker") is not None:
        out[f"{phase}_broker_mb_{size}"] = w.named_mb("broker")
    if inline:
        notes.append(f"{phase} {size} MiB: {inline}/{count} tasks ran in the origin")


def run_api(api, argv):
    ap = argparse.ArgumentParser(prog="payload")
    ap.add_argument("--sizes", default="1,32", help="comma-separated MiB ('' for none)")
    ap.add_argument("--counts", default="64,16", help="arrays per size")
    ap.add_argument("--big", type=int, default=0, help="MiB of the one-argument/one-result case")
    a = ap.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",") if s.strip()]
    counts = [int(c) for c in a.counts.split(",") if c.strip()][:len(sizes)]
    if len(counts) != len(sizes):
        ap.error("--counts needs one count per size")
    me = os.getpid()
    out = {"bench": "payload", "runner": api.name}
    notes = []

    # warm-up: workers connected, functions known, first (small) payloads through
    small = [np.zeros(1024) for _ in range(8)]
    api.map(consume, small)
    api.map(produce_args, [(i, 8192) for i in range(8)])

    for size, count in zip(sizes, counts):
        nbytes = size * MiB
        total = nbytes * count
        # ---- arguments
        arrays = []
        for i in range(count):
            x = np.empty(nbytes // 8, dtype=np.float64)
            x.fill(i)
            arrays.append(x)
        settle()
        with PeakWatch() as w:
            t0 = time.perf_counter()
            res = api.map(consume, arrays)
            dt = time.perf_counter() - t0
        assert [r[1:] for r in res] == [(nbytes, float(i), float(i)) for i in range(count)], "wrong results"
        _record(out, notes, "args", size, total, dt, w, sum(r[0] == me for r in res), count)
        del arrays, res
        settle()
        # ---- results
        with PeakWatch() as w:
            t0 = time.perf_counter()
            res = api.map(produce_args, [(i, nbytes) for i in range(count)])
            for r in res:
                touch(r[1])
            dt = time.perf_counter() - t0
        ok = all(r[1].nbytes == nbytes and r[1][0] == i and r[1][-1] == i for i, r in enumerate(res))
        assert ok, "wrong results"
        _record(out, notes, "results", size, total, dt, w, sum(r[0] == me for r in res), count)
        del res
        settle()

    if a.big:
        nbytes = a.big * MiB
        with PeakWatch() as w:
            t0 = time.perf_counter()
            x = np.empty(nbytes // 8, dtype=np.float64)
            x.fill(1.0)
            t1 = time.perf_counter()
            pid, y = api.dispatched(bump, x)
            touch(y)
            dt = time.perf_counter() - t1
            assert y.nbytes == nbytes and y[0] == 2.0 and y[-1] == 2.0, "wrong result"
        out["big_mb"] = a.big
        out["big_origin_mb"] = w.origin_mb
        out["big_origin_x"] = w.origin_mb * MiB / (2 * nbytes)
        out["big_worker_mb"] = w.others_mb
        out["big_shm_mb"] = w.shm_mb
        out["big_origin_shm_x"] = w.origin_shm_mb * MiB / (2 * nbytes)
        if w.named_mb("broker") is not None:
            out["big_broker_mb"] = w.named_mb("broker")
        out["big_gbps"] = _gbps(2 * nbytes, dt)
        if pid == me:
            notes.append(f"big {a.big} MiB: ran in the origin")
        del x, y
    out["rss_mode"] = w.mode if (sizes or a.big) else None
    if notes:
        out["note"] = "; ".join(notes)
    return out


if __name__ == "__main__":
    import sys

    from bench_api import scoop_api
    print(json.dumps(run_api(scoop_api(), sys.argv[1:])), flush=True)
