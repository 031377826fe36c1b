"""SCOOP 0.7 programs unchanged: its public helpers, names and behaviours (found with SCOOP
0.7.2.0's own test suite and public code), against a real cluster where one is needed."""
from __future__ import annotations

import functools
import operator
import warnings

import pytest

import scoop
from scoop import futures, utils
from scoop.fallbacks import NotStartedProperly

import tasklib as T
from conftest import run_scoop, wait_idle


# ---- names (no processes) -------------------------------------------------------------------
def test_the_names_0_7_programs_import():
    assert futures.NotStartedProperly is NotStartedProperly and issubclass(NotStartedProperly, Exception)
    assert isinstance(scoop.SHUTDOWN_REQUESTED, bool)  # False while a cluster runs: see below
    assert (scoop.TIME_BETWEEN_PARTIALDEBUG, scoop.TIME_BETWEEN_STATUS_REPORTS,
            scoop.TIME_BETWEEN_STATUS_PRUNING) == (30, 25, 60)
    import scoop as s
    assert s.utils is utils and s.fallbacks.NotStartedProperly is NotStartedProperly


# ---- scoop.utils: 0.7.2's parser tests, on its own fixture files (no processes) ---------------
HOSTS = {("host1", 8), ("host2", 4), ("host3", 2), ("host4", 2)}


@pytest.fixture
def batch_files(tmp_path, monkeypatch):
    for var in ("SLURM_NODELIST", "SLURM_JOB_NODELIST", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS",
                "PBS_ENVIRONMENT", "PBS_NODEFILE", "PBS_NP", "PE_HOSTFILE", "NSLOTS"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "hostfilesim.txt").write_text("host1 worker=8\nhost2 4\nhost3  2 3 4\nhost4 X 2\n")
    (tmp_path / "pbshostssim.txt").write_text(" ".join(["host1"] * 8 + ["host2"] * 4 + ["host3"] * 2
                                                       + ["host4"] * 2) + "\n")
    (tmp_path / "sgehostssim.txt").write_text("".join(f"{h} {n} {h} UNDEFINED\n" for h, n in sorted(HOSTS)))
    return tmp_path


def test_utils_environments_and_cpu_count(batch_files, monkeypatch):
    assert isinstance(utils.getCPUcount(), int) and utils.getCPUcount() > 0
    assert utils.getEnv() == "other"
    assert utils.getHosts() == [("127.0.0.1", utils.getCPUcount())]
    monkeypatch.setenv("PE_HOSTFILE", str(batch_files / "sgehostssim.txt"))
    monkeypatch.setenv("NSLOTS", "16")
    assert utils.getEnv() == "SGE" and set(utils.getHosts()) == HOSTS
    assert utils.getWorkerQte(utils.getHosts()) == 16
    monkeypatch.setenv("PBS_ENVIRONMENT", "PBS_BATCH")
    monkeypatch.setenv("PBS_NODEFILE", str(batch_files / "pbshostssim.txt"))
    monkeypatch.setenv("PBS_NP", "16")
    assert utils.getEnv() == "PBS" and set(utils.getHosts()) == HOSTS
    assert utils.getWorkerQte(utils.getHosts()) == 16


def test_utils_hostfile_and_host_lists(batch_files):
    hosts = utils.getHosts(str(batch_files / "hostfilesim.txt"))
    assert set(hosts) == HOSTS and utils.getWorkerQte(hosts) == 16
    assert utils.getHosts(hostlist=["a", "b", "a"]) == [("a", 2), ("b", 1)]
    assert utils.getHostsFromList(["n[1-2]", "m"]) == [("n1", 1), ("n2", 1), ("m", 1)]
    assert utils.groupTogether([1, 2, 1, 3, 2]) == [1, 1, 2, 2, 3]
    (batch_files / "plain.txt").write_text("# a comment\nalpha 3\nbeta\nnode[1-2] 2\n")
    assert utils.getHostsFromFile(str(batch_files / "plain.txt")) == [("alpha", 3), ("beta", 0),
                                                                      ("node1", 2), ("node2", 2)]


def test_utils_slurm_node_lists(batch_files, monkeypatch):
    assert set(utils.parseSLURM("n[1-4]")) == {(f"n{i}", 1) for i in range(1, 5)}
    assert set(utils.parseSLURM("n[05-10]")) == {(f"n{i:02d}", 1) for i in range(5, 11)}
    assert set(utils.parseSLURM("n[1,4]")) == {("n1", 1), ("n4", 1)}
    assert set(utils.parseSLURM("n[1,5-9]")) == {(f"n{i}", 1) for i in (1, 5, 6, 7, 8, 9)}
    monkeypatch.setenv("SLURM_NODELIST", "node[01-04]")
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "2(x3),1")
    monkeypatch.setenv("SLURM_NTASKS", "7")
    assert utils.getEnv() == "SLURM"
    assert utils.getHosts() == [("node01", 2), ("node02", 2), ("node03", 2), ("node04", 1)]
    assert utils.getWorkerQte(utils.getHosts()) == 7
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "2,2")
    with pytest.raises(ValueError, match="4 nodes"):
        utils.getHosts()


# ---- behaviours on a real cluster -------------------------------------------------------------
@pytest.fixture(autouse=True)
def _idle(request):
    if "cluster" in request.fixturenames:
        wait_idle(request.getfixturevalue("cluster"))
    yield


def test_wait_negative_or_no_timeout_means_no_limit_and_returns_a_named_tuple(cluster):
    for timeout in (-1, None):
        fs = [futures.submit(T.sleep_return, 0.01, i) for i in range(20)]
        res = futures.wait(fs, timeout=timeout)
        assert isinstance(res, futures.DoneAndNotDoneFutures) and isinstance(res, tuple)
        assert len(res.done) == 20 and not res.not_done, timeout
        done, not_done = res
        assert done is res.done
    res = futures.wait([futures.submit(T.sleep_return, 0.01, 1)], timeout=-1)
    assert len(res.done) == 1 and res.not_done == set()


def test_futures_take_user_attributes_and_keep_0_7s_callback_list(cluster):
    f = futures.submit(T.square, 10)
    f.tag = "x"

    def mark(future):
        future.was_callbacked = True

    f.add_done_callback(mark)
    assert len(f.callback) == 1 and f.callback[0].func is mark and f.callback[0].callbackType == "standard"
    futures.wait((f,))
    assert f.result() == 100 and f.tag == "x" and f.was_callbacked is True


def test_cancel_right_after_submit_always_succeeds(cluster):
    for i in range(30):
        fn = eval("lambda n: n")  # a function never shipped before, as a program's first submit  # noqa: S307
        f = futures.submit(fn, i)
        assert f.cancel() and f.cancelled(), i
        g = futures.submit(T.sleep_return, 0.01, i)
        assert g.cancel() and g.cancelled(), i
        with pytest.raises(futures.CancelledError):
            g.result()


def test_cancel_of_a_programs_first_future(no_leak, tmp_path):
    prog = tmp_path / "cancel_first.py"
    prog.write_text("import time\nfrom scoop import futures\n\ndef func4(n):\n    time.sleep(0.01)\n"
                    "    return n\n\nif __name__ == '__main__':\n    f = futures.submit(func4, 100)\n"
                    "    print(f.cancel(), f.cancelled())\n")
    for _ in range(4):
        r = run_scoop(["-n", "2", str(prog)], cwd=str(tmp_path))
        assert r.returncode == 0 and r.stdout.strip() == "True True", r


def _chunk_inputs(n):
    return [t["inputs"] for t in scoop.origin.timeline()[-n:]]


def test_map_honours_chunksize_and_timeout(cluster):
    assert list(futures.map(T.square, range(10), chunksize=3)) == [x * x for x in range(10)]
    assert sorted(_chunk_inputs(4)) == [1, 3, 3, 3]
    pairs = futures.map_as_completed(T.add, range(7), range(7), chunksize=7)
    assert sorted(pairs) == [2 * i for i in range(7)]
    assert _chunk_inputs(1) == [7]
    with pytest.raises(ValueError, match="chunksize"):
        futures.map(T.square, range(3), chunksize=0)
    with pytest.raises(futures.TimeoutError):
        list(futures.map(T.sleep_return, [5.0], timeout=0.2))
    assert list(futures.map(T.square, range(3), timeout=-1)) == [0, 1, 4]


def test_other_keywords_are_ignored_with_a_warning_as_in_0_7(cluster):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert list(futures.map(T.square, range(4), unknown=1)) == [0, 1, 4, 9]
        assert list(futures.map_as_completed(T.ident, [5], extra="x")) == [5]
        assert futures.mapReduce(T.square, operator.add, range(5), whatever=2) == 30
        assert futures.mapScan(T.ident, operator.add, range(4), more=3) == [0, 1, 3, 6]
    said = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    for name in ("futures.map ignores the keyword argument(s) unknown",
                 "futures.map_as_completed ignores the keyword argument(s) extra",
                 "futures.mapReduce ignores the keyword argument(s) whatever",
                 "futures.mapScan ignores the keyword argument(s) more"):
        assert any(s.startswith(name) for s in said), (name, said)
    assert all(w.filename == __file__ for w in caught), [w.filename for w in caught]
    assert list(futures.map(functools.partial(T.fail_on, bad=99), range(3))) == list(range(3))


# ---- SCOOP 0.7's launcher options ---------------------------------------------------------------
def test_0_7_launcher_options_are_accepted(no_leak, tmp_path):
    import pstats
    prog = tmp_path / "logs.py"
    prog.write_text("import scoop\nfrom scoop import futures\n\ndef f(x):\n    return x + 1\n\n"
                    "if __name__ == '__main__':\n"
                    "    print(sum(futures.map(f, range(10))), scoop.SHUTDOWN_REQUESTED)\n"
                    "    scoop.logger.warning('a line for the log')\n")
    log = tmp_path / "scoop.log"
    r = run_scoop(["-n", "2", "--rsh", "--ssh-executable", "myssh", "--backend", "ZMQ", "--debug",
                   "--broker-hostname", "127.0.0.1", "--log", str(log), "--profile", str(prog)],
                  cwd=str(tmp_path))
    assert r.returncode == 0 and r.stdout.strip() == "55 False", r
    for flag in ("--rsh", "--ssh-executable", "--backend", "--debug"):
        assert f"scoop: note: {flag} has no effect here" in r.stderr, (flag, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 4, r.stderr  # one line each, nothing else
    assert "a line for the log" in log.read_text()
    # per-worker cProfile statistics, as 0.7 wrote them, and the program's
    written = sorted(p.name for p in (tmp_path / "profile").iterdir())
    assert written == ["origin.prof", "w1.prof", "w2.prof"], written
    for name in written:
        assert pstats.Stats(str(tmp_path / "profile" / name)).total_calls > 0
    quiet = run_scoop(["-n", "1", "-q", "--backend", "TCP", str(prog)], cwd=str(tmp_path))
    assert quiet.returncode == 0 and "note" not in quiet.stderr, quiet


def test_a_log_file_that_cannot_be_written_is_a_clear_error(tmp_path):
    prog = tmp_path / "p.py"
    prog.write_text("print(1)\n")
    bad = tmp_path / "no" / "such" / "dir.log"
    r = run_scoop(["-n", "1", "--log", str(bad), str(prog)], cwd=str(tmp_path))
    assert r.returncode == 2 and "--log" in r.stderr and "No such file" in r.stderr, r
