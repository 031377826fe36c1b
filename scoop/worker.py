"""Worker process entry: ``python -m scoop.worker`` with its configuration as a JSON line on stdin.

The secret arrives on stdin, never on a command line.  stdin then stays open: its end means the
launcher (or the SSH session that carried us) is gone, and the worker leaves at once -- unless
the worker is ``detached`` (a batch job's), which leaves when it loses the broker instead.
"""
from __future__ import annotations

import json
import os
import sys
import threading

from . import _procutil
from ._launchtrace import mark


def _watch_stdin():
    try:
        while sys.stdin.buffer.read(65536):
            pass
    except Exception:
        pass
    rt = sys.modules.get(f"{__package__}._runtime")  # loaded by then, unless we are still starting
    if rt is not None:
        rt._hard_exit(0)
    _procutil.end_children()
    os._exit(0)


def _profile(directory: str, name: str):
    """``python -m scoop --profile``: this worker's cProfile statistics in DIRECTORY/NAME.prof,
    written as it exits (every way out goes through ``_runtime._hard_exit``), as SCOOP 0.7 did."""
    import cProfile

    from . import _runtime
    prof = cProfile.Profile()

    class Dump:
        lock = threading.Lock()
        done = False

        def cleanup(self, pid):
            # once, whichever thread leaves first (the others wait here), and whole or not at all
            with self.lock:
                if self.done:
                    return
                self.done = True
                try:
                    os.makedirs(directory, exist_ok=True)
                    path = os.path.join(directory, f"{name}.prof")
                    prof.dump_stats(f"{path}.{pid}.tmp")
                    os.replace(f"{path}.{pid}.tmp", path)
                except Exception as exc:
                    sys.stderr.write(f"scoop worker {name}: could not write its profile: {exc}\n")

    _runtime._exit_cleanup.insert(0, Dump())
    prof.enable()


def main():
    mark("worker runs")
    _procutil.name_process("scoop-worker")
    _procutil.raise_fd_limit()
    _procutil.ignore_interrupts()
    line = sys.stdin.buffer.readline()
    if not line:
        sys.stderr.write("scoop worker: expected its configuration on stdin\n")
        sys.exit(2)
    cfg = json.loads(line)
    secret = bytes.fromhex(cfg.pop("secret"))
    # before any task runs: every process a task starts ends with this worker (README, "Nothing
    # left running")
    _procutil.contain_children()
    if not cfg.get("detached"):
        _procutil.die_with_parent()
        threading.Thread(target=_watch_stdin, name="scoop-stdin", daemon=True).start()
    if cfg.get("nice"):
        os.nice(int(cfg["nice"]))
    for p in reversed(cfg.get("sys_path", [])):
        if p not in sys.path:
            sys.path.insert(0, p)
    # the user's program runs as __main__ on the origin only; workers get its definitions by value
    from . import _globals, _runtime
    from .executor import Executor, capture_output
    from .liveness import DEFAULT_TIMEOUT
    name = cfg.get("name") or cfg.get("label") or ""
    rt = _runtime.Runtime(cfg["broker"], secret, "worker",
                          info={"host": cfg.get("host") or None, "name": name},
                          broker_timeout=cfg.get("broker_timeout", DEFAULT_TIMEOUT),
                          inline=cfg.get("inline", True), encryption=cfg.get("encryption", True))
    Executor(rt, retire_at=cfg.get("retire_at"))
    try:
        rt.connect(timeout=cfg.get("connect_timeout", 15.0))
    except Exception as exc:
        try:
            sys.stderr.write(f"scoop worker {name}: {exc}\n")
            sys.stderr.flush()
        finally:  # even when nobody reads our output any more
            _procutil.end_children()
            os._exit(3)
    mark("worker joined", name)
    _globals.activate(rt, is_origin=False, broker=cfg.get("broker_info"))
    capture_output(rt)
    if os.environ.get("SCOOP_PROFILE"):
        _profile(os.environ["SCOOP_PROFILE"], name or str(os.getpid()))
    try:
        rt.executor.run()
    except KeyboardInterrupt:
        pass
    _runtime._hard_exit(0)


if __name__ == "__main__":
    main()
