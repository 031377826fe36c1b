"""The meta stream's snapshots (scoop.census) driven from a scheduling core: no sockets."""
from __future__ import annotations

import json

from scoop import census
from scoop.census import Book, Census
from scoop.scheduling import Scheduler


def cluster(n: int, held_every: int = 0):
    core = Scheduler()
    core.join(b"origin", {"role": "origin", "host": "h0", "host_key": 1})
    peers = [core.join(f"w{i}".encode(), {"role": "worker", "name": f"w{i}", "host": f"h{i % 8}",
                                          "host_key": 2 + i % 8}) for i in range(n)]
    for i, p in enumerate(peers):
        p.load = {"running": 1 if held_every and i % held_every == 0 else 0, "cpu": float(i % 100)}
    return core, peers


def test_small_cluster_lists_every_worker_in_each_snapshot():
    core, peers = cluster(5)
    snap = Census(core).snapshot()
    assert snap["complete"] and [w["name"] for w in snap["workers"]] == [p.name for p in peers]
    assert snap["totals"]["workers"] == 5 and sum(snap["hist"]["cpu"]["counts"]) == 5
    assert Book().apply(snap)["workers"] == snap["workers"]


def test_large_cluster_snapshot_stays_small_and_names_the_interesting_workers():
    core, peers = cluster(10_000, held_every=7)
    c = Census(core)
    snap = c.snapshot()
    assert not snap["complete"] and snap["totals"]["workers"] == 10_000
    assert len(snap["workers"]) <= census.PAGE + 2 * census.TOP + census.CHANGED
    assert len(json.dumps(snap)) < 40_000
    assert sum(snap["hist"]["held"]["counts"]) == 10_000
    assert snap["totals"]["busy"] == sum(1 for i in range(10_000) if i % 7 == 0) / 10_000
    assert len(snap["top"]["busiest"]) == census.TOP and len(snap["top"]["idle"]) == census.TOP
    ids = {w["id"] for w in snap["workers"]}
    assert set(snap["top"]["busiest"]) <= ids and set(snap["top"]["idle"]) <= ids


def test_a_subscriber_sees_every_worker_after_one_rotation_and_leaves_at_once():
    core, peers = cluster(1000)
    c, book = Census(core), Book()
    view = None
    for _ in range(1000 // census.PAGE + 1):
        view = book.apply(c.snapshot())
    assert view["complete"] and len(view["workers"]) == 1000
    gone = peers[500]
    core.leave(gone, "left")
    c.note_left(str(gone.index))
    view = book.apply(c.snapshot())
    assert len(view["workers"]) == 999 and str(gone.index) not in {w["id"] for w in view["workers"]}


def test_a_worker_whose_state_changes_is_named_in_the_next_snapshot():
    core, peers = cluster(1000)
    c = Census(core)
    c.snapshot()
    peers[777].load = {"running": 1}
    snap = c.snapshot()
    assert str(peers[777].index) in snap["top"]["changed"]
    assert any(w["id"] == str(peers[777].index) and w["state"] == "busy" for w in snap["workers"])


def test_old_snapshots_without_pages_replace_the_book():
    book = Book()
    book.apply({"workers": [{"id": "1"}, {"id": "2"}], "totals": {"workers": 2}})
    assert [w["id"] for w in book.apply({"workers": [{"id": "2"}], "totals": {"workers": 1}})["workers"]] == ["2"]
