"""CPU-bound ~10 ms tasks on all cores: speedup of futures.map over a serial
loop of the same tasks, both measured in the same (origin) process.

    python -m scoop -n 2 bench/workloads/cpu_bound.py --tasks 200 --ms 10
Prints {"bench": "cpu_bound", "tasks", "task_ms", "serial_s", "parallel_s", "speedup"}.
"""
import argparse
import json
import time


def burn(iters):
    s = 0
    for i in range(iters):
        s += i * i % 7
    return s


def calibrate(ms):
    """Iterations of burn() that take about `ms` milliseconds here."""
    n = 20000
    while True:
        t0 = time.perf_counter()
        burn(n)
        dt = time.perf_counter() - t0
        if dt > 0.02:
            break
        n *= 2
    best = min(_time(burn, n) for _ in range(3))
    return max(1, int(n * (ms / 1000.0) / best))


def _time(f, arg):
    t0 = time.perf_counter()
    f(arg)
    return time.perf_counter() - t0


def run(map_fn, submit_fn, argv):
    ap = argparse.ArgumentParser(prog="cpu_bound")
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--ms", type=float, default=10.0)
    a = ap.parse_args(argv)
    iters = calibrate(a.ms)
    list(map_fn(burn, [1000] * 8))  # warm-up
    # Serial reference: half before and half after the parallel map, so that a
    # drift in machine load during the run biases the speedup less.
    half = a.tasks // 2
    t0 = time.perf_counter()
    serial = [burn(iters) for _ in range(half)]
    t_serial = time.perf_counter() - t0
    t0 = time.perf_counter()
    par = list(map_fn(burn, [iters] * a.tasks))
    t_par = time.perf_counter() - t0
    t0 = time.perf_counter()
    serial += [burn(iters) for _ in range(a.tasks - half)]
    t_serial += time.perf_counter() - t0
    assert par == serial
    return {"bench": "cpu_bound", "tasks": a.tasks, "task_ms": a.ms, "iters": iters,
            "serial_s": t_serial, "parallel_s": t_par, "speedup": t_serial / t_par}


if __name__ == "__main__":
    import sys

    from scoop import futures
    print(json.dumps(run(futures.map, futures.submit, sys.argv[1:])), flush=True)
