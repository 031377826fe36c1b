"""A 1,000,000-task map: wall time and peak RSS growth of the origin process.

    python -m scoop -n 2 bench/workloads/big_map.py --tasks 1000000
Prints {"bench": "big_map", "n", "seconds", "tasks_per_s", "rss_before_mb",
        "peak_rss_mb", "peak_rss_growth_mb"}.
Peak RSS comes from getrusage(RUSAGE_SELF).ru_maxrss (the whole-life peak of
the origin); the growth is measured against the current RSS just before the map.
"""
import argparse
import json
import resource
import time


def tiny(x):
    return x


def _rss_mb():
    try:
        import psutil
        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def run(map_fn, submit_fn, argv):
    ap = argparse.ArgumentParser(prog="big_map")
    ap.add_argument("--tasks", dest="n", type=int, default=1000000)
    a = ap.parse_args(argv)
    list(map_fn(tiny, range(64)))  # warm-up
    before = _rss_mb()
    t0 = time.perf_counter()
    total = 0
    count = 0
    for r in map_fn(tiny, range(a.n)):
        total += r
        count += 1
    dt = time.perf_counter() - t0
    assert count == a.n and total == a.n * (a.n - 1) // 2
    peak = _peak_mb()
    return {"bench": "big_map", "n": a.n, "seconds": dt, "tasks_per_s": a.n / dt,
            "rss_before_mb": before, "peak_rss_mb": peak,
            "peak_rss_growth_mb": max(0.0, peak - before),
            "rss_after_mb": _rss_mb()}


if __name__ == "__main__":
    import sys

    from scoop import futures
    print(json.dumps(run(futures.map, futures.submit, sys.argv[1:])), flush=True)
