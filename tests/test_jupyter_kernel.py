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


def serve_kernel(k, setup: str):
    """For a fixture: yields kernel ``k`` once ``setup`` ran in it, then shuts it down and checks
    that no process of its clusters is left -- also when a test or the setup failed."""
    try:
        k.run(setup)
        yield k
    finally:
        pid = k.pid
        k.shutdown()
        assert not wait_gone(pid, 5.0)


def start_kernel_with_cluster(n=2, options=""):
    k = KernelDriver()
    k.run("%load_ext scoop_jupyter")
    res = k.run(f"%scoop_cluster start -n {n} {options}")
    return k, res


@pytest.fixture(scope="module")
def kernel():
    k, res = start_kernel_with_cluster(2)
    k.start_result = res
    k.run("import sys, time\nimport scoop.origin\nimport scoop_jupyter as _sj\n"
          "from scoop import futures, shared")
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
    got = kernel.value("list(futures.map(lambda x: x + shared.getConst('offset_kernel_test', timeout=10), "
                       "range(3)))")
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
    yield from serve_kernel(k, "import time\nimport scoop.origin\nimport scoop_jupyter as _sj\n"
                               "from scoop import futures")


def bar_labels(k, since=0.0) -> list[str]:
    """Every progress-bar label the kernel sent (widget state updates and openings)."""
    out = []
    for m in k.messages(since=since, types={"comm_msg", "comm_open"}):
        state = (m["content"].get("data") or {}).get("state") or {}
        v = state.get("value")
        if isinstance(v, str) and state.get("_model_name", "LabelModel") == "LabelModel" and ": " in v:
            out.append(v)
    return out


PACKAGE_FRAME = re.compile(r"site-packages|/scoop/|/scoop_jupyter/|zmq|cloudpickle|Could not get source")


def test_interrupt_stops_the_cell_and_drops_its_tasks(own_kernel):
    kernel = own_kernel
    kernel.run("def nap(s):\n    time.sleep(s)\n    return s")
    t0 = time.monotonic()
    msg_id = kernel.submit("list(futures.map(nap, [0.5] * 200))")
    # wait until the map has a progress bar with some results
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(re.match(r"nap: [1-9]\d*/200", v) for v in bar_labels(kernel, t0)):
            break
        time.sleep(0.1)
    t1 = time.monotonic()
    kernel.km.interrupt_kernel()
    res = kernel.wait(msg_id, timeout=30)
    stopped_after = time.monotonic() - t1
    assert res.status == "error" and res.error["ename"] == "KeyboardInterrupt", res
    assert stopped_after < 5.0, stopped_after
    # one short error that says what happened, with the user's frame only
    m = re.fullmatch(r"map nap interrupted: (\d+) of 200 done, (\d+) dropped", res.error["evalue"])
    assert m and int(m.group(1)) + int(m.group(2)) == 200 and 0 < int(m.group(1)) < 200, res.error["evalue"]
    tb = res.tb()
    assert "Cell In[" in tb and not PACKAGE_FRAME.search(tb), tb
    assert len(tb.splitlines()) < 12, tb
    # the bar says interrupted, with the same count, and interrupted tasks are not counted as done
    time.sleep(0.5)
    final = [v for v in bar_labels(kernel, t0) if v.startswith("nap:")][-1]
    assert "interrupted" in final and f"{m.group(1)} of 200 done, {m.group(2)} dropped" in final, final
    # the cluster is usable at once, and nothing of the interrupted cell is left
    t1 = time.monotonic()
    assert kernel.value("list(futures.map(abs, range(-3, 3)))", timeout=30) == [3, 2, 1, 0, 1, 2]
    assert time.monotonic() - t1 < 10
    assert kernel.value("scoop.origin.outstanding()") == 0
    assert kernel.value("scoop.origin.maps()") == []
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
        # broker and 2 workers (each worker's scoop-guard, which ends its tasks' processes, aside)
        assert len([p for p in procs if p.name() != "scoop-guard"]) == 3, procs
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


# ---- issue 15: every view tells the truth --------------------------------------------------------

def test_a_map_that_failed_to_start_leaves_no_trace(kernel):
    kernel.run("import threading\ndef nap(s):\n    time.sleep(s)\n    return s")
    shown = kernel.run("_dash = _sj.dashboard()\n_dash")  # its running maps must not list the failed one
    assert shown.data("application/vnd.jupyter.widget-view+json"), shown
    res = kernel.run("list(futures.map(lambda x: x, [threading.Lock()] * 3))", ok=False)
    assert res.error["ename"] == "SerializationError", res
    t0 = time.monotonic()
    assert kernel.value("scoop.origin.maps()") == []
    # a later long map has its own bar, and no message mentions the failed one
    kernel.run("_r = list(futures.map(nap, [0.25] * 16))")
    later = [m for m in kernel.messages(since=t0) if m["msg_type"] in ("comm_msg", "comm_open", "stream",
                                                                       "display_data")]
    assert later and not [m for m in later if "<lambda>" in str(m["content"])], later
    assert any(v.startswith("nap: 16 done") for v in bar_labels(kernel, t0)), bar_labels(kernel, t0)
    assert any("map <code>nap</code>" in str(m["content"]) for m in later)  # the dashboard saw the map
    kernel.run("_dash.close()")


def test_views_forget_maps_of_a_stopped_cluster(kernel):
    kernel.run("def nap(s):\n    time.sleep(s)\n    return s\n_pending = futures.map(nap, [0.5] * 8)")
    shown = "[m['name'] for m in sys.modules['scoop_jupyter.status'].safe_maps()]"
    assert kernel.value(shown) == ["nap"]
    kernel.run("%scoop_cluster restart")
    assert kernel.value(shown) == []
    kernel.run("del _pending")


def test_unpicklable_argument_is_one_short_error(kernel):
    res = kernel.run("import threading\ndef use_lock(lock):\n    return 1\n"
                     "futures.submit(use_lock, threading.Lock())", ok=False)
    tb = res.tb()
    assert res.error["ename"] == "SerializationError" and "use_lock" in res.error["evalue"], res
    assert "_thread.lock" in res.error["evalue"], res.error["evalue"]
    assert not PACKAGE_FRAME.search(tb) and "direct cause" not in tb, tb
    assert len(tb.splitlines()) < 12, tb


def test_remote_traceback_names_the_cell_and_the_worker(kernel):
    res = kernel.run("def divide_badly(x):\n    y = x - 3\n    return 1 / y\n"
                     "list(futures.map(divide_badly, range(5)))", ok=False)
    tb = res.tb()
    assert res.error["ename"] == "ZeroDivisionError", res
    # the worker under its one name (and, from newer cores, the failing input)
    assert re.search(r"\[w\d+ on \S+, pid \d+, task divide_badly(\(3\))?\]$", tb, re.M), tb
    assert re.search(r"Cell In\[\d+\], line 3, in divide_badly", tb) and "return 1 / y" in tb, tb
    assert "ipykernel_" not in tb and not PACKAGE_FRAME.search(tb), tb


def test_nested_remote_tracebacks_are_tidy_too(kernel):
    res = kernel.run("def inner(x):\n    raise ValueError(f'bad {x}')\n"
                     "def outer(x):\n    return futures.submit(inner, x).result()\n"
                     "futures.submit(outer, 5).result()", ok=False)
    tb = res.tb()
    assert res.error["ename"] == "ValueError" and res.error["evalue"] == "bad 5", res
    assert re.search(r"^RemoteTraceback: \[w\d+ on \S+, pid \d+, task inner", tb, re.M), tb
    assert re.search(r"^RemoteTraceback: \[w\d+ on \S+, pid \d+, task outer", tb, re.M), tb
    assert "[worker" not in tb and "scoop._protocol" not in tb and not PACKAGE_FRAME.search(tb), tb
    # every remote frame names its cell and shows its line, whatever cloudpickle did to co_filename
    assert re.search(r"Cell In\[\d+\], line 2, in inner\n\s+raise ValueError\(f'bad \{x\}'\)", tb), tb
    assert re.search(r"Cell In\[\d+\], line 4, in outer\n\s+return futures.submit", tb), tb
    assert "<dynamic-code>" not in tb and "#k" not in tb, tb


def test_serial_warning_points_at_the_callers_line(tmp_path):
    prog = tmp_path / "serial_user.py"
    prog.write_text("from scoop import futures\nprint(list(futures.map(abs, [-1, -2])))\n")
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-W", "always", str(prog)], capture_output=True, text=True,
                         timeout=60,
                         env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0 and "[1, 2]" in out.stdout, out
    assert f"{prog}:2: RuntimeWarning: SCOOP is not running" in out.stderr, out.stderr


def test_large_function_warns_once(kernel):
    kernel.run("_big = bytes(12 * 2**20)\ndef _closure():\n    g = _big\n    return lambda x: len(g) + x\n"
               "_f = _closure()")
    first = kernel.run("_r = list(futures.map(_f, range(3)))")
    text = first.stream("stderr")
    assert "Warning" in text and "shared.setConst" in text and "12 MiB" in text, text
    again = kernel.run("_r = list(futures.map(_f, range(3)))")
    assert "shared.setConst" not in again.stream(), again
    kernel.run("del _f, _big")


def test_scaling_down_is_not_a_failure(kernel):
    kernel.run("%scoop_cluster scale 3")
    t0 = time.monotonic()
    kernel.run("_r = list(futures.map(abs, range(-300, 300)))\n%scoop_cluster scale 1")
    time.sleep(2.0)  # a "lost" line would come from the broker within a heartbeat period
    said = [m["content"].get("text", "") for m in kernel.messages(since=t0, types={"stream"})]
    assert not [t for t in said if "lost" in t], said
    st = kernel.value("[w['state'] for w in _sj.status()['workers']]")
    assert st in (["idle"], ["busy"]), st
    kernel.run("%scoop_cluster scale 2")


def test_busy_is_zero_once_the_map_is_done(kernel):
    kernel.run("def nap(s):\n    time.sleep(s)\n    return s\n_r = list(futures.map(nap, [0.2] * 10))")
    busy_until_idle(kernel)
    # the next snapshot (~0.2 s away) already shows idle workers
    kernel.run("time.sleep(0.5)")
    assert kernel.value("_sj.status()['totals']['busy']") == 0.0


def test_callback_output_goes_to_the_cell_that_registered_it(kernel):
    a = kernel.run("def nap(s):\n    time.sleep(s)\n    return s\n"
                   "_f = futures.submit(nap, 1.0)\n"
                   "_f.add_done_callback(lambda f: print('callback says', f.result()))")
    b = kernel.run("time.sleep(2.5)\nprint('cell b')")
    _assert_printed_only_under(kernel, "callback says", a, b)


def _assert_printed_only_under(kernel, text, a, b):
    """``text`` was printed while cell ``b`` ran, and shows under cell ``a`` alone."""
    time.sleep(1.0)
    said = [m for m in kernel.messages(types={"stream"}) if text in m["content"]["text"]]
    assert said and all(m["parent_header"]["msg_id"] == a.msg_id for m in said), \
        [(m["parent_header"].get("msg_id"), a.msg_id, b.msg_id) for m in said]


def test_late_task_output_goes_to_the_submitting_cell(kernel):
    a = kernel.run("def late(x):\n    time.sleep(1.0)\n    print('late hello', x)\n    return x\n"
                   "_late = futures.submit(late, 7)")
    b = kernel.run("time.sleep(3.0)\nprint('cell b')")
    _assert_printed_only_under(kernel, "late hello 7", a, b)


def test_cluster_and_status_have_html(kernel):
    res = kernel.run("_sj.cluster()")
    html = res.data("text/html")
    assert html and "SCOOP Cluster" in html[0] and "running" in html[0], res
    assert "documentation" in html[0]
    res = kernel.run("%scoop_cluster status")
    html = res.data("text/html")
    assert html and 'class="scoop-status"' in html[0] and re.search(r">w\d+<", html[0]), res
    assert "MiB" in html[0] or ">-<" in html[0]


def test_future_shows_when_and_where_it_ran(kernel):
    # (a short pause: a task waited on at once may run in place, here, rather than on a worker)
    res = kernel.run("def nap(s):\n    time.sleep(s)\n    return s\n"
                     "_fut = futures.submit(nap, 0.3)\ntime.sleep(0.1)\n_fut.result()\n_fut")
    html = res.data("text/html")
    assert html and re.search(r"<code>nap</code> .*finished.* on w\d+ .*ran \d+ ms", html[0]), html


def test_timeline_renders(kernel):
    kernel.run("def nap(s):\n    time.sleep(s)\n    return s\n_r = list(futures.map(nap, [0.1] * 20))")
    res = kernel.run("%scoop_cluster timeline")
    html = res.data("text/html")
    assert html and "<svg" in html[0] and html[0].count('class="scoop-task"') >= 2, res
    assert re.search(r">w\d+</text>", html[0]) and "nap" in html[0]


def test_worker_logs(kernel):
    kernel.run("def chatty(x):\n    print('chatty line', x)\n    return x\n"
               "_r = list(futures.map(chatty, range(4)))\n"
               "time.sleep(1.0)")
    out = kernel.run("%scoop_cluster logs").stream()
    assert re.search(r"^--- w\d+ ", out, re.M), out
    for x in range(4):
        assert f"chatty line {x}" in out, out
    bad = kernel.run("%scoop_cluster logs w99", ok=False)
    assert "no output from a worker named 'w99'" in bad.text() + str(bad.error), bad


# ---- help, notices and the glitches of a first session -------------------------------------------

def test_full_help_at_every_place(kernel):
    """``%scoop_cluster?``, ``--help`` and ``help`` show one full text: every command with its
    arguments (``logs -n``), every start option, examples; no raw markup."""
    res = kernel.run("%scoop_cluster?")
    pages = [p.get("data", {}).get("text/plain", "") for p in res.reply["content"].get("payload", [])]
    shown = "\n".join(pages) + res.text()
    helps = [shown, kernel.run("%scoop_cluster --help").stream("stdout"),
             kernel.run("%scoop_cluster help").stream("stdout")]
    for text in helps:
        for needed in ("start options:", "--hostfile", "--walltime", "--heartbeat-timeout", "--no-progress",
                       "logs [-n N] [NAME]", "scale N", "examples:", "%scoop_cluster logs w3 -n 20"):
            assert needed in text, (needed, text)
        assert "``" not in text and "`" not in text.split("Docstring:")[-1], text


def test_a_misspelt_command_gets_did_you_mean(kernel):
    res = kernel.run("%scoop_cluster strat -n 2", ok=False)
    text = res.stream() + str(res.error or "")
    assert "did you mean 'start'?" in text, text


def test_a_lost_worker_is_one_notice_with_its_one_name(kernel):
    """kill -9 of a worker: one line, in one stream, naming the worker as everywhere else (no
    internal id, no second report from the broker), with its exit status and replacement."""
    pid, name = kernel.value("[(w['pid'], w['name']) for w in _sj.status()['workers']][0]")
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    kernel.run("time.sleep(4)")
    said = [(m["content"]["name"], m["content"]["text"]) for m in kernel.messages(since=t0, types={"stream"})]
    lost = [(s, t) for s, t in said if name in t or "lost" in t or "exited" in t]
    assert len(lost) == 1, said
    stream, text = lost[0]
    assert stream == "stderr" and text.startswith(f"SCOOP: worker {name} on ") and "was lost" in text, text
    assert "exited with status -9" in text, text
    assert re.search(r"w\d+ replaces it|starting w\d+ to replace it", text), text
    assert not re.search(r"\b\d+:[0-9a-f]{8,}\b", text) and "WARNING" not in text, text
    deadline = time.monotonic() + 20
    while kernel.value("_sj.status()['totals']['workers']") != 2 and time.monotonic() < deadline:
        time.sleep(0.2)


def test_first_session_glitches():
    """"no cluster yet" before any start; "1 worker"; restart says "restarted"; a status card
    and a cluster card shown while running say "stopped" once the cluster stops."""
    k = KernelDriver()
    try:
        k.run("%load_ext scoop_jupyter")
        for line in ("status", "stop"):
            assert "no SCOOP cluster yet" in k.run(f"%scoop_cluster {line}").text()
        out = k.run("%scoop_cluster start -n 1").stream()
        assert re.search(r"started in [\d.]+ s: 1 worker \(", out), out
        card = k.run("%scoop_cluster status")
        assert "1 worker," in card.text() and "1 workers" not in card.text() + str(card.data("text/html"))
        shown = k.run("import scoop_jupyter as _sj\n_sj.cluster()")
        assert "running" in shown.data("text/html")[0]
        ids = [m["content"]["transient"]["display_id"] for m in card.msgs + shown.msgs
               if m["msg_type"] == "display_data" and m["content"].get("transient", {}).get("display_id")]
        assert len(ids) == 2, card.msgs
        t0 = time.monotonic()  # the cards describe a cluster that a restart stops
        out = k.run("%scoop_cluster restart").stream()
        assert out.startswith("SCOOP cluster restarted in "), out
        k.run("%scoop_cluster stop")
        updates = {m["content"]["transient"]["display_id"]: m["content"]["data"]
                   for m in k.messages(since=t0, types={"update_display_data"})}
        for i in ids:
            assert "stopped at" in updates[i]["text/html"], updates
            assert "stopped at" in updates[i]["text/plain"], updates
        assert "no SCOOP cluster is running" in k.run("%scoop_cluster status").text()
    finally:
        pid = k.pid
        k.shutdown()
        assert not wait_gone(pid, 5.0)
