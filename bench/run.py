"""Benchmark our SCOOP ("us") against the original SCOOP 0.7.2 and other executors.

    bash bench/setup_peers.sh && python bench/run.py            # full run (~12-15 min on 2 cores)
    python bench/run.py --quick                                # smoke run (a few minutes)
    python bench/run.py --only tiny_map --peers mp,scoop07
    python bench/run.py --quick --skip-us                      # until our package works

Every measurement is a fresh subprocess in its own process group/session,
run in bench/workloads/ as the working directory:
  us       <this python> -m scoop -n 2 bench/workloads/X.py ARGS
  scoop07  bench/.venv-scoop07/bin/python -m scoop -n 2 bench/workloads/X.py ARGS
  PEER     <this python> bench/peers.py --peer PEER --workload X -- ARGS
  (cell_start: <this python> bench/kernel_cell.py --runner R)
In SCOOP (0.7.2 and ours) `-n 2` is the total number of workers, the origin
included; every peer uses 2 worker processes.

Runners alternate within each repetition (us, scoop07, mp, ... , us, scoop07,
...) R times; the table shows medians over the repetitions, ratios against "us"
(against scoop07 with --skip-us), and the targets with pass/fail.  Results go to
bench/results/run-<timestamp>.json (+ latest.json) and the plot
bench/results/throughput_vs_duration.png.

Process hygiene: each child gets an environment tag (SCOOP_BENCH_TAG); after it
exits, its process group and any process still carrying the tag (SCOOP workers,
dask nannies, ipyparallel engines, kernels...) are reported as leftovers and
killed (SIGTERM, then SIGKILL).  Timeouts kill the same way.
"""
import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORKLOADS = os.path.join(HERE, "workloads")
RESULTS = os.path.join(HERE, "results")
SCOOP07_PY = os.path.join(HERE, ".venv-scoop07", "bin", "python")
TAG_VAR = "SCOOP_BENCH_TAG"

ALL_RUNNERS = ["us", "scoop07", "mp", "ppe", "loky", "dask", "ipp"]
PEER_RUNNERS = ["mp", "ppe", "loky", "dask", "ipp"]
ISSUE12_RUNNERS = ["us", "mp", "ppe", "loky", "dask"]
RUNNER_DESC = {
    "us": "our scoop: python -m scoop -n 2 (2 workers incl. origin)",
    "scoop07": "SCOOP 0.7.2.0: .venv-scoop07/bin/python -m scoop -n 2 (origin + 1 worker)",
    "mp": "multiprocessing.Pool(2): map (chunksize=1; issue-12 workloads: automatic) / apply_async",
    "ppe": "concurrent.futures.ProcessPoolExecutor(2)",
    "loky": "loky.get_reusable_executor(max_workers=2)",
    "dask": "dask.distributed LocalCluster(n_workers=2, threads_per_worker=1, processes=True)",
    "ipp": "ipyparallel ipp.Cluster(n=2), load-balanced view",
}

# Workload table.  args: (full, quick).  runners: who can run it.
# override: runner -> (full args, quick args, note) where a runner is run at a
# smaller size because it cannot finish the common size in the time budget
# (None: the common args of that mode).
SLOW_NOTE = "fewer tasks in the full run (a few hundred tasks/s); throughput is a rate"
WORKLOADS_SPEC = {
    "tiny_map": dict(
        desc="map(tiny, range(N)), each executor's DEFAULT chunking (issue 12)",
        args=(["--tasks", "200000"], ["--tasks", "20000"]), repeats=(3, 1), timeout=(240, 90),
        metrics=[("tasks_per_s", "default tasks/s", "higher"),
                 ("tasks_per_s_tuned", "chunksize=n/8 tasks/s", "higher"),
                 ("tasks_per_s_chunk1", "chunksize=1 tasks/s", "higher")],
        runners=ISSUE12_RUNNERS,
        override={"ppe": (["--tasks", "50000"], ["--tasks", "5000"],
                          "fewer tasks: the default chunksize=1 runs ~10k tasks/s (a rate)"),
                  "loky": (["--tasks", "50000"], ["--tasks", "5000"],
                           "fewer tasks: the default chunksize=1 runs ~10k tasks/s (a rate)"),
                  "dask": (["--tasks", "5000"], ["--tasks", "1000"], SLOW_NOTE)}),
    "payload": dict(
        desc="numpy arrays as map arguments / results: GB/s (10^9 B/s), origin peak RSS growth",
        # each part is its own process: a failure at 256 MiB does not lose the smaller figures
        parts=[(["--sizes", "1,32", "--counts", "64,16"], ["--sizes", "1,32", "--counts", "16,4"]),
               (["--sizes", "256", "--counts", "4"], ["--sizes", "256", "--counts", "2"]),
               (["--sizes", "", "--big", "512"], ["--sizes", "", "--big", "128"])],
        args=(["(3 processes, see parts)"], ["(3 processes, see parts)"]),
        repeats=(2, 1), timeout=(300, 120),
        metrics=[m for mib in (1, 32, 256) for m in (
            (f"args_gbps_{mib}", f"args {mib} MiB GB/s", "higher"),
            (f"results_gbps_{mib}", f"results {mib} MiB GB/s", "higher"),
            (f"args_origin_x_{mib}", "  args origin peak/data", "lower", False),
            (f"results_origin_x_{mib}", "  res. origin peak/data", "lower", False),
            (f"args_worker_mb_{mib}", "  args other proc MiB", "lower", False),
            (f"results_worker_mb_{mib}", "  res. other proc MiB", "lower", False),
            (f"args_broker_mb_{mib}", "  args broker MiB", "lower", False),
            (f"results_broker_mb_{mib}", "  res. broker MiB", "lower", False),
            (f"args_shm_mb_{mib}", "  args /dev/shm peak MiB", "lower", False),
            (f"results_shm_mb_{mib}", "  res. /dev/shm peak MiB", "lower", False),
            (f"args_origin_shm_x_{mib}", "  args (origin+shm)/data", "lower", False),
            (f"results_origin_shm_x_{mib}", "  res. (origin+shm)/data", "lower", False))]
        + [("big_origin_x", "big arg+res origin pk/held", "lower"),
           ("big_origin_mb", "  big origin MiB", "lower", False),
           ("big_worker_mb", "  big other proc MiB", "lower", False),
           ("big_broker_mb", "  big broker MiB", "lower", False),
           ("big_shm_mb", "  big /dev/shm peak MiB", "lower", False),
           ("big_origin_shm_x", "big (origin+shm)/held", "lower"),
           ("big_gbps", "  big GB/s", "higher", False)],
        runners=ISSUE12_RUNNERS),
    "rtt": dict(
        desc="one task's round trip: dispatched (submit, wait(timeout), result) and in place, "
             "beside a bare ZeroMQ chain in the same process",
        # 5 alternations: round trips of a few hundred microseconds swing with the machine's load
        args=(["--calls", "2000"], ["--calls", "300"]), repeats=(5, 1), timeout=(180, 60),
        metrics=[("dispatched_us", "dispatched median us", "lower"),
                 ("dispatched_p90_us", "dispatched p90 us", "lower", False),
                 ("chain_us", "bare chain median us", "lower", False),
                 ("vs_chain", "dispatched / bare chain", "lower"),
                 ("inplace_us", "in place median us", "lower", False)],
        runners=ISSUE12_RUNNERS,
        override={"dask": (["--calls", "300"], ["--calls", "100"], "reduced calls: milliseconds per call")}),
    "mac_speed": dict(
        desc="payload MAC candidates vs memcpy, GB/s (bench/mac_speed.py, no cluster)",
        args=(["--sizes", "1,64,512"], ["--sizes", "1,64"]), repeats=(1, 1), timeout=(180, 90),
        metrics=[(f"{c}_{m}", f"{c} {m} MiB", "higher", False)
                 for c in ("memcpy", "blake2b", "hmac_sha256", "blake3_1t", "blake3_mt", "xxh3")
                 for m in (1, 64, 512)],
        runners=["us"]),
    "latency": dict(
        desc="sequential submit(f, i).result() latency",
        args=(["--calls", "2000"], ["--calls", "300"]), repeats=(3, 1), timeout=(180, 60),
        metrics=[("median_us", "median us", "lower"), ("p90_us", "p90 us", "lower")],
        runners=ALL_RUNNERS,
        override={r: (["--calls", "500"], None, "reduced calls: milliseconds per call")
                  for r in ("dask", "ipp")}),
    "nested": dict(
        desc="binary tree of nested submits",
        args=(["--depth", "10"], ["--depth", "6"]), repeats=(3, 1), timeout=(180, 60),
        metrics=[("seconds", "s", "lower"), ("tasks_per_s", "tasks/s", "higher")],
        runners=["us", "scoop07", "dask"],
        override={"dask": (["--depth", "8"], None,
                           "depth 8 (511 futures): depth 10 takes ~20 s; compare tasks/s")}),
    "cpu_bound": dict(
        desc="~10 ms CPU tasks on 2 cores, speedup vs serial in the same process",
        args=(["--tasks", "200", "--ms", "10"], ["--tasks", "60", "--ms", "10"]),
        repeats=(3, 1), timeout=(180, 60),
        metrics=[("speedup", "x serial", "higher"), ("parallel_s", "parallel s", "lower")],
        runners=ALL_RUNNERS),
    "sweep": dict(
        desc="throughput vs task duration 0/0.1/1/10 ms (busy-wait)",
        args=(["--durations", "0,0.1,1,10", "--counts", "2000,2000,1000,200"],
              ["--durations", "0,0.1,1,10", "--counts", "500,500,200,40"]),
        repeats=(3, 1), timeout=(240, 90),
        metrics=[],  # per-point metrics, see sweep_metrics()
        runners=ALL_RUNNERS,
        override={r: (["--durations", "0,0.1,1,10", "--counts", "500,500,300,100"], None, SLOW_NOTE)
                  for r in ("dask", "ipp")}),
    "big_map": dict(
        desc="1,000,000-task map: time and origin peak-RSS growth",
        args=(["--tasks", "1000000"], ["--tasks", "100000"]), repeats=(1, 1), timeout=(600, 120),
        metrics=[("seconds", "s", "lower"), ("tasks_per_s", "tasks/s", "higher"),
                 ("peak_rss_growth_mb", "peak RSS growth MB", "lower"),
                 ("rss_bytes_per_task", "RSS B/task", "lower")],
        runners=["us", "scoop07", "mp", "ppe", "loky"],
        override={
            "scoop07": (["--tasks", "20000"], ["--tasks", "5000"],
                        "reduced n: SCOOP 0.7.2's map is superlinear (~1.1k tasks/s at 20k tasks)"),
            "ppe": (["--tasks", "200000"], ["--tasks", "20000"],
                    "reduced n: ProcessPoolExecutor.map runs ~8k tasks/s"),
            "loky": (["--tasks", "200000"], ["--tasks", "20000"], "reduced n: ~10k tasks/s"),
        }),
    "hello": dict(
        desc="whole-process wall time: launch, print hello, shut down",
        args=([], []), repeats=(5, 1), timeout=(120, 60),
        metrics=[("wall_s", "wall s", "lower")],
        runners=ALL_RUNNERS),
    "cell_start": dict(
        desc="IPython kernel cell: start 2-worker cluster + one task, until execute_reply",
        args=([], []), repeats=(3, 1), timeout=(180, 120),
        metrics=[("cell_s", "cell s", "lower")],
        runners=["us", "mp", "ppe", "loky", "dask", "ipp"]),
    "broker_capacity": dict(
        desc="one broker, 1,000 simulated worker connections: task+result records routed per s",
        args=(["--workers", "1000", "--seconds", "8"], ["--workers", "1000", "--seconds", "4"]),
        repeats=(1, 1), timeout=(180, 120),
        metrics=[("records_per_s", "records/s", "higher"), ("zmq_msgs_per_s", "zmq msgs/s", "higher"),
                 ("broker_cpu", "broker cores", "lower"),
                 ("records_per_broker_cpu_s", "records per broker CPU-s", "higher")],
        runners=["us"]),
}
ORDER = list(WORKLOADS_SPEC)

# (workload, metric, kind, reference, threshold, text[, reference metric])
# kinds: ratio>= / ratio<= against one runner; best>= against the best of several runners;
# abs>= / abs< / abs<= against a number.
BEST_PEER = ("mp", "ppe", "loky", "dask")
TARGETS = [
    ("tiny_map", "tasks_per_s", "ratio>=", "mp", 2.0,
     "map throughput >= 2.0x multiprocessing.Pool.map(chunksize=1)", "tasks_per_s_chunk1"),
    ("latency", "median_us", "ratio<=", "ppe", 0.7,
     "submit->result median latency <= 0.7x ProcessPoolExecutor"),
    ("hello", "wall_s", "ratio<=", "scoop07", 1.0,
     "python -m scoop -n 2 hello.py no slower than SCOOP 0.7.2"),
    ("cpu_bound", "speedup", "abs>=", None, 1.8, "CPU-bound speedup >= 1.8x on 2 cores"),
    ("cell_start", "cell_s", "abs<", None, 0.5,
     "%scoop_cluster start -n 2 + first result from a cell < 0.5 s"),
    ("broker_capacity", "records_per_s", "abs>=", None, 200000,
     "broker routes >= 200,000 messages/s (task and result records, 1,000 simulated workers)"),
    # issue 12
] + [("payload", f"{d}_gbps_{mib}", "best>=", BEST_PEER, 1.5,
      f"issue 12: payload {d} {mib} MiB GB/s >= 1.5x the best peer")
     for mib in (1, 32, 256) for d in ("args", "results")] + [
    ("payload", "big_origin_x", "abs<=", None, 1.5,
     "issue 12: 512 MiB argument + 512 MiB result, origin peak growth <= 1.5x the 1 GiB held"),
    ("payload", "big_origin_shm_x", "abs<=", None, 1.5,
     "issue 12, counting /dev/shm: 512 MiB + 512 MiB, peak of (origin + machine Shmem) growth <= 1.5x held"),
    ("tiny_map", "tasks_per_s", "best>=", BEST_PEER, 1.0,
     "issue 12: tiny map >= 1.0x the fastest peer's default map"),
    ("rtt", "vs_chain", "abs<=", None, 1.3,
     "issue 12: dispatched round trip <= 1.3x the bare ZeroMQ chain (same process, alternating blocks)"),
]


# ----------------------------------------------------------------------------- processes
def _tagged_processes(tag):
    import psutil
    found = []
    me = os.getpid()
    for p in psutil.process_iter(["pid"]):
        if p.pid == me:
            continue
        try:
            if p.environ().get(TAG_VAR) == tag:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            pass
    return found


def _stray_bench_processes():
    """Any process (from any earlier run of this harness) still carrying a tag."""
    import psutil
    found = []
    for p in psutil.process_iter(["pid"]):
        if p.pid == os.getpid():
            continue
        try:
            if TAG_VAR in p.environ():
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            pass
    return found


def _describe(procs):
    import psutil
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid}:{' '.join(p.cmdline())[:120]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return out


def _kill_all(pgid, tag, grace=3.0):
    """SIGTERM the group and every tagged process, then SIGKILL what remains."""
    import psutil
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        procs = _tagged_processes(tag)
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        if sig == signal.SIGTERM:
            psutil.wait_procs(procs, timeout=grace)


def _busy_cpu():
    import psutil
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)


def _own_cpu():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_process(cmd, env_extra, timeout, linger=1.0):
    """Run cmd in its own session; return dict(rc, wall_s, stdout, stderr, timed_out, leftovers)."""
    tag = uuid.uuid4().hex
    env = dict(os.environ)
    env.update(env_extra)
    env[TAG_VAR] = tag
    env.setdefault("PYTHONUNBUFFERED", "1")
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        busy0, own0 = _busy_cpu(), _own_cpu()
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                             cwd=WORKLOADS, env=env, start_new_session=True)
        timed_out = False
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            rc = None
        except BaseException:  # Ctrl-C etc.: the child is in its own session, take it down
            _kill_all(p.pid, tag, grace=2.0)
            raise
        wall = time.perf_counter() - t0
        # CPU used on the machine during the run by processes outside this
        # run's tree (the child's tree is accounted through os.times() once
        # reaped): a noise meter, in cores.
        foreign = max(0.0, (_busy_cpu() - busy0) - (_own_cpu() - own0)) / wall
        if timed_out:
            _kill_all(p.pid, tag)
            rc = p.wait()
        # Give a normally-exiting launcher's children a moment to go away by
        # themselves; whatever is still alive after that is a leftover.
        deadline = time.monotonic() + linger
        left = _tagged_processes(tag)
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [q for q in left if q.is_running() and q.status() != "zombie"]
        leftovers = _describe(left)
        _kill_all(p.pid, tag, grace=2.0)
        fo.seek(0)
        fe.seek(0)
        return dict(rc=rc, wall_s=wall, stdout=fo.read(), stderr=fe.read(),
                    timed_out=timed_out, leftovers=leftovers, foreign_cores=foreign)


def parse_json_line(text):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if isinstance(d, dict) and "bench" in d:
                return d
    return None


# ----------------------------------------------------------------------------- runners
def command_for(runner, workload, args):
    if workload == "cell_start":
        return [sys.executable, os.path.join(HERE, "kernel_cell.py"), "--runner", runner]
    if workload == "broker_capacity":
        return [sys.executable, os.path.join(HERE, "broker_capacity.py")] + args
    if workload == "mac_speed":
        return [sys.executable, os.path.join(HERE, "mac_speed.py")] + args
    if runner in ("us", "scoop07"):
        py = sys.executable if runner == "us" else SCOOP07_PY
        return [py, "-m", "scoop", "-n", "2", os.path.join(WORKLOADS, workload + ".py")] + args
    return [sys.executable, os.path.join(HERE, "peers.py"), "--peer", runner,
            "--workload", workload, "--"] + args


def env_for(runner):
    if runner == "scoop07":
        # Only the workloads dir: nothing that could shadow SCOOP 0.7.2 with our scoop.
        return {"PYTHONPATH": WORKLOADS}
    extra = [WORKLOADS, HERE]
    if runner == "us":
        # our package: the tree given with --us-src (e.g. an exported older commit), else this
        # repository's (in case it is not pip-installed; harmless if it is)
        extra.append(US_SRC or REPO)
    old = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join(extra + ([old] if old else []))}


# Seconds a runner's children may take to exit by themselves after the main
# process returned before they count as leftovers (ipyparallel's engine nannies
# take ~3 s to notice their engine is gone).
LINGER = {"ipp": 6.0}
US_SRC = None  # --us-src


def run_one(runner, workload, args, timeout):
    cmd = command_for(runner, workload, args)
    r = run_process(cmd, env_for(runner), timeout, linger=LINGER.get(runner, 1.0))
    res = parse_json_line(r["stdout"]) if workload != "hello" or runner in PEER_RUNNERS else {}
    rec = {"runner": runner, "workload": workload, "cmd": cmd, "rc": r["rc"],
           "foreign_cores": r["foreign_cores"],
           "process_wall_s": r["wall_s"], "timed_out": r["timed_out"],
           "leftovers": r["leftovers"]}
    ok = r["rc"] == 0 and not r["timed_out"]
    if workload == "hello":
        if runner in ("us", "scoop07"):
            ok = ok and "hello" in r["stdout"]
        else:
            ok = ok and res is not None
        res = dict(res or {}, wall_s=r["wall_s"])
    if res is None or not ok or res.get("error"):
        tail = (r["stderr"].strip().splitlines() or ["<no stderr>"])[-6:]
        last = next((ln.strip() for ln in reversed(tail) if ln.strip()), "")
        rec["error"] = ("timeout after %ss" % timeout if r["timed_out"] else
                        (res or {}).get("error") or f"rc={r['rc']}, no result line ({last[:160]})")
        if args and len(WORKLOADS_SPEC.get(workload, {}).get("parts", ())) > 1:
            rec["error"] += f" [part: {' '.join(repr(x) if x == '' else x for x in args)}]"
        rec["stderr_tail"] = tail
    if res:
        if workload == "big_map" and "peak_rss_growth_mb" in res:
            res["rss_bytes_per_task"] = res["peak_rss_growth_mb"] * 2**20 / res["n"]
        rec["result"] = res
    return rec


# ----------------------------------------------------------------------------- aggregation
def sweep_metrics(result):
    return {f"tput_{p['ms']:g}ms": p["tasks_per_s"] for p in result.get("points", [])}


def metric_values(rec):
    res = rec.get("result") or {}
    if rec.get("error") or res.get("skipped") or res.get("unsupported"):
        return {}
    if rec["workload"] == "sweep":
        return sweep_metrics(res)
    return {k: res[k] for k in res if isinstance(res[k], (int, float)) and not isinstance(res[k], bool)}


def aggregate(records):
    """{workload: {runner: {metric: median}}} plus notes."""
    agg, notes = {}, {}
    for rec in records:
        w, r = rec["workload"], rec["runner"]
        vals = metric_values(rec)
        slot = agg.setdefault(w, {}).setdefault(r, {})
        for k, v in vals.items():
            slot.setdefault(k, []).append(v)
        res = rec.get("result") or {}
        note = None
        if rec.get("error"):
            note = "ERROR: " + rec["error"]
        elif res.get("skipped") or res.get("unsupported"):
            note = ("skipped: " if res.get("skipped") else "n/a: ") + res.get("note", "")
        elif res.get("note"):
            note = "note: " + res["note"]
        if note:
            seen = notes.setdefault(w, {}).setdefault(r, [])
            if note not in seen:
                seen.append(note)
    med = {w: {r: {k: statistics.median(v) for k, v in m.items()} for r, m in rs.items()}
           for w, rs in agg.items()}
    notes = {w: {r: "; ".join(n) for r, n in rs.items()} for w, rs in notes.items()}
    return med, notes


def fmt(v):
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def _best_peer(med, w, key, better):
    """(runner, value) of the best peer executor for this metric, or (None, None)."""
    vals = [(r, med.get(w, {}).get(r, {}).get(key)) for r in PEER_RUNNERS]
    vals = [(r, v) for r, v in vals if v is not None]
    if not vals:
        return None, None
    return (max if better == "higher" else min)(vals, key=lambda rv: rv[1])


def _spec_args(spec, mode):
    if "parts" in spec:
        return " | ".join(" ".join(repr(x) if x == "" else x for x in part[mode]) for part in spec["parts"])
    return " ".join(spec["args"][mode]) or "-"


def table(med, notes, runners, spec_of, baseline, mode):
    lines = []
    for w in ORDER:
        if w not in med and w not in notes:
            continue
        spec = spec_of[w]
        metrics = spec["metrics"]
        if w == "sweep":
            keys = sorted({k for r in med.get(w, {}).values() for k in r},
                          key=lambda k: float(k[5:-2]))
            metrics = [(k, f"tasks/s @{k[5:]}", "higher") for k in keys]
        lines.append("")
        lines.append(f"== {w}: {spec['desc']}  (args: {_spec_args(spec, mode)})")
        present = [r for r in runners if r in spec["runners"]]
        has_peers = "us" in present and any(r in PEER_RUNNERS for r in present)
        head = f"{'metric':<26}" + "".join(f"{r:>12}" for r in present)
        if has_peers:
            head += f"{'us/best peer':>14}"
        lines.append(head)
        for m in metrics:
            key, label, better = m[:3]
            with_ratio = m[3] if len(m) > 3 else True
            if not any(key in med.get(w, {}).get(r, {}) for r in present):
                continue
            row = f"{label + (' ^' if better == 'higher' else ' v'):<26}"
            rrow = f"{'  ratio vs ' + baseline:<26}"
            base = med.get(w, {}).get(baseline, {}).get(key)
            for r in present:
                v = med.get(w, {}).get(r, {}).get(key)
                row += f"{fmt(v):>12}"
                rrow += f"{(f'{v / base:.2f}x' if v is not None and base else '-'):>12}"
            if has_peers and with_ratio:
                us = med.get(w, {}).get("us", {}).get(key)
                br, bv = _best_peer(med, w, key, better)
                row += f"{(f'{us / bv:.2f}x {br}' if us is not None and bv else '-'):>14}"
            lines.append(row)
            if base is not None and with_ratio:
                lines.append(rrow)
        for r in present:
            n = notes.get(w, {}).get(r)
            if n:
                lines.append(f"  [{r}] {n}")
        for r, o in spec.get("override", {}).items():
            if r in present and o[mode] is not None:
                lines.append(f"  [{r}] run with {' '.join(o[mode])} ({o[2]})")
    lines.append("  (^ higher is better, v lower is better; ratio = runner / " + baseline
                 + "; us/best peer = us / the best of " + ", ".join(PEER_RUNNERS) + " measured)")
    return lines


def targets(med, notes, workloads=None):
    out = []
    for t in TARGETS:
        w, key, kind, ref, thr, text = t[:6]
        if workloads is not None and w not in workloads:
            continue
        ref_key = t[6] if len(t) > 6 else key
        us = med.get(w, {}).get("us", {}).get(key)
        if kind == "best>=":
            ref, refv = _best_peer(med, w, ref_key, "higher")
            kind = "ratio>="
        else:
            refv = med.get(w, {}).get(ref, {}).get(ref_key) if ref else None
        s07 = med.get(w, {}).get("scoop07", {}).get(key)
        if kind.startswith("ratio"):
            if refv is None:
                verdict, detail = "n/a", f"reference {ref or 'peers'} not measured"
            else:
                bound = refv * thr
                cmp_ = ">=" if kind == "ratio>=" else "<="
                need = f"us must be {cmp_} {fmt(bound)} ({ref} = {fmt(refv)})"
                if us is None:
                    note = notes.get(w, {}).get("us")
                    # a run of ours that errored out is a failure, not a missing figure
                    verdict = "FAIL" if note and "ERROR" in note else "n/a"
                    detail = need + "; us not measured" + (f" [{note}]" if note else "")
                else:
                    ok = us >= bound if kind == "ratio>=" else us <= bound
                    verdict = "PASS" if ok else "FAIL"
                    detail = f"us = {fmt(us)} = {us / refv:.2f}x {ref}; " + need
                if s07 is not None and ref != "scoop07":
                    detail += f"; for reference SCOOP 0.7.2 = {s07 / refv:.2f}x {ref}"
        else:
            if us is None:
                verdict, detail = "n/a", "us not measured" + (
                    f" [{notes.get(w, {}).get('us')}]" if notes.get(w, {}).get("us") else "")
            else:
                ok = {"abs>=": us >= thr, "abs<": us < thr, "abs<=": us <= thr}[kind]
                verdict, detail = ("PASS" if ok else "FAIL"), f"us = {fmt(us)}"
            if s07 is not None:
                detail += f"; for reference SCOOP 0.7.2 = {fmt(s07)}"
        out.append(f"  [{verdict:>4}] {text}: {detail}")
    return out


def plot_payload(med, runners, path):
    """GB/s against payload size, arguments and results side by side."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker  # noqa: F401
    except ImportError:
        print("!! matplotlib missing (pip install matplotlib): no plot", file=sys.stderr)
        return None
    data = med.get("payload", {})
    sizes = sorted({int(k.rsplit("_", 1)[1]) for r in data.values() for k in r
                    if k.startswith(("args_gbps_", "results_gbps_"))})
    if not sizes:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, d, title in zip(axes, ("args", "results"),
                            ("arrays as map arguments", "arrays returned as map results")):
        for r in runners:
            pts = [(mib, data.get(r, {}).get(f"{d}_gbps_{mib}")) for mib in sizes]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=r,
                        linewidth=2.5 if r == "us" else 1.3)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(sizes)
        ax.set_xticklabels([f"{m} MiB" for m in sizes])
        ax.set_xlabel("array size")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("GB/s (10^9 B/s, median)")
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle("numpy payloads through a 2-worker executor (default map of each)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(med, runners, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("!! matplotlib missing (pip install matplotlib): no plot", file=sys.stderr)
        return None
    data = med.get("sweep", {})
    keys = sorted({k for r in data.values() for k in r}, key=lambda k: float(k[5:-2]))
    if not keys:
        return None
    durs = [float(k[5:-2]) for k in keys]
    xs = list(range(len(keys)))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runners:
        if r in data and data[r]:
            ys = [data[r].get(k) for k in keys]
            ax.plot(xs, ys, marker="o", label=r, linewidth=2.5 if r == "us" else 1.3)
    ideal = [2000.0 / d if d > 0 else None for d in durs]
    ax.plot([x for x, y in zip(xs, ideal) if y], [y for y in ideal if y], "k:",
            label="ideal (2 workers)")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{d:g}" for d in durs])
    ax.set_yscale("log")
    ax.set_xlabel("task duration (ms, busy-wait)")
    ax.set_ylabel("throughput (tasks/s, median)")
    ax.set_title("futures.map throughput vs task duration, 2 workers")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- main
def preflight(runners):
    notes = {}
    if "scoop07" in runners and not os.access(SCOOP07_PY, os.X_OK):
        notes["scoop07"] = "bench/.venv-scoop07 missing: run bash bench/setup_peers.sh"
    if "us" in runners:
        r = subprocess.run([sys.executable, "-c", "from scoop import futures; futures.submit"],
                           cwd=WORKLOADS, env=dict(os.environ, **env_for("us")),
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            notes["us"] = "our scoop not importable: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    return notes


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main():
    ap = argparse.ArgumentParser(description="SCOOP benchmark harness",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes, R=1 (smoke run)")
    ap.add_argument("--only", help="comma-separated workloads: " + ",".join(ORDER))
    ap.add_argument("--peers", help="comma-separated runners besides us: scoop07,"
                    + ",".join(PEER_RUNNERS) + " (default: all)")
    ap.add_argument("--skip-us", action="store_true", help="do not run our scoop")
    ap.add_argument("--repeats", "-R", type=int, help="override repetitions per workload")
    ap.add_argument("--out", help="results JSON path (default bench/results/run-<ts>.json)")
    ap.add_argument("--us-src", metavar="DIR",
                    help="run 'us' from the scoop package in DIR (e.g. an older commit: "
                         "mkdir DIR && git archive COMMIT scoop | tar -x -C DIR)")
    a = ap.parse_args()
    mode = 1 if a.quick else 0
    # SIGTERM (and SIGINT even when a shell started us with it ignored) end the run the way
    # Ctrl-C does: the measured process's session is killed before run.py exits
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupted)
    if a.us_src:
        if not os.path.isfile(os.path.join(a.us_src, "scoop", "__init__.py")):
            ap.error(f"--us-src {a.us_src}: no scoop/__init__.py there")
        global US_SRC
        US_SRC = os.path.abspath(a.us_src)

    workloads = ORDER if not a.only else [w.strip() for w in a.only.split(",") if w.strip()]
    for w in workloads:
        if w not in WORKLOADS_SPEC:
            ap.error(f"unknown workload {w!r}; choose from {', '.join(ORDER)}")
    others = ["scoop07"] + PEER_RUNNERS if not a.peers else [p.strip() for p in a.peers.split(",")]
    for p in others:
        if p not in ALL_RUNNERS or p == "us":
            ap.error(f"unknown peer {p!r}; choose from scoop07,{','.join(PEER_RUNNERS)}")
    runners = ([] if a.skip_us else ["us"]) + [r for r in ALL_RUNNERS if r in others and r != "us"]
    baseline = "us" if "us" in runners else ("scoop07" if "scoop07" in runners else runners[0])

    os.makedirs(RESULTS, exist_ok=True)
    pre = preflight(runners)
    for r, n in pre.items():
        print(f"!! {r}: {n}", file=sys.stderr)
    print(f"runners: {', '.join(runners)}; workloads: {', '.join(workloads)}; "
          f"mode: {'quick' if a.quick else 'full'}", flush=True)

    try:  # the commit measured, read before the run (a commit made meanwhile is not it)
        head = subprocess.run(["git", "-C", REPO, "log", "-1", "--format=%h %s"], capture_output=True,
                              text=True, timeout=10).stdout.strip()[:100]
    except (OSError, subprocess.SubprocessError):
        head = "?"
    records = []
    t_start = time.time()
    for w in workloads:
        spec = WORKLOADS_SPEC[w]
        reps = a.repeats or spec["repeats"][mode]
        timeout = spec["timeout"][mode]
        wr = [r for r in runners if r in spec["runners"]]
        tw = time.time()
        for rep in range(reps):
            for r in wr:
                if r in pre:
                    if rep == 0:
                        records.append({"runner": r, "workload": w, "error": pre[r]})
                    continue
                args = spec["args"][mode]
                if r in spec.get("override", {}) and spec["override"][r][mode] is not None:
                    args = spec["override"][r][mode]
                parts = [p[mode] for p in spec["parts"]] if "parts" in spec else [args]
                for i, part in enumerate(parts):
                    rec = run_one(r, w, part, timeout)
                    rec["rep"] = rep
                    rec["part"] = i
                    records.append(rec)
                    status = ("ERR " + rec["error"]) if rec.get("error") else "ok"
                    if rec.get("leftovers"):
                        status += f"  LEFTOVER PROCESSES (killed): {rec['leftovers']}"
                    label = w if len(parts) == 1 else f"{w}.{i + 1}"
                    print(f"  {label:<10} rep {rep + 1}/{reps} {r:<8} {rec['process_wall_s']:7.2f}s"
                          f"  {status}", flush=True)
                    if rec.get("error") and rec.get("stderr_tail"):
                        for line in rec["stderr_tail"]:
                            print(f"      | {line}", flush=True)
        print(f"  -- {w} done in {time.time() - tw:.0f}s", flush=True)

    stray = _stray_bench_processes()
    if stray:
        print(f"!! killing stray bench processes: {_describe(stray)}", file=sys.stderr)
        for p in stray:
            try:
                p.kill()
            except Exception:
                pass
    med, notes = aggregate(records)
    lines = [f"SCOOP bench ({'quick' if a.quick else 'full'}), {datetime.datetime.now():%Y-%m-%d %H:%M}, "
             f"{os.cpu_count()} cores, Python {platform.python_version()}, "
             f"{time.time() - t_start:.0f}s total"]
    ran = {rec["runner"] for rec in records}
    lines.append(f"  us from {US_SRC or REPO}" + ("" if US_SRC else f" at {head}"))
    lines += [f"  {r:<8} {RUNNER_DESC[r]}" for r in runners if r in ran]
    foreign = [rec["foreign_cores"] for rec in records if "foreign_cores" in rec]
    if foreign:
        lines.append(f"  CPU used by OTHER processes during the runs (cores of 2): median "
                     f"{statistics.median(foreign):.2f}, max {max(foreign):.2f}")
        if statistics.median(foreign) > 0.25:
            lines.append("  !! the machine was busy with other work during this run: "
                         "figures are noisy, re-run on an idle machine")
    lines += table(med, notes, runners, WORKLOADS_SPEC, baseline, mode)
    lines += ["", "Targets:"] + targets(med, notes, set(workloads))
    leftovers = [(rec["workload"], rec["runner"], rec["leftovers"])
                 for rec in records if rec.get("leftovers")]
    lines += ["", f"Leftover processes found (and killed) after runs: {len(leftovers)}"]
    lines += [f"  {w}/{r}: {left}" for w, r, left in leftovers]
    text = "\n".join(lines)
    print("\n" + text)

    ts = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = a.out or os.path.join(RESULTS, f"run-{ts}{'-quick' if a.quick else ''}.json")
    png = plot(med, runners, os.path.join(RESULTS, "throughput_vs_duration.png")) if "sweep" in med else None
    if "payload" in med:
        # the full run's plot is the one bench/README.md shows; quick runs stay in results/
        png = plot_payload(med, runners, os.path.join(HERE if not a.quick else RESULTS, "payload_gbps.png"))
    doc = {"mode": "quick" if a.quick else "full", "argv": sys.argv, "python": sys.executable,
           "python_version": platform.python_version(), "cpus": os.cpu_count(),
           "runners": {r: RUNNER_DESC[r] for r in runners}, "baseline": baseline,
           "us_src": US_SRC or REPO, "repo_head": head,
           "medians": med, "notes": notes, "records": records, "table": text, "plot": png}
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
    with open(os.path.join(RESULTS, "latest.json"), "w") as f:
        json.dump(doc, f, indent=1)
    print(f"\nresults: {out}" + (f"\nplot: {png}" if png else ""))


if __name__ == "__main__":
    main()
