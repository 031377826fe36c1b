"""Drives a real IPython kernel through jupyter_client, the way a notebook front end does.

A background thread drains IOPub into a timestamped log, so tests can look both at one
cell's messages (by parent msg_id) and at what the kernel sent while another cell ran
(widget and comm traffic).
"""
from __future__ import annotations

import os
import queue
import threading
import time
import uuid

from jupyter_client import KernelManager

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAMS = os.path.join(ROOT, "tests", "programs")


def kernel_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, PROGRAMS, env.get("PYTHONPATH")]))
    env.pop("PYDEVD_LOAD_VALUES_ASYNC", None)
    env.update(extra)
    return env


class CellResult:
    def __init__(self, msg_id, reply, msgs, seconds):
        self.msg_id = msg_id
        self.reply = reply
        self.msgs = msgs
        self.seconds = seconds

    @property
    def status(self):
        return self.reply["content"]["status"]

    def stream(self, name=None) -> str:
        return "".join(m["content"]["text"] for m in self.msgs
                       if m["msg_type"] == "stream" and (name is None or m["content"]["name"] == name))

    def text(self) -> str:
        """Everything the cell showed as text: its streams and the text of its displays."""
        return self.stream() + "".join(t for t in self.data("text/plain") if t)

    def tb(self) -> str:
        """The cell's traceback as plain text (no colour codes)."""
        import re
        err = self.error
        return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(err["traceback"])) if err else ""

    @property
    def error(self):
        for m in self.msgs:
            if m["msg_type"] == "error":
                return m["content"]
        return None

    def data(self, mime="text/plain") -> list:
        return [m["content"]["data"].get(mime) for m in self.msgs
                if m["msg_type"] in ("execute_result", "display_data")]

    def value(self):
        """The cell's execute_result as text."""
        for m in self.msgs:
            if m["msg_type"] == "execute_result":
                return m["content"]["data"].get("text/plain")
        return None

    def __repr__(self):
        return f"<cell {self.status} {self.seconds:.2f}s stream={self.stream()!r} error={self.error}>"


class KernelDriver:
    def __init__(self, cwd=None, env=None, extra_arguments=None):
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env or kernel_env(), cwd=cwd or PROGRAMS,
                             extra_arguments=list(extra_arguments or []))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.log: list = []  # (monotonic time, msg)
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        return self.km.provisioner.pid

    def _drain(self):
        while not self._halt.is_set():
            try:
                msg = self.kc.iopub_channel.get_msg(timeout=0.1)
            except queue.Empty:
                continue
            except Exception:
                if self._halt.is_set():
                    return
                continue
            with self._lock:
                self.log.append((time.monotonic(), msg))

    def messages(self, since=0.0, parent=None, types=None) -> list:
        with self._lock:
            items = list(self.log)
        return [m for t, m in items if t >= since
                and (parent is None or m["parent_header"].get("msg_id") == parent)
                and (types is None or m["msg_type"] in types)]

    def timed(self, since=0.0, types=None) -> list:
        with self._lock:
            items = list(self.log)
        return [(t, m) for t, m in items if t >= since and (types is None or m["msg_type"] in types)]

    def submit(self, code: str) -> str:
        return self.kc.execute(code, store_history=True, allow_stdin=False)

    def wait(self, msg_id: str, timeout: float = 60.0, t0=None) -> CellResult:
        t0 = t0 or time.monotonic()
        deadline = time.monotonic() + timeout
        reply = None
        while reply is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no execute_reply for {msg_id} within {timeout} s")
            try:
                msg = self.kc.shell_channel.get_msg(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "execute_reply":
                reply = msg
        # the cell's outputs are complete once its "idle" status has arrived on IOPub
        while True:
            idle = [m for m in self.messages(parent=msg_id, types={"status"})
                    if m["content"]["execution_state"] == "idle"]
            if idle or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        return CellResult(msg_id, reply, self.messages(parent=msg_id), time.monotonic() - t0)

    def run(self, code: str, timeout: float = 60.0, ok: bool = True) -> CellResult:
        t0 = time.monotonic()
        res = self.wait(self.submit(code), timeout, t0)
        if ok and res.status != "ok":
            raise AssertionError(f"cell failed: {code!r}\n{res.error or res.stream()}")
        return res

    def value(self, expr: str, timeout: float = 60.0):
        """Evaluates ``expr`` in the kernel and returns it (via repr/literal_eval)."""
        import ast
        res = self.run(f"print(repr({expr}))", timeout)
        return ast.literal_eval(res.stream("stdout").strip())

    # ---- comms ----------------------------------------------------------------------------------
    def comm_open(self, target: str, data=None) -> str:
        comm_id = uuid.uuid4().hex
        content = {"comm_id": comm_id, "target_name": target, "data": data or {}}
        msg = self.kc.session.msg("comm_open", content)
        self.kc.shell_channel.send(msg)
        return comm_id

    def comm_send(self, comm_id: str, data: dict):
        msg = self.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        self.kc.shell_channel.send(msg)

    def comm_close(self, comm_id: str):
        msg = self.kc.session.msg("comm_close", {"comm_id": comm_id, "data": {}})
        self.kc.shell_channel.send(msg)

    def comm_data(self, comm_id: str, since=0.0) -> list:
        return [(t, m["content"]["data"]) for t, m in self.timed(since, {"comm_msg"})
                if m["content"]["comm_id"] == comm_id]

    # ---- lifecycle ----------------------------------------------------------------------------------
    def shutdown(self, now: bool = False):
        self._halt.set()
        try:
            self.kc.stop_channels()
        except Exception:
            pass
        try:
            if self.km.is_alive():
                self.km.shutdown_kernel(now=now)
        except Exception:
            pass
        self._thread.join(2)
        try:
            self.km.cleanup_resources()
        except Exception:
            pass
