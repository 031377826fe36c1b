"""Submitting futures and collecting their results, in any process (origin or worker).

Every task's payload is packed here (pickle 5; large buffers out of band, through shared memory
when the whole cluster is on this host), every result unpacked here, and each future completes
exactly once.  A task waited on right after it was submitted runs in the waiting process
itself, as SCOOP's origin did: no round trip for ``submit(f, x).result()``.
"""
from __future__ import annotations

import pickle
import threading
import time
import warnings
from collections import deque
from typing import NamedTuple

from . import _codemap
from . import _protocol as P
from ._future import Future
from .errors import ClusterError, TaskInterrupted, WorkerLostError, user_stacklevel

HOLD_SECONDS = 0.002   # a held task not waited on goes out after this (sent by the control thread)
BIG_CALLABLE = 10 << 20  # a callable this large (a closure over an array) is worth a word
_FN_CACHE_MAX = 1024
_TIMELINE = 5000


def name_of(fn) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        inner = getattr(fn, "func", None)  # functools.partial
        name = f"partial({name_of(inner)})" if inner is not None else type(fn).__name__
    return name


class Held(NamedTuple):
    """The newest task, kept back a moment in case its submitter waits on it at once (or
    cancels it).  ``inline``: it may then run right here -- not when its function had to be
    shipped for it: a function just defined (a new notebook cell) goes to a worker."""
    fut: Future
    fn: object
    args: tuple
    kwargs: dict
    hdr: bytes
    packed: P.Packed
    since: float
    inline: bool = True


class _Event:
    """A one-shot waitable the hub can block on, as on a Future (used for shared constants)."""

    __slots__ = ("completed", "waiters")

    def __init__(self):
        self.completed = False
        self.waiters = []

    def add_waiter(self, waiter):
        if not self.completed:
            self.waiters.append(waiter)

    def fire(self):
        self.completed = True
        waiters, self.waiters = self.waiters, []
        for w in waiters:
            w.notify()


class Submitter:
    def __init__(self, rt, inline: bool = True):
        self.rt = rt
        self.inline = inline
        self.futures: dict[int, Future] = {}
        self.group = 0
        self._auto_group = 1 << 31  # groups this submitter opens itself (scoop.origin's count up from 1)
        self.prefix = 0
        self._seq = 0
        self._fn_cache: dict[int, tuple] = {}
        self._blobs_sent: set[bytes] = set()
        self._warned_big: set[bytes] = set()
        self.held: Held | None = None
        self._held_lock = threading.Lock()  # the held task and the leases vs. the control thread
        self.leases: list = []  # LEASE records for the broker, not sent yet (scoop.direct)
        self.leases_since = 0.0
        self.hold_seconds = HOLD_SECONDS
        self.inline_depth = 0
        self.closed_for_submit = False
        self.last_nbytes = 0  # of the last task packed: maps bound their window in bytes
        self.done_count = 0
        self.submitted = 0
        self.const_event = _Event()
        self._cancel_replies: dict[int, bool] = {}
        self._ask_replies: dict[int, int] = {}
        self.timeline: deque = deque(maxlen=_TIMELINE)

    # ---- packing ---------------------------------------------------------------------------
    def callable_digest(self, fn) -> bytes:
        ent = self._fn_cache.get(id(fn))
        if ent is None or ent[0] is not fn:
            d, packed = P.pack_callable(fn)
            _codemap.remember(fn)  # where its code came from, for its tracebacks
            ent = (fn, d, packed)
            if len(self._fn_cache) >= _FN_CACHE_MAX:
                self._fn_cache.clear()
            self._fn_cache[id(fn)] = ent
            if packed.nbytes > BIG_CALLABLE and d not in self._warned_big:
                self._warned_big.add(d)
                warnings.warn(f"the function {name_of(fn)} pickles to {packed.nbytes / 2**20:.0f} MiB "
                              f"(it captures large data), and every worker receives a copy and keeps it "
                              f"until the cluster stops; pass the data with shared.setConst(...) instead",
                              RuntimeWarning, stacklevel=user_stacklevel())
        d = ent[1]
        if d not in self._blobs_sent:
            self._blobs_sent.add(d)
            self.rt.out.add(P.BLOB_HEADER.pack(P.BLOB, d), packed=ent[2])
        return d

    def _shm(self):
        """Shared memory for task payloads only when every process is on this host: a pinned
        task can run on no other."""
        rt = self.rt
        return rt.shm if rt.shm is not None and rt.hosts <= 1 else None

    def _check_open(self):
        rt = self.rt
        if rt.closed or rt.broken:
            raise ClusterError(rt.broken or "cannot submit: the SCOOP cluster connection is closed")
        if self.closed_for_submit:
            raise RuntimeError("cannot submit new futures after futures.shutdown()")

    def _new_task(self, kind: bytes, name: str, digest: bytes, payload, inputs: int, args=None, kwargs=None,
                  flags: int = 0):
        """Packs a task's inputs (an error names what does not pickle) and registers its future;
        returns the future and its record (header, packed payload)."""
        try:
            # an error is reworded below
            packed = P.pack(payload, "arguments", self._shm(), seal=self.rt.seal_for())
        except P.SerializationError as exc:
            if args is None:
                args = [a for chunk in payload for a in chunk] if kind == P.CHUNK else payload
            where = P.find_unpicklable(args, kwargs, name)
            cause = exc.__cause__
            raise P.SerializationError(f"{where} could not be pickled: "
                                       f"{type(cause).__name__}: {cause}") from None
        self._seq += 1
        tid = self.prefix | self._seq
        group = self.current_group()
        fut = Future(self.rt, tid, name, group)
        if packed.segments:
            fut._segments = packed.segments
        self.futures[tid] = fut
        self.submitted += inputs
        if packed.segments:
            flags |= P.PINNED
        if self.rt.direct_in is not None:
            flags |= P.DIRECT
        self.last_nbytes = packed.nbytes
        return fut, P.TASK_HEADER.pack(kind, tid, group, digest, self.rt.host_key, flags), packed

    def current_group(self) -> int:
        hub = self.rt.hub
        if hub is not None:
            g = hub.current_task()
            if g is not None:
                return g.group
        return self.group

    # ---- submitting --------------------------------------------------------------------------
    def submit_chunk(self, fn, digest: bytes, arglist: list, name: str, single: bool = False) -> Future:
        """One record for several inputs of a map: the per-task costs are paid once per chunk.
        ``single``: the inputs are the function's only argument, not argument tuples."""
        self._check_open()
        fut, hdr, packed = self._new_task(P.CHUNK, name, digest, arglist, len(arglist),
                                          arglist if single else None, flags=P.SINGLE if single else 0)
        self.rt.out.add(hdr, packed=packed)
        return fut

    def submit(self, fn, args, kwargs, flush: bool = True, digest: bytes | None = None) -> Future:
        self._check_open()
        if not callable(fn):
            raise TypeError(f"futures.submit needs a callable, got {type(fn).__name__} {fn!r:.80}")
        name = name_of(fn)
        rt = self.rt
        if digest is None:
            digest = self.callable_digest(fn)
        fut, hdr, packed = self._new_task(P.TASK, name, digest, (args, kwargs), 1, args, kwargs)
        if flush and not rt.batching and self.inline:
            # hold the newest task: if its submitter waits on it next, it runs right here
            # (no round trip), and until it goes a cancel() always succeeds, as SCOOP 0.7's
            # local futures did; any other call, the hub, or the control thread after
            # HOLD_SECONDS sends it.  What was queued before it (its function, the first time)
            # goes now: the broker parks a task that arrives before its function anyway.
            shipped = bool(rt.out)
            if shipped:
                rt.send_out()
            with self._held_lock:
                prev, self.held = self.held, Held(fut, fn, args, kwargs, hdr, packed, time.monotonic(),
                                                  not shipped)
            if prev is not None:
                rt.out.add(prev.hdr, packed=prev.packed)
                rt.send_out()
        else:
            rt.out.add(hdr, packed=packed)
            if flush and not rt.batching:
                rt.flush()
        return fut

    def release_held(self, lease: bool = False):
        """Sends the held task on its way; ``lease``: its submitter is about to wait on it."""
        if self.held is None:
            return
        with self._held_lock:
            held, self.held = self.held, None
        if held is not None and not (lease and self._lease(held)):
            self.rt.out.add(held.hdr, packed=held.packed)

    def _lease(self, held: Held) -> bool:
        """Sends ``held`` straight to an idle worker on this host (scoop.direct) when it is the
        only task in flight and travels inline; the broker hears of it soon after."""
        end = self.rt.direct_in
        if end is None or not end.idle or len(self.futures) != 1 or held.packed.refs:
            return False
        ent = self._fn_cache.get(id(held.fn))
        if ent is None or ent[0] is not held.fn or ent[2].refs:
            return False
        uid = end.lease(held.hdr, held.packed, ent[1], ent[2])
        if uid is None:
            return False
        rec = P.LEASE + uid + held.hdr
        with self._held_lock:
            if not self.leases:
                self.leases_since = time.monotonic()
            self.leases.append((rec, held.packed.body))
        held.fut.set_running()
        return True

    def take_leases(self, out: P.Outbox):
        with self._held_lock:
            leases, self.leases = self.leases, []
        for hdr, body in leases:
            out.add(hdr, body)

    def take_held_box(self):
        """Control thread: the submitter went on without waiting; its held task goes from there."""
        with self._held_lock:
            held = self.held
            if held is None or time.monotonic() - held.since <= self.hold_seconds:
                return None
            self.held = None
        box = P.Outbox()
        box.add(held.hdr, packed=held.packed)
        return box

    def claim(self, fut, to_run: bool = True) -> Held | None:
        """Takes ``fut``'s task back if it is still held (``to_run``: only if it may run here)."""
        with self._held_lock:
            held = self.held
            if held is not None and held.fut is fut and (held.inline or not to_run):
                self.held = None
                return held
        return None

    def run_inline(self, held: Held):
        """Runs a held task in the waiting greenlet, as SCOOP's origin ran futures it waited on.
        The caller sees what a worker would have given: a result that cannot be pickled is the
        same error here as through a worker."""
        fut = held.fut
        self.futures.pop(fut.id, None)
        self._free_args(fut)
        self.inline_depth += 1
        fut.started = time.time()
        fut.worker = self.rt.name
        try:
            value = held.fn(*held.args, **held.kwargs)
        except (KeyboardInterrupt, SystemExit, TaskInterrupted):
            fut.set_cancelled()
            raise
        except BaseException as exc:  # noqa: B902 -- the task's own error, for its future
            fut.finished = time.time()
            fut.set_exception(exc)
        else:
            fut.finished = time.time()
            err = _unpicklable(value, fut.name)
            if err is None:
                fut.set_result(value)
            else:
                fut.set_exception(err)
        finally:
            self.inline_depth -= 1
        self.done_count += 1

    # ---- results -----------------------------------------------------------------------------
    def on_result(self, rec: P.Record):
        _, tid, status, inputs, started, finished, worker = P.RESULT_HEADER.unpack(rec.hdr)
        fut = self.futures.pop(tid, None)
        rt = self.rt
        if fut is None:
            _unlink_refs(rec, rt.shm)
            return
        self._free_args(fut)
        fut.started, fut.finished = started, finished
        fut.worker = worker.rstrip(b"\0").decode("ascii", "replace")
        try:
            if status == P.OK:
                value = P.unpack(rec, rt.shm, rt.sealer)
                fut.set_result(value)
            else:
                fut.set_exception(load_exception(P.body_bytes(rec, rt.shm)))
        except Exception as exc:  # the value's class cannot be loaded here, say
            fut.set_exception(P.SerializationError(
                f"result of task {fut.name} could not be unpickled here: {type(exc).__name__}: {exc}"))
        finally:
            if rec.refs:
                _unlink_refs(rec, rt.shm)  # mapped: the receiver of a result frees its segments
        self.done_count += 1
        # a tuple: the dict a view reads is made when it reads (scoop.origin.timeline)
        self.timeline.append((fut.worker, fut.name, started, finished, inputs, fut.group, status == P.OK))

    def on_fail(self, rec: P.Record):
        tid = P.task_id(rec.hdr)
        fut = self.futures.pop(tid, None)
        if fut is not None:
            self._free_args(fut)
            fut.set_exception(WorkerLostError(bytes(rec.body).decode()))

    def _free_args(self, fut):
        if fut._segments and self.rt.shm is not None:
            for seg in fut._segments:
                self.rt.shm.unlink(seg)
            fut._segments = ()

    def fail_all(self, exc):
        futures, self.futures = self.futures, {}
        for f in futures.values():
            self._free_args(f)
            f.set_exception(exc)

    def on_cancel_answer(self, rec: P.Record):
        tid = P.task_id(rec.hdr)
        ok = P.answer_of(rec.hdr, 0) == 1
        self._cancel_replies[tid] = ok
        if ok:
            fut = self.futures.pop(tid, None)
            if fut is not None:
                self._free_args(fut)
                fut.set_cancelled()

    def on_ask_answer(self, rec: P.Record):
        self._ask_replies[P.task_id(rec.hdr)] = P.answer_of(rec.hdr)

    def const_arrived(self):
        ev, self.const_event = self.const_event, _Event()
        ev.fire()

    # ---- questions to the broker -------------------------------------------------------------
    def cancel(self, fut: Future) -> bool:
        rt = self.rt
        if self.held is not None and self.claim(fut, to_run=False) is not None:
            self.futures.pop(fut.id, None)
            self._free_args(fut)
            fut.set_cancelled()
            return True
        if fut.id not in self.futures:
            return fut.cancelled()
        rt.out.add(P.TID.pack(P.CANCEL, fut.id))
        rt.flush()
        rt.wait_until(lambda: fut.id in self._cancel_replies or fut.completed, 10.0, (fut,))
        ok = self._cancel_replies.pop(fut.id, False)
        if not ok:
            fut.set_running()  # a worker has it (a no-op once it completed)
        return fut.cancelled()

    def where(self, fut: Future) -> int:
        """Asks the broker where the task is: 0 queued, 1 at a worker, 2 gone (done or dropped)."""
        rt = self.rt
        if fut.id not in self.futures:
            return 2
        held = self.held
        if held is not None and held.fut is fut:
            return 0
        self._ask_replies.pop(fut.id, None)
        rt.out.add(P.TID.pack(P.ASK, fut.id))
        rt.flush()
        rt.wait_until(lambda: fut.id in self._ask_replies or fut.completed, 10.0, (fut,))
        return self._ask_replies.pop(fut.id, 2)

    def cancel_many(self, futs):
        """Asks the broker to drop these tasks if still queued, without waiting for answers
        (an abandoned map must not leave work behind for nobody)."""
        rt = self.rt
        for f in futs:
            if not f.completed and f.id in self.futures:
                rt.out.add(P.TID.pack(P.CANCEL, f.id))
        rt.flush()

    def set_const(self, name: str, value):
        self._check_open()
        rt = self.rt
        if name in rt.consts:
            raise TypeError(f"shared constant {name!r} is already defined; constants are set once")
        # on one host a large constant lives once in shared memory, mapped by every worker
        packed = P.pack(value, f"shared constant {name!r}", self._shm(), seal=rt.seal_for())
        rt.consts[name] = value
        rt.out.add(P.CONST + name.encode(), packed=packed)
        rt.flush()
        # a round trip: once answered, the broker holds the constant, so no task submitted
        # afterwards (on either socket) can reach a worker ahead of it
        self._ask_replies.pop(0, None)
        rt.out.add(P.TID.pack(P.ASK, 0))
        rt.send_out()
        deadline = time.monotonic() + 10
        while 0 not in self._ask_replies and time.monotonic() < deadline and not rt.broken:
            rt.pump(0.05)
        self._ask_replies.pop(0, None)

    def interrupt(self, group: int | None = None):
        """Drops the queued tasks of ``group`` and interrupts its running ones, cluster-wide."""
        rt = self.rt
        group = self.group if group is None else group
        held = self.held
        if held is not None and held.fut.group == group:
            with self._held_lock:
                self.held = None
        exc = TaskInterrupted(f"interrupted (group {group})")
        for tid, f in list(self.futures.items()):
            if f.group == group:
                del self.futures[tid]
                self._free_args(f)
                f.set_cancelled(exc)
        if rt.sock is not None and not rt.broken:
            rt.out.add(P.GROUP.pack(P.INTERRUPT, group))
            rt.flush()
        if group == self.group:
            # the broker drops an interrupted group's tasks for good: what comes next is new work
            self._auto_group += 1
            self.group = self._auto_group


def _unpicklable(value, task: str):
    """None if ``value`` would cross to another process, else the error a worker would give."""
    try:
        data = pickle.dumps(value, 5, buffer_callback=lambda b: False)
        if b"__main__" not in data:
            return None
    except Exception:
        pass
    try:
        P._cloudpickle().dumps(value, 5, buffer_callback=lambda b: False)
        return None
    except Exception as exc:
        return P.SerializationError(f"result of task {task} ({P._kind(value)}) could not be pickled: "
                                    f"{type(exc).__name__}: {exc}")


def load_exception(data) -> BaseException:
    """A task's exception, its remote traceback naming the files its code came from."""
    import scoop
    return _codemap.restore_exception(P.load_exception(data), final=scoop.IS_ORIGIN)


def _unlink_refs(rec, shm):
    if shm is None:
        return
    for kind, _size, key in rec.refs:
        if kind & P.REF_SHM:
            shm.unlink(key)
