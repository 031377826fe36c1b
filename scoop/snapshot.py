"""The one snapshot model of a cluster that every view reads.

The broker's meta stream carries raw figures: each worker's own load report (sent every
0.25 s) next to the broker's counters.  Views that each picked a figure of their own
disagreed ("4 running" over two workers running one each, a done total below the sum of its
rows, two throughputs).  This module turns a raw snapshot into one model, with one
definition of every figure, and every view (the dashboard, ``%scoop_cluster status``, the
HTML cards, the timeline's headline, the lab panel's comm and its status bar) reads it.

Definitions (``totals``; every row figure is per worker, every total is the sum of its rows):

``workers``
    workers that joined and still run (state ``busy`` or ``idle``); ``joining`` (started, not
    joined yet), ``lost`` (gone without saying goodbye, shown for a few seconds) and
    ``pending_workers`` (in batch jobs waiting in the queue) are counted apart.
``running``
    tasks a worker has started and not finished (a task waiting for its own children still
    counts), capped by the tasks the broker has assigned to it.
``queued``
    tasks waiting: at the broker for a worker (``waiting``), plus those a worker holds and has
    not started (the rows' ``queued``).
``in_flight``
    tasks submitted and not finished, as the broker counts them (queued, running, and those
    on their way); 0 means the cluster has nothing left to do.
``done``
    **inputs** finished since the cluster started: a ``map`` over 1,000 items counts 1,000
    however it was chunked into tasks, and a ``submit`` counts 1.  The rows' counts plus
    ``departed_done``, what workers that left (retired or lost) had done.
``rate``
    inputs finished per second over the last ``window`` seconds, from the same ``done``.
``busy``
    the share (0..1) of ``workers`` that have a task.

A *task* is what travels to a worker: one ``submit``, or one chunk of a map.  The timeline
draws tasks and says how many inputs they carried.

``summary`` stays small at any size, for views of 1,000 workers: ``states`` (count per
state), ``cpu_histogram`` (workers per 10 % CPU band, ``CPU_BINS`` bands), ``busiest`` and
``idle`` (a few worker names), ``hosts`` (per host: workers, busy, done, mem).

Everything here is pure: time comes in as an argument and nothing does I/O, so it is
unit-tested without processes (tests/test_snapshot.py).
"""
from __future__ import annotations

import functools
import re
from collections import deque

#: seconds over which ``rate`` is measured
WINDOW = 2.0
#: how long a worker that vanished without saying goodbye stays listed as "lost"
LOST_LINGER = 6.0
#: CPU histogram bands: 0-10 %, ..., 90-100 % (and above, for a task using several cores)
CPU_BINS = 10
#: names listed under ``busiest`` and ``idle``
INTERESTING = 5
LIVE = ("busy", "idle")
TOTAL_KEYS = ("workers", "busy", "done", "queued", "running", "rate", "pending_workers", "waiting",
              "joining", "lost", "departed_done", "window", "in_flight")


@functools.lru_cache(maxsize=1 << 16)
def natural(name: str) -> tuple:
    """Natural order of worker names: w2 before w10 (cached: views sort thousands each second)."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(name or "~")))


def plural(n: int, word: str) -> str:
    """"1 worker", "2 workers"."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def busy_state(w: dict) -> str:
    """A worker is busy while the broker has tasks assigned to it (the broker's own, current
    count); the worker's load report, sent now and then, can still say "running" just after."""
    if "assigned" in w:
        return "busy" if int(w.get("assigned") or 0) > 0 else "idle"
    return "busy" if w.get("state") == "busy" or int(w.get("running") or 0) > 0 else "idle"


def worker_row(w: dict, state: str, names: dict | None = None) -> dict:
    """One worker's row from its raw record (the broker's ``peer_info``)."""
    pid = int(w.get("pid") or 0)
    running, queued = int(w.get("running") or 0), int(w.get("queued") or 0)
    if "assigned" in w:
        # the broker's count is current; the worker's load report can be a moment behind it
        held = int(w.get("assigned") or 0)
        running = min(running, held)
        queued = min(queued, held - running)
    if state in ("lost", "joining"):
        running = queued = 0
    name = w.get("name") or (names or {}).get(pid)
    if not name:
        name = f"#{w.get('id')}" if w.get("id") not in (None, "") else ""
    return {"id": str(w.get("id", "")), "name": str(name), "host": str(w.get("host", "")), "pid": pid,
            "state": state, "queued": queued, "running": running, "done": int(w.get("done") or 0),
            "cpu": float(w.get("cpu") or 0.0), "mem": int(w.get("mem") or 0)}


def throughput(samples, now: float, window: float = WINDOW) -> float:
    """Inputs per second over the last ``window`` seconds from ``(time, done)`` samples,
    oldest first; 0.0 until two samples span some time."""
    pts = [(t, d) for t, d in samples if t <= now]
    if len(pts) < 2:
        return 0.0
    t1, d1 = pts[-1]
    base = pts[0]
    for t, d in pts:
        if t >= t1 - window:
            break
        base = (t, d)
    t0, d0 = base
    if t1 - t0 <= 0:
        return 0.0
    # a window that ends before ``now`` (no new sample since) still counts the quiet time
    return max(0.0, (d1 - d0) / max(t1 - t0, min(now - t0, window)))


def summarise(rows: list[dict]) -> dict:
    """What a view of many workers shows first: counts per state, the CPU histogram, the
    busiest and the idle workers, and per-host figures."""
    states: dict = {}
    hist = [0] * CPU_BINS
    hosts: dict = {}
    live = []
    for w in rows:
        states[w["state"]] = states.get(w["state"], 0) + 1
        if w["state"] not in LIVE:
            continue
        live.append(w)
        hist[min(CPU_BINS - 1, max(0, int(w["cpu"] // (100 / CPU_BINS))))] += 1
        h = hosts.setdefault(w["host"], {"host": w["host"], "workers": 0, "busy": 0, "done": 0, "mem": 0})
        h["workers"] += 1
        h["busy"] += w["state"] == "busy"
        h["done"] += w["done"]
        h["mem"] += w["mem"]
    busiest = sorted((w for w in live if w["state"] == "busy"),
                     key=lambda w: (-w["running"], -w["queued"], -w["cpu"], natural(w["name"])))
    idle = sorted((w for w in live if w["state"] == "idle"), key=lambda w: natural(w["name"]))
    return {"states": states, "cpu_histogram": hist,
            "busiest": [w["name"] for w in busiest[:INTERESTING]],
            "idle": [w["name"] for w in idle[:INTERESTING]],
            "hosts": sorted(hosts.values(), key=lambda h: natural(h["host"]))}


def stopped(started: bool = False, done: int = 0) -> dict:
    """The model when no cluster runs: ``started`` False means none ever did here (views say
    "no cluster yet"), else it stopped (``done`` keeps what it had done)."""
    totals = dict.fromkeys(TOTAL_KEYS, 0)
    totals.update(busy=0.0, rate=0.0, window=WINDOW, done=int(done))
    return {"type": "status", "state": "stopped", "started": bool(started), "time": 0.0,
            "workers": [], "jobs": [], "maps": [], "totals": totals, "summary": summarise([])}


class SnapshotModel:
    """Builds the model from raw broker snapshots, keeping the little state the definitions
    need across snapshots: the done counts of workers that left, the lost workers still shown,
    and the ``(time, done)`` samples of the throughput window.  One per cluster being followed."""

    def __init__(self, window: float = WINDOW):
        self.window = window
        self.samples: deque = deque()
        self.departed_done = 0
        self._last_done: dict = {}   # worker id -> its last done count
        self._lost: dict = {}        # worker id -> (time it was lost, raw record)
        self.retired_pids: set = set()

    def lost(self, w: dict, now: float) -> None:
        """A worker left without being retired: shown as lost for ``LOST_LINGER`` s."""
        if w.get("role", "worker") == "worker" and w.get("pid") not in self.retired_pids:
            self._lost[str(w.get("id"))] = (now, w)

    def build(self, raw: dict, now: float, *, names: dict | None = None, joining=(), jobs=(),
              maps=(), wall: float | None = None) -> dict:
        """The model of ``raw`` (a broker snapshot: ``workers``, ``totals``) at ``now`` (a
        monotonic clock).  ``names``: pid -> worker name, for records without one; ``joining``:
        rows of workers started but not joined; ``jobs``: batch jobs (``Cluster.jobs()``);
        ``maps``: progress of the maps iterated by the origin (``scoop.origin.maps()``)."""
        rows, seen = [], set()
        for w in raw.get("workers") or ():
            if w.get("role", "worker") != "worker" or w.get("pid") in self.retired_pids:
                continue
            row = worker_row(w, busy_state(w), names)
            seen.add(row["id"])
            rows.append(row)
        # workers gone since the last snapshot: what they had done stays counted
        for wid in [k for k in self._last_done if k not in seen]:
            self.departed_done += self._last_done.pop(wid)
        for row in rows:
            self._last_done[row["id"]] = row["done"]
        for wid, (when, w) in list(self._lost.items()):
            if now - when > LOST_LINGER or wid in seen:
                del self._lost[wid]
            else:
                rows.append(worker_row(w, "lost", names))
        seen_pids = {r["pid"] for r in rows}
        rows.extend(dict(j, state="joining") for j in joining if j.get("pid") not in seen_pids)
        rows.sort(key=lambda w: (w["name"] == "", natural(w["name"])))
        live = [w for w in rows if w["state"] in LIVE]
        raw_totals = raw.get("totals") or {}
        done = sum(w["done"] for w in rows if w["state"] != "lost") + self.departed_done
        self.samples.append((now, done))
        while len(self.samples) > 2 and self.samples[1][0] < now - self.window:
            self.samples.popleft()
        jobs = [job_row(j) for j in jobs]
        pending = [j for j in jobs if j["state"] == "pending" and not j.get("replaces")]
        waiting = int(raw_totals.get("queued") or 0)
        totals = {"workers": len(live),
                  "busy": sum(w["state"] == "busy" for w in live) / len(live) if live else 0.0,
                  "done": done, "running": sum(w["running"] for w in live),
                  "queued": waiting + sum(w["queued"] for w in live), "waiting": waiting,
                  "in_flight": int(raw_totals.get("in_flight") or 0),
                  "rate": round(throughput(self.samples, now, self.window), 1), "window": self.window,
                  "pending_workers": sum(len(j["workers"]) for j in pending),
                  "joining": sum(w["state"] == "joining" for w in rows),
                  "lost": sum(w["state"] == "lost" for w in rows), "departed_done": self.departed_done}
        state = "running" if raw.get("state", "running") == "running" else "stopped"
        return {"type": "status", "state": state,
                "started": True, "time": float(wall if wall is not None else raw.get("time") or 0.0),
                "workers": rows, "jobs": jobs, "maps": [map_row(m) for m in maps], "totals": totals,
                "summary": summarise(rows)}


def job_row(j: dict) -> dict:
    """A batch job as the views show it (see ``Cluster.jobs``)."""
    row = {"id": str(j.get("id", "")), "state": str(j.get("state", "")),
           "workers": [str(w) for w in j.get("workers") or ()], "submitted": float(j.get("submitted") or 0.0),
           "reason": str(j.get("reason") or ""), "nodes": str(j.get("nodes") or "")}
    for key in ("error", "replaces"):
        if j.get(key):
            row[key] = str(j[key])
    return row


def map_row(m: dict) -> dict:
    """A map's progress: ``name``, ``done`` and ``total`` inputs (``total`` None for an
    iterable of unknown length, then ``submitted`` is the known part), ``started`` (epoch s),
    ``finished``."""
    total = m.get("total")
    return {"name": str(m.get("name", "map")), "done": int(m.get("done") or 0),
            "total": None if total is None else int(total), "submitted": int(m.get("submitted") or 0),
            "started": float(m.get("started") or 0.0), "finished": bool(m.get("finished"))}
