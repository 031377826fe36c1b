"""Nested recursion: a binary tree of submits (each task submits two children
and waits for them) of depth D -> 2**(D+1)-1 futures in total.

    python -m scoop -n 2 bench/workloads/nested.py --depth 10
Prints {"bench": "nested", "depth", "tasks", "seconds", "tasks_per_s"}.
Only SCOOP-style executors (tasks may submit and wait inside a worker) and
dask (worker_client, see bench/peers.py) can run this.
"""
import argparse
import json
import time


def tree(depth):
    if depth == 0:
        return 1
    from scoop import futures
    left = futures.submit(tree, depth - 1)
    right = futures.submit(tree, depth - 1)
    return left.result() + right.result() + 1


def run(map_fn, submit_fn, argv, tree_fn=tree):
    ap = argparse.ArgumentParser(prog="nested")
    ap.add_argument("--depth", type=int, default=10)
    a = ap.parse_args(argv)
    submit_fn(tree_fn, 2).result()  # warm-up
    t0 = time.perf_counter()
    total = submit_fn(tree_fn, a.depth).result()
    dt = time.perf_counter() - t0
    expected = 2 ** (a.depth + 1) - 1
    assert total == expected, (total, expected)
    return {"bench": "nested", "depth": a.depth, "tasks": expected,
            "seconds": dt, "tasks_per_s": expected / dt}


if __name__ == "__main__":
    import sys

    from scoop import futures
    print(json.dumps(run(futures.map, futures.submit, sys.argv[1:])), flush=True)
