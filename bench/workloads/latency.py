"""submit->result latency: sequential `futures.submit(f, i).result()`, N times.

    python -m scoop -n 2 bench/workloads/latency.py --calls 2000
Prints {"bench": "latency", "n", "median_us", "p90_us", "mean_us", "min_us"}.
Note: in SCOOP the origin is itself a worker, so a future may be executed by
the origin while it waits; that is part of what is being measured.
"""
import argparse
import json
import time


def ident(x):
    return x


def run(map_fn, submit_fn, argv):
    ap = argparse.ArgumentParser(prog="latency")
    ap.add_argument("--calls", dest="n", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=50)
    a = ap.parse_args(argv)
    for i in range(a.warmup):
        submit_fn(ident, i).result()
    lat = []
    pc = time.perf_counter
    for i in range(a.n):
        t0 = pc()
        r = submit_fn(ident, i).result()
        lat.append(pc() - t0)
        assert r == i
    lat.sort()
    us = 1e6
    return {"bench": "latency", "n": a.n,
            "median_us": lat[len(lat) // 2] * us,
            "p90_us": lat[min(len(lat) - 1, int(len(lat) * 0.9))] * us,
            "mean_us": sum(lat) / len(lat) * us,
            "min_us": lat[0] * us}


if __name__ == "__main__":
    import sys

    from scoop import futures
    print(json.dumps(run(futures.map, futures.submit, sys.argv[1:])), flush=True)
