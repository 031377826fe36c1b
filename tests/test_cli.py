"""`python -m scoop` as a user runs it: real launcher, broker and worker processes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import EXAMPLES, PROGRAMS, ROOT, run_scoop


def test_acceptance_program_under_two_workers(no_leak):
    r = run_scoop(["-n", "2", "acceptance.py"])
    assert r.returncode == 0, r.stderr
    assert "ACCEPTANCE OK" in r.stdout


@pytest.mark.parametrize("name,expect", [
    ("hello.py", "hello from task 3"),
    ("nested_tree.py", "1024 leaves"),
    ("monte_carlo_pi.py", "pi ~ 3.1"),
    ("map_reduce.py", "concatenation: 01234567891011121314"),
    ("shared_constants.py", "[1000, 1001, 1004, 1009, 1016, 1025]"),
    ("lambdas.py", "callable object: [1, 3, 9, 19, 33]"),
    ("demo.py", "done"),
])
def test_examples_run(name, expect, no_leak):
    r = run_scoop(["-n", "2", os.path.join(EXAMPLES, name)], cwd=EXAMPLES)
    assert r.returncode == 0, r.stderr
    assert expect in r.stdout


def test_exit_status_is_the_programs(no_leak):
    r = run_scoop(["-n", "1", "exit_code.py", "3"])
    assert r.returncode == 3 and r.stdout.strip() == "5"


def test_uncaught_exception_exits_1_with_remote_traceback(no_leak):
    r = run_scoop(["-n", "2", "raises.py"])
    assert r.returncode == 1
    err = r.stderr
    assert "RuntimeError: inner failed on 42" in err
    assert "in inner" in err and "in outer" in err and "raises.py" in err
    assert "runpy" not in err  # the launcher's own frames are hidden


def test_help_documents_every_option():
    r = run_scoop(["--help"])
    assert r.returncode == 0
    for opt in ("-n", "--hosts", "--hostfile", "-b", "--path", "--python-interpreter", "--pythonpath",
                "--prolog", "--nice", "--external-hostname", "--tunnel", "-v", "-q", "origin"):
        assert opt in r.stdout, opt


def test_missing_program_is_a_clear_error():
    r = run_scoop(["-n", "1", "no_such_program.py"])
    assert r.returncode == 2 and "no_such_program.py" in r.stderr and "not found" in r.stderr


def test_bad_interpreter_is_reported_quickly(no_leak):
    t0 = time.monotonic()
    r = run_scoop(["-n", "1", "--python-interpreter", "/nonexistent/python3", "exit_code.py", "0"],
                  timeout=60)
    assert r.returncode != 0
    assert "/nonexistent/python3" in r.stderr
    assert time.monotonic() - t0 < 30


def test_worker_output_reaches_the_terminal(no_leak):
    r = run_scoop(["-n", "2", "prints.py"])
    assert r.returncode == 0
    assert all(f"task {i} says hi" in r.stdout for i in range(4))
    r = run_scoop(["-n", "2", "--prefix-output", "prints.py"])
    assert "] task 0 says hi" in r.stdout


def test_without_a_cluster_futures_run_serially_with_one_warning():
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONWARNINGS="default")
    r = subprocess.run([sys.executable, "serial_fallback.py"], cwd=PROGRAMS, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["[0, 1, 4, 9, 16]", "16", "[0, 1, 4]"]
    assert r.stderr.count("SCOOP is not running") == 1


def test_n_counts_workers_not_the_origin(no_leak):
    code = "import scoop; print(scoop.SIZE, scoop.IS_ORIGIN)"
    path = os.path.join(PROGRAMS, "_size.py")
    with open(path, "w") as f:
        f.write(code)
    try:
        r = run_scoop(["-n", "3", "_size.py"])
        assert r.stdout.strip() == "3 True"
    finally:
        os.unlink(path)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_launcher_leaves_nothing_running(sig, no_leak):
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, "-m", "scoop", "-n", "2", "long_running.py"], cwd=PROGRAMS,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "READY"
        mine = [c.pid for c in psutil.Process(p.pid).children(recursive=True)]
        assert len(mine) >= 3  # broker + 2 workers
        p.send_signal(sig)
        code = p.wait(15)
        assert code != 0
        deadline = time.monotonic() + 8
        while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                  for pid in mine) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in mine if psutil.pid_exists(pid)
                    and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    finally:
        p.kill()
        p.wait()


def test_sigkill_of_launcher_leaves_nothing_running(no_leak):
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, "-m", "scoop", "-n", "2", "long_running.py"], cwd=PROGRAMS,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert p.stdout.readline().strip() == "READY"
    mine = [c.pid for c in psutil.Process(p.pid).children(recursive=True)]
    p.kill()
    p.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(psutil.pid_exists(pid) for pid in mine):
        time.sleep(0.1)
    assert not [pid for pid in mine if psutil.pid_exists(pid)]


def test_path_pythonpath_and_nice_reach_the_workers(tmp_path, no_leak):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "scoop_test_mylib.py").write_text("def bump(x):\n    return x + 1\n")
    work = tmp_path / "work"
    work.mkdir()
    prog = tmp_path / "probe.py"
    prog.write_text(
        "import os\n"
        "from scoop import futures\n\n"
        "def probe(_):\n"
        "    import scoop_test_mylib\n"
        "    return os.getcwd(), os.nice(0), scoop_test_mylib.bump(1)\n\n"
        "if __name__ == '__main__':\n"
        "    print(sorted(set(futures.map(probe, range(8)))))\n")
    r = run_scoop(["-n", "2", "--path", str(work), "--pythonpath", str(lib), "--nice", "5", str(prog)])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str([(str(work), 5, 2)])


@pytest.mark.parametrize("args,says", [
    (["-n", "0"], "-n/--workers/--number: expected at least 1, got 0"),
    (["-n", "-3"], "-n/--workers/--number: expected at least 1, got -3"),
    (["-b", "0"], "-b/--brokers: expected at least 1, got 0"),
    (["--heartbeat-timeout", "0"], "--heartbeat-timeout: expected a positive number of seconds"),
    (["--heartbeat-timeout", "-1"], "--heartbeat-timeout: expected a positive number of seconds"),
    (["--launcher", "bogus"], "--launcher: expected one of"),
])
def test_bad_option_values_are_refused_at_once(args, says, no_leak):
    r = run_scoop([*args, "exit_code.py", "0"], timeout=60)
    assert r.returncode == 2 and says in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_empty_hostfile_is_an_error(tmp_path, no_leak):
    hf = tmp_path / "hosts.txt"
    hf.write_text("# nobody here\n\n")
    r = run_scoop(["--hostfile", str(hf), "exit_code.py", "0"], timeout=60)
    assert r.returncode == 1 and "lists no hosts" in r.stderr and str(hf) in r.stderr


def test_missing_working_directory_is_one_clean_line(no_leak):
    r = run_scoop(["-n", "2", "--path", "/nonexistent", "exit_code.py", "0"], timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ["scoop: error: the working directory (--path) '/nonexistent' "
                                             "does not exist"]


def test_batch_launcher_outside_an_allocation_is_a_clear_error(no_leak):
    env = {k: "" for k in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NODELIST")}
    r = run_scoop(["--launcher", "srun", "-n", "1", "exit_code.py", "0"], env=env, timeout=60)
    assert r.returncode == 1 and "not one (no SLURM_JOB_ID)" in r.stderr, r.stderr


def test_sigint_stops_a_launcher_that_inherited_it_ignored(no_leak):
    """A shell without job control starts background jobs with SIGINT ignored (and so do test
    runners started that way); the launcher must still stop on it."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, "-m", "scoop", "-n", "1", "long_running.py"], cwd=PROGRAMS, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert p.stdout.readline().strip() == "READY"
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 130
    finally:
        p.kill()
        p.wait()
