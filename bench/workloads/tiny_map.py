"""Tiny-task map throughput: futures.map over N tasks that do nothing.

SCOOP program (runs unchanged under the original SCOOP 0.7.2 and under ours):
    python -m scoop -n 2 bench/workloads/tiny_map.py --tasks 20000
Prints one JSON line: {"bench": "tiny_map", "n": ..., "seconds": ..., "tasks_per_s": ...}
bench/peers.py imports this module and calls run() with a peer's map/submit.
"""
import argparse
import json
import time


def tiny(x):
    return x


def run(map_fn, submit_fn, argv):
    ap = argparse.ArgumentParser(prog="tiny_map")
    ap.add_argument("--tasks", dest="n", type=int, default=20000)
    a = ap.parse_args(argv)
    list(map_fn(tiny, range(64)))  # warm-up: make sure workers are connected
    t0 = time.perf_counter()
    out = list(map_fn(tiny, range(a.n)))
    dt = time.perf_counter() - t0
    assert len(out) == a.n and out[-1] == a.n - 1 and out[a.n // 2] == a.n // 2
    return {"bench": "tiny_map", "n": a.n, "seconds": dt, "tasks_per_s": a.n / dt}


if __name__ == "__main__":
    import sys
    from scoop import futures
    print(json.dumps(run(futures.map, futures.submit, sys.argv[1:])), flush=True)
