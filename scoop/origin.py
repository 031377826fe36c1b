"""Public hooks for front ends that keep a long-lived origin, such as a notebook kernel.

A script's origin only needs ``scoop.futures``.  A kernel also needs to deliver results while
no cell runs (so done-callbacks fire and futures awaited in a later cell are ready), to group
a cell's tasks so an interrupt drops exactly those, and to show map progress.  These functions
give that without reaching into the runtime.
"""
from __future__ import annotations

import zmq

from . import _globals


def _rt():
    rt = _globals.current()
    if rt is None:
        raise RuntimeError("this process is not the origin of a running SCOOP cluster")
    return rt


def is_attached() -> bool:
    """True while this process is the origin of a running cluster."""
    rt = _globals.current()
    return rt is not None and not rt.closed and not rt.broken


def fileno() -> int:
    """File descriptor of the task socket, for an event loop's ``add_reader``.

    It is edge-triggered (ZeroMQ semantics): after it fires, call :func:`pump` until
    :func:`has_input` is False.
    """
    return _rt().sock.getsockopt(zmq.FD)


def has_input() -> bool:
    rt = _globals.current()
    return rt is not None and rt.sock is not None and bool(rt.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)


def pump(timeout: float = 0.0) -> int:
    """Delivers arrived results to their futures (running done-callbacks); returns the number
    of messages handled.  Call it from the thread that submits."""
    rt = _globals.current()
    if rt is None or rt.sock is None:
        return 0
    return rt.pump(timeout)


_group_seq = 0


def new_group() -> int:
    """Starts a new task group: tasks submitted from now on (and their children, on any
    worker) belong to it, so :func:`interrupt` can drop them together."""
    global _group_seq
    rt = _rt()
    _group_seq += 1
    rt.group = _group_seq
    return rt.group


def interrupt(group: int | None = None) -> None:
    """Cancels the group's queued tasks, interrupts its running ones (they raise
    ``TaskInterrupted``), and cancels its futures here.  Default: the current group."""
    _rt().interrupt(group)


def outstanding() -> int:
    """Futures submitted from this process that have not completed."""
    rt = _globals.current()
    return 0 if rt is None else len(rt.futures)


def maps() -> list[dict]:
    """Progress of the maps iterated in this process: name, done, submitted, total."""
    from .futures import _active_maps
    return [m.progress() for m in list(_active_maps)]


def set_output_handler(fn) -> None:
    """Where the print and logging output of tasks goes: ``fn(name, stream, text, group)`` with
    the worker's name (``"w3"``), ``"stdout"``/``"stderr"``, the text, and the group of the
    task that printed it (see :func:`new_group`), so a notebook shows it under the cell that
    submitted the task, whenever it arrives.  None restores the default (this process's
    terminal, through the cluster's relay)."""
    rt = _rt()
    if fn is None:
        fn = getattr(rt, "default_output_handler", None)
    rt.output_handler = fn


def set_callback_wrapper(wrap) -> None:
    """``wrap(fn) -> fn`` is applied to every done-callback as it is registered, in the thread
    that registers it -- so a notebook can run each callback under the cell that registered it,
    whenever its future completes.  None removes the hook."""
    from . import _future
    _future._wrap_callback = wrap


def timeline(since: float = 0.0) -> list[dict]:
    """Recent finished tasks and map chunks submitted from this process, oldest first:
    ``{"worker", "name", "start", "end", "inputs", "group", "ok"}`` (epoch seconds on the
    worker's clock) -- what a task-stream view draws."""
    rt = _globals.current()
    if rt is None:
        return []
    return [t for t in rt.timeline() if t["end"] >= since]
