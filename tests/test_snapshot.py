"""The snapshot model (scoop.snapshot) and the views rendered from it, without processes:
one definition of every figure, totals that are the sums of their rows, views that agree,
and views of 1,000 workers that lead with totals and stay bounded."""
from __future__ import annotations

import ast
import os
import re
import time

from scoop import snapshot
from scoop.snapshot import SnapshotModel, throughput

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def raw_worker(i, *, running=0, queued=0, assigned=None, done=0, cpu=0.0, host="node1", name=None):
    w = {"id": str(i), "name": name or f"w{i}", "host": host, "pid": 1000 + i, "role": "worker",
         "running": running, "queued": queued, "done": done, "cpu": cpu, "mem": 2**25}
    w["assigned"] = running + queued if assigned is None else assigned
    return w


def raw(workers, queued=0, in_flight=0, t=100.0):
    return {"state": "running", "time": t, "workers": workers,
            "totals": {"workers": len(workers), "queued": queued, "in_flight": in_flight, "done": 0,
                       "running": 99, "rate": 42.0}}


def test_totals_are_the_sums_of_the_rows():
    """"4 running" over two workers running one each, "Running 2" with one worker, "554 done"
    over rows summing to 566: the broker's own counters are not shown beside the rows."""
    m = SnapshotModel()
    workers = [raw_worker(1, running=2, queued=1, assigned=1, done=300),
               raw_worker(2, running=1, queued=3, assigned=4, done=266)]
    snap = m.build(raw(workers, queued=5, in_flight=10), 1.0)
    rows = snap["workers"]
    t = snap["totals"]
    assert [w["running"] for w in rows] == [1, 1]  # capped by what the broker assigned
    assert [w["queued"] for w in rows] == [0, 3]
    assert t["running"] == 2 and t["done"] == 566 == sum(w["done"] for w in rows)
    assert t["queued"] == 5 + 3 and t["waiting"] == 5 and t["in_flight"] == 10
    assert t["workers"] == 2 and t["busy"] == 1.0
    assert set(t) == set(snapshot.TOTAL_KEYS)


def test_done_keeps_what_departed_workers_did():
    m = SnapshotModel()
    m.build(raw([raw_worker(1, done=10), raw_worker(2, done=5)]), 1.0)
    snap = m.build(raw([raw_worker(1, done=12)]), 1.2)  # w2 left (retired)
    assert snap["totals"]["done"] == 17 and snap["totals"]["departed_done"] == 5
    assert [w["name"] for w in snap["workers"]] == ["w1"]


def test_a_lost_worker_is_shown_for_a_while_and_not_counted_twice():
    m = SnapshotModel()
    w2 = raw_worker(2, done=5)
    m.build(raw([raw_worker(1, done=10), w2]), 1.0)
    m.lost(w2, 1.1)
    snap = m.build(raw([raw_worker(1, done=10)]), 1.2)
    assert [(w["name"], w["state"]) for w in snap["workers"]] == [("w1", "idle"), ("w2", "lost")]
    assert snap["totals"]["done"] == 15 and snap["totals"]["lost"] == 1 and snap["totals"]["workers"] == 1
    later = m.build(raw([raw_worker(1, done=10)]), 1.2 + snapshot.LOST_LINGER + 1)
    assert [w["name"] for w in later["workers"]] == ["w1"]
    # a worker retired on purpose is never "lost"
    m.retired_pids.add(1001)
    m.lost(raw_worker(1), 20.0)
    assert not [w for w in m.build(raw([]), 20.1)["workers"] if w["state"] == "lost"]


def test_throughput_is_measured_over_one_window_of_the_same_done_figure():
    assert throughput([], 5.0) == 0.0
    assert throughput([(0.0, 0)], 5.0) == 0.0
    samples = [(t / 10, t * 10) for t in range(0, 51)]  # 100 inputs/s for 5 s
    assert abs(throughput(samples, 5.0, window=2.0) - 100.0) < 1e-6
    m = SnapshotModel(window=2.0)
    for i in range(11):  # 50 inputs per 0.2 s
        snap = m.build(raw([raw_worker(1, done=50 * i)]), i * 0.2)
    assert abs(snap["totals"]["rate"] - 250.0) < 0.5 and snap["totals"]["window"] == 2.0


def test_joining_workers_and_jobs():
    m = SnapshotModel()
    joining = [{"id": "", "name": "w3", "host": "here", "pid": 77, "state": "joining", "queued": 0,
                "running": 0, "done": 0, "cpu": 0.0, "mem": 0}]
    jobs = [{"id": 12, "state": "pending", "workers": ["w4", "w5"], "reason": "Resources"},
            {"id": 13, "state": "pending", "workers": ["w1"], "replaces": "11"}]
    snap = m.build(raw([raw_worker(1)]), 1.0, joining=joining, jobs=jobs)
    assert [w["state"] for w in snap["workers"]] == ["idle", "joining"]
    assert snap["totals"]["joining"] == 1 and snap["totals"]["pending_workers"] == 2
    assert snap["jobs"][0]["id"] == "12"


def test_stopped_and_never_started():
    assert snapshot.stopped()["started"] is False
    assert snapshot.stopped(True, done=7)["totals"]["done"] == 7
    from scoop_jupyter import views
    assert "no SCOOP cluster yet" in views.status_text(snapshot.stopped())
    assert "no cluster yet" in views.status_html(snapshot.stopped())
    assert "stopped" in views.status_html(snapshot.stopped(True))


def figures(text: str) -> dict:
    """The headline figures a view shows, read back from its text or HTML."""
    text = re.sub(r"<[^>]+>", "", text).replace("&middot;", "·")
    m = re.search(r"(\d+) workers?\b.*?busy (\d+)%[·,] (\d+) done[·,] (\d+) queued[·,] (\d+) running[·,] "
                  r"([\d.,]+)/s", text.replace(" ·", "·"))
    assert m, text
    return dict(zip(("workers", "busy", "done", "queued", "running", "rate"),
                    (int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), float(m[6].replace(",", "")))))


def test_every_view_shows_the_same_figures():
    from scoop_jupyter import views
    from scoop_jupyter.dashboard import render
    m = SnapshotModel()
    m.build(raw([raw_worker(1, done=3), raw_worker(2, done=4)]), 0.0)
    snap = m.build(raw([raw_worker(1, running=1, done=30), raw_worker(2, queued=2, assigned=2, done=44)],
                       queued=3), 1.0)
    t = snap["totals"]
    want = {"workers": 2, "busy": round(t["busy"] * 100), "done": 74, "queued": 5, "running": 1,
            "rate": t["rate"]}
    for view in (views.status_text(snap), views.status_html(snap), render(snap, [])):
        assert figures(view) == want, view
    assert "1 worker " in views.totals_text(m.build(raw([raw_worker(1)]), 2.0)) + " "


def thousand(now=1.0):
    m = SnapshotModel()
    ws = [raw_worker(i, running=int(i % 3 == 0), assigned=int(i % 3 == 0), done=i, cpu=(i * 7) % 100,
                     host=f"node{i // 32}") for i in range(1, 1001)]
    return m.build(raw(ws), now)


def test_views_of_1000_workers_lead_with_totals_and_stay_bounded():
    from scoop_jupyter import views
    from scoop_jupyter.dashboard import render
    snap = thousand()
    s = snap["summary"]
    assert sum(s["cpu_histogram"]) == 1000 and len(s["cpu_histogram"]) == snapshot.CPU_BINS
    assert len(s["busiest"]) == snapshot.INTERESTING and len(s["idle"]) == snapshot.INTERESTING
    assert s["states"] == {"busy": 333, "idle": 667} and len(s["hosts"]) == 32
    text = views.status_text(snap)
    assert text.splitlines()[0].startswith("SCOOP cluster: 1000 workers")
    assert "busiest: " in text and "idle (667): " in text and "... and 976 more workers" in text
    assert len(text.splitlines()) < 100
    html = views.status_html(snap)
    assert 'class="scoop-histogram"' in html and "busiest:" in html
    assert html.count('class="scoop-worker"') == 1000 and "overflow:auto" in html  # a scrollable list
    live = render(snap, [(0.0, 1.0), (1.0, 2.0)])
    assert 'class="scoop-summary"' in live and live.count('class="scoop-worker"') == 100
    assert "100 of 1000 workers listed, busiest first" in live
    # what the kernel spends on one view of 1,000 workers (printed, not asserted: a shared machine)
    t0 = time.process_time()
    for _ in range(10):
        render(thousand(), [(0.0, 1.0), (1.0, 2.0)])
    print(f"model + dashboard of 1,000 workers: {(time.process_time() - t0) / 10 * 1000:.1f} ms CPU")


def _imports(path: str, package: str) -> set[str]:
    """Modules of ``package`` that the module at ``path`` imports, at any depth of its code."""
    tree = ast.parse(open(path).read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                base = node.module.split(".")[0] if node.module else None
                out |= {base} if base else {a.name for a in node.names}
            elif node.module and node.module.startswith(package + "."):
                out.add(node.module.split(".")[1])
            elif node.module == package:
                out |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith(package + ".")}
    return out


def test_scoop_jupyter_has_no_import_circle():
    """A lower floor never imports a higher one, not even inside a function."""
    pkg = os.path.join(ROOT, "scoop_jupyter")
    mods = {f[:-3] for f in os.listdir(pkg) if f.endswith(".py") and f != "__init__.py"}
    graph = {m: _imports(os.path.join(pkg, m + ".py"), "scoop_jupyter") & mods for m in mods}

    def cycle_from(start):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path + [start]
                if nxt not in path:
                    stack.append((nxt, path + [nxt]))
        return None
    circles = [c for c in map(cycle_from, sorted(mods)) if c]
    assert not circles, " ; ".join(" -> ".join(c) for c in circles)
