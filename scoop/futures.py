"""SCOOP futures: PEP 3148 style parallel calls that may be made from any task, at any depth.

Run under ``python -m scoop`` (or in a notebook after ``%scoop_cluster start``) these calls go
to the cluster; in a plain ``python prog.py`` they run serially, after one warning.
"""
from __future__ import annotations

import functools
import itertools
import time
import warnings
import weakref
from collections import deque

from . import _globals
from ._future import (  # noqa: F401
    ALL_COMPLETED,
    ALWAYS,
    CANCELLED,
    FINISHED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    CallbackType,
    ChunkResult,
    DoneAndNotDoneFutures,
    Future,
    _no_limit,
    as_completed,
    wait,
)
from .errors import (  # noqa: F401
    CancelledError,
    ClusterError,
    RemoteError,
    TaskInterrupted,
    TimeoutError,
    WorkerLostError,
    user_stacklevel,
)
from .fallbacks import NotStartedProperly  # noqa: F401 -- SCOOP 0.7 programs import it from here

__all__ = ["submit", "map", "map_as_completed", "as_completed", "wait", "mapReduce", "mapScan",
           "shutdown", "Future", "TimeoutError", "CancelledError", "WorkerLostError", "NotStartedProperly",
           "DoneAndNotDoneFutures", "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION"]

_serial = None
_active_maps: "weakref.WeakSet[_MapIterator]" = weakref.WeakSet()


class _SerialRuntime:
    """Stand-in when no cluster runs: every call completes at submit, in this process."""

    def __init__(self):
        self.group = 0
        self.closed = False

    def submit(self, fn, args, kwargs, flush=True, digest=None):
        fut = Future(self, 0, getattr(fn, "__qualname__", repr(fn)))
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as exc:
            fut.set_exception(exc)
        return fut

    def poll(self):
        pass

    def flush(self):
        pass

    def wait_until(self, pred, timeout, futures, const=False):
        return pred()

    def cancel(self, fut):
        return False

    def where(self, fut):
        return 2

    def cancel_many(self, futs):
        pass

    def _callable_digest(self, fn):
        return b""

    def submit_chunk(self, fn, digest, arglist, name, single=False):
        values = []
        t0 = time.perf_counter()
        fut = Future(self, 0, name)
        for args in arglist:
            try:
                values.append(fn(args) if single else fn(*args))
            except Exception as exc:
                fut.set_result(ChunkResult(values, len(values), exc, time.perf_counter() - t0))
                return fut
        fut.set_result(ChunkResult(values, -1, None, time.perf_counter() - t0))
        return fut

    batching = 0




def _rt():
    rt = _globals.current()
    if rt is not None:
        return rt
    global _serial
    if _serial is None:
        warnings.warn("SCOOP is not running (start the program with `python -m scoop` or a notebook "
                      "cluster with `%scoop_cluster start`): futures run serially in this process.",
                      RuntimeWarning, stacklevel=user_stacklevel())
        _serial = _SerialRuntime()
    return _serial


def submit(func, *args, **kwargs) -> Future:
    """Runs ``func(*args, **kwargs)`` on the cluster; returns its Future at once."""
    return _rt().submit(func, args, kwargs)


def _size() -> int:
    import scoop
    return max(1, scoop.SIZE)


def _window(rt) -> int:
    return max(4096, 1024 * _size())


_CHUNK_SECONDS = 0.01  # ~10 ms of work per chunk: balance within 10 ms, per-chunk costs amortised
_CHUNK_MAX = 1 << 16
_CHUNK_BYTES = 64 << 20    # a chunk of big inputs carries at most this much
_WINDOW_BYTES = 256 << 20  # inputs in flight for one map, at most this much (beyond 2 per worker)
_per_input: dict = {}   # function digest -> seconds per input seen in earlier maps


class _MapIterator:
    """Submits through a window, so a huge or endless input never materialises every future.

    Inputs go in chunks whose size adapts to the measured time per input: one input per task
    while tasks are long (best balance), up to hundreds while they are tiny, where per-task
    messaging would otherwise dominate.  Results and errors keep input order.
    """

    def __init__(self, func, iterables, timeout, ordered: bool, chunksize=None):
        if not callable(func):
            raise TypeError(f"futures.map needs a callable, got {type(func).__name__}")
        if not iterables:
            raise TypeError("futures.map needs at least one iterable")
        if chunksize is not None and (not isinstance(chunksize, int) or isinstance(chunksize, bool)
                                      or chunksize < 1):
            raise ValueError(f"futures.map: chunksize must be a positive integer, not {chunksize!r}")
        self.fixed_chunk = chunksize   # the caller's inputs per task, or None: adapted to their cost
        timeout = _no_limit(timeout)
        self.rt = _rt()
        self.func = func
        # one iterable (the common case): inputs travel as they are, and run as fn(x)
        self.single = len(iterables) == 1
        self.args = iter(iterables[0]) if self.single else zip(*iterables)
        # a list, tuple, range or numpy array is sent in slices: a sub-range pickles to a few
        # bytes, an array slice is a view that travels as one buffer; nothing is copied item by item
        self.seq = iterables[0] if self.single and _sliceable(iterables[0]) else None
        self.pos = 0
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.timeout = timeout
        self.ordered = ordered
        self.window = deque()          # (future, number of inputs)
        self.in_window = 0
        self.size = _window(self.rt)
        self.buffer = deque()          # results ready to yield: a list per chunk, as it came
        self.head = 0                  # items of buffer[0] already taken one by one
        self.buffered = 0              # items in buffer, not yet taken
        self.error = None              # raised once the buffer before it is drained
        self.exhausted = False
        self.window_bytes = 0
        self.bytes_per_input = 0.0
        self._nbytes: dict = {}
        self.digest = None
        self.per_input = None
        self.chunk = 1
        self.name = getattr(func, "__qualname__", None) or type(func).__name__
        self.submitted = 0
        self.yielded = 0
        self.started = time.time()
        try:
            self.total = min(len(it) for it in iterables)
        except TypeError:
            self.total = None  # a generator or an endless iterable
        self.closed_at = None          # progress when close() dropped the rest of the map
        _active_maps.add(self)
        try:
            self._fill()
        except BaseException:
            # e.g. a function that cannot be pickled: no task left, and no map to show progress of
            self.close()
            raise

    def _fill(self):
        rt = self.rt
        if self.exhausted or self.in_window >= self.size:
            return
        workers = _size()
        if self.digest is None:
            self.digest = rt._callable_digest(self.func)
            known = _per_input.get(self.digest)  # this function's speed in earlier maps
            if known is not None:
                self._adapt_to(known)
        if self.fixed_chunk is not None:  # the caller's chunk size; a few chunks per worker in flight
            k = self.fixed_chunk
            limit = self.size = max(self.size, 4 * k * workers)
        else:
            # until the inputs' cost is known, send a probe of a few tasks per worker: a long task
            # is then not stuck in a big chunk, and a tiny one gets chunked after the first results
            limit = self.size if self.per_input is not None else min(self.size, 4 * workers)
            # never fewer chunks in flight than a few per worker
            k = max(1, min(self.chunk, self.size // (4 * workers)))
            if self.bytes_per_input:  # big inputs: a chunk carries at most _CHUNK_BYTES of them
                k = max(1, min(k, int(_CHUNK_BYTES // self.bytes_per_input)))
        islice = itertools.islice
        while self.in_window < limit:
            if self.window_bytes >= _WINDOW_BYTES and len(self.window) >= 2 * workers:
                break  # inputs held for the workers stay bounded in bytes, not only in count
            n = min(k, limit - self.in_window)
            if self.seq is not None:
                batch = self.seq[self.pos:self.pos + n]
                self.pos += len(batch)
            else:
                batch = list(islice(self.args, n))
            if not len(batch):
                self.exhausted = True
                break
            fut = rt.submit_chunk(self.func, self.digest, batch, self.name, self.single)
            nbytes = getattr(rt, "last_nbytes", 0)
            self._nbytes[id(fut)] = nbytes
            self.window_bytes += nbytes
            self.bytes_per_input = nbytes / len(batch)
            self.window.append((fut, len(batch)))
            self.in_window += len(batch)
            self.submitted += len(batch)
            if len(batch) >= 1024:
                rt.flush()  # a big chunk goes at once: workers start while the next one is packed
        rt.flush()

    def __iter__(self):
        # list(futures.map(...)) and for-loops take whole chunks: chain walks each chunk's list
        # in C, where __next__ would be a Python call per item (the cost of a tiny task)
        return itertools.chain.from_iterable(self._chunks())

    def _chunks(self):
        buffer = self.buffer
        try:
            while True:
                if buffer:
                    chunk = buffer.popleft()  # the very list a worker sent: no copy
                    if self.head:
                        chunk, self.head = chunk[self.head:], 0
                    self.buffered -= len(chunk)
                    self.yielded += len(chunk)
                    yield chunk
                    continue
                if not self._advance():
                    return
        except GeneratorExit:
            raise
        except BaseException:
            self.close()
            raise

    def _remaining(self):
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def __next__(self):
        try:
            return self._next()
        except StopIteration:
            raise
        except BaseException:
            # like a generator that raised (and Executor.map): finished, its queued tasks dropped
            self.close()
            raise

    def _advance(self) -> bool:
        """Moves the next finished chunk into the buffer (False: the map is exhausted); raises
        a task's error once the results before it have been taken."""
        if self.error is not None:
            err, self.error = self.error, None
            raise err
        if not self.window:
            self._fill()
            if not self.window:
                return False
        self._take()
        return True

    def _next(self):
        buffer = self.buffer
        while True:
            if buffer:
                chunk = buffer[0]
                value = chunk[self.head]
                self.head += 1
                if self.head == len(chunk):
                    buffer.popleft()
                    self.head = 0
                self.buffered -= 1
                self.yielded += 1
                return value
            if not self._advance():
                raise StopIteration

    def _take(self):
        """Moves the next finished chunk (the first one, in ordered mode) into the buffer."""
        window = self.window
        if self.ordered:
            entry = window[0]
            fut = entry[0]
            if not fut.completed and not self.rt.wait_until(
                    lambda: fut.completed, self._remaining(), (fut,)):
                raise TimeoutError(f"futures.map: task {self.name} not done within {self.timeout} s")
        else:
            entry = next((e for e in window if e[0].completed), None)
            if entry is None:
                futs = [e[0] for e in window]
                if not self.rt.wait_until(lambda: any(f.completed for f in futs),
                                          self._remaining(), futs):
                    raise TimeoutError(f"futures.map_as_completed: nothing completed within {self.timeout} s")
                entry = next(e for e in window if e[0].completed)
        window.remove(entry)
        self.in_window -= entry[1]
        self.window_bytes -= self._nbytes.pop(id(entry[0]), 0)
        values, err_index, err, elapsed = entry[0].result()
        self._adapt(elapsed, len(values) + (err_index >= 0))
        if values:
            self.buffer.append(values)
            self.buffered += len(values)
        if err_index >= 0:
            from .submitter import load_exception
            self.error = err if isinstance(err, BaseException) else load_exception(err)
            self.exhausted = True
        elif (self.in_window < self.size // 2 or self.submitted <= 4 * max(1, _size())
              or self.window_bytes < _WINDOW_BYTES // 2):
            self._fill()

    def _adapt(self, elapsed, n):
        if self.fixed_chunk is not None:
            return
        per = elapsed / max(1, n)
        if self.per_input is not None and n < 64:
            per = 0.7 * self.per_input + 0.3 * per  # a few inputs measure the timer, not the task
        previous = self.chunk
        self._adapt_to(per)
        if elapsed < _CHUNK_SECONDS / 2 and n >= previous:
            # a full chunk done well inside its time: at least double (per-chunk costs are
            # what a small-sample estimate of a tiny task hides)
            self.chunk = max(self.chunk, min(self._cap(), previous * 2))
            self.size = max(self.size, 4 * self.chunk * _size())
        if self.digest:
            _per_input[self.digest] = self.per_input

    def _cap(self) -> int:
        return _CHUNK_MAX if self.total is None else max(1, self.total // (4 * _size()))

    def _adapt_to(self, per_input):
        self.per_input = per_input
        workers = _size()
        self.chunk = max(1, min(self._cap(), int(_CHUNK_SECONDS / max(per_input, 1e-8))))
        # a few chunks in flight per worker, whatever their size
        self.size = max(self.size, 4 * self.chunk * workers)

    def progress(self) -> dict:
        """How far this map is: for progress bars and the dashboard."""
        # only results that arrived: a cancelled (interrupted) chunk is not done
        done = self.yielded + self.buffered + sum(n for f, n in self.window
                                                     if f.completed and not f.cancelled())
        return {"name": self.name, "done": done, "submitted": self.submitted, "total": self.total,
                "finished": self.exhausted and not self.window and not self.buffered, "started": self.started}

    def close(self):
        """Drops the tasks still queued for this map (also done when it is garbage-collected);
        it then no longer counts as a map in progress."""
        if self.closed_at is None and not (self.exhausted and not self.window):
            p = self.progress()
            p["dropped"] = (self.total if self.total is not None else self.submitted) - p["done"]
            self.closed_at = p
        _active_maps.discard(self)
        self.exhausted = True
        window, self.window = self.window, deque()
        self.in_window = 0
        if window and getattr(self.rt, "sock", None) is not None:
            self.rt.cancel_many([f for f, _ in window])

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _sliceable(seq) -> bool:
    """Sequences whose slices iterate as the same items do (not, say, a DataFrame)."""
    t = type(seq)
    return t is list or t is tuple or t is range or (
        t.__name__ == "ndarray" and t.__module__ == "numpy" and seq.ndim >= 1)


def map(func, *iterables, timeout=None, chunksize=None, **kwargs):
    """Parallel ``map``: an iterator over results in input order.

    Inputs are consumed lazily (generators and endless iterables work); the first results can
    be used while later inputs are still being submitted.  A task's exception is raised when the
    iteration reaches it.  ``timeout`` counts from the call, as in concurrent.futures (None or
    negative: no limit).  ``chunksize``: inputs per task (default: adapted to their measured
    cost).  Other keyword arguments are ignored, with a warning, as SCOOP 0.7 ignored them;
    pass arguments to ``func`` with ``functools.partial``.
    """
    _ignored("map", kwargs)
    return _MapIterator(func, iterables, timeout, ordered=True, chunksize=chunksize)


def map_as_completed(func, *iterables, timeout=None, chunksize=None, **kwargs):
    """Like :func:`map`, but yields results in completion order."""
    _ignored("map_as_completed", kwargs)
    return _MapIterator(func, iterables, timeout, ordered=False, chunksize=chunksize)


_warned_ignored: set = set()


def _ignored(where: str, kwargs: dict):
    """SCOOP 0.7's map and mapReduce accepted and ignored any keyword: such programs keep
    running, and are told once (per call site's keywords) that nothing reaches the function."""
    if not kwargs:
        return
    names = tuple(sorted(kwargs))
    if (where, names) in _warned_ignored:
        return
    _warned_ignored.add((where, names))
    warnings.warn(f"futures.{where} ignores the keyword argument(s) {', '.join(names)}, as SCOOP 0.7 did; "
                  f"use functools.partial(func, ...) to pass them to the function",
                  RuntimeWarning, stacklevel=user_stacklevel())


def _chunks(seq, n):
    size = max(1, -(-len(seq) // n))
    return [seq[i:i + size] for i in range(0, len(seq), size)]


def _reduce_chunk(mapFunc, reductionFunc, chunk):
    return functools.reduce(reductionFunc, (mapFunc(*args) for args in chunk))


def _scan_chunk(mapFunc, reductionFunc, chunk):
    return list(itertools.accumulate((mapFunc(*args) for args in chunk), reductionFunc))


def mapReduce(mapFunc, reductionFunc, *iterables, **kwargs):
    """Applies ``mapFunc`` to every element and reduces the results with ``reductionFunc``.

    The reduction is a tree: each task maps and reduces a contiguous block on a worker, and the
    block results are reduced in order, so any associative ``reductionFunc`` gives the serial
    answer (commutativity is not needed).
    """
    import scoop
    _ignored("mapReduce", kwargs)
    items = list(zip(*iterables))
    if not items:
        raise TypeError("mapReduce() of empty sequence with no initial value")
    blocks = _chunks(items, 4 * max(1, scoop.SIZE))
    partial = list(map(functools.partial(_reduce_chunk, mapFunc, reductionFunc), blocks))
    return functools.reduce(reductionFunc, partial)


def mapScan(mapFunc, reductionFunc, *iterables, **kwargs):
    """Returns the list of prefix reductions (an inclusive scan) of the mapped values.

    Each block is mapped and scanned on a worker; block offsets are combined at the caller.
    """
    import scoop
    _ignored("mapScan", kwargs)
    items = list(zip(*iterables))
    if not items:
        return []
    blocks = _chunks(items, 4 * max(1, scoop.SIZE))
    scans = list(map(functools.partial(_scan_chunk, mapFunc, reductionFunc), blocks))
    out = list(scans[0])
    for block in scans[1:]:
        carry = out[-1]
        out.extend(reductionFunc(carry, v) for v in block)
    return out


def shutdown(wait=True):
    """Waits (if asked) for this process's outstanding futures; later submits raise."""
    rt = _globals.current()
    if rt is None:
        return
    if wait:
        pending = list(rt.futures.values())
        if pending:
            _future_wait(pending)
    rt.closed_for_submit = True


_future_wait = wait
