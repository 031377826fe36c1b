"""The live dashboard widget and the lab panel's comm, seen from a real kernel's IOPub stream."""
from __future__ import annotations

import re
import time

import pytest
from test_jupyter_kernel import serve_kernel

from kernel_driver import KernelDriver

pytestmark = pytest.mark.timeout(300)

ROW = re.compile(r'<tr class="scoop-worker" data-state="(\w+)">(.*?)</tr>')
CELLS = re.compile(r"<td[^>]*>(.*?)</td>")


@pytest.fixture(scope="module")
def kernel():
    yield from serve_kernel(KernelDriver(), "%load_ext scoop_jupyter\nimport time\n"
                                            "from scoop import futures\nimport scoop_jupyter as _sj")


def rows(html: str) -> list[dict]:
    """Worker rows of a rendered dashboard: state, id and the done count."""
    out = []
    for state, cells in ROW.findall(html):
        c = CELLS.findall(cells)
        out.append({"state": state, "id": c[0], "pid": int(c[2]), "done": int(c[6])})
    return out


def panel_comm_id(k, since: float) -> str:
    """The comm of the dashboard's HTML panel, from the widget models the kernel opened."""
    for m in k.messages(since=since, types={"comm_open"}):
        state = m["content"]["data"].get("state", {})
        if state.get("_model_name") == "HTMLModel" and "scoop-dashboard" in state.get("value", ""):
            return m["content"]["comm_id"]
    raise AssertionError("no dashboard panel widget was opened")


def panel_updates(k, comm_id: str, since: float, until: float = float("inf")) -> list[tuple[float, str]]:
    return [(t, m["content"]["data"]["state"]["value"]) for t, m in k.timed(since, {"comm_msg"})
            if t <= until and m["content"]["comm_id"] == comm_id
            and "value" in m["content"]["data"].get("state", {})]


def wait_for_update(k, comm_id, since, pred, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _, html in panel_updates(k, comm_id, since):
            if pred(html):
                return html
        time.sleep(0.1)
    last = panel_updates(k, comm_id, since)
    raise AssertionError(f"no matching dashboard update; last: {last[-1][1] if last else None}")


def test_dashboard_live_updates(kernel):
    k = kernel
    k.run("%scoop_cluster start -n 2")
    t0 = time.monotonic()
    shown = k.run("%scoop_cluster dashboard")
    assert any(d for d in shown.data("application/vnd.jupyter.widget-view+json")), shown
    cid = panel_comm_id(k, t0)

    # a ~5 s map of sleeping tasks in another cell, while the dashboard is live
    k.run("def doze(x):\n    time.sleep(0.25)\n    return x")
    start = time.monotonic()
    res = k.run("_ = list(futures.map(doze, range(40)))", timeout=120)
    end = time.monotonic()
    ups = panel_updates(k, cid, start, end)
    rate = len(ups) / (end - start)
    assert end - start > 3.0, res
    assert 2.0 <= rate <= 12.0, f"{len(ups)} updates in {end - start:.1f} s"
    # no two updates closer than the throttle allows (with a little scheduling slack)
    gaps = [b[0] - a[0] for a, b in zip(ups, ups[1:])]
    assert not gaps or min(gaps) > 0.05, gaps
    # no gap of a second or more while the cell ran
    assert max([ups[0][0] - start] + gaps) < 1.5, gaps

    seen = [rows(html) for _, html in ups]
    assert any(len(r) == 2 and all(w["state"] == "busy" for w in r) for r in seen), seen
    done = [sum(w["done"] for w in r) for r in seen if r]
    assert done[-1] > done[0] and done == sorted(done), done
    assert any("map <code>doze</code>" in html for _, html in ups)
    assert any("<polyline" in html for _, html in ups)

    # a new worker shows up as a row
    t1 = time.monotonic()
    k.run("%scoop_cluster scale 3")
    wait_for_update(k, cid, t1, lambda h: len([r for r in rows(h) if r["state"] in ("idle", "busy")]) == 3)
    # and stopping the cluster says so
    t2 = time.monotonic()
    k.run("%scoop_cluster stop")
    html = wait_for_update(k, cid, t2, lambda h: "stopped" in h)
    assert rows(html) == []


def check_status_shape(data):
    from scoop.snapshot import TOTAL_KEYS
    assert data["type"] == "status" and data["state"] in ("running", "stopped")
    assert set(data["totals"]) == set(TOTAL_KEYS)
    assert set(data) >= {"workers", "jobs", "totals", "summary", "maps", "started", "time"}
    t = data["totals"]
    assert data["jobs"] == [] and t["pending_workers"] == 0  # a local cluster has no batch jobs
    assert isinstance(t["workers"], int) and isinstance(t["done"], int) and isinstance(t["queued"], int)
    assert isinstance(t["running"], int) and isinstance(t["busy"], float) and 0.0 <= t["busy"] <= 1.0
    assert isinstance(t["rate"], float)
    for w in data["workers"]:
        assert set(w) == {"id", "name", "host", "pid", "state", "queued", "running", "done", "cpu", "mem"}
        assert isinstance(w["id"], str) and isinstance(w["name"], str) and isinstance(w["host"], str)
        assert isinstance(w["pid"], int)
        assert w["state"] in ("idle", "busy", "joining", "lost")
        for key in ("queued", "running", "done", "mem"):
            assert isinstance(w[key], int)
        assert isinstance(w["cpu"], float)


def wait_comm(k, cid, since, pred, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _, d in k.comm_data(cid, since):
            if pred(d):
                return d
        time.sleep(0.05)
    got = k.comm_data(cid, since)
    raise AssertionError(f"no matching comm message; last: {got[-1][1] if got else None}")


def test_panel_comm_protocol(kernel):
    k = kernel
    k.run("_sj.stop()")
    t0 = time.monotonic()
    cid = k.comm_open("scoop_cluster")
    first = wait_comm(k, cid, t0, lambda d: True)
    check_status_shape(first)
    assert first["state"] == "stopped" and first["workers"] == []

    t1 = time.monotonic()
    k.comm_send(cid, {"action": "start", "n": 2})
    running = wait_comm(k, cid, t1, lambda d: d.get("state") == "running" and d["totals"]["workers"] == 2)
    check_status_shape(running)
    assert {w["state"] for w in running["workers"]} <= {"idle", "busy"}, running
    assert running["totals"]["workers"] == 2
    # the kernel is the origin of the cluster the panel started
    assert k.value("list(futures.map(abs, [-1, -2, -3]))") == [1, 2, 3]

    # while the cluster runs, status keeps coming, at most ~10 a second
    t2 = time.monotonic()
    time.sleep(2.0)
    stream = [d for _, d in k.comm_data(cid, t2)]
    assert 4 <= len(stream) <= 25, len(stream)
    for d in stream:
        check_status_shape(d)

    t3 = time.monotonic()
    k.comm_send(cid, {"action": "refresh"})
    wait_comm(k, cid, t3, lambda d: d.get("type") == "status")

    t4 = time.monotonic()
    k.comm_send(cid, {"action": "frobnicate"})
    err = wait_comm(k, cid, t4, lambda d: d.get("type") == "error")
    assert "frobnicate" in err["message"]

    t5 = time.monotonic()
    k.comm_send(cid, {"action": "stop"})
    stopped = wait_comm(k, cid, t5, lambda d: d.get("state") == "stopped")
    check_status_shape(stopped)
    assert "no SCOOP cluster is running" in k.run("%scoop_cluster status").text()
    # scaling from the panel: the status follows, every worker under its one name
    k.comm_send(cid, {"action": "start", "n": 2})
    wait_comm(k, cid, time.monotonic() - 1, lambda d: d.get("state") == "running")
    t6 = time.monotonic()
    k.comm_send(cid, {"action": "scale", "n": 3})
    grown = wait_comm(k, cid, t6, lambda d: d.get("state") == "running" and d["totals"]["workers"] == 3,
                      timeout=60)
    check_status_shape(grown)
    assert [w["name"] for w in grown["workers"]] == ["w1", "w2", "w3"], grown["workers"]
    t7 = time.monotonic()
    k.comm_send(cid, {"action": "scale", "n": 1})
    shrunk = wait_comm(k, cid, t7, lambda d: d["totals"]["workers"] == 1 and len(d["workers"]) == 1,
                       timeout=60)
    assert shrunk["workers"][0]["state"] != "lost", shrunk
    time.sleep(1.0)
    assert not [d for _, d in k.comm_data(cid, t7) if any(w["state"] == "lost" for w in d.get("workers", []))]
    k.comm_send(cid, {"action": "scale", "n": 0})
    err = wait_comm(k, cid, t7, lambda d: d.get("type") == "error")
    assert "positive integer" in err["message"], err
    k.comm_send(cid, {"action": "stop"})
    wait_comm(k, cid, time.monotonic(), lambda d: d.get("state") == "stopped")

    # a closed panel gets nothing more
    k.comm_close(cid)
    k.run("%scoop_cluster start -n 1")
    t8 = time.monotonic()
    time.sleep(1.0)
    assert k.comm_data(cid, t8) == []
    k.run("%scoop_cluster stop")


def test_timeline_rendering():
    """The timeline's SVG from task records (as ``scoop.origin.timeline()`` returns them): a row
    per worker in natural order, a bar per task, a colour per function, failures outlined, a
    time axis; bars too thin to see merge."""
    from scoop_jupyter import task_timeline as timeline

    t = 1_000_000.0
    recs = [{"worker": f"w{1 + i % 3 if i % 3 else 10}", "name": "nap" if i % 2 else "cube",
             "start": t + i * 0.1, "end": t + i * 0.1 + 0.08, "inputs": 1, "group": 1, "ok": i != 5}
            for i in range(30)]
    html = timeline.render(recs)
    labels = re.findall(r'text-anchor="end" fill="currentColor">(w\d+)</text>', html)
    assert labels == ["w2", "w3", "w10"], labels
    assert html.count('class="scoop-task"') == 30
    assert len(set(re.findall(r'class="scoop-task"[^>]*fill="(#[0-9a-f]+)"', html))) == 2
    assert 'stroke="#d62728"' in html and "failed (1)" in html
    assert ">0.0 s<" in html and ">2.5 s<" in html
    many = [{"worker": "w1", "name": "tiny", "start": t + i * 1e-5, "end": t + i * 1e-5 + 5e-6, "inputs": 1,
             "group": 1, "ok": True} for i in range(5000)] + [dict(recs[0], start=t + 10, end=t + 10.5)]
    assert timeline.render(many).count('class="scoop-task"') < 700
    # functions alternating task by task cannot merge by function: the size stays bounded anyway
    mixed = [{"worker": f"w{i % 8}", "name": ("a", "b", "c")[i // 8 % 3], "start": t + i * 0.01,
              "end": t + i * 0.01 + 0.07, "inputs": 1, "group": 1, "ok": True} for i in range(5000)]
    assert timeline.render(mixed, max_bars=600).count('class="scoop-task"') <= 700
    assert "timeline:" in timeline.render([])


def test_progress_labels():
    from scoop_jupyter.progress import label

    assert label("nap", 80, 200, 200, 8.0) == "nap: 80/200 · 10.0/s · ETA 12 s · 8.0 s"
    assert label("nap", 200, 200, 200, 20.0, "done") == "nap: 200 done in 20 s (10.0/s)"
    assert label("nap", 8, 200, 200, 2.5, "interrupted") == \
        "nap: interrupted after 2.5 s: 8 of 200 done, 192 dropped"
    assert label("gen", 5, None, 9, 1.0) == "gen: 5/9+ · 5.0/s · 1.0 s"


def test_pending_jobs_shown_apart_from_running_workers():
    """A batch-job cluster's status (as the feed normalises it): the dashboard, the status card
    and the text status say how many workers wait in the queue and in which jobs, apart from
    the running ones; a job whose workers failed to start is shown with its error."""
    from scoop_jupyter import api, views
    from scoop_jupyter.dashboard import render
    from scoop_jupyter.views import failed_texts, pending_text

    worker = {"id": "0", "name": "w1", "host": "node1", "pid": 12, "state": "idle", "queued": 0,
              "running": 0, "done": 3, "cpu": 0.0, "mem": 2**25}
    jobs = [{"id": "12", "state": "running", "workers": ["w1"], "submitted": 1.0, "reason": "",
             "nodes": "node1"},
            {"id": "13", "state": "pending", "workers": ["w2", "w3"], "submitted": 2.0, "reason": "Resources",
             "nodes": ""},
            {"id": "14", "state": "pending", "workers": ["w4", "w5"], "submitted": 3.0,
             "reason": "JobHeldUser", "nodes": ""},
            {"id": "15", "state": "pending", "workers": ["w1"], "submitted": 4.0, "reason": "Priority",
             "nodes": "", "replaces": "12"},
            {"id": "16", "state": "ended", "workers": ["w6"], "submitted": 5.0, "reason": "", "nodes": "",
             "error": "worker w6 (job 16 on node2) exited with status 127 before joining the cluster:\n"
                      "sh: 1: /nonexistent/python: not found"}]
    status = {"type": "status", "state": "running", "started": True, "workers": [worker], "jobs": jobs,
              "totals": {"workers": 1, "busy": 0.0, "done": 3, "queued": 0, "running": 0, "rate": 0.0,
                         "pending_workers": 4}}
    said = "4 workers pending in the queue (jobs 13, 14: JobHeldUser, Resources)"
    assert pending_text(status) == said
    assert pending_text(dict(status, jobs=jobs[:2])) == "2 workers pending in the queue (job 13: Resources)"
    assert pending_text(dict(status, jobs=jobs[:1])) == ""
    (failed,) = failed_texts(status)
    assert failed.startswith("job 16 (w6) failed: worker w6") and "/nonexistent/python" in failed
    html = render(status, [], [])
    assert "1 worker (+4 pending)" in html and 'class="scoop-pending"' in html and said in html
    assert 'class="scoop-job-failed"' in html
    assert html.count('class="scoop-worker"') == 1  # pending workers are not rows of running workers
    card = views.status_html(status)
    assert said in card and "(+4 pending)" in card
    text = api.format_status(status)
    assert said in text.splitlines()[1] and "job 16 (w6) failed" in text
    plain = dict(status, jobs=[], totals=dict(status["totals"], pending_workers=0))
    assert "pending" not in render(plain, [], []) and "pending" not in api.format_status(plain)


HEADLINE = re.compile(r"(\d+) workers?\b.*?busy (\d+)%, (\d+) done, (\d+) queued, (\d+) running, ([\d.,]+)/s")

CHECK_VIEWS = r'''
import re as _re
from scoop_jupyter import views as _v
from scoop_jupyter.dashboard import render as _render
_seen, _bad = [], []

def _figs(text):
    text = _re.sub(r"<[^>]+>", "", text).replace("&middot;", "·").replace(" ·", ",")
    m = _re.search(HEADLINE, text)
    return m.groups() if m else None

def _check(snap):
    """Every view rendered from the same model at the same moment, and the model's own sums."""
    if snap.get("state") != "running":
        return
    t = snap["totals"]
    figs = {"text": _figs(_v.status_text(snap)), "card": _figs(_v.status_html(snap)),
            "dashboard": _figs(_render(snap, []))}
    live = [w for w in snap["workers"] if w["state"] in ("busy", "idle")]
    sums = (t["workers"] == len(live) and t["running"] == sum(w["running"] for w in live)
            and t["done"] == sum(w["done"] for w in live if w["state"] != "lost") + t["departed_done"])
    _seen.append(t["done"])
    if len(set(figs.values())) != 1 or None in figs.values() or not sums or figs["text"][2] != str(t["done"]):
        _bad.append((figs, t))

_remove = _sj.session().feed.add_listener(_check)
'''


def test_every_view_shows_the_same_numbers_during_and_after_a_map(kernel):
    """The status text, the status card, the dashboard (in the kernel, for every model the feed
    published), the dashboard widget and the panel's comm (what the front end got), and the
    timeline agree: same workers, running, done (inputs), rate; totals are the sums of rows."""
    k = kernel
    k.run("%scoop_cluster stop\n%scoop_cluster start -n 2")
    k.run(f"HEADLINE = {HEADLINE.pattern!r}\n" + CHECK_VIEWS)
    t0 = time.monotonic()
    cid = k.comm_open("scoop_cluster")
    k.run("_dash = _sj.dashboard()\n_dash")
    panel = panel_comm_id(k, t0)
    k.run("def nap(x):\n    time.sleep(0.04)\n    return x\n_r = list(futures.map(nap, range(120)))")
    k.run("""
_d = time.monotonic() + 10
while _sj.status()['totals']['done'] < 120 and time.monotonic() < _d:
    time.sleep(0.1)
time.sleep(0.6)
_remove()
""")
    assert k.value("_bad") == []
    seen = k.value("_seen")
    assert len(seen) >= 5 and seen[-1] == 120 and seen == sorted(seen), seen
    status = k.value("_sj.status()")
    assert status["totals"]["done"] == 120 and status["totals"]["running"] == 0
    assert "120 done" in k.run("%scoop_cluster status").text()
    # the timeline counts tasks (map chunks) and the same inputs
    timeline = k.run("%scoop_cluster timeline").data("text/html")[0]
    assert re.search(r"\(120 inputs\) on [12] workers?", timeline), timeline[:300]
    # what the front end got: every comm status and dashboard update is consistent in itself
    comms = [d for _, d in k.comm_data(cid, t0) if d.get("type") == "status" and d.get("state") == "running"]
    assert comms and comms[-1]["totals"]["done"] == 120, comms[-1:]
    for d in comms:
        t = d["totals"]
        done = sum(w["done"] for w in d["workers"] if w["state"] != "lost")
        assert t["done"] == done + t["departed_done"], d
        assert t["running"] == sum(w["running"] for w in d["workers"]), d
    ups = [html for _, html in panel_updates(k, panel, t0)]
    assert ups and all(HEADLINE.search(re.sub(r"<[^>]+>", "", h).replace("&middot;", "·").replace(" ·", ","))
                       for h in ups if 'data-state="running"' in h)
    last = re.sub(r"<[^>]+>", "", ups[-1]).replace("&middot;", "·").replace(" ·", ",")
    assert HEADLINE.search(last).group(3) == "120", last
    assert sum(r["done"] for r in rows(ups[-1])) == 120
    k.comm_close(cid)
    k.run("_dash.close()")
