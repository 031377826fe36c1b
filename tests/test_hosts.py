"""Host list parsing and worker distribution (pure Python, no batch system)."""

import socket

import pytest

from scoop.launch.hosts import (
    HostfileError,
    detect_allocation,
    distribute,
    expand_slurm_nodelist,
    is_local_host,
    parse_hostfile,
    parse_hosts_args,
    parse_slurm_tasks_per_node,
    pbs_hosts,
    sge_hosts,
    slurm_hosts,
)


@pytest.mark.parametrize(
    "nodelist, expected",
    [
        ("tux[1-3,5,7-8]", ["tux1", "tux2", "tux3", "tux5", "tux7", "tux8"]),
        ("nid0[0001-0004]", ["nid00001", "nid00002", "nid00003", "nid00004"]),
        ("a1,b[1-2]", ["a1", "b1", "b2"]),
        ("cn-[001-003].cluster", ["cn-001.cluster", "cn-002.cluster", "cn-003.cluster"]),
        ("node[1-2],gpu[01-03]", ["node1", "node2", "gpu01", "gpu02", "gpu03"]),
        ("rack[1-2]-node[01-02]",
         ["rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02"]),
        ("node[01-04,07],gpu[1-2]",
         ["node01", "node02", "node03", "node04", "node07", "gpu1", "gpu2"]),
        ("localhost", ["localhost"]),
        ("login1.example.org", ["login1.example.org"]),
        ("c[8-10]", ["c8", "c9", "c10"]),
        ("c[08-10]", ["c08", "c09", "c10"]),
        ("c[098-101]", ["c098", "c099", "c100", "c101"]),
        ("n[7]", ["n7"]),
        ("r1i0n[0-2],r1i1n[0,5]", ["r1i0n0", "r1i0n1", "r1i0n2", "r1i1n0", "r1i1n5"]),
        ("x[1-2]y[3]z[4-5]", ["x1y3z4", "x1y3z5", "x2y3z4", "x2y3z5"]),
        ("node-a,node-b,node-c", ["node-a", "node-b", "node-c"]),
        ("10.0.0.[1-3]", ["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
        ("  gpu[1-2] ", ["gpu1", "gpu2"]),
        ("sn[1-3,2]", ["sn1", "sn2", "sn3", "sn2"]),
        ("", []),
    ],
)
def test_expand_slurm_nodelist(nodelist, expected):
    assert expand_slurm_nodelist(nodelist) == expected


@pytest.mark.parametrize("bad", ["node[1-2", "node]1[", "node[2-1]", "node[a-b]", "n[1,,2]", "a,,b",
                                 "n[[1]]"])
def test_expand_slurm_nodelist_rejects(bad):
    with pytest.raises(ValueError):
        expand_slurm_nodelist(bad)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2(x3),1", [2, 2, 2, 1]),
        ("16", [16]),
        ("4(x2),8(x1)", [4, 4, 8]),
        ("1,2,3", [1, 2, 3]),
        ("72(x2)", [72, 72]),
    ],
)
def test_parse_slurm_tasks_per_node(text, expected):
    assert parse_slurm_tasks_per_node(text) == expected


@pytest.mark.parametrize("bad", ["", "2(3)", "x", "2(x)", "-1"])
def test_parse_slurm_tasks_per_node_rejects(bad):
    with pytest.raises(ValueError):
        parse_slurm_tasks_per_node(bad)


def test_slurm_hosts_tasks_per_node():
    env = {"SLURM_JOB_NODELIST": "node[01-03],gpu1", "SLURM_TASKS_PER_NODE": "2(x3),1"}
    assert slurm_hosts(env) == [("node01", 2), ("node02", 2), ("node03", 2), ("gpu1", 1)]


def test_slurm_hosts_fallbacks():
    # Old variable name, and CPUs per node when no tasks were requested.
    env = {"SLURM_NODELIST": "c[1-2]", "SLURM_JOB_CPUS_PER_NODE": "36(x2)"}
    assert slurm_hosts(env) == [("c1", 36), ("c2", 36)]
    # A single count applies to every node.
    env = {"SLURM_JOB_NODELIST": "c[1-3]", "SLURM_TASKS_PER_NODE": "4"}
    assert slurm_hosts(env) == [("c1", 4), ("c2", 4), ("c3", 4)]
    # No counts at all: slots unknown.
    assert slurm_hosts({"SLURM_JOB_NODELIST": "c[1-2]"}) == [("c1", None), ("c2", None)]
    assert slurm_hosts({}) == []


def test_slurm_hosts_mismatch():
    env = {"SLURM_JOB_NODELIST": "c[1-3]", "SLURM_TASKS_PER_NODE": "2(x2)"}
    with pytest.raises(ValueError, match="3 nodes"):
        slurm_hosts(env)


def test_pbs_hosts(tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("n1\nn1\nn2\n\nn1\nn3\nn3\n")
    assert pbs_hosts({"PBS_NODEFILE": str(nodefile)}) == [("n1", 3), ("n2", 1), ("n3", 2)]
    assert pbs_hosts({}) == []


def test_pbs_hosts_bad_line(tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("n1\nn2 extra\n")
    with pytest.raises(HostfileError) as err:
        pbs_hosts({"PBS_NODEFILE": str(nodefile)})
    assert f"{nodefile}:2:" in str(err.value)


def test_sge_hosts(tmp_path):
    pe = tmp_path / "pe_hostfile"
    pe.write_text(
        "compute-0-1.local 4 all.q@compute-0-1.local UNDEFINED\n"
        "compute-0-2.local 2 all.q@compute-0-2.local <NULL>\n"
        "\n"
    )
    assert sge_hosts({"PE_HOSTFILE": str(pe)}) == [
        ("compute-0-1.local", 4),
        ("compute-0-2.local", 2),
    ]


def test_sge_hosts_bad_slots(tmp_path):
    pe = tmp_path / "pe_hostfile"
    pe.write_text("a 1 q UNDEFINED\nb many q UNDEFINED\n")
    with pytest.raises(HostfileError) as err:
        sge_hosts({"PE_HOSTFILE": str(pe)})
    assert f"{pe}:2:" in str(err.value) and "many" in str(err.value)


def test_detect_allocation(tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("p1\np1\n")
    pe = tmp_path / "pe"
    pe.write_text("s1 3 q UNDEFINED\n")
    assert detect_allocation({}) is None
    assert detect_allocation({"PBS_NODEFILE": str(nodefile)}) == ("pbs", [("p1", 2)])
    assert detect_allocation({"PE_HOSTFILE": str(pe)}) == ("sge", [("s1", 3)])
    both = {"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_TASKS_PER_NODE": "1(x2)",
            "PBS_NODEFILE": str(nodefile)}
    assert detect_allocation(both) == ("slurm", [("n1", 1), ("n2", 1)])


def test_parse_hostfile(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text(
        "# cluster\n"
        "\n"
        "alpha 4\n"
        "beta            # no count\n"
        "gamma slots=2   # OpenMPI style\n"
        "delta=3\n"
        "  eps.example.org   8  \n"
        "node[1-2] 2\n"
        "user@zeta 1\n"
    )
    assert parse_hostfile(hostfile) == [
        ("alpha", 4),
        ("beta", None),
        ("gamma", 2),
        ("delta", 3),
        ("eps.example.org", 8),
        ("node1", 2),
        ("node2", 2),
        ("user@zeta", 1),
    ]


def test_parse_hostfile_repeats_merge(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a\na\nb 2\nb 3\nc\n")
    assert parse_hostfile(hostfile) == [("a", 2), ("b", 5), ("c", None)]


@pytest.mark.parametrize(
    "content, lineno, what",
    [
        ("ok 1\nbad x\n", 2, "not an integer"),
        ("ok 1\n\n# c\nbad 0\n", 4, "positive"),
        ("bad -2\n", 1, "positive"),
        ("a 1\nb 2\nc 2 3\n", 3, "too many fields"),
        ("a slots=y\n", 1, "not an integer"),
        ("a/b 2\n", 1, "invalid host name"),
        ("n[1-2 2\n", 1, "unbalanced"),
    ],
)
def test_parse_hostfile_errors(tmp_path, content, lineno, what):
    hostfile = tmp_path / "myhosts"
    hostfile.write_text(content)
    with pytest.raises(HostfileError) as err:
        parse_hostfile(hostfile)
    message = str(err.value)
    assert message.startswith(f"{hostfile}:{lineno}: ")
    assert what in message
    assert err.value.lineno == lineno


def test_parse_hostfile_missing(tmp_path):
    with pytest.raises(HostfileError, match="cannot read"):
        parse_hostfile(tmp_path / "nope")


def test_parse_hosts_args():
    assert parse_hosts_args(["h1", "h1", "h2"]) == [("h1", 2), ("h2", 1)]
    assert parse_hosts_args(["b", "a", "b", "b"]) == [("b", 3), ("a", 1)]
    assert parse_hosts_args(["n[1-2]", "n1"]) == [("n1", 2), ("n2", 1)]
    assert parse_hosts_args(["x,y", ""]) == [("x", 1), ("y", 1)]
    assert parse_hosts_args([]) == []


def test_is_local_host():
    assert is_local_host("localhost")
    assert is_local_host("127.0.0.1")
    assert is_local_host(socket.gethostname())
    assert not is_local_host("node-that-is-not-here.invalid")


def test_distribute_no_n():
    hosts = [("a", 4), ("b", None), ("localhost", None)]
    assert distribute(None, hosts, local_cores=8) == [("a", 4), ("b", 1), ("localhost", 8)]


def test_distribute_fill_in_order():
    hosts = [("a", 4), ("b", 4), ("c", 4)]
    assert distribute(3, hosts, 2) == [("a", 1), ("b", 1), ("c", 1)]
    assert distribute(5, hosts, 2) == [("a", 3), ("b", 1), ("c", 1)]
    assert distribute(8, hosts, 2) == [("a", 4), ("b", 3), ("c", 1)]
    assert distribute(12, hosts, 2) == [("a", 4), ("b", 4), ("c", 4)]


def test_distribute_round_robin_beyond_capacity():
    hosts = [("a", 2), ("b", 1)]
    assert distribute(3, hosts, 1) == [("a", 2), ("b", 1)]
    assert distribute(4, hosts, 1) == [("a", 3), ("b", 1)]
    assert distribute(5, hosts, 1) == [("a", 3), ("b", 2)]
    assert distribute(8, hosts, 1) == [("a", 5), ("b", 3)]


def test_distribute_fewer_workers_than_hosts():
    hosts = [("a", 4), ("b", 4), ("c", 4)]
    assert distribute(1, hosts, 2) == [("a", 1)]
    assert distribute(2, hosts, 2) == [("a", 1), ("b", 1)]


def test_distribute_unknown_counts():
    # Local host without count: its cores; remote: one per listing.
    assert distribute(5, [("localhost", None), ("r", None)], 4) == [("localhost", 4), ("r", 1)]
    assert distribute(6, [("localhost", None), ("r", None)], 4) == [("localhost", 5), ("r", 1)]
    assert distribute(3, [("r1", None), ("r2", None)], 16) == [("r1", 2), ("r2", 1)]


def test_distribute_merges_and_validates():
    assert distribute(None, [("a", 1), ("a", 2)], 1) == [("a", 3)]
    with pytest.raises(ValueError):
        distribute(0, [("a", 1)], 1)
    with pytest.raises(ValueError):
        distribute(2, [], 1)
