"""Many real worker processes on this box: time until all joined, a map across all, memory per worker.

    python bench/many_workers.py --workers 256 --peers scoop,scoop07,dask,ipyparallel@64

Each system is started the way its users start it, from the program that uses it:

  scoop    `python -m scoop -n N prog.py`; "all joined" is when the launcher has N worker processes,
           each holding a TCP connection to its broker; then the program times its map
  scoop07  SCOOP 0.7.2.0 (bench/.venv-scoop07, made by bench/setup_peers.sh), the same way (its
           -n counts the origin among the workers)
  scoop-cluster  Cluster(n) from Python (workers spawned, as from a notebook), wait_for_workers(n)
  ipyparallel  ipyparallel: ipp.Cluster(n).start_and_connect_sync(), rc.wait_for_engines(n)
  dask     LocalCluster(n_workers=n, threads_per_worker=1) (nannies, its default), wait_for_workers(n)

The map is one tiny task per worker (`os.getpid`) times 4, so every worker must answer.  Memory is
the proportional set size (PSS: shared pages split between the processes that map them) of every
process the system started for its workers (dask's nannies included), divided by the workers; USS
and RSS are printed too.  Each system runs in its own child process, one after another, and is
stopped before the next starts.  Prints a table and the ratios of the others to scoop.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCOOP07 = os.path.join(HERE, ".venv-scoop07", "bin", "python")


def _raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _memory(pids) -> dict:
    import psutil
    pss = uss = rss = 0
    for pid in pids:
        try:
            m = psutil.Process(pid).memory_full_info()
        except Exception:
            continue
        pss, uss, rss = pss + m.pss, uss + m.uss, rss + m.rss
    return {"pss": pss, "uss": uss, "rss": rss}


def _descendants():
    import psutil
    return [p.pid for p in psutil.Process().children(recursive=True)]


def _children(p):
    try:
        return p.children(recursive=True)
    except Exception:
        return []


def _pid(_):
    import os  # ipyparallel ships this function by value, without the module's globals
    return os.getpid()


def run_scoop(n: int) -> dict:
    sys.path.insert(0, ROOT)
    from scoop import futures
    from scoop.cluster import Cluster
    t0 = time.perf_counter()
    with Cluster(n) as c:
        c.wait_for_workers(n, timeout=600)
        joined = time.perf_counter() - t0
        t1 = time.perf_counter()
        pids = set(futures.map(_pid, range(4 * n)))
        mapped = time.perf_counter() - t1
        import psutil
        procs = [p for p in pids if psutil.pid_exists(p)]
        procs += [d.pid for p in procs for d in _children(psutil.Process(p))]  # their guards
        return {"joined_s": joined, "map_s": mapped, "answered": len(pids), **_memory(procs),
                "procs": len(procs)}


def run_ipp(n: int) -> dict:
    import ipyparallel as ipp
    t0 = time.perf_counter()
    cluster = ipp.Cluster(n=n, log_level=40)
    rc = cluster.start_and_connect_sync(activate=False)
    try:
        rc.wait_for_engines(n, timeout=600)
        joined = time.perf_counter() - t0
        view = rc.load_balanced_view()
        t1 = time.perf_counter()
        pids = set(view.map_sync(_pid, range(4 * n)))
        mapped = time.perf_counter() - t1
        engines = set(rc[:].apply_sync(os.getpid))
        return {"joined_s": joined, "map_s": mapped, "answered": len(pids), **_memory(engines),
                "procs": len(engines)}
    finally:
        rc.close()
        cluster.stop_cluster_sync()


def run_dask(n: int) -> dict:
    import logging

    from distributed import Client, LocalCluster
    logging.getLogger("distributed").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, dashboard_address=None, host="127.0.0.1")
    client = Client(cluster)
    try:
        client.wait_for_workers(n, timeout=600)
        joined = time.perf_counter() - t0
        t1 = time.perf_counter()
        pids = set(client.gather(client.map(_pid, range(4 * n), pure=False)))
        mapped = time.perf_counter() - t1
        procs = _descendants()      # workers and the nannies that start them
        return {"joined_s": joined, "map_s": mapped, "answered": len(pids), **_memory(procs),
                "procs": len(procs)}
    finally:
        client.close()
        cluster.close()


# waits until the bench has seen all workers connected, so joining and mapping are timed apart
PROGRAM = textwrap.dedent("""
    import os, time, json
    from scoop import futures
    def pid(_):
        return os.getpid()
    if __name__ == "__main__":
        while not os.path.exists(os.environ["GO"]):   # the bench has seen every worker connected
            time.sleep(0.01)
        t1 = time.perf_counter()
        pids = set(futures.map(pid, range(4 * int(os.environ["N"]))))
        print(json.dumps({"map_s": time.perf_counter() - t1, "answered": len(pids)}), flush=True)
""")


def _is_scoop07_worker(p) -> bool:
    return "scoop.bootstrap" in " ".join(p.cmdline())


def _is_scoop_worker(p) -> bool:
    return p.name() == "scoop-worker"    # forked workers keep the launcher's argv, not its name


def run_cli(n: int, python: str = sys.executable, is_worker=_is_scoop_worker) -> dict:
    """Times a `python -m scoop -n N` run from outside: its launcher prints nothing when all
    workers are up, so 'joined' is when N worker processes hold a TCP connection."""
    import tempfile

    import psutil
    prog = os.path.join(tempfile.mkdtemp(), "map_all.py")
    with open(prog, "w") as f:
        f.write(PROGRAM)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" or python == sys.executable}
    env["N"], env["GO"] = str(n), prog + ".go"
    t0 = time.perf_counter()
    p = subprocess.Popen([python, "-m", "scoop", "-n", str(n), prog], env=env, cwd=os.path.dirname(prog),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    joined, mem, procs = None, {}, 0
    connected: set = set()  # workers seen holding a connection: not asked again (each question
    try:                    # reads the host's whole TCP table, and the looking must not slow the run)
        while joined is None and p.poll() is None and time.perf_counter() - t0 < 600:
            workers = []
            for c in psutil.Process(p.pid).children(recursive=True):
                try:
                    if is_worker(c):
                        workers.append(c)
                        if c.pid not in connected and any(k.status == "ESTABLISHED"
                                                          for k in c.net_connections("tcp")):
                            connected.add(c.pid)
                except psutil.Error:
                    pass
            if len(connected) >= n:
                joined = time.perf_counter() - t0
                # the workers and whatever they started for themselves (scoop's per-worker guard)
                helpers = [d.pid for w in workers for d in _children(w)]
                mem, procs = _memory([w.pid for w in workers] + helpers), len(workers) + len(helpers)
                open(env["GO"], "w").close()
            time.sleep(0.05)
        out, err = p.communicate(timeout=600)
        if not out.strip():
            raise RuntimeError(f"the run printed nothing; its log ends: {err[-1500:]}")
        line = json.loads(out.strip().splitlines()[-1])
        return {"joined_s": joined, **line, **mem, "procs": procs}
    finally:
        if p.poll() is None:
            os.killpg(p.pid, 9)


def run_scoop07(n: int) -> dict:
    return run_cli(n, SCOOP07, _is_scoop07_worker)


RUNNERS = {"scoop": run_cli, "scoop-cluster": run_scoop, "scoop07": run_scoop07,
           "ipp": run_ipp, "ipyparallel": run_ipp, "dask": run_dask}


def _plan(peers: str, workers: int) -> list[tuple[str, int]]:
    """``dask,ipyparallel@64``: each system at --workers, or at its own count after @; scoop also
    runs at every count another system runs at, so each ratio compares equal counts."""
    plan = []
    for item in peers.split(","):
        name, _, count = item.strip().partition("@")
        if name not in RUNNERS:
            raise SystemExit(f"many_workers.py: unknown system {name!r}; choose from {', '.join(RUNNERS)}")
        plan.append((name, int(count) if count else workers))
    if any(name == "scoop" for name, _ in plan):
        for n in dict.fromkeys(n for _, n in plan):
            if ("scoop", n) not in plan:
                plan.insert(next(i for i, (_, k) in enumerate(plan) if k == n), ("scoop", n))
    return plan


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=256)
    ap.add_argument("--peers", default="scoop,scoop-cluster,scoop07,ipyparallel,dask",
                    help="systems, comma-separated; NAME@N runs that one at N workers")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    _raise_nofile()
    if a.one:
        print(json.dumps(RUNNERS[a.one](a.workers)), flush=True)
        return
    plan = _plan(a.peers, a.workers)
    print(f"# {', '.join(f'{p}@{n}' for p, n in plan)} on {os.cpu_count()} cores; load average "
          f"{os.getloadavg()[0]:.1f}; RLIMIT_NOFILE raised to "
          f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]}", flush=True)
    rows = {}
    for peer, n in plan:
        if peer == "scoop07" and not os.path.exists(SCOOP07):
            print("# scoop07: run bench/setup_peers.sh first", flush=True)
            continue
        r = subprocess.run([sys.executable, __file__, "--workers", str(n), "--one", peer],
                           capture_output=True, text=True, timeout=1800)
        try:
            rows[peer, n] = json.loads(r.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            print(f"# {peer}@{n} failed: {r.stderr.strip()[-800:]}", flush=True)
            continue
        print(f"# {peer}@{n}: {rows[peer, n]} (load average {os.getloadavg()[0]:.1f})", flush=True)
    mib = 1 << 20
    print("\n| system | workers | answering | all joined (s) | map of 4N (s) | PSS per worker (MiB) | "
          "USS per worker (MiB) | vs scoop at N: joined, map, PSS |")
    print("|---|---|---|---|---|---|---|---|")
    for (peer, n), r in rows.items():
        base = rows.get(("scoop", n))
        ratio = ""
        if base and r.get("joined_s") and r.get("pss") and base.get("joined_s"):
            ratio = (f"{r['joined_s'] / base['joined_s']:.2f}x, {r.get('map_s', 0) / base['map_s']:.2f}x, "
                     f"{r['pss'] / base['pss']:.2f}x")
        joined = f"{r['joined_s']:.2f}" if r.get("joined_s") else "?"
        print(f"| {peer} | {n} | {r.get('answered')} | {joined} | {r.get('map_s', 0):.2f} | "
              f"{r.get('pss', 0) / n / mib:.1f} | {r.get('uss', 0) / n / mib:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
