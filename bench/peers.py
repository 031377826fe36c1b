"""Run one bench workload on one peer executor (always 2 worker processes).

    python bench/peers.py --peer mp --workload tiny_map -- --tasks 20000

Peers:
  mp     multiprocessing.Pool(2)           map: pool.map(f, xs, chunksize=1);  submit: apply_async().get()
  ppe    concurrent.futures.ProcessPoolExecutor(2)
         map: ex.map(f, xs) (chunksize=1); submit: ex.submit().result()
  loky   loky.get_reusable_executor(max_workers=2)   map: ex.map(f, xs);  submit: ex.submit().result()
  dask   dask.distributed Client(LocalCluster(n_workers=2, threads_per_worker=1, processes=True))
         map: client.gather(client.map(f, xs, pure=False));  submit: client.submit(f, x, pure=False).result()
  ipp    ipyparallel ipp.Cluster(n=2) started in-process; load-balanced view
         map: view.map_sync(f, xs) (chunksize 1);  submit: view.apply_async(f, x).get()

The issue-12 workloads (payload, tiny_map, rtt) define run_api(api, argv) instead and get a
bench_api.Api: each peer's DEFAULT map (Pool.map's automatic chunksize, chunksize=1 for
ProcessPoolExecutor and loky, dask's client.map with its default pure=True), its documented
chunksize argument as a separately named extra, and its plain submit(...).result().

The workload code is the very module in bench/workloads/ that SCOOP runs: this
script imports it (bench/run.py puts bench/workloads on PYTHONPATH so that the
peers' worker processes can unpickle its task functions by reference) and calls
its run(map_fn, submit_fn, argv).  Executor start-up is excluded from the
workload's own measurement and reported separately as "startup_s".

`--workload hello` starts the executor, runs one task, prints hello and shuts
down: run.py times that whole process from outside, like `python -m scoop -n 2 hello.py`.

Prints exactly one JSON line (key "bench") on stdout; logs go to stderr.
"""
import argparse
import contextlib
import importlib
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = os.path.join(HERE, "workloads")
if WORKLOADS not in sys.path:
    sys.path.insert(0, WORKLOADS)

NWORKERS = 2
PEERS = ("mp", "ppe", "loky", "dask", "ipp")
# Workloads a peer cannot express: tasks submitting and waiting on sub-tasks
# from inside a worker need dask's worker_client; the pools would deadlock or
# refuse (multiprocessing/loky/ProcessPoolExecutor workers have no handle on the
# pool; ipyparallel engines would need their own client to the controller).
UNSUPPORTED = {
    ("mp", "nested"): "workers cannot submit to the pool",
    ("ppe", "nested"): "workers cannot submit to the executor",
    ("loky", "nested"): "workers cannot submit to the executor",
    ("ipp", "nested"): "engines have no client to the controller",
}


class _Done:
    """A finished-future stand-in with .result()."""
    __slots__ = ("_get",)

    def __init__(self, get):
        self._get = get

    def result(self, timeout=None):
        return self._get()


def dask_tree(depth):
    """bench/workloads/nested.py's tree() for dask: submit from inside a task."""
    if depth == 0:
        return 1
    from distributed import worker_client
    with worker_client() as client:  # secedes from the worker's thread pool
        left = client.submit(dask_tree, depth - 1, pure=False)
        right = client.submit(dask_tree, depth - 1, pure=False)
        return left.result() + right.result() + 1


@contextlib.contextmanager
def executor(peer):
    """Yield an Api (bench_api.py) for a running 2-worker `peer`; shut it down on exit.

    api.map is the peer's default map (default chunking); api.map1 is the one-input-per-task map
    the older workloads (tiny_map before issue 12, sweep, cpu_bound...) were measured with.
    """
    from bench_api import Api
    if peer == "mp":
        import multiprocessing as mp
        pool = mp.Pool(NWORKERS)
        try:
            api = Api(peer, map=pool.map, submit=lambda f, *a: _Done(pool.apply_async(f, a).get),
                      map_chunked=lambda f, xs, cs: pool.map(f, xs, chunksize=cs))
            api.map1 = lambda f, xs: pool.map(f, xs, chunksize=1)
            yield api
        finally:
            pool.terminate()
            pool.join()
    elif peer in ("ppe", "loky"):
        if peer == "ppe":
            from concurrent.futures import ProcessPoolExecutor
            ex = ProcessPoolExecutor(NWORKERS)
        else:
            from loky import get_reusable_executor
            ex = get_reusable_executor(max_workers=NWORKERS, timeout=60)
        try:
            api = Api(peer, map=lambda f, xs: list(ex.map(f, xs)), submit=ex.submit,
                      map_chunked=lambda f, xs, cs: list(ex.map(f, xs, chunksize=cs)), chunk1=True)
            api.map1 = api.map
            yield api
        finally:
            if peer == "ppe":
                ex.shutdown(wait=True, cancel_futures=True)
            else:
                ex.shutdown(wait=True, kill_workers=True)
    elif peer == "dask":
        import logging

        from distributed import Client, LocalCluster
        logging.getLogger("distributed").setLevel(logging.ERROR)
        cluster = LocalCluster(n_workers=NWORKERS, threads_per_worker=1, processes=True,
                               dashboard_address=None, host="127.0.0.1")
        client = Client(cluster)
        try:
            # api: what a dask user writes (pure=True is client.map/submit's default);
            # map1/submit of the older workloads kept pure=False (every call a new task)
            api = Api(peer, map=lambda f, xs: client.gather(client.map(f, list(xs))),
                      submit=client.submit)
            api.map1 = lambda f, xs: client.gather(client.map(f, list(xs), pure=False))
            api.submit1 = lambda f, *a: client.submit(f, *a, pure=False)
            yield api
        finally:
            client.close()
            cluster.close()
    elif peer == "ipp":
        import ipyparallel as ipp
        cluster = ipp.Cluster(n=NWORKERS, log_level=40)
        rc = cluster.start_and_connect_sync(activate=False)
        try:
            rc.wait_for_engines(NWORKERS, timeout=120)
            view = rc.load_balanced_view()
            api = Api(peer, map=lambda f, xs: view.map_sync(f, list(xs)),
                      submit=lambda f, *a: _Done(view.apply_async(f, *a).get))
            api.map1 = api.map
            yield api
        finally:
            with contextlib.suppress(Exception):
                rc.close()
            cluster.stop_cluster_sync()
    else:
        raise SystemExit(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peer", required=True, choices=PEERS)
    ap.add_argument("--workload", required=True)
    ap.add_argument("args", nargs=argparse.REMAINDER,
                    help="arguments for the workload (after --)")
    a = ap.parse_args()
    wargs = a.args[1:] if a.args[:1] == ["--"] else a.args

    if (a.peer, a.workload) in UNSUPPORTED:
        print(json.dumps({"bench": a.workload, "peer": a.peer, "unsupported": True,
                          "note": UNSUPPORTED[(a.peer, a.workload)]}), flush=True)
        return

    t0 = time.perf_counter()
    with executor(a.peer) as api:
        startup = time.perf_counter() - t0
        submit_fn = getattr(api, "submit1", api.submit)
        if a.workload == "hello":
            assert submit_fn(abs, -1).result() == 1
            print("hello", file=sys.stderr, flush=True)
            res = {"bench": "hello"}
        else:
            mod = importlib.import_module(a.workload)
            if hasattr(mod, "run_api"):  # the issue-12 workloads: each peer's own defaults
                res = mod.run_api(api, wargs)
            elif a.workload == "nested":
                res = mod.run(api.map1, submit_fn, wargs, tree_fn=dask_tree)
            else:
                res = mod.run(api.map1, submit_fn, wargs)
        t1 = time.perf_counter()
    res["peer"] = a.peer
    res["startup_s"] = startup
    res["shutdown_s"] = time.perf_counter() - t1
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
