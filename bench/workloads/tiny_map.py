"""Tiny-task map throughput: map(tiny, range(N)) with each executor's DEFAULT chunking.

    python -m scoop -n 2 bench/workloads/tiny_map.py --tasks 200000
    python bench/peers.py --peer mp --workload tiny_map -- --tasks 200000
Prints one JSON line:
  tasks_per_s        the executor's default map: futures.map; Pool.map (automatic chunksize,
                     ceil(n / (4 * workers))); ProcessPoolExecutor.map and loky's map (chunksize=1);
                     dask client.gather(client.map(...))
  tasks_per_s_tuned  the documented chunksize argument, set to Pool.map's automatic value
                     (ProcessPoolExecutor, loky; Pool.map: the same as its default)
  tasks_per_s_chunk1 one input per task (Pool.map(chunksize=1)) on --chunk1-tasks inputs
bench/peers.py calls run_api() with a peer's bench_api.Api.
"""
import argparse
import json
import time

from bench_api import pool_chunksize


def tiny(x):
    return x


def _rate(fn, n):
    t0 = time.perf_counter()
    out = fn(range(n))
    dt = time.perf_counter() - t0
    assert len(out) == n and out[-1] == n - 1 and out[n // 2] == n // 2, "wrong results"
    return n / dt


def run_api(api, argv):
    ap = argparse.ArgumentParser(prog="tiny_map")
    ap.add_argument("--tasks", dest="n", type=int, default=200_000)
    ap.add_argument("--chunk1-tasks", type=int, default=20_000)
    a = ap.parse_args(argv)
    api.map(tiny, range(64))  # warm-up: workers connected
    res = {"bench": "tiny_map", "n": a.n, "tasks_per_s": _rate(lambda xs: api.map(tiny, xs), a.n)}
    if api.map_chunked is not None:
        cs = pool_chunksize(a.n)
        res["tuned_chunksize"] = cs
        res["tasks_per_s_tuned"] = _rate(lambda xs: api.map_chunked(tiny, xs, cs), a.n)
        if api.chunk1:
            res["tasks_per_s_chunk1"] = res["tasks_per_s"]
        else:
            res["tasks_per_s_chunk1"] = _rate(lambda xs: api.map_chunked(tiny, xs, 1), a.chunk1_tasks)
    return res


if __name__ == "__main__":
    import sys

    from bench_api import scoop_api
    print(json.dumps(run_api(scoop_api(), sys.argv[1:])), flush=True)
