"""Throughput against task duration: futures.map over busy-wait tasks of
0, 0.1, 1 and 10 ms (the plot bench/results/throughput_vs_duration.png).

    python -m scoop -n 2 bench/workloads/sweep.py --durations 0,0.1,1,10 --counts 2000,2000,1000,200
Prints {"bench": "sweep", "points": [{"ms", "n", "seconds", "tasks_per_s", "efficiency"}...]}
efficiency = throughput / (2 workers / task duration) for non-zero durations.
"""
import argparse
import json
import time


def spin(ms):
    """Busy-wait (CPU-bound) for `ms` milliseconds."""
    if ms <= 0:
        return ms
    pc = time.perf_counter
    end = pc() + ms / 1000.0
    while pc() < end:
        pass
    return ms


def run(map_fn, submit_fn, argv):
    ap = argparse.ArgumentParser(prog="sweep")
    ap.add_argument("--durations", default="0,0.1,1,10")
    ap.add_argument("--counts", default="2000,2000,1000,200")
    ap.add_argument("--ideal-workers", dest="workers", type=int, default=2)
    a = ap.parse_args(argv)
    durs = [float(x) for x in a.durations.split(",")]
    counts = [int(x) for x in a.counts.split(",")]
    assert len(durs) == len(counts)
    list(map_fn(spin, [0] * 64))  # warm-up
    points = []
    for ms, n in zip(durs, counts):
        t0 = time.perf_counter()
        out = list(map_fn(spin, [ms] * n))
        dt = time.perf_counter() - t0
        assert len(out) == n
        tput = n / dt
        eff = tput / (a.workers / (ms / 1000.0)) if ms > 0 else None
        points.append({"ms": ms, "n": n, "seconds": dt, "tasks_per_s": tput, "efficiency": eff})
    return {"bench": "sweep", "points": points}


if __name__ == "__main__":
    import sys

    from scoop import futures
    print(json.dumps(run(futures.map, futures.submit, sys.argv[1:])), flush=True)
