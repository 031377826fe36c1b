"""Many real worker processes on this box: time until all joined, a map across all, memory per worker.

    python bench/many_workers.py --workers 256 --peers scoop,scoop07,dask,ipyparallel@64 [--timeout 600]

Each system is started the way its users start it, from the program that uses it:

  scoop    `python -m scoop -n N prog.py`; "all joined" is when the launcher has N worker processes,
           each holding a TCP connection to its broker; then the program times its map
  scoop07  SCOOP 0.7.2.0 (--scoop07-python, else $SCOOP07_PYTHON, else bench/.venv-scoop07 made by
           bench/setup_peers.sh), the same way (its -n counts the origin among the workers)
  scoop-cluster  Cluster(n) from Python (workers spawned, as from a notebook), wait_for_workers(n)
  ipyparallel  ipyparallel: ipp.Cluster(n) started and connected (start_and_connect_sync()'s steps),
           rc.wait_for_engines(n)
  dask     LocalCluster(n_workers=n, threads_per_worker=1), wait_for_workers(n) (its nannies, the
           default, run in the program's process and each spawns one worker process)

The map is one tiny task per worker (`os.getpid`) times 4, so every worker must answer.  Memory is
the proportional set size (PSS: shared pages split between the processes that map them) of every
process the system started for its workers (scoop's per-worker guard, ipyparallel's per-engine
nanny; dask's nannies live in the program's own process), divided by the workers; USS
and RSS are printed too.  Each system runs in its own child process, one after another, and is
stopped before the next starts.  Prints a table and the ratios of the others to scoop.

Each system gets --timeout seconds (default 600) to have all its workers joined; while it joins,
how many have joined, the load average and the memory available are sampled every 2 s, so a system
that does not get there is a row saying how far it got, not a missing one.  A system is also
stopped when the memory available falls under --min-free GiB (the box must stay usable).  The
bench is the subreaper of everything a system starts (ipyparallel starts its engines in sessions
of their own): whatever is left when a system's run ends is killed and counted, and the POSIX
semaphores (/dev/shm/sem.mp-*) its processes leaked when killed are removed.
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCOOP07 = os.environ.get("SCOOP07_PYTHON") or os.path.join(HERE, ".venv-scoop07", "bin", "python")
TIMEOUT = 600.0      # seconds a system gets to have all its workers joined (--timeout)
MIN_FREE = 1.5       # GiB of available memory under which a system is stopped (--min-free)


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


def _available_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / (1 << 20)
    return float("nan")


class Joining:
    """Samples how many workers have joined (``count()``), the load and the memory available every
    2 s until ``done()``.  When --timeout passes or memory runs short first, it prints the run's
    partial result as the JSON line the bench reads and ends this process at once (a system blocked
    in its own start-up cannot be asked to stop; the bench then kills what it started)."""

    def __init__(self, n: int, count, started=None):
        self.n, self.count, self.started = n, count, started or (lambda: None)
        self.t0 = time.perf_counter()
        self.trace: list = []
        self.stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def sample(self) -> dict:
        try:
            k = self.count()
        except Exception:
            k = None
        row = {"t": round(time.perf_counter() - self.t0, 1), "joined": k, "started": self.started(),
               "load": round(os.getloadavg()[0], 1), "avail_gib": round(_available_gib(), 2)}
        self.trace.append(row)
        return row

    def _watch(self):
        while not self.stop.wait(2.0):
            row = self.sample()
            why = ("timeout" if row["t"] >= TIMEOUT else
                   "memory" if row["avail_gib"] < MIN_FREE else None)
            if why and not self.stop.is_set():
                mem = _memory(_descendants())
                print(json.dumps({"joined_s": None, "stopped": why, "joined": row["joined"],
                                  "at_s": row["t"], **mem, "procs": len(_descendants()),
                                  "trace": self.trace}), flush=True)
                os._exit(3)

    def done(self) -> float:
        self.stop.set()
        self.sample()
        return time.perf_counter() - self.t0


def _pid(_):
    import os  # ipyparallel ships this function by value, without the module's globals
    return os.getpid()


def run_scoop(n: int) -> dict:
    sys.path.insert(0, ROOT)
    from scoop import futures
    from scoop.cluster import Cluster
    t0 = time.perf_counter()
    with Cluster(n) as c:
        c.wait_for_workers(n, timeout=TIMEOUT)
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
    client: list = []
    watch = Joining(n, lambda: len(client[0].ids) if client else 0, lambda: len(_descendants()))
    # start_and_connect_sync() in its documented steps, to count engines while they join; its
    # engine_timeout (60 s by default: too short for 256 engines here) is the bench's bound
    cluster = ipp.Cluster(n=n, log_level=40, engine_timeout=TIMEOUT + 60)
    cluster.start_cluster_sync()
    rc = cluster.connect_client_sync()
    client.append(rc)
    try:
        rc.wait_for_engines(n, timeout=TIMEOUT + 60)     # the watch stops it at TIMEOUT
        joined = watch.done()
        view = rc.load_balanced_view()
        t1 = time.perf_counter()
        pids = set(view.map_sync(_pid, range(4 * n)))
        mapped = time.perf_counter() - t1
        import psutil
        engines = set(rc[:].apply_sync(os.getpid))
        procs = list(engines) + [d.pid for e in engines for d in _children(psutil.Process(e))]  # nannies
        return {"joined_s": joined, "map_s": mapped, "answered": len(pids), **_memory(procs),
                "procs": len(procs), "trace": watch.trace}
    finally:
        rc.close()
        cluster.stop_cluster_sync()


def run_dask(n: int) -> dict:
    import logging

    from distributed import Client, LocalCluster, Scheduler
    logging.getLogger("distributed").setLevel(logging.ERROR)

    def registered():   # LocalCluster's constructor blocks until its workers start: ask its scheduler
        return sum(len(s.workers) for s in list(Scheduler._instances))

    watch = Joining(n, registered, lambda: len(_descendants()))
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, dashboard_address=None, host="127.0.0.1")
    client = Client(cluster)
    try:
        client.wait_for_workers(n, timeout=TIMEOUT + 60)  # the watch stops it at TIMEOUT
        joined = watch.done()
        t1 = time.perf_counter()
        pids = set(client.gather(client.map(_pid, range(4 * n), pure=False)))
        mapped = time.perf_counter() - t1
        procs = _descendants()      # workers and the nannies that start them
        return {"joined_s": joined, "map_s": mapped, "answered": len(pids), **_memory(procs),
                "procs": len(procs), "trace": watch.trace}
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
    joined, mem, procs = None, {}, 0
    connected: set = set()  # workers seen holding a connection: not asked again (each question
    seen: set = set()       # reads the host's whole TCP table, and the looking must not slow the run)
    watch = Joining(n, lambda: len(connected), lambda: len(seen))
    p = subprocess.Popen([python, "-m", "scoop", "-n", str(n), prog], env=env, cwd=os.path.dirname(prog),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        while joined is None and p.poll() is None:
            workers = []
            for c in psutil.Process(p.pid).children(recursive=True):
                try:
                    if is_worker(c):
                        workers.append(c)
                        seen.add(c.pid)
                        if c.pid not in connected and any(k.status == "ESTABLISHED"
                                                          for k in c.net_connections("tcp")):
                            connected.add(c.pid)
                except psutil.Error:
                    pass
            if len(connected) >= n:
                joined = watch.done()
                # the workers and whatever they started for themselves (scoop's per-worker guard)
                helpers = [d.pid for w in workers for d in _children(w)]
                mem, procs = _memory([w.pid for w in workers] + helpers), len(workers) + len(helpers)
                open(env["GO"], "w").close()
            time.sleep(0.05)
        out, err = p.communicate(timeout=TIMEOUT)
        if not out.strip():
            raise RuntimeError(f"the run printed nothing; its log ends: {err[-1500:]}")
        line = json.loads(out.strip().splitlines()[-1])
        return {"joined_s": joined, **line, **mem, "procs": procs, "trace": watch.trace}
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


def _become_subreaper():
    """Orphans of a system's processes (ipyparallel's engines run in sessions of their own) are
    reparented to this process, so _sweep finds whatever a run leaves."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)    # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _mapped_anywhere(path: str) -> bool:
    name = os.path.basename(path)
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps) as f:
                if name in f.read():
                    return True
        except OSError:
            pass
    return False


def _sweep(sems_before: set) -> str:
    """Kills every process a run left behind (after 10 s to end by itself) and removes the
    semaphores it leaked; says what it found."""
    import psutil
    left = psutil.Process().children(recursive=True)
    running = []
    for p in left:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:    # exited orphans wait here to be reaped
                running.append(p)
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(left, timeout=10)
    names = sorted({" ".join(p.cmdline()[1:4])[:70] for p in left if p.is_running()})
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=30)
    leaked = [f for f in set(glob.glob("/dev/shm/sem.mp-*")) - sems_before if not _mapped_anywhere(f)]
    for f in leaked:
        try:
            os.unlink(f)
        except OSError:
            pass
    return (f"{len(running)} processes still running at the run's end, {len(left)} of them killed "
            f"after 10 s {names}, "
            f"{len(leaked)} leaked semaphores removed")


def _run_one(peer: str, n: int, a) -> dict | None:
    sems = set(glob.glob("/dev/shm/sem.mp-*"))
    cmd = [sys.executable, __file__, "--workers", str(n), "--one", peer, "--timeout", str(a.timeout),
           "--min-free", str(a.min_free)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=a.timeout + 300)    # joining, then the map and the stop
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
    swept = _sweep(sems)
    try:
        r = json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        print(f"# {peer}@{n} failed ({swept}): {err.strip()[-800:]}", flush=True)
        return None
    trace = r.pop("trace", [])
    step = max(1, len(trace) // 12)
    for row in trace[::step] + trace[-1:]:
        print(f"#   {peer}@{n} t={row['t']:6.1f}s joined {row['joined']} of {n} (processes "
              f"{row['started']}) load {row['load']} available {row['avail_gib']} GiB", flush=True)
    r["load_max"] = max((row["load"] for row in trace), default=None)
    r["avail_min"] = min((row["avail_gib"] for row in trace), default=None)
    print(f"# {peer}@{n}: {r} ({swept}; load average {os.getloadavg()[0]:.1f})", flush=True)
    return r


def main():
    global TIMEOUT, MIN_FREE, SCOOP07
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=256)
    ap.add_argument("--peers", default="scoop,scoop-cluster,scoop07,ipyparallel,dask",
                    help="systems, comma-separated; NAME@N runs that one at N workers")
    ap.add_argument("--timeout", type=float, default=TIMEOUT,
                    help="seconds each system gets to have all its workers joined (default %(default)s)")
    ap.add_argument("--min-free", type=float, default=MIN_FREE,
                    help="GiB of available memory under which a system is stopped (default %(default)s)")
    ap.add_argument("--scoop07-python", default=SCOOP07, help="the interpreter holding SCOOP 0.7.2.0")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    TIMEOUT, MIN_FREE = a.timeout, a.min_free
    os.environ["SCOOP07_PYTHON"] = SCOOP07 = a.scoop07_python
    _raise_nofile()
    if a.one:
        print(json.dumps(RUNNERS[a.one](a.workers)), flush=True)
        return
    plan = _plan(a.peers, a.workers)
    _become_subreaper()
    print(f"# {', '.join(f'{p}@{n}' for p, n in plan)} on {os.cpu_count()} cores; load average "
          f"{os.getloadavg()[0]:.1f}; {_available_gib():.1f} GiB available; RLIMIT_NOFILE raised to "
          f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]}; {a.timeout:.0f} s to join", flush=True)
    rows = {}
    for peer, n in plan:
        if peer == "scoop07" and not os.path.exists(SCOOP07):
            print(f"# scoop07: no {SCOOP07}; run bench/setup_peers.sh or give --scoop07-python", flush=True)
            continue
        r = _run_one(peer, n, a)
        if r is not None:
            rows[peer, n] = r
    mib = 1 << 20
    print("\n| system | workers | answering | all joined (s) | map of 4N (s) | PSS per worker (MiB) | "
          "USS per worker (MiB) | load max, GiB available min | vs scoop at N: joined, map, PSS |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (peer, n), r in rows.items():
        base = rows.get(("scoop", n))
        ratio = ""
        if base and r.get("joined_s") and r.get("pss") and base.get("joined_s"):
            ratio = (f"{r['joined_s'] / base['joined_s']:.2f}x, {r.get('map_s', 0) / base['map_s']:.2f}x, "
                     f"{r['pss'] / base['pss']:.2f}x")
        if r.get("joined_s"):
            joined = f"{r['joined_s']:.2f}"
            pss, uss = f"{r.get('pss', 0) / n / mib:.1f}", f"{r.get('uss', 0) / n / mib:.1f}"
        else:   # stopped while joining: how far it got, and the memory of what it had started
            joined = (f"not all: {r.get('joined')} of {n} at {r.get('at_s')} s ({r.get('stopped')}); "
                      f"PSS {r.get('pss', 0) / (1 << 30):.1f} GiB in {r.get('procs')} processes")
            pss = uss = "-"
        print(f"| {peer} | {n} | {r.get('answered', '-')} | {joined} | {r.get('map_s', 0):.2f} | "
              f"{pss} | {uss} | {r.get('load_max')}, {r.get('avail_min')} | {ratio} |")

if __name__ == "__main__":
    main()
