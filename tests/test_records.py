"""Static records seen from a real kernel: a stopped dashboard's record comes back to life when a
cluster starts again in the same kernel, and freezes again at the next stop."""
from __future__ import annotations

import time

import pytest
from test_dashboard import panel_comm_id, rows, wait_for_update
from test_jupyter_kernel import serve_kernel

from kernel_driver import KernelDriver

pytestmark = pytest.mark.timeout(300)

WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def kernel():
    yield from serve_kernel(KernelDriver(), "%load_ext scoop_jupyter\nimport time\nfrom scoop import futures")


def updates_of(k, display_id: str, since: float) -> list[dict]:
    """The data of every update of the display ``display_id`` since ``since``."""
    return [m["content"]["data"] for m in k.messages(since, types={"update_display_data"})
            if m["content"].get("transient", {}).get("display_id") == display_id]


def wait_update(k, display_id, since, pred, timeout=15.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for data in updates_of(k, display_id, since):
            if pred(data):
                return data
        time.sleep(0.05)
    raise AssertionError(f"no matching update of {display_id}: {updates_of(k, display_id, since)}")


def test_a_stopped_dashboard_comes_back_with_the_next_start(kernel):
    k = kernel
    k.run("%scoop_cluster start -n 1")
    t0 = time.monotonic()
    shown = k.run("%scoop_cluster dashboard")
    (first,) = [m["content"] for m in shown.msgs if m["msg_type"] == "display_data"]
    display_id = first["transient"]["display_id"]
    old_model = first["data"][WIDGET]["model_id"]
    assert panel_comm_id(k, t0)

    # stop: the display becomes the dashboard's last state, a static record without a widget
    t1 = time.monotonic()
    k.run("%scoop_cluster stop")
    frozen = wait_update(k, display_id, t1, lambda d: WIDGET not in d)
    assert "stopped" in frozen["text/plain"] and 'data-state="stale"' in frozen["text/html"], frozen

    # a new start in the same kernel: the same display turns live, with a new widget that
    # follows the new cluster
    t2 = time.monotonic()
    started = k.run("%scoop_cluster start -n 2")
    live = wait_update(k, display_id, t2, lambda d: WIDGET in d)
    assert live[WIDGET]["model_id"] != old_model
    assert "stopped" not in live["text/plain"].splitlines()[0], live["text/plain"]
    # the update went out under the cell that started the cluster, the one a client follows now
    assert any(m["msg_type"] == "update_display_data" for m in started.msgs), started.msgs
    cid = panel_comm_id(k, t2)
    k.run("def doze(x):\n    time.sleep(0.2)\n    return x")
    t3 = time.monotonic()
    k.run("_ = list(futures.map(doze, range(20)))", timeout=120)
    html = wait_for_update(k, cid, t3, lambda h: len(rows(h)) == 2 and sum(r["done"] for r in rows(h)) == 20)
    assert {r["state"] for r in rows(html)} <= {"idle", "busy"}

    # and the next stop freezes it again, with the new cluster's last state
    t4 = time.monotonic()
    k.run("%scoop_cluster stop")
    again = wait_update(k, display_id, t4, lambda d: WIDGET not in d)
    assert "stopped" in again["text/plain"] and "20 done" in again["text/plain"], again["text/plain"]


def test_a_restart_keeps_the_dashboard_live(kernel):
    """``restart`` is not a stop: the dashboard follows the new cluster without freezing."""
    k = kernel
    k.run("%scoop_cluster start -n 1")
    shown = k.run("%scoop_cluster dashboard")
    (first,) = [m["content"] for m in shown.msgs if m["msg_type"] == "display_data"]
    display_id = first["transient"]["display_id"]
    t0 = time.monotonic()
    k.run("%scoop_cluster restart")
    time.sleep(0.5)
    assert not [d for d in updates_of(k, display_id, t0) if WIDGET not in d]
    k.run("%scoop_cluster stop")


def test_a_live_dashboard_keeps_its_static_part_up_to_date(kernel):
    """A live dashboard's bundle names the kernel process that owns its widget (as the panel's
    comm does), and its static part follows the cluster when it goes quiet, so a notebook saved
    while the dashboard is live keeps its last state."""
    k = kernel
    k.run("%scoop_cluster start -n 2")
    shown = k.run("%scoop_cluster dashboard")
    (first,) = [m["content"] for m in shown.msgs if m["msg_type"] == "display_data"]
    display_id = first["transient"]["display_id"]
    session = first["metadata"]["scoop_record"]["kernel_session"]
    t0 = time.monotonic()
    cid = k.comm_open("scoop_cluster")
    deadline = time.monotonic() + 10
    while not k.comm_data(cid, t0) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert k.comm_data(cid, t0)[0][1]["kernel_session"] == session
    k.comm_close(cid)

    t1 = time.monotonic()
    k.run("_ = list(futures.map(abs, range(30)))")
    data = wait_update(k, display_id, t1, lambda d: WIDGET in d and "30 done" in d["text/plain"])
    assert "SCOOP dashboard as of" in data["text/html"]
    ups = [m for m in k.messages(t1, types={"update_display_data"})
           if m["content"]["transient"]["display_id"] == display_id]
    assert all(m["content"]["metadata"]["scoop_record"]["kernel_session"] == session for m in ups)
    time.sleep(1.0)
    assert len(updates_of(k, display_id, t1)) <= 2  # once per change, not per refresh
    k.run("%scoop_cluster stop")
