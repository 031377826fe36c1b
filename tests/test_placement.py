"""Where workers go (scoop.launch.placement): slots from allocations, limits, spreading on scale.
Pure logic, no processes."""
from __future__ import annotations

import pytest

from scoop.launch.placement import (
    PlacementError,
    add_placement,
    allocation_slots,
    capacities,
    first_placement,
)


def test_slurm_tasks_per_node_are_the_slots():
    env = {"SLURM_JOB_NODELIST": "node[01-02]", "SLURM_TASKS_PER_NODE": "2(x2)"}
    assert allocation_slots(env) == ("slurm", [("node01", 2), ("node02", 2)])


def test_slurm_cpus_per_task_multiplies_the_slots():
    env = {"SLURM_JOB_NODELIST": "node[01-02]", "SLURM_TASKS_PER_NODE": "1(x2)", "SLURM_CPUS_PER_TASK": "2"}
    assert allocation_slots(env) == ("slurm", [("node01", 2), ("node02", 2)])
    env["SLURM_TASKS_PER_NODE"] = "2,1"
    assert allocation_slots(env) == ("slurm", [("node01", 4), ("node02", 2)])


def test_slurm_cpus_per_node_when_no_tasks_were_asked():
    env = {"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_CPUS_PER_NODE": "4(x2)", "SLURM_CPUS_PER_TASK": "2"}
    assert allocation_slots(env) == ("slurm", [("n1", 4), ("n2", 4)])  # already CPUs: not multiplied


def test_pbs_and_none(tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("a\na\nb\n")
    assert allocation_slots({"PBS_NODEFILE": str(nodefile)}) == ("pbs", [("a", 2), ("b", 1)])
    assert allocation_slots({}) is None


def test_more_workers_than_slots_names_both_numbers():
    hosts = [("node01", 2), ("node02", 2)]
    with pytest.raises(PlacementError) as e:
        first_placement(7, hosts, 8, strict=True, where="the SLURM allocation")
    msg = str(e.value)
    assert "7 workers" in msg and "4 slots" in msg and "--oversubscribe" in msg and "SLURM" in msg
    assert first_placement(7, hosts, 8, strict=True, oversubscribe=True) == [("node01", 4), ("node02", 3)]
    assert first_placement(4, hosts, 8, strict=True) == [("node01", 2), ("node02", 2)]
    assert first_placement(None, hosts, 8, strict=True) == [("node01", 2), ("node02", 2)]


def test_hosts_by_hand_are_a_preference_not_a_limit():
    assert first_placement(5, [("a", 1), ("b", 1)], 8) == [("a", 3), ("b", 2)]


def test_scale_fills_free_slots_across_nodes():
    caps = [("node01", 4), ("node02", 4)]
    # the first node is full: everything new goes to the second, not onto the first
    assert add_placement(2, caps, {"node01": 4, "node02": 1}, strict=True) == ["node02", "node02"]
    # free slots on both: the freest first, so they spread
    assert add_placement(4, caps, {"node01": 1, "node02": 1}, strict=True) == ["node01", "node02", "node01",
                                                                                "node02"]


def test_scale_beyond_slots_is_an_error_unless_oversubscribed():
    caps = [("node01", 2), ("node02", 2)]
    with pytest.raises(PlacementError, match=r"6 workers asked for, but the allocation has 4 slots"):
        add_placement(2, caps, {"node01": 2, "node02": 2}, strict=True)
    assert add_placement(3, caps, {"node01": 2, "node02": 2}, strict=True, oversubscribe=True) == \
        ["node01", "node02", "node01"]


def test_scale_without_an_allocation_spreads_by_load():
    caps = [("localhost", 2)]
    assert add_placement(3, caps, {"localhost": 2}) == ["localhost"] * 3
    caps = [("a", 1), ("b", 3)]
    assert add_placement(3, caps, {"a": 1, "b": 1}) == ["b", "b", "a"]  # then the fewest per slot
    assert add_placement(0, caps, {}) == []
    with pytest.raises(ValueError):
        add_placement(-1, caps, {})


def test_capacities_of_hosts_without_counts():
    assert capacities([("localhost", None), ("far-away-host", None), ("x", 3)], 8) == \
        [("localhost", 8), ("far-away-host", 1), ("x", 3)]


# ---- srun's reports of tasks that ended (how a dead worker inside a job step is noticed) ------------

def test_srun_reports_of_ended_tasks():
    from scoop.launch.srun import ended_tasks
    assert ended_tasks("srun: error: node1: task 1: Exited with exit code 3\n") == ([1], 3)
    assert ended_tasks("srun: error: node2: tasks 0-1,3: Killed") == ([0, 1, 3], -1)
    assert ended_tasks("srun: Job step aborted") is None
    assert ended_tasks("0: srun: error: n: task 1: Killed") is None  # a worker's own output
