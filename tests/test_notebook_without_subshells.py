"""The lab panel's commands on a kernel without subshells, through jupyter_client.

ipykernel 7 handles the panel's comm on a kernel subshell, so scale, stop and adapt act while a
cell runs.  A kernel without subshells (ipykernel 6, or any kernel that does not list "kernel
subshells" among its features) has one shell channel, served by the main thread: the commands
wait behind the running cell.  They must still work then, as they did before subshells: no
error, no hang, the cell left alone (a stop does not interrupt it), the command taken when the
cell ends.  The kernel here is ipykernel 7 started with the single shell channel of ipykernel 6
(no shell-channel thread), so it says it has no subshells, as an ipykernel 6 kernel does;
with ``SCOOP_TEST_IPYKERNEL6_PYTHON`` naming a Python that has ipykernel 6 (and this
project's dependencies), the same tests also run on a real ipykernel 6 kernel.
"""
from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time

import pytest
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager
from test_dashboard import check_status_shape
from test_jupyter_kernel import wait_gone

from kernel_driver import PROGRAMS, KernelDriver, kernel_env

pytestmark = pytest.mark.timeout(300)

# ipykernel 7 with ipykernel 6's shell: one shell stream on the main thread's loop
NO_SUBSHELLS = """
from ipykernel.kernelapp import IPKernelApp


class SingleShellApp(IPKernelApp):
    def init_sockets(self):
        super().init_sockets()
        self.shell_channel_thread = None


SingleShellApp.launch_instance()
"""
SPEC = "python3-single-shell"


IPYKERNEL6 = os.environ.get("SCOOP_TEST_IPYKERNEL6_PYTHON")


def single_shell_kernelspec(tmp, python: str | None = None) -> KernelSpecManager:
    """The kernel above (or ``python``'s own ipykernel) as kernel spec ``SPEC`` under ``tmp``."""
    spec = tmp / "kernels" / SPEC
    spec.mkdir(parents=True)
    argv = ([python, "-m", "ipykernel_launcher"] if python else [sys.executable, "-c", NO_SUBSHELLS])
    (spec / "kernel.json").write_text(json.dumps({
        "argv": argv + ["-f", "{connection_file}"],
        "display_name": "Python 3 (one shell channel)", "language": "python"}))
    return KernelSpecManager(kernel_dirs=[str(tmp / "kernels")])


class SingleShellKernel(KernelDriver):
    """A KernelDriver of the kernel above."""

    def __init__(self, tmp, python: str | None = None):
        self.km = KernelManager(kernel_name=SPEC, kernel_spec_manager=single_shell_kernelspec(tmp, python))
        self.km.start_kernel(env=kernel_env(), cwd=PROGRAMS)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.log = []
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()


@pytest.fixture(scope="module", params=["single-shell", "ipykernel6"])
def kernel(request, tmp_path_factory):
    python = None
    if request.param == "ipykernel6":
        if not IPYKERNEL6:
            pytest.skip("SCOOP_TEST_IPYKERNEL6_PYTHON names no Python with ipykernel 6")
        python = IPYKERNEL6
    k = SingleShellKernel(tmp_path_factory.mktemp("single-shell"), python)
    try:
        k.run("%load_ext scoop_jupyter\nimport time\nfrom scoop import futures\n"
              "def nap(s):\n    time.sleep(s)\n    return s")
        yield k
    finally:
        pid = k.pid
        k.run("%scoop_cluster stop", ok=False)
        k.shutdown()
        assert not wait_gone(pid, 5.0)


def kernel_info(k) -> dict:
    msg_id = k.kc.kernel_info()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            msg = k.kc.shell_channel.get_msg(timeout=1.0)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg["content"]
    raise AssertionError("no kernel_info_reply")


def statuses(k, cid, since, until=float("inf")) -> list:
    return [(t, d) for t, d in k.comm_data(cid, since) if t <= until and d.get("type") == "status"]


def errors(k, cid, since) -> list:
    return [d for _, d in k.comm_data(cid, since) if d.get("type") == "error"]


def wait_status(k, cid, since, pred, timeout=20.0) -> tuple:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t, d in statuses(k, cid, since):
            if pred(d):
                return t, d
        time.sleep(0.05)
    got = statuses(k, cid, since)
    raise AssertionError(f"no matching status; last: {got[-1][1] if got else None}")


def idle_at(k, msg_id) -> float:
    """When the kernel said it finished the request ``msg_id`` (its "idle" status arrived)."""
    return next(t for t, m in k.timed(types={"status"})
                if m["parent_header"].get("msg_id") == msg_id and m["content"]["execution_state"] == "idle")


def live(d) -> int:
    return sum(w["state"] in ("idle", "busy") for w in d["workers"])


def test_the_kernel_says_it_has_no_subshells(kernel):
    info = kernel_info(kernel)
    assert "kernel subshells" not in info.get("supported_features", []), info
    version = kernel.value("__import__('ipykernel').__version__")
    print(f"kernel: ipykernel {version}, protocol {info['protocol_version']}")


def test_panel_commands_during_a_cell_take_effect_when_it_ends(kernel):
    k = kernel
    k.run("%scoop_cluster start -n 1")
    t0 = time.monotonic()
    cid = k.comm_open("scoop_cluster")
    _, first = wait_status(k, cid, t0, lambda d: d["state"] == "running" and live(d) == 1)
    check_status_shape(first)

    # scale while a 4 s map runs on one worker: the status keeps coming during the cell (the
    # meta stream is not behind the shell), the cell is left alone, the scale comes after it
    cell = k.submit("t0 = time.time()\n_ = list(futures.map(nap, [0.5] * 8))\n"
                    "print(f'took {time.time() - t0:.1f}')")
    time.sleep(1.0)
    k.comm_send(cid, {"action": "scale", "n": 3})
    res = k.wait(cell, timeout=60)
    ended = idle_at(k, cell)
    assert res.status == "ok" and float(res.stream().split()[-1]) >= 3.5, res
    during = statuses(k, cid, t0 + 1.0, ended)
    assert len(during) >= 5, len(during)
    assert all(live(d) == 1 and d["request"] is None for _, d in during), during[-1]
    t, grown = wait_status(k, cid, ended, lambda d: live(d) == 3)
    print(f"single shell: scale sent mid-cell took effect {t - ended:.1f} s after the cell ended")
    assert not errors(k, cid, t0)

    # adapt, then stop, sent while a cell runs: the stop does not interrupt the cell (its
    # commands are not seen until it ends), then both take effect, in order
    t1 = time.monotonic()
    cell = k.submit("_ = list(futures.map(nap, [0.5] * 9))\nprint('map done')")
    time.sleep(0.5)
    k.comm_send(cid, {"action": "adapt", "minimum": 1, "maximum": 4})
    k.comm_send(cid, {"action": "stop"})
    res = k.wait(cell, timeout=60)
    ended = idle_at(k, cell)
    assert res.status == "ok" and "map done" in res.stream() and not res.error, res
    assert all(d["state"] == "running" and d["adapt"] is None for _, d in statuses(k, cid, t1, ended))
    wait_status(k, cid, ended, lambda d: d.get("adapt") == {"minimum": 1, "maximum": 4})
    _, stopped = wait_status(k, cid, ended, lambda d: d["state"] == "stopped")
    check_status_shape(stopped)
    assert not errors(k, cid, t1), errors(k, cid, t1)
    assert "no SCOOP cluster is running" in k.run("%scoop_cluster status").text()

    # start from the panel while a cell runs: the cluster starts when the cell ends
    t2 = time.monotonic()
    cell = k.submit("time.sleep(1.5)")
    time.sleep(0.3)
    k.comm_send(cid, {"action": "start", "n": 2})
    k.wait(cell, timeout=30)
    ended = idle_at(k, cell)
    assert all(d["state"] == "stopped" for _, d in statuses(k, cid, t2, ended))
    wait_status(k, cid, ended, lambda d: d["state"] == "running" and live(d) == 2, timeout=30)
    assert k.value("list(futures.map(abs, [-1, -2]))") == [1, 2]
    assert not errors(k, cid, t2)
    k.comm_close(cid)
    k.run("%scoop_cluster stop")
