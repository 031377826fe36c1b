"""The reconcile core: what to start, replace and retire given the spec and what was launched.

Pure: no processes or sockets; ``now`` is passed in."""
from __future__ import annotations

from scoop.launch.base import WorkerSpec
from scoop.reconcile import Seen, Spec, broker_ids


def make_spec(hosts):
    spec = Spec(lambda name, host: WorkerSpec(name, host))
    spec.grow(hosts)
    return spec


def running(spec):
    return [Seen(s.name, s.host) for s in spec.workers]


def test_start_launches_every_wanted_worker_under_new_names():
    spec = make_spec(["a", "a", "b"])
    step = spec.reconcile([], now=0.0)
    assert [(s.name, s.host) for s in step.start] == [("w1", "a"), ("w2", "a"), ("w3", "b")]
    assert step.retire == step.ended == step.notices == []


def test_nothing_to_do_when_launched_matches():
    spec = make_spec([None, None])
    step = spec.reconcile(running(spec), now=0.0)
    assert step.start == step.retire == step.ended == [] and not step.notices


def test_a_dead_worker_is_replaced_in_place_on_its_host_with_one_warning():
    spec = make_spec(["a", "b"])
    seen = [Seen("w1", "a", code=-9), Seen("w2", "b")]
    step = spec.reconcile(seen, now=0.0)
    assert spec.names == ["w3", "w2"] and [s.host for s in spec.workers] == ["a", "b"]
    assert [s.name for s in step.start] == ["w3"] and step.ended == ["w1"] and step.dead == ["w1"]
    (n,) = step.notices
    assert n.level == "warning" and n.text == "w1 on a exited with status -9; w3 replaces it"
    assert ":" not in n.text.split(" ")[0]  # the worker's one name, no internal id


def test_a_planned_end_gets_one_calm_line_and_is_no_death():
    spec = make_spec([None] * 2)
    step = spec.reconcile([Seen("w1", None, code=0, planned="end of its walltime"), Seen("w2")], now=0.0)
    (n,) = step.notices
    assert n.level == "info" and n.text == "w1 on localhost retired (end of its walltime); w3 replaces it"
    assert spec.deaths == [] and [s.name for s in step.start] == ["w3"]


def test_a_retired_or_unwanted_worker_that_ends_is_not_replaced():
    spec = make_spec([None])
    step = spec.reconcile([Seen("w1"), Seen("w9", code=0, retired=True), Seen("w8", code=1)], now=0.0)
    assert step.ended == ["w9", "w8"] and step.dead == [] and step.start == [] and not step.notices
    assert spec.names == ["w1"]


def test_extra_workers_are_retired_and_missing_ones_started():
    spec = make_spec([None] * 3)
    removed = spec.shrink(1)
    assert removed == ["w3", "w2"]  # newest first
    step = spec.reconcile(running(make_spec([None] * 3)), now=0.0)
    assert step.retire == ["w2", "w3"] and step.start == []
    spec.grow([None])
    step = spec.reconcile([Seen("w1")], now=0.0)
    assert [s.name for s in step.start] == ["w4"]


def test_shrink_prefers_the_named_workers():
    spec = make_spec([None] * 5)
    assert spec.shrink(3, prefer=["w2", "w9", "w1", "w4"]) == ["w2", "w1"]
    assert spec.names == ["w3", "w4", "w5"]
    assert spec.shrink(1, prefer=["w4"]) == ["w4", "w5"]
    assert spec.shrink(5) == [] and spec.names == ["w3"]


def test_a_batch_worker_that_never_joined_is_not_replaced():
    spec = make_spec(["n1", "n1"])
    step = spec.reconcile([Seen("w1", "n1", code=127, joined=False), Seen("w2", "n1")], now=0.0, queued=True)
    assert step.failed == [("w1", 127)] and step.start == [] and spec.names == ["w2"]
    assert not step.notices  # the caller reports it with the job's own output


def test_a_crash_loop_stops_replacing():
    spec = make_spec([None])
    names = []
    for k in range(20):
        (w,) = spec.workers if spec.workers else (None,)
        if w is None:
            break
        step = spec.reconcile([Seen(w.name, code=1)], now=float(k))
        names.append(w.name)
    assert len(names) == 11  # 2n+8 deaths are replaced, the next is not
    assert step.notices[-1].level == "error" and "too many worker deaths" in step.notices[-1].text
    assert spec.workers == []


def test_deaths_older_than_the_window_are_forgotten():
    spec = make_spec([None])
    for k in range(30):
        (w,) = spec.workers
        spec.reconcile([Seen(w.name, code=1)], now=k * 10.0)  # one death every 10 s
    assert len(spec.workers) == 1 and len(spec.deaths) <= 6


def test_per_host_counts():
    spec = make_spec(["a", None, "a", "b"])
    assert spec.per_host() == [("a", 2), ("localhost", 1), ("b", 1)]


# ---- retiring: which worker the broker must retire ---------------------------------------------
def test_retirees_are_found_by_their_one_name_first():
    workers = [{"id": "4", "name": "w1", "host": "me", "pid": 10},
               {"id": "5", "name": "w2", "host": "n1", "pid": 11}]
    assert broker_ids([("w2", "n1", 99), ("w1", None, None)], workers, set(), "me") == [5, 4]


def test_without_names_a_retiree_is_found_by_host_and_pid():
    workers = [{"id": "4", "host": "me", "pid": 10}, {"id": "5", "host": "n1", "pid": 11}]
    # a worker of this machine has host None in its handle: it is matched under this host's name
    retiring = [("w1", None, 10), ("w2", "n1", 11), ("w3", "n1", 12)]
    assert broker_ids(retiring, workers, set(), "me") == [4, 5, None]


def test_without_names_or_pid_a_retiree_takes_a_worker_of_its_host_no_handle_claims():
    """One task of a job step: its pid is not known here, so any unclaimed worker of its host
    goes, never one another launched worker is known to be."""
    workers = [{"id": "4", "host": "n1", "pid": 10}, {"id": "5", "host": "n1", "pid": 11}]
    known = {("n1", 11)}
    assert broker_ids([("w1", "n1", None)], workers, known, "me") == [4]
    assert broker_ids([("w1", "n1", None), ("w2", "n1", None)], workers, known, "me") == [4, None]
    assert broker_ids([("w1", "n2", None)], workers, known, "me") == [None]


def test_a_retiree_the_broker_does_not_list_yet_has_no_id():
    assert broker_ids([("w1", None, 10)], [], set(), "me") == [None]
