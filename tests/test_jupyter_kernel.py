"""The Jupyter kernel extension, driven through a real IPython kernel with jupyter_client.

Everything a notebook user does goes through execute requests, so these tests see exactly
what a front end sees: stream, error and display messages with their parent cells.
"""
from __future__ import annotations

import os
import re
import signal
import time

import psutil
import pytest

from conftest import scoop_processes
from kernel_driver import KernelDriver

pytestmark = pytest.mark.timeout(300)


def kernel_cluster_processes(kernel_pid: int) -> list:
    """Brokers and workers started by this kernel, even after it died: each carries its
    launcher's pid in SCOOP_PARENT_PID (other jobs on the machine may run clusters too)."""
    mine = []
    for p in scoop_processes():
        try:
            if p.environ().get("SCOOP_PARENT_PID") == str(kernel_pid):
                mine.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return mine


def wait_gone(kernel_pid: int, timeout: float) -> list:
    """Waits until no process of this kernel's clusters runs (replacements included)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = kernel_cluster_processes(kernel_pid)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def start_kernel_with_cluster(n=2, options=""):
    k = KernelDriver()
    k.run("%load_ext scoop_jupyter")
    res = k.run(f"%scoop_cluster start -n {n} {options}")
    return k, res


@pytest.fixture(scope="module")
def kernel():
    k, res = start_kernel_with_cluster(2)
    k.start_result = res
    k.run("import sys, time\nimport scoop.origin\nimport scoop_jupyter as _sj\nfrom scoop import futures, shared")
    try:
        yield k
    finally:
        pid = k.pid
        k.shutdown()
        left = wait_gone(pid, 5.0)
        assert not left, f"left running after kernel shutdown: {left}"


def busy_until_idle(k, timeout=20.0):
    """Waits (in the kernel) until the broker holds no task, so tests do not see each other's."""
    k.run(f"""
import time as _t, scoop_jupyter as _sj
_d = _t.monotonic() + {timeout}
while _sj.status()['totals'].get('in_flight', 0) and _t.monotonic() < _d:
    _t.sleep(0.1)
""", timeout=timeout + 10)


@pytest.fixture(autouse=True)
def _idle(request):
    if "kernel" in request.fixturenames:
        k = request.getfixturevalue("kernel")
        busy_until_idle(k)
    yield


# ---- starting ------------------------------------------------------------------------------------

def test_start_prints_one_line_summary(kernel):
    text = kernel.start_result.stream("stdout")
    assert len(text.strip().splitlines()) == 1, text
    m = re.search(r"started in ([\d.]+) s: 2 workers \((\S+): 2\)", text)
    assert m, text
    # measured ~0.4 s on an idle 2-core machine; generous here because the machine is shared
    assert float(m.group(1)) < 5.0
    res = kernel.run("%scoop_cluster status")
    st = res.text()
    assert "2 workers" in st, st
    # every worker under its one name, as in its output prefix
    assert len(re.findall(r"^w\d+\s+\S+\s+\d+\s+(idle|busy)\s", st, re.M)) == 2, st
    html = res.data("text/html")[0]
    assert 'class="scoop-status"' in html and html.count('class="scoop-worker"') == 2, html


def test_map_with_lambda_function_and_class_from_cells(kernel):
    kernel.run("""
from scoop import futures, shared
def cube(x):
    return x ** 3
class Scaler:
    def __init__(self, k):
        self.k = k
    def __call__(self, x):
        return self.k * x
""")
    assert kernel.value("list(futures.map(lambda x: x + 1, range(5)))") == [1, 2, 3, 4, 5]
    assert kernel.value("list(futures.map(cube, range(5)))") == [0, 1, 8, 27, 64]
    assert kernel.value("list(futures.map(Scaler(3), range(5)))") == [0, 3, 6, 9, 12]
    assert kernel.value("sorted(type(s).__name__ for s in futures.map(lambda k: Scaler(k), [1, 2]))") \
        == ["Scaler", "Scaler"]


def test_nested_futures(kernel):
    kernel.run("""
def pfib(n):
    if n < 2:
        return n
    a = futures.submit(pfib, n - 1)
    b = futures.submit(pfib, n - 2)
    return a.result() + b.result()
""")
    assert kernel.value("pfib(10)") == 55
    assert kernel.value("futures.submit(pfib, 12).result()") == 144


def test_shared_constants(kernel):
    kernel.run("shared.setConst(offset_kernel_test=100)")
    got = kernel.value("list(futures.map(lambda x: x + shared.getConst('offset_kernel_test', timeout=10), range(3)))")
    assert got == [100, 101, 102]


def test_future_from_one_cell_completes_between_cells(kernel):
    kernel.run("""
import time
delivered = []
def slow_answer(x):
    time.sleep(0.5)
    return x + 1
pending = futures.submit(slow_answer, 41)
pending.add_done_callback(lambda f: delivered.append(f.result()))
""")
    time.sleep(2.0)  # no cell runs meanwhile: only the kernel's event loop can deliver the result
    # reads plain Python state only, so nothing in this cell pumps the origin
    assert kernel.value("delivered") == [42]
    assert kernel.value("(pending.done(), pending.result())") == (True, 42)


def test_worker_output_goes_to_the_submitting_cell(kernel):
    res = kernel.run("""
import sys
def talk(x):
    print(f"hello from task {x}")
    print(f"warning from task {x}", file=sys.stderr)
    return x
list(futures.map(talk, range(4)))
time.sleep(1.0)  # the relay is asynchronous: give it a moment while this cell still runs
""")
    out = res.stream("stdout")
    for x in range(4):
        assert re.search(rf"^\[w\d+\] hello from task {x}$", out, re.M), out
        assert re.search(rf"^\[w\d+\] warning from task {x}$", res.stream("stderr"), re.M)
    # and not in the next cell
    nxt = kernel.run("1 + 1")
    assert "hello from task" not in nxt.stream()


def test_remote_exception_shows_worker_traceback(kernel):
    res = kernel.run("""def divide_badly(x):
    y = x - 3
    return 1 / y
list(futures.map(divide_badly, range(5)))
""", ok=False)
    err = res.error
    assert err and err["ename"] == "ZeroDivisionError", res
    tb = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(err["traceback"]))
    assert "RemoteTraceback" in tb and "divide_badly" in tb
    assert "line 3, in divide_badly" in tb and "return 1 / y" in tb, tb
    assert "The above exception was the direct cause" in tb


def test_progress_bar_for_long_maps(kernel):
    kernel.run("def nap(s):\n    time.sleep(s)\n    return s")
    res = kernel.run("_r = list(futures.map(nap, [0.25] * 16))")
    views = [d for d in res.data("application/vnd.jupyter.widget-view+json") if d]
    assert views, "no progress bar shown for a 2 s map"
    kernel.run("%scoop_cluster progress off")
    res = kernel.run("_r = list(futures.map(nap, [0.25] * 16))")
    assert not [d for d in res.data("application/vnd.jupyter.widget-view+json") if d]
    kernel.run("%scoop_cluster progress on")
    quick = kernel.run("_r = list(futures.map(abs, range(100)))")
    assert not [d for d in quick.data("application/vnd.jupyter.widget-view+json") if d]


# ---- the magic's interface ---------------------------------------------------------------------

def test_help(kernel):
    out = kernel.run("%scoop_cluster --help").stream("stdout")
    assert "usage: %scoop_cluster" in out
    for cmd in ("start", "stop", "status", "restart", "scale", "dashboard", "progress"):
        assert cmd in out
    out = kernel.run("%scoop_cluster start --help").stream("stdout")
    for opt in ("--hosts", "--hostfile", "--python-interpreter", "--pythonpath", "--path", "--prolog",
                "--nice", "--external-hostname", "--tunnel", "--ssh-config", "--no-progress"):
        assert opt in out, opt


@pytest.mark.parametrize("line, says", [
    ("start --bogus", "unrecognized arguments: --bogus"),
    ("scale zero", "expected a whole number"),
    ("frobnicate", "invalid choice"),
    ("start -n 2", "already running"),
])
def test_bad_arguments_give_one_clear_message(kernel, line, says):
    res = kernel.run(f"%scoop_cluster {line}", ok=False)
    text = res.stream() + str(res.error or "")
    assert says in text, text
    assert "Traceback" not in text and "argparse" not in text, text


def test_scale_up_and_down(kernel):
    kernel.run("import scoop_jupyter as _sj")
    kernel.run("%scoop_cluster scale 3")
    assert kernel.value("len(_sj.status()['workers'])") == 3
    assert kernel.value("sorted(futures.map(abs, range(-4, 4)))") == sorted(abs(x) for x in range(-4, 4))
    kernel.run("%scoop_cluster scale 1")
    assert kernel.value("len(_sj.status()['workers'])") == 1
    assert kernel.value("list(futures.map(abs, range(-2, 2)))") == [2, 1, 0, 1]
    kernel.run("%scoop_cluster scale 2")
    assert kernel.value("len(_sj.status()['workers'])") == 2


def test_stop_start_and_restart(kernel):
    kernel.run("import scoop_jupyter as _sj")
    port = kernel.value("_sj.cluster().main_port")
    out = kernel.run("%scoop_cluster stop").stream()
    assert "stopped" in out
    assert "no SCOOP cluster is running" in kernel.run("%scoop_cluster status").text()
    kernel.run("%scoop_cluster start -n 2")
    kernel.run("def cube(x):\n    return x ** 3")
    assert kernel.value("list(futures.map(cube, range(3)))") == [0, 1, 8]
    out = kernel.run("%scoop_cluster restart").stream()
    assert "started" in out
    assert kernel.value("_sj.cluster().main_port") != port
    assert kernel.value("list(futures.map(lambda x: -x, range(3)))") == [0, -1, -2]


def test_python_api(kernel):
    kernel.run("import scoop_jupyter as _sj; _sj.stop()")
    res = kernel.run("c = _sj.start(n=2); print(type(c).__name__, c.size); print(_sj.status())")
    out = res.stream()
    assert "Cluster 2" in out and "SCOOP cluster: 2 workers" in out
    assert kernel.value("list(futures.map(abs, [-1, -2]))") == [1, 2]


# ---- interrupt ---------------------------------------------------------------------------------------

@pytest.fixture
def own_kernel():
    """A kernel of its own, so a failure here cannot leave the shared one in a bad state."""
    k, _ = start_kernel_with_cluster(2)
    k.run("import time\nimport scoop.origin\nimport scoop_jupyter as _sj\nfrom scoop import futures")
    try:
        yield k
    finally:
        pid = k.pid
        k.shutdown()
        assert not wait_gone(pid, 5.0)


def test_interrupt_stops_the_cell_and_drops_its_tasks(own_kernel):
    kernel = own_kernel
    kernel.run("def nap(s):\n    time.sleep(s)\n    return s")
    msg_id = kernel.submit("list(futures.map(nap, [30] * 8))")
    # wait until the tasks run on the workers
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any("execute_input" == m["msg_type"] for m in kernel.messages(parent=msg_id)):
            break
        time.sleep(0.05)
    time.sleep(1.5)
    t0 = time.monotonic()
    kernel.km.interrupt_kernel()
    res = kernel.wait(msg_id, timeout=30)
    stopped_after = time.monotonic() - t0
    assert res.status == "error" and res.error["ename"] == "KeyboardInterrupt", res
    assert stopped_after < 5.0, stopped_after
    # the cluster is usable at once, and nothing of the interrupted cell is left
    t1 = time.monotonic()
    assert kernel.value("list(futures.map(abs, range(-3, 3)))", timeout=30) == [3, 2, 1, 0, 1, 2]
    assert time.monotonic() - t1 < 10
    assert kernel.value("scoop.origin.outstanding()") == 0
    busy_until_idle(kernel, 10)
    assert kernel.value("(scoop.origin.outstanding(), _sj.status()['totals']['in_flight'])") == (0, 0)


def test_reload_ext_keeps_one_set_of_hooks(kernel):
    kernel.run("%reload_ext scoop_jupyter")
    assert "no SCOOP cluster is running" in kernel.run("%scoop_cluster status").text()
    hooks = kernel.value("sum(getattr(f, '__self__', None) is _sj.session() "
                         "for f in get_ipython().events.callbacks['pre_run_cell'])")
    assert hooks == 1
    kernel.run("%scoop_cluster start -n 2")
    assert kernel.value("list(futures.map(lambda x: x * 10, range(3)))") == [0, 10, 20]


def test_extension_from_ipython_config():
    """``c.IPKernelApp.extensions = ["scoop_jupyter"]`` (here on the command line) loads the
    magics and the panel's comm target before any cell runs."""
    k = KernelDriver(extra_arguments=["--IPKernelApp.extensions=['scoop_jupyter']"])
    pid = k.pid
    try:
        t0 = time.monotonic()
        cid = k.comm_open("scoop_cluster")
        deadline = time.monotonic() + 15
        while not k.comm_data(cid, t0) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert k.comm_data(cid, t0)[0][1]["state"] == "stopped"
        k.run("%scoop_cluster start -n 1")
        assert k.value("__import__('scoop').futures.submit(abs, -5).result()") == 5
    finally:
        k.shutdown()
        assert not wait_gone(pid, 5.0)


# ---- kernel lifecycle ------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["shutdown", "restart", "sigkill"])
def test_kernel_end_leaves_no_cluster_process(how):
    k, _ = start_kernel_with_cluster(2)
    pid = k.pid
    try:
        procs = kernel_cluster_processes(pid)
        assert len(procs) == 3, procs  # broker and 2 workers
        t0 = time.monotonic()
        if how == "shutdown":
            k.km.shutdown_kernel(now=False)
        elif how == "restart":
            k.km.restart_kernel(now=False)
        else:
            os.kill(pid, signal.SIGKILL)
        left = wait_gone(pid, 5.0)
        assert not left, f"{how}: still running after {time.monotonic() - t0:.1f} s: {left}"
        # and none comes back (a cluster must not respawn workers while its kernel goes away)
        time.sleep(1.0)
        assert not kernel_cluster_processes(pid)
    finally:
        k.shutdown(now=True)


def test_two_kernels_do_not_see_each_other():
    a, _ = start_kernel_with_cluster(2)
    b = None
    try:
        b, _ = start_kernel_with_cluster(2)
        for k, tag in ((a, 1000), (b, 2000)):
            k.run("import time\nimport scoop_jupyter as _sj\nfrom scoop import futures\n"
                  f"def tagged(x):\n    time.sleep(0.05)\n    return x + {tag}")
        ids = [k.submit("r = list(futures.map(tagged, range(40)))") for k in (a, b)]
        for k, i in zip((a, b), ids):
            res = k.wait(i, 60)
            assert res.status == "ok", res
        assert a.value("r") == [x + 1000 for x in range(40)]
        assert b.value("r") == [x + 2000 for x in range(40)]
        pa = a.value("(_sj.cluster().main_port, _sj.cluster().meta_port)")
        pb = b.value("(_sj.cluster().main_port, _sj.cluster().meta_port)")
        assert not set(pa) & set(pb)
        # each broker knows only its own kernel's workers
        wa = set(a.value("[w['pid'] for w in _sj.status()['workers']]"))
        wb = set(b.value("[w['pid'] for w in _sj.status()['workers']]"))
        mine_a = {p.pid for p in kernel_cluster_processes(a.pid)}
        mine_b = {p.pid for p in kernel_cluster_processes(b.pid)}
        assert len(wa) == 2 and wa <= mine_a and not wa & mine_b
        assert len(wb) == 2 and wb <= mine_b and not wb & mine_a
    finally:
        for k in (a, b):
            if k is not None:
                pid = k.pid
                k.shutdown()
                assert not wait_gone(pid, 5.0)


def test_no_inline_and_brokers_options_reach_the_cluster(kernel):
    kernel.run("%scoop_cluster stop")
    try:
        res = kernel.run("%scoop_cluster start -n 2 -b 2 --no-inline\n"
                         "import os\n"
                         "def _pid(_=None):\n"
                         "    return os.getpid()\n"
                         "futures.submit(_pid).result()\n"
                         "print('REMOTE', futures.submit(_pid).result() != os.getpid())\n"
                         "print('BROKERS', len(_sj.cluster().broker_procs))")
        out = res.stream()
        assert "REMOTE True" in out and "BROKERS 2" in out, out
    finally:
        kernel.run("%scoop_cluster stop\n%scoop_cluster start -n 2")
