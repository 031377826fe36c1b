"""Running tasks on a worker: the hub loop, credits, interrupts, hand-backs and output.

Every task runs in a greenlet (scoop._scheduler), so a task that waits on its children lets the
worker run them meanwhile.  The worker asks the broker for about 2 ms of queued work (deep
prefetch for tiny tasks, one spare for long ones); whatever it holds but has not started can be
taken back -- by the broker's steal, a cancel, an interrupt, a retirement or a walltime -- even
while a long task runs, because the control thread may drain the task socket into ``pending``.
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import socket as _socket
import sys
import threading
import time
from collections import deque

from . import _codemap
from . import _protocol as P
from ._future import ChunkResult
from ._runtime import _hard_exit
from ._scheduler import Hub, TaskGreenlet
from .direct import DONE_DELAY
from .errors import TaskInterrupted
from .liveness import interval, reconnect_grace
from .submitter import name_of

FAREWELL_WAIT = 5.0  # seconds a retiring worker waits for the broker to answer its goodbye
_HERE = {__file__, os.path.join(os.path.dirname(__file__), "_runtime.py")}


class Executor:
    def __init__(self, rt, retire_at: float | None = None):
        self.rt = rt
        self.pending: deque = deque()        # received, not started (records)
        self.lock = threading.Lock()         # pending/known/precancelled vs. the control thread
        self.known: set[int] = set()         # received, not finished
        self.precancelled: set[int] = set()  # cancelled before they were received
        self.leased: set[int] = set()        # came straight from the origin: run here, never handed back
        self.fns: dict[bytes, tuple] = {}  # digest -> (callable, its name, what its results are called)
        self._blob_recs: dict[bytes, P.Record] = {}
        self.outstanding = 0
        self.target = 1
        self._avg = None
        self._fn_avg: dict[bytes, float] = {}
        self.interrupted: set[int] = set()
        self._new_interrupts: deque = deque()
        self.retiring = False
        self.retire_at = retire_at
        self.running_group = None  # group of the task the hub is running; read by the control thread
        self.done_count = 0
        self.name8 = rt.name.encode("ascii", "replace")[:12]
        self._main_ident = None
        rt.executor = self
        rt._handlers.update({P.TASK: self.on_task, P.CHUNK: self.on_task, P.BLOB: self.on_blob,
                             P.RETIRE: self.on_retire})

    # ---- receiving (main thread, or the control thread holding the socket lock) ---------------
    def on_task(self, rec: P.Record, leased: bool = False):
        """``leased``: sent by the origin itself (scoop.direct), not against this worker's credit;
        the broker may not know of it yet, so it is never handed back."""
        if self.outstanding > 0 and not leased:
            self.outstanding -= 1
        tid = P.task_id(rec.hdr)
        with self.lock:
            if tid in self.precancelled:
                self.precancelled.discard(tid)  # cancelled while still in the socket
                return
            self.known.add(tid)
            if leased:
                self.leased.add(tid)
            self.pending.append(rec)

    def on_blob(self, rec: P.Record):
        d = P.blob_digest(rec.hdr)
        if d not in self.fns:
            self._blob_recs[d] = rec

    def _forget(self, tid: int):
        """The task is over here (finished, dropped or cancelled)."""
        self.known.discard(tid)
        if self.leased:
            self.leased.discard(tid)

    def idle(self) -> bool:
        """Nothing else to run here: the origin may lease this worker a task.  Only a worker of
        the root broker says so (a sub-broker's worker is unknown to the root, which would run
        a task leased to it a second time), and never one that is leaving."""
        # (the hub loop, not a task, with a group set: it flushes before it starts that task)
        return (not self.pending and not self.rt.hub.ready and not self.retiring
                and (self.running_group is None or self.rt.hub.current_task() is not None)
                and self.rt.welcome.get("root", False))

    def on_retire(self, rec=None):
        self.retiring = True

    def request_credit(self):
        """Tops up the broker's credit for this worker: on a message that goes out anyway, or
        alone once half the prefetch is used up (a message of its own wakes the broker, which on
        a round trip's path costs more than one credit is worth; results that go straight to the
        origin leave nothing to ride on)."""
        if self.retiring or self.rt.hub is None:
            return
        have = len(self.pending) + len(self.rt.hub.ready) + self.outstanding
        want = self.target - have
        if want > 0 and (self.rt.out or 2 * want >= self.target):
            self.outstanding += want
            self.rt.out.add(P.COUNT.pack(P.CREDIT, want))

    def _get_fn(self, d: bytes) -> tuple:
        ent = self.fns.get(d)
        if ent is None:
            fn = P.unpack(self._blob_recs.pop(d), self.rt.shm)
            name = name_of(fn)
            ent = self.fns[d] = (fn, name, f"result of task {name}")
        return ent

    # ---- the hub loop ------------------------------------------------------------------------
    def run(self):
        """Runs tasks in greenlets, sends results in batches."""
        rt = self.rt
        hub = rt.hub = Hub()
        self._install_interrupt_handler()
        pending, ready = self.pending, hub.ready
        run_task = self._run_task
        monotonic = time.monotonic
        fn_avg = self._fn_avg
        out = rt.out
        direct = rt.direct_out
        fence_after = rt.broker_timeout / 2
        while True:
            t0 = monotonic()
            while True:
                if ready:
                    if direct is not None and direct.said_idle:
                        direct.say_busy()
                    g = ready.popleft()
                    self.running_group = g.group if type(g) is TaskGreenlet else None
                    hub.resume(g)
                    self.running_group = None
                elif pending:
                    with self.lock:
                        if not pending:
                            continue
                        rec = pending.popleft()
                    _, tid, group, d, _host, _flags = P.TASK_HEADER.unpack(rec.hdr)
                    if group in self.interrupted:
                        self._forget(tid)
                        continue
                    if direct is not None and direct.said_idle and tid not in self.leased:
                        direct.say_busy()
                    self.running_group = group  # from here on this worker is not idle
                    if monotonic() - rt.confirmed > fence_after:
                        self._confirm_membership(tid)
                    if fn_avg.get(d, 1.0) > 0.0005 and (out or (direct is not None and direct.waiting())):
                        rt.flush_all()  # a task that may be long must not hold anything back
                    hub.start(run_task, rec, group, tid)
                    self.running_group = None
                else:
                    break
                if len(out) >= 128 or monotonic() - t0 > 0.002:
                    break
            flush_output()
            if self._new_interrupts:
                self._apply_interrupts()
            if hub.timers:
                hub.fire_timers()
            if self.retire_at is not None and time.time() >= self.retire_at and not self.retiring:
                self.retiring = True
                out.add(P.INDEX.pack(P.RETIRE, rt.index))  # the broker sends no more
            if self.retiring:
                self._release_pending()
                if not ready and not hub.blocked and not pending:  # leased tasks stay and run
                    rt.goodbye()
                    # the broker's answer says it read everything sent before: until then a
                    # result could still be lost with this process, and its task run again
                    deadline = monotonic() + FAREWELL_WAIT
                    while monotonic() < deadline:
                        rt.pump(0.1)  # its SHUTDOWN ends the process
                    return
            rt.flush()
            if ready or pending:
                timeout = 0
            else:
                nt = hub.next_timer()
                timeout = 1.0 if nt is None else max(0.0, min(1.0, nt - monotonic()))
                if self.retire_at is not None:
                    timeout = min(timeout, max(0.0, self.retire_at - time.time()))
                if direct is not None and direct.dones:
                    timeout = min(timeout, DONE_DELAY)  # the broker hears of them soon
            rt.pump(timeout)

    def _confirm_membership(self, tid: int):
        """Fencing: before a task starts, this worker must still be the broker's.  A worker that
        was frozen (SIGSTOP, a stalled VM) longer than the heartbeat timeout was declared lost and
        its tasks run elsewhere; when it resumes, tasks it had received still wait here, and so
        may messages the broker sent before it dropped the worker (no proof of anything now).  So
        a worker whose last proof is older than half a timeout asks the broker about the task
        first (one round trip per half timeout at most): a broker that dropped it answers with
        SHUTDOWN instead, and the worker exits (the Cluster starts a new one) without starting
        anything."""
        rt = self.rt
        replies = rt.submitter._ask_replies
        replies.pop(tid, None)
        now = time.monotonic()
        deadline = now + reconnect_grace(rt.broker_timeout) + rt.broker_timeout
        resend = now
        while tid not in replies:
            now = time.monotonic()
            if now >= deadline:
                _hard_exit(3, f"scoop worker {rt.name}: no answer from the broker after a silence; "
                              f"exiting without starting another task\n")
            if now >= resend:  # a message sent on a connection that was dropped meanwhile is lost
                rt.out.add(P.TID.pack(P.ASK, tid))
                rt.send_out()
                resend = now + interval(rt.broker_timeout)
            rt.pump(0.02)  # a SHUTDOWN ("declared lost by the broker") ends this process here
        del replies[tid]
        rt.confirmed = time.monotonic()

    def _run_task(self, rec: P.Record):
        kind, tid, group, d, host, flags = P.TASK_HEADER.unpack(rec.hdr)
        rt = self.rt
        started = time.time()
        t0 = time.perf_counter()
        writes = TaskOutput.writes
        name = "task"
        inputs = 1
        # a result for a submitter on this host goes through shared memory: sealed and handed
        # to the origin if it is the origin's, else a named segment (its receiver frees it)
        shm = None
        if host == rt.host_key and rt.shm is not None:
            shm = rt.shm.to_origin if flags & P.DIRECT else rt.shm.results
        try:
            fn, name, what = self._get_fn(d)
            if kind == P.CHUNK:
                arglist = P.unpack(rec, rt.shm, rt.sealer)
                inputs = len(arglist)
                value = self._run_chunk(fn, name, arglist, flags & P.SINGLE)
            else:
                args, kwargs = P.unpack(rec, rt.shm, rt.sealer)
                value = fn(*args, **kwargs)
            del rec
            try:
                direct = flags & P.DIRECT and rt.direct_out is not None
                packed = P.pack(value, what, shm, seal=rt.seal_for(direct))
                status = P.OK
            except P.SerializationError as exc:
                if kind == P.CHUNK:
                    packed, status = self._chunk_unpicklable(value, name, exc, shm), P.OK
                else:
                    packed, status = P.packed_bytes(P.dump_exception(exc, "")), P.RAISED
        except TaskInterrupted:
            self._forget(tid)
            return
        except BaseException as exc:  # noqa: B902 -- everything a task raises goes back to its caller
            packed, status = P.packed_bytes(self._exception_payload(exc, name)), P.RAISED
        self._forget(tid)
        flush_output()  # what the task printed lands before its result
        hdr = P.RESULT_HEADER.pack(P.RESULT, tid, status, inputs, started, time.time(), self.name8)
        if flags & P.DIRECT and rt.direct_out is not None and TaskOutput.writes == writes:
            rt.direct_out.add(hdr, packed, tid, inputs)  # output, if any, goes the broker's way
        else:
            rt.out.add(hdr, packed=packed)
        if not self.pending and not rt.hub.ready:
            rt.flush()  # nothing else to run: the result goes now, the bookkeeping after it
        self.done_count += inputs
        dt = time.perf_counter() - t0
        fa = self._fn_avg.get(d)
        self._fn_avg[d] = dt if fa is None else 0.8 * fa + 0.2 * dt
        avg = self._avg = dt if self._avg is None else 0.8 * self._avg + 0.2 * dt
        # keep ~2 ms of queued work per worker: deep prefetch for tiny tasks, one spare task
        # unless tasks are long; work stealing evens out the end of a map
        self.target = 1 if avg > 0.1 else min(256, max(2, int(0.002 / max(avg, 1e-6)) + 1))

    def _run_chunk(self, fn, name, arglist, single):
        """Runs a map chunk in order; stops at the first exception, which the origin raises
        when its iteration reaches that input.  Returns (values, error_index, error, seconds).
        ``list.extend`` over ``map`` runs the loop in C and keeps what came before a failure."""
        values = []
        t0 = time.perf_counter()
        try:
            values.extend(map(fn, arglist) if single else itertools.starmap(fn, arglist))
        except TaskInterrupted:
            raise
        except BaseException as exc:  # noqa: B902
            i = len(values)
            args = (arglist[i],) if single else arglist[i]
            return ChunkResult(values, i, self._exception_payload(exc, name, args), time.perf_counter() - t0)
        return ChunkResult(values, -1, None, time.perf_counter() - t0)

    def _chunk_unpicklable(self, value, name, exc, shm) -> P.Packed:
        """A chunk whose j-th value does not pickle: the values before it, and its error."""
        values, err_i, err, elapsed = value
        for j, v in enumerate(values):
            try:
                P.pack(v, f"result of task {name} (input {j})")
            except P.SerializationError as e:
                return P.pack(ChunkResult(values[:j], j, P.dump_exception(e, ""), elapsed), shm=shm)
        return P.pack(ChunkResult([], 0, P.dump_exception(exc, ""), elapsed))

    def _exception_payload(self, exc, name, args=None) -> bytes:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename in _HERE:
            tb = tb.tb_next  # hide the worker's own frames: the user's code starts below them
        text = _codemap.format_exception(exc, tb)  # frames without source here carry their code's key
        rt = self.rt
        host = rt.info.get("host") or _socket.gethostname()
        where = f"worker {rt.name} on {host}, pid {os.getpid()}, task {name}"
        if args is not None:
            shown = ", ".join(_short(a) for a in args)
            where += f"({shown})"
        return P.dump_exception(exc, f"[{where}]\n" + text)

    # ---- interrupts ----------------------------------------------------------------------------
    def _install_interrupt_handler(self):
        if threading.current_thread() is not threading.main_thread():
            return
        self._main_ident = threading.get_ident()
        hub = self.rt.hub

        def on_interrupt(signum, frame):
            g = hub.current_task()
            if g is not None and g.group in self.interrupted:
                raise TaskInterrupted(f"task interrupted by its origin (group {g.group})")

        signal.signal(signal.SIGUSR1, on_interrupt)

    def on_interrupt(self, group: int):
        """Control thread: a group was interrupted; kick the main thread out of its task."""
        self.interrupted.add(group)
        self._new_interrupts.append(group)
        # greenlet.getcurrent() is per thread: the hub publishes the running task's group
        if self._main_ident is not None and self.running_group == group:
            signal.pthread_kill(self._main_ident, signal.SIGUSR1)

    def _apply_interrupts(self):
        rt = self.rt
        while self._new_interrupts:
            group = self._new_interrupts.popleft()
            with self.lock:
                kept = deque()
                for rec in self.pending:
                    _, tid, g = P.TASK_HEADER.unpack(rec.hdr)[:3]
                    if g == group:
                        self._forget(tid)
                    else:
                        kept.append(rec)
                self.pending.clear()  # in place: the hub loop holds this very deque
                self.pending.extend(kept)
            for g in list(rt.hub.blocked_by_group.get(group, ())):
                rt.hub.throw(g, TaskInterrupted(f"task interrupted by its origin (group {group})"))
            for tid, f in list(rt.futures.items()):
                if f.group == group:
                    del rt.futures[tid]

    # ---- handing tasks back --------------------------------------------------------------------
    def _release_pending(self):
        out = self.rt.out
        with self.lock:
            kept = deque()
            for rec in self.pending:
                tid = P.task_id(rec.hdr)
                if tid in self.leased:
                    kept.append(rec)
                    continue
                self.known.discard(tid)
                out.add(P.TID.pack(P.RELEASE, tid))
            self.pending.clear()  # in place: the hub loop holds this very deque
            self.pending.extend(kept)

    def give_back(self, n: int):
        """Control thread: the broker steals.  Tasks still in the task socket count as unstarted
        too, so first drain it (the main thread may be deep in a long task)."""
        self.rt.drain_into_pending()
        box = P.Outbox()
        with self.lock:
            pending, leased = self.pending, self.leased
            kept = []
            while n > 0 and pending:
                rec = pending.pop()
                tid = P.task_id(rec.hdr)
                if tid in leased:
                    kept.append(rec)
                    continue
                self.known.discard(tid)
                box.add(P.TID.pack(P.RELEASE, tid))
                n -= 1
            pending.extend(reversed(kept))
        return box

    def cancel_pending(self, tid: int):
        """Control thread: cancels a prefetched task unless the main thread has started it: still
        in the socket (not received yet) or waiting in ``pending`` both count as not started."""
        with self.lock:
            if tid not in self.known:
                self.precancelled.add(tid)
                ok = True
            else:
                ok = False
                for rec in list(self.pending):
                    if P.task_id(rec.hdr) == tid:
                        self.pending.remove(rec)
                        self._forget(tid)
                        ok = True
                        break
        box = P.Outbox()
        box.add(P.answer(P.TID.pack(P.CANCEL, tid), ok))
        return box

    def load(self) -> dict:
        hub = self.rt.hub
        return {
            "queued": len(self.pending),
            "running": 0 if hub is None else (self.running_group is not None) + len(hub.ready),
            "blocked": 0 if hub is None else hub.blocked,
            "done": self.done_count,
        }


def _short(value) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 40 else text[:37] + "..."


# ---- task output ----------------------------------------------------------------------------------
_streams: list = []


class TaskOutput:
    """``sys.stdout``/``sys.stderr`` of a worker: what tasks print travels to the origin over the
    cluster connection, tagged with the submitting group (so a notebook shows it in the cell that
    caused it, whatever the launcher did with the worker's own stdout)."""

    writes = 0  # by every stream: a task that printed sends its result after its output

    def __init__(self, rt, stream: str, original):
        self.rt = rt
        self.stream = stream
        self.original = original
        self.parts: list[str] = []
        self.group = None
        _streams.append(self)

    def write(self, text):
        if threading.current_thread() is not threading.main_thread():
            return self.original.write(text)
        TaskOutput.writes += 1
        group = self.rt.submitter.current_group()
        if group != self.group and self.parts:
            self.flush()
        self.group = group
        self.parts.append(text)
        if "\n" in text and sum(map(len, self.parts)) > 8192:
            self.flush()
        return len(text)

    def flush(self):
        if not self.parts:
            return
        text = "".join(self.parts)
        self.parts = []
        self.rt.out.add(P.GROUP.pack(P.OUTPUT, self.group or 0),
                        json.dumps([self.rt.name, self.stream, text]).encode())

    def fileno(self):
        return self.original.fileno()

    def isatty(self):
        return False

    @property
    def encoding(self):
        return getattr(self.original, "encoding", "utf-8")

    def __getattr__(self, name):
        return getattr(self.original, name)


def capture_output(rt):
    sys.stdout = TaskOutput(rt, "stdout", sys.stdout)
    sys.stderr = TaskOutput(rt, "stderr", sys.stderr)


def flush_output():
    for s in _streams:
        if s.parts:
            s.flush()
