"""The meta stream's snapshots (scoop.census) driven from a scheduling core: no sockets."""
from __future__ import annotations

import json

from scoop import census
from scoop.census import Book, Census
from scoop.scheduling import Scheduler


def cluster(n: int, held_every: int = 0, first_index: int = 1):
    core = Scheduler()
    core.next_index = first_index
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
    view = book.apply({"workers": [{"id": "2"}], "totals": {"workers": 1}})
    assert [w["id"] for w in view["workers"]] == ["2"]


def report(sub_core, sub_census) -> dict:
    """What a sub-broker sends the root (scoop.federation.SubBroker._periodic)."""
    load = sub_census.snapshot()
    load.update(count=sub_core.n_workers, hosts={str(k): v for k, v in sub_core.host_refs.items()},
                queued=0, running=sub_core.n_assigned, done=sub_core.done_total)
    return json.loads(json.dumps(load))


def test_the_root_adds_up_sub_broker_reports_of_a_bounded_size():
    root = Scheduler()
    root.join(b"origin", {"role": "origin", "host_key": 1})
    subs = []
    for k in range(3):
        sub_core, _ = cluster(2000, held_every=4, first_index=(k + 1) << 12)
        peer = root.join(f"sub{k}".encode(), {"role": "broker", "name": "broker", "host_key": 50 + k})
        subs.append((sub_core, Census(sub_core), peer))
    c, book = Census(root), Book()
    view = None
    for _ in range(3 * -(-2000 // census.PAGE) + 2):  # one rotation of the root over everyone (a page a sub)
        for sub_core, sub_census, peer in subs:
            load = report(sub_core, sub_census)
            assert len(json.dumps(load)) < 40_000
            root.set_load(peer, load)
            c.note_load(peer)
        snap = c.snapshot()
        view = book.apply(snap)
    assert root.size() == 6000 and root.hosts() == 9  # the origin's host and the 8 hosts of the subs
    assert snap["totals"]["workers"] == 6000 and sum(snap["hist"]["held"]["counts"]) == 6000
    assert snap["totals"]["busy"] == 3 * 500 / 6000
    assert len(json.dumps(snap)) < 40_000
    assert len(view["workers"]) == 6000 and view["complete"] and all("via" in w for w in view["workers"])
    root.leave(subs[0][2], "lost (its connection dropped)")
    c.note_gone(subs[0][2])
    assert root.size() == 4000 and c.snapshot()["totals"]["workers"] == 4000


def test_a_malformed_sub_broker_report_is_refused():
    root = Scheduler()
    peer = root.join(b"sub", {"role": "broker"})
    root.set_load(peer, {"count": 3, "hosts": {}, "workers": [], "totals": {}, "top": {"idle": 5},
                         "hist": {}})
    c = Census(root)
    import pytest
    with pytest.raises(ValueError):
        c.note_load(peer)
    c.snapshot()  # still fine
