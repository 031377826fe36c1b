"""Future and the waiting primitives, with no transport in sight.

A Future belongs to the runtime of the process that submitted it.  Blocking calls go through
``runtime.wait_until``: a task greenlet on a worker switches away (so the worker runs other
work meanwhile, which is why nested futures never deadlock) while the origin pumps its socket.
"""
from __future__ import annotations

import time
from typing import NamedTuple, Protocol

from .errors import CancelledError, TimeoutError

PENDING, RUNNING, FINISHED, CANCELLED = 0, 1, 2, 3
_STATE_NAMES = ("pending", "running", "finished", "cancelled")

FIRST_COMPLETED = "FIRST_COMPLETED"
FIRST_EXCEPTION = "FIRST_EXCEPTION"
ALL_COMPLETED = "ALL_COMPLETED"
ALWAYS = "ALWAYS"  # SCOOP 0.7's name for "return at once"


_wrap_callback = None  # scoop.origin.set_callback_wrapper: a front end's hook


class Runtime(Protocol):
    """What a Future needs from the runtime of the process that submitted it (a cluster
    connection, or the serial stand-in when no cluster runs)."""

    def poll(self) -> None: ...
    def wait_until(self, pred, timeout, futures, const: bool = False) -> bool: ...
    def cancel(self, fut: "Future") -> bool: ...
    def where(self, fut: "Future") -> int: ...


class DoneAndNotDoneFutures(NamedTuple):
    """What ``wait`` returns, as in concurrent.futures and SCOOP 0.7."""
    done: set
    not_done: set


class CallbackType:
    """SCOOP 0.7's kinds of done-callbacks (here every callback runs where it was added)."""
    standard = "standard"
    universal = "universal"


class callbackEntry(NamedTuple):  # noqa: N801 -- SCOOP 0.7's name
    """An entry of ``Future.callback``, SCOOP 0.7's list of a future's callbacks."""
    func: object
    callbackType: str  # noqa: N815
    groupID: object  # noqa: N815


def _no_limit(timeout):
    """SCOOP 0.7: a negative timeout, like None, means no limit."""
    return None if timeout is None or timeout < 0 else timeout


class ChunkResult(NamedTuple):
    """What a map chunk returns: the values before the first error, that error's index (-1:
    none) and pickled exception, and the seconds the chunk took (the map adapts to them)."""
    values: list
    error_index: int
    error: object
    seconds: float


class Future:
    """PEP 3148 future for a task running somewhere in the cluster.  Users may set attributes
    on it (``f.tag = ...``), as on SCOOP 0.7's futures."""

    __slots__ = ("id", "_state", "_result", "_exception", "_callbacks", "_waiters", "_rt",
                 "_name", "group", "submitted", "started", "finished", "worker", "_segments", "__weakref__",
                 "__dict__")

    def __init__(self, rt, task_id: int, name: str, group: int = 0):
        self.id = task_id
        self._rt = rt
        self._name = name
        self.group = group
        self._state = PENDING
        self._result = None
        self._exception = None
        self._callbacks = None
        self._waiters = None
        self.submitted = time.time()
        self.started = self.finished = self.worker = None  # set from the result: when and where it ran
        self._segments = ()  # shared memory holding its arguments, freed when it completes

    def __repr__(self):
        state = _STATE_NAMES[self._state]
        if self._state == FINISHED:
            state += " raised " + type(self._exception).__name__ if self._exception else " returned"
        return f"<Future {self._name} #{self.id:x} {state}>"

    # ---- queries -----------------------------------------------------------------------
    def done(self) -> bool:
        if self._state < FINISHED:
            self._rt.poll()
        return self._state >= FINISHED

    def cancelled(self) -> bool:
        return self._state == CANCELLED

    def running(self) -> bool:
        """True while a worker holds the task (asks the broker: a round trip)."""
        if self._state == PENDING and self._rt.where(self) == 1:
            self._state = RUNNING
        return self._state == RUNNING

    def cancel(self) -> bool:
        """Cancels the task if it is still queued at the broker (a round trip); never a
        task that a worker has started."""
        if self._state == CANCELLED:
            return True
        if self._state == FINISHED:
            return False
        return self._rt.cancel(self)

    def result(self, timeout=None):
        if self._state < FINISHED:
            self._wait(timeout)
        if self._state == CANCELLED:
            raise CancelledError(f"task {self._name} was cancelled")
        if self._exception is not None:
            raise self._exception
        return self._result

    def exception(self, timeout=None):
        if self._state < FINISHED:
            self._wait(timeout)
        if self._state == CANCELLED:
            raise CancelledError(f"task {self._name} was cancelled")
        return self._exception

    def add_done_callback(self, fn, inCallbackType=CallbackType.standard, inCallbackGroup=None) -> None:  # noqa: N803
        """Runs ``fn(future)`` when the future completes, at once if it already has.  (The
        other arguments are SCOOP 0.7's; they are kept in ``callback``.)"""
        self.callback.append(callbackEntry(fn, inCallbackType, inCallbackGroup))
        if _wrap_callback is not None:
            fn = _wrap_callback(fn)
        if self._state >= FINISHED:
            _call(fn, self)
            return
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(fn)

    def _wait(self, timeout):
        if not self._rt.wait_until(lambda: self._state >= FINISHED, timeout, (self,)):
            raise TimeoutError(f"task {self._name} did not complete within {timeout} s")

    # ---- the API runtimes complete futures through -------------------------------------------
    def set_result(self, value) -> bool:
        return self._finish(FINISHED, value)

    def set_exception(self, exc: BaseException) -> bool:
        return self._finish(FINISHED, exception=exc)

    def set_cancelled(self, exc: BaseException | None = None) -> bool:
        return self._finish(CANCELLED, exception=exc)

    def set_running(self) -> None:
        if self._state == PENDING:
            self._state = RUNNING

    @property
    def name(self) -> str:
        return self._name

    @property
    def callback(self) -> list:
        """SCOOP 0.7's list of this future's callbacks: ``callbackEntry(func, callbackType,
        groupID)`` in the order they were added."""
        entries = self.__dict__.get("_callback_entries")
        if entries is None:
            entries = self.__dict__["_callback_entries"] = []
        return entries

    def add_waiter(self, waiter) -> None:
        """For the greenlet hub: ``waiter.notify()`` once this future completes (not at all if it
        already has)."""
        if self._state < FINISHED:
            if self._waiters is None:
                self._waiters = [waiter]
            else:
                self._waiters.append(waiter)

    @property
    def completed(self) -> bool:
        """Finished or cancelled, as known here (no poll: for tight loops of a runtime)."""
        return self._state >= FINISHED

    def _finish(self, state, result=None, exception=None) -> bool:
        if self._state >= FINISHED:
            return False  # exactly once: a late duplicate is ignored
        self._state = state
        self._result = result
        self._exception = exception
        waiters, self._waiters = self._waiters, None
        if waiters:
            for w in waiters:
                w.notify()
        cbs, self._callbacks = self._callbacks, None
        if cbs:
            for fn in cbs:
                _call(fn, self)
        return True


def _call(fn, fut):
    try:
        fn(fut)
    except Exception:
        from . import logger
        logger.exception("exception in done callback %r of %r", fn, fut)


def _deadline(timeout):
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline):
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def wait(fs, timeout=None, return_when=ALL_COMPLETED) -> DoneAndNotDoneFutures:
    """Waits for futures; returns the named tuple ``(done, not_done)`` of sets, as
    concurrent.futures does.  No ``timeout`` (or, as in SCOOP 0.7, a negative one): no limit."""
    if return_when not in (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, ALWAYS):
        raise ValueError("return_when must be ALL_COMPLETED, FIRST_COMPLETED or FIRST_EXCEPTION, "
                         f"not {return_when!r}")
    timeout = _no_limit(timeout)
    fs = set(fs)
    if not fs:
        return DoneAndNotDoneFutures(set(), set())
    if len(fs) == 1 and return_when != ALWAYS:  # the common `wait([f], timeout)`, kept short
        f = next(iter(fs))
        if f._state < FINISHED:
            f._rt.wait_until(lambda: f._state >= FINISHED, timeout, fs)  # pumps at least once
        return DoneAndNotDoneFutures(fs, set()) if f._state >= FINISHED else DoneAndNotDoneFutures(set(), fs)

    def split():
        done = {f for f in fs if f._state >= FINISHED}
        return DoneAndNotDoneFutures(done, fs - done)

    def satisfied():
        done, not_done = split()
        if not not_done or return_when == ALWAYS:
            return True
        if return_when == FIRST_COMPLETED:
            return bool(done)
        if return_when == FIRST_EXCEPTION:
            return any(f._exception is not None or f._state == CANCELLED for f in done)
        return False

    if not satisfied():
        next(iter(fs))._rt.wait_until(satisfied, timeout, fs)  # pumps at least once, even at timeout=0
    return split()


def as_completed(fs, timeout=None):
    """Yields futures as they complete; raises TimeoutError if some are still pending at the
    deadline (counted from the call, as in concurrent.futures)."""
    deadline = _deadline(_no_limit(timeout))
    pending = list(dict.fromkeys(fs))
    if not pending:
        return
    rt = pending[0]._rt
    rt.poll()
    while pending:
        ready = [f for f in pending if f._state >= FINISHED]
        if not ready:
            rt.wait_until(lambda fs=pending: any(f._state >= FINISHED for f in fs),
                          _remaining(deadline), pending)
            ready = [f for f in pending if f._state >= FINISHED]
            if not ready:
                raise TimeoutError(f"{len(pending)} (of {len(fs) if hasattr(fs, '__len__') else '?'}) "
                                   f"futures unfinished after {timeout} s")
        ready_ids = {id(f) for f in ready}
        pending = [f for f in pending if id(f) not in ready_ids]
        yield from ready
