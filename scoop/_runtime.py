"""The cluster connection of one process (origin or worker).

The thread that runs user code owns the task socket: submits, results and tasks cross only
ZeroMQ hops (no thread hand-off on the hot path).  A small control thread owns a second
socket for heartbeats, load figures and interrupts, so liveness never depends on user code
yielding.  Outgoing records are batched: a map submits its window in one message, a worker
sends the results of a burst of tasks in one message with its credit request piggybacked.
"""
from __future__ import annotations

import json
import os
import signal
import socket as _socket
import sys
import threading
import time
import traceback
from collections import deque

import zmq

from . import _protocol as P
from ._future import CANCELLED, FINISHED, RUNNING, Future
from .errors import ClusterError, TaskInterrupted, WorkerLostError

HEARTBEAT_INTERVAL = 0.25
HOLD_SECONDS = 0.002   # a held task not waited on goes out after this (sent by the control thread)
INLINE_DEPTH = 50      # inline runs nest in one greenlet's stack: keep far from the recursion limit
_FN_CACHE_MAX = 1024


def _name_of(fn) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        inner = getattr(fn, "func", None)  # functools.partial
        name = f"partial({_name_of(inner)})" if inner is not None else type(fn).__name__
    return name


class _Event:
    """A one-shot waitable, shaped like a Future for the hub (used for shared constants)."""

    __slots__ = ("_state", "_waiters")

    def __init__(self):
        self._state = 0
        self._waiters = None

    def fire(self):
        self._state = FINISHED
        waiters, self._waiters = self._waiters, None
        for w in waiters or ():
            w.notify()


class Runtime:
    """Connection of this process to the broker; one per process."""

    def __init__(self, broker: str, secret: bytes, role: str, *, info: dict | None = None,
                 broker_timeout: float = 5.0, context: zmq.Context | None = None, inline: bool = True):
        self.broker = broker
        self.signer = P.Signer(secret)
        self.role = role
        self.info = dict(info or {})
        self.broker_timeout = broker_timeout
        self.ctx = context or zmq.Context.instance()
        self.uid = os.urandom(8).hex()
        self.index = -1
        self.size = 0
        self.welcome: dict = {}
        self.futures: dict[int, Future] = {}
        self.out: list = []
        self._seq = 0
        self._prefix = 0
        self._fn_cache: dict[int, tuple] = {}
        self._blobs_sent: set[bytes] = set()
        self.consts: dict[str, object] = {}
        self._const_event = _Event()
        self._cancel_replies: dict[int, bool] = {}
        self._ask_replies: dict[int, int] = {}
        self.group = 0
        self.closed = False
        self.broken: str | None = None
        self.batching = 0
        self.closed_for_submit = False
        self.done_count = 0
        self.submitted = 0
        # worker side
        self.hub = None
        self.pending: deque = deque()
        self.fns: dict[bytes, object] = {}
        self._blob_bytes: dict[bytes, bytes] = {}
        self.outstanding = 0
        self.target = 1
        self._avg = None
        self._fn_avg: dict[bytes, float] = {}
        self.executing = None
        self.interrupted: set[int] = set()
        self._new_interrupts: deque = deque()
        self.retiring = False
        self.running_group = None  # group of the task the hub is running; read by the control thread
        self._task_lock = threading.Lock()  # task receipt / held task vs. the control thread
        self.inline = inline
        self._held = None                   # (future, fn, args, kwargs, records, since)
        self._inline_depth = 0
        self._known: set[int] = set()        # received, not finished
        self._precancelled: set[int] = set()  # cancelled before they were received
        self.sock = None
        self.control = None

    # ---- connection ------------------------------------------------------------------------
    def connect(self, timeout: float = 30.0):
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, b"t" + self.uid.encode())
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.setsockopt(zmq.LINGER, 2000)
        s.setsockopt(zmq.RECONNECT_IVL, 20)
        s.connect(self.broker)
        self.sock = s
        hello = dict(self.info, uid=self.uid, role=self.role, pid=os.getpid(),
                     host=self.info.get("host") or _socket.gethostname())
        P.send(s, self.signer, [P.HELLO, json.dumps(hello).encode()])
        deadline = time.monotonic() + timeout
        while self.index < 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClusterError(f"no answer from the broker at {self.broker} within {timeout:.0f} s")
            if self.broken:
                raise ClusterError(self.broken)
            self.pump(min(left, 0.2))
        self.control = _Control(self)
        self.control.start()
        return self

    def close(self, notify: bool = True):
        if self.closed:
            return
        self.closed = True
        if self.control is not None:
            self.control.stop()
        if self.sock is not None:
            try:
                if notify and not self.broken:
                    P.send(self.sock, self.signer, [*self.out, P.BYE, P.EMPTY])
                    self.out = []
            except zmq.ZMQError:
                pass
            self.sock.close(linger=500 if notify else 0)
            self.sock = None
        self._fail_all(ClusterError("the SCOOP cluster connection was closed"))

    def _fail_all(self, exc):
        futures, self.futures = self.futures, {}
        for f in futures.values():
            f._finish(FINISHED, exception=exc)

    # ---- submission ------------------------------------------------------------------------
    def _callable_digest(self, fn) -> bytes:
        ent = self._fn_cache.get(id(fn))
        if ent is None or ent[0] is not fn:
            blob = P.dumps_callable(fn)
            ent = (fn, P.digest(blob), blob)
            if len(self._fn_cache) >= _FN_CACHE_MAX:
                self._fn_cache.clear()
            self._fn_cache[id(fn)] = ent
        d = ent[1]
        if d not in self._blobs_sent:
            self._blobs_sent.add(d)
            self.out += [P.BLOB + d, ent[2]]
        return d

    def current_group(self) -> int:
        hub = self.hub
        if hub is not None:
            g = hub.current_task()
            if g is not None:
                return g.group
        return self.group

    def _new_task(self, kind: bytes, name: str, digest: bytes, payload, inputs: int):
        """Pickles a task's inputs (an error names what does not pickle) and registers its
        future; returns the future and the task's records."""
        try:
            body = P.dumps(payload, what=f"argument of task {name}")
        except P.SerializationError as exc:
            where = P.find_unpicklable(payload)
            raise P.SerializationError(f"argument of task {name} could not be pickled: {where}: "
                                       f"{exc.__cause__}") from exc.__cause__
        self._seq += 1
        tid = self._prefix | self._seq
        group = self.current_group()
        fut = Future(self, tid, name, group)
        self.futures[tid] = fut
        self.submitted += inputs
        return fut, [P.TASK_HEADER.pack(kind, tid, group, digest), body]

    def submit_chunk(self, fn, digest: bytes, arglist: list, name: str) -> Future:
        """One record for several inputs of a map: the per-task costs are paid once per chunk."""
        fut, recs = self._new_task(P.CHUNK, name, digest, arglist, len(arglist))
        self.out += recs
        return fut

    def submit(self, fn, args, kwargs, flush: bool = True, digest: bytes | None = None) -> Future:
        if self.closed or self.broken:
            raise ClusterError(self.broken or "cannot submit: the SCOOP cluster connection is closed")
        if self.closed_for_submit:
            raise RuntimeError("cannot submit new futures after futures.shutdown()")
        if not callable(fn):
            raise TypeError(f"futures.submit needs a callable, got {type(fn).__name__} {fn!r:.80}")
        name = _name_of(fn)
        if digest is None:
            digest = self._callable_digest(fn)
        fut, recs = self._new_task(P.TASK, name, digest, (args, kwargs), 1)
        if flush and not self.batching and self.inline and not self.out:
            # hold the newest task: if its submitter waits on it next, it runs right here
            # (no round trip); any other call, the hub, or the control thread after HOLD_SECONDS
            # sends it.  Never held when its function still has to be shipped (out not empty).
            with self._task_lock:
                prev, self._held = self._held, (fut, fn, args, kwargs, recs, time.monotonic())
            if prev is not None:
                self.out += prev[4]
                self._send_out()
        else:
            self.out += recs
            if flush and not self.batching:
                self.flush()
        return fut

    def _release_held(self):
        with self._task_lock:
            held, self._held = self._held, None
        if held is not None:
            self.out += held[4]

    def _claim(self, fut):
        with self._task_lock:
            held = self._held
            if held is not None and held[0] is fut:
                self._held = None
                return held
        return None

    def _run_inline(self, held):
        """Runs a held task in the waiting greenlet, as SCOOP's origin ran futures it waited on."""
        fut, fn, args, kwargs = held[:4]
        self.futures.pop(fut.id, None)
        self._inline_depth += 1
        try:
            value = fn(*args, **kwargs)
        except (KeyboardInterrupt, SystemExit, TaskInterrupted):
            fut._finish(CANCELLED)
            raise
        except BaseException as exc:  # noqa: B902 -- the task's own error, for its future
            fut._finish(FINISHED, exception=exc)
        else:
            fut._finish(FINISHED, value)
        finally:
            self._inline_depth -= 1
        self.done_count += 1

    def flush(self):
        if self._held is not None:
            self._release_held()
        self._send_out()

    def _send_out(self):
        if self.hub is not None and not self.retiring:
            self._request_credit()
        if self.out and self.sock is not None:
            out, self.out = self.out, []
            P.send(self.sock, self.signer, out)

    def cancel(self, fut: Future) -> bool:
        if self._held is not None and self._claim(fut) is not None:
            self.futures.pop(fut.id, None)
            fut._finish(CANCELLED)
            return True
        if fut.id not in self.futures:
            return fut._state == CANCELLED
        self.out += [P.CANCEL + P.ID.pack(fut.id), P.EMPTY]
        self.flush()
        self.wait_until(lambda: fut.id in self._cancel_replies or fut._state >= FINISHED, 10.0, (fut,))
        ok = self._cancel_replies.pop(fut.id, False)
        if not ok and fut._state < FINISHED:
            fut._state = RUNNING
        return fut._state == CANCELLED

    def where(self, fut: Future) -> int:
        """Asks the broker where the task is: 0 queued, 1 at a worker, 2 gone (done or dropped)."""
        if fut.id not in self.futures:
            return 2
        if self._held is not None and self._held[0] is fut:
            return 0
        self._ask_replies.pop(fut.id, None)
        self.out += [P.ASK + P.ID.pack(fut.id), P.EMPTY]
        self.flush()
        self.wait_until(lambda: fut.id in self._ask_replies or fut._state >= FINISHED, 10.0, (fut,))
        return self._ask_replies.pop(fut.id, 2)

    def cancel_many(self, futs):
        """Asks the broker to drop these tasks if still queued, without waiting for answers
        (an abandoned map must not leave work behind for nobody)."""
        for f in futs:
            if f._state < FINISHED and f.id in self.futures:
                self.out += [P.CANCEL + P.ID.pack(f.id), P.EMPTY]
        self.flush()

    def set_const(self, name: str, value):
        if name in self.consts:
            raise TypeError(f"shared constant {name!r} is already defined; constants are set once")
        body = P.dumps(value, what=f"shared constant {name!r}")
        self.consts[name] = value
        self.out += [P.CONST + name.encode(), body]
        self.flush()
        # a round trip: once answered, the broker holds the constant, so no task submitted
        # afterwards (on either socket) can reach a worker ahead of it
        self._ask_replies.pop(0, None)
        self.out += [P.ASK + P.ID.pack(0), P.EMPTY]
        self._send_out()
        deadline = time.monotonic() + 10
        while 0 not in self._ask_replies and time.monotonic() < deadline and not self.broken:
            self.pump(0.05)
        self._ask_replies.pop(0, None)

    def get_const(self, name: str, timeout):
        if name not in self.consts:
            self.wait_until(lambda: name in self.consts, timeout, None, const=True)
        return self.consts.get(name)

    def interrupt(self, group: int | None = None):
        """Drops the queued tasks of ``group`` and interrupts its running ones, cluster-wide."""
        group = self.group if group is None else group
        if self._held is not None and self._held[0].group == group:
            with self._task_lock:
                self._held = None
        exc = TaskInterrupted(f"interrupted (group {group})")
        for tid, f in list(self.futures.items()):
            if f.group == group:
                del self.futures[tid]
                f._finish(CANCELLED, exception=exc)
        if self.sock is not None and not self.broken:
            self.out += [P.INTERRUPT + P.U32.pack(group), P.EMPTY]
            self.flush()

    def retire(self, index: int):
        """Asks worker ``index`` to hand back its queued tasks and leave once idle."""
        self.out += [P.RETIRE + P.U32.pack(index), P.EMPTY]
        self.flush()

    # ---- receiving ---------------------------------------------------------------------------
    def poll(self):
        """Non-blocking pump, so ``done()`` and polling loops see results without a wait call."""
        if self.sock is not None and not self.closed:
            self.pump(0)

    def pump(self, timeout: float) -> int:
        """Sends what is queued, then handles incoming messages for up to ``timeout`` seconds."""
        sock = self.sock
        if sock is None:
            return 0
        if self.out:
            self.flush()
        if timeout and not sock.poll(int(timeout * 1000) if timeout is not None else None):
            return 0
        n = 0
        signer = self.signer
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            frames = P.recv_verified(sock, signer, zmq.NOBLOCK)
            n += 1
            if frames is not None:
                self._handle(frames)
        return n

    def _handle(self, frames):
        i, n = 0, len(frames)
        while i < n:
            hdr, body = frames[i], frames[i + 1]
            i += 2
            t = hdr[:1]
            if t == P.RESULT:
                _, tid, status, _n = P.RESULT_HEADER.unpack(hdr)
                fut = self.futures.pop(tid, None)
                if fut is None:
                    continue
                try:
                    if status == P.OK:
                        fut._finish(FINISHED, P.loads(body))
                    else:
                        fut._finish(FINISHED, exception=P.load_exception(body))
                except Exception as exc:  # the value's class cannot be loaded here, say
                    fut._finish(FINISHED, exception=P.SerializationError(
                        f"result of task {fut._name} could not be unpickled: {type(exc).__name__}: {exc}"))
                self.done_count += 1
            elif t == P.TASK or t == P.CHUNK:
                if self.outstanding > 0:
                    self.outstanding -= 1
                tid = P.ID.unpack_from(hdr, 1)[0]
                with self._task_lock:
                    if tid in self._precancelled:
                        self._precancelled.discard(tid)  # cancelled while still in the socket
                        continue
                    self._known.add(tid)
                    self.pending.append((hdr, body))
            elif t == P.BLOB:
                self._blob_bytes[hdr[1:]] = body
            elif t == P.CONST:
                name = hdr[1:].decode()
                if name not in self.consts:
                    try:
                        self.consts[name] = P.loads(body)
                    except Exception as exc:
                        from . import logger
                        logger.error("shared constant %r could not be unpickled: %s", name, exc)
                ev, self._const_event = self._const_event, _Event()
                ev.fire()
            elif t == P.CANCEL:
                tid = P.ID.unpack_from(hdr, 1)[0]
                ok = hdr[9:10] == b"\x01"
                self._cancel_replies[tid] = ok
                if ok:
                    fut = self.futures.pop(tid, None)
                    if fut is not None:
                        fut._finish(CANCELLED)
            elif t == P.ASK:
                self._ask_replies[P.ID.unpack_from(hdr, 1)[0]] = hdr[9] if len(hdr) > 9 else 2
            elif t == P.FAIL:
                tid = P.ID.unpack_from(hdr, 1)[0]
                fut = self.futures.pop(tid, None)
                if fut is not None:
                    fut._finish(FINISHED, exception=WorkerLostError(body.decode()))
            elif t == P.SIZE:
                self.size = P.U32.unpack_from(hdr, 1)[0]
                _set_global("SIZE", self.size)
            elif t == P.WELCOME:
                w = json.loads(body)
                self.welcome = w
                self.index = w["index"]
                self._prefix = self.index << 40
                self.size = w["size"]
            elif t == P.SHUTDOWN:
                self._on_shutdown(body.decode() or "the cluster is shutting down")
            elif t == P.RETIRE:
                self.retiring = True


    def _on_shutdown(self, reason: str):
        if self.role == "worker":
            _hard_exit(0)
        self.broken = f"the SCOOP cluster ended: {reason}"
        self._fail_all(ClusterError(self.broken))

    # ---- waiting -----------------------------------------------------------------------------
    def wait_until(self, pred, timeout, futures, const: bool = False) -> bool:
        if pred():
            return True
        # in place only for an unbounded wait: a timeout must be honoured, and a run cannot be cut
        if self._held is not None and timeout is None and futures is not None and len(futures) == 1 \
                and self._inline_depth < INLINE_DEPTH:
            held = self._claim(next(iter(futures)))
            if held is not None:
                self._run_inline(held)
                if pred():
                    return True
        if self._held is not None:
            self._release_held()  # about to block on something else: the held task must run meanwhile
        deadline = None if timeout is None else time.monotonic() + timeout
        hub = self.hub
        if hub is not None and hub.current_task() is not None:
            if self.out:
                self.flush()
            waitables = list(futures or ())
            if const:
                waitables.append(self._const_event)
            while True:
                hub.block(waitables, deadline)
                if pred():
                    return True
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                if const:
                    waitables[-1] = self._const_event
        try:
            while True:
                if self.broken:
                    raise ClusterError(self.broken)
                if deadline is None:
                    step = 0.5
                else:
                    step = deadline - time.monotonic()
                    if step <= 0:
                        return pred()
                    step = min(step, 0.5)
                self.pump(step)
                if pred():
                    return True
        except KeyboardInterrupt:
            if self.role == "origin" and not self.broken:
                self.interrupt()
            raise

    # ---- worker side ---------------------------------------------------------------------------
    def _request_credit(self):
        want = self.target - len(self.pending) - len(self.hub.ready) - self.outstanding
        if want > 0:
            self.outstanding += want
            self.out += [P.CREDIT + P.I32.pack(want), P.EMPTY]

    def _get_fn(self, d: bytes):
        fn = self.fns.get(d)
        if fn is None:
            fn = P.loads(self._blob_bytes.pop(d))
            self.fns[d] = fn
        return fn

    def run_worker(self):
        """The worker's hub loop: runs tasks in greenlets, sends results in batches."""
        from ._scheduler import Hub, TaskGreenlet
        hub = self.hub = Hub()
        self._install_interrupt_handler()
        pending, ready = self.pending, hub.ready
        run_task = self._run_task
        monotonic = time.monotonic
        fn_avg = self._fn_avg
        while True:
            t0 = monotonic()
            while True:
                if ready:
                    g = ready.popleft()
                    self.running_group = g.group if type(g) is TaskGreenlet else None
                    g.switch()
                    self.running_group = None
                elif pending:
                    hdr, body = pending.popleft()
                    _, tid, group, d = P.TASK_HEADER.unpack(hdr)
                    if group in self.interrupted:
                        continue
                    if self.out and fn_avg.get(d, 1.0) > 0.0005:
                        self.flush()  # a task that may be long must not hold finished results back
                    self.running_group = group
                    TaskGreenlet(run_task, hub.g, group, tid).switch(hdr, body)
                    self.running_group = None
                else:
                    break
                if len(self.out) >= 128 or monotonic() - t0 > 0.002:
                    break
            if self._new_interrupts:
                self._apply_interrupts()
            if hub.timers:
                hub.fire_timers()
            if self.retiring:
                self._release_pending()
                if not ready and not hub.blocked:
                    self.out += [P.BYE, P.EMPTY]
                    self.flush()
                    return
            self.flush()
            if ready or pending:
                timeout = 0
            else:
                nt = hub.next_timer()
                timeout = 1.0 if nt is None else max(0.0, min(1.0, nt - monotonic()))
            self.pump(timeout)

    def _run_task(self, hdr, body):
        kind, tid, group, d = P.TASK_HEADER.unpack(hdr)
        t0 = time.perf_counter()
        name = "task"
        inputs = 1
        try:
            fn = self._get_fn(d)
            name = _name_of(fn)
            if kind == P.CHUNK:
                arglist = P.loads(body)
                inputs = len(arglist)
                value = self._run_chunk(fn, name, arglist)
            else:
                args, kwargs = P.loads(body)
                value = fn(*args, **kwargs)
            try:
                rb = P.dumps(value, what=f"result of task {name}")
                status = P.OK
            except P.SerializationError as exc:
                if kind == P.CHUNK:
                    rb, status = self._chunk_unpicklable(value, name, exc), P.OK
                else:
                    rb, status = P.dump_exception(exc, ""), P.RAISED
        except TaskInterrupted:
            self._known.discard(tid)
            return
        except BaseException as exc:  # noqa: B902 -- everything a task raises goes back to its caller
            rb, status = self._exception_payload(exc, name), P.RAISED
        self._known.discard(tid)
        self.out += [P.RESULT_HEADER.pack(P.RESULT, tid, status, inputs), rb]
        self.done_count += inputs
        dt = time.perf_counter() - t0
        fa = self._fn_avg.get(d)
        self._fn_avg[d] = dt if fa is None else 0.8 * fa + 0.2 * dt
        avg = self._avg = dt if self._avg is None else 0.8 * self._avg + 0.2 * dt
        # keep ~2 ms of queued work per worker: deep prefetch for tiny tasks, none for long ones
        # one spare task queued unless tasks are long: no idle round trip between tasks, while
        # work stealing evens out the end of a map
        self.target = 1 if avg > 0.1 else min(256, max(2, int(0.002 / max(avg, 1e-6)) + 1))

    def _run_chunk(self, fn, name, arglist):
        """Runs a map chunk in order; stops at the first exception, which the origin raises
        when its iteration reaches that input.  Returns (values, error_index, error, seconds)."""
        values = []
        t0 = time.perf_counter()
        append = values.append
        try:
            for args in arglist:
                append(fn(*args))
        except TaskInterrupted:
            raise
        except BaseException as exc:  # noqa: B902
            return values, len(values), self._exception_payload(exc, name), time.perf_counter() - t0
        return values, -1, None, time.perf_counter() - t0

    def _chunk_unpicklable(self, value, name, exc):
        values, err_i, err, elapsed = value
        for j, v in enumerate(values):
            try:
                P.dumps(v)
            except P.SerializationError as e:
                return P.dumps((values[:j], j, P.dump_exception(e, ""), elapsed))
        return P.dumps(([], 0, P.dump_exception(exc, ""), elapsed))

    def _exception_payload(self, exc, name) -> bytes:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next  # hide the worker's own frames: the user's code starts below them
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        host = self.info.get("host") or _socket.gethostname()
        text = f"[worker {self.index} on {host}, pid {os.getpid()}, task {name}]\n" + text
        return P.dump_exception(exc, text)

    def _install_interrupt_handler(self):
        if threading.current_thread() is not threading.main_thread():
            return
        main_ident = threading.get_ident()

        def on_interrupt(signum, frame):
            g = self.hub.current_task()
            if g is not None and g.group in self.interrupted:
                raise TaskInterrupted(f"task interrupted by its origin (group {g.group})")

        signal.signal(signal.SIGUSR1, on_interrupt)
        self._main_ident = main_ident

    def on_interrupt(self, group: int):
        """Control thread: a group was interrupted; kick the main thread out of its task."""
        self.interrupted.add(group)
        self._new_interrupts.append(group)
        ident = getattr(self, "_main_ident", None)
        # greenlet.getcurrent() is per thread: the hub publishes the running task's group
        if ident is not None and self.running_group == group:
            signal.pthread_kill(ident, signal.SIGUSR1)

    def _apply_interrupts(self):
        while self._new_interrupts:
            group = self._new_interrupts.popleft()
            with self._task_lock:
                kept = deque()
                for item in self.pending:
                    _, tid, g, _d = P.TASK_HEADER.unpack(item[0])
                    if g == group:
                        self._known.discard(tid)
                    else:
                        kept.append(item)
                self.pending.clear()  # in place: the hub loop holds this very deque
                self.pending.extend(kept)
            for g in list(self.hub.blocked_by_group.get(group, ())):
                g.throw(TaskInterrupted(f"task interrupted by its origin (group {group})"))
            for tid, f in list(self.futures.items()):
                if f.group == group:
                    del self.futures[tid]

    def _release_pending(self):
        with self._task_lock:
            for hdr, _body in self.pending:
                self._known.discard(P.ID.unpack_from(hdr, 1)[0])
                self.out += [P.RELEASE + hdr[1:9], P.EMPTY]
            self.pending.clear()

    def load(self) -> dict:
        hub = self.hub
        return {
            "queued": len(self.pending),
            "running": 0 if hub is None else (self.running_group is not None) + len(hub.ready),
            "blocked": 0 if hub is None else hub.blocked,
            "done": self.done_count,
            "submitted": self.submitted,
            "waiting": len(self.futures),
        }


class _Control(threading.Thread):
    """Heartbeats, load figures, interrupts and broker-loss detection, off the user's thread."""

    def __init__(self, rt: Runtime):
        super().__init__(name="scoop-control", daemon=True)
        self.rt = rt
        self._halt = threading.Event()
        self.last_pong = time.monotonic()
        # the origin waits on results and wants a held task out within ms; a worker computes,
        # and every wake-up of this thread costs its main thread a GIL hand-off
        self.tick_ms = 5 if rt.role == "origin" else 25
        self._proc = None
        self._born = time.monotonic()

    def stop(self):
        self._halt.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(2)

    def _send_held(self, s):
        """The submitter went on without waiting: its held task goes out from here."""
        rt = self.rt
        with rt._task_lock:
            held = rt._held
            if held is None or time.monotonic() - held[5] <= HOLD_SECONDS:
                return
            rt._held = None
        P.send(s, rt.signer, held[4])

    def _give_back(self, s, n: int):
        """Hands unstarted tasks back to the broker while the main thread is busy in a task;
        deque pops are atomic, so the two threads never take the same task."""
        out = []
        rt = self.rt
        with rt._task_lock:
            while n > 0:
                try:
                    hdr, _body = rt.pending.pop()
                except IndexError:
                    break
                rt._known.discard(P.ID.unpack_from(hdr, 1)[0])
                out += [P.RELEASE + hdr[1:9], P.EMPTY]
                n -= 1
        if out:
            P.send(s, self.rt.signer, out)

    def _cancel_pending(self, s, tid_bytes: bytes):
        """Cancels a prefetched task unless the main thread has started it: still in the
        socket (not received yet) or waiting in ``pending`` both count as not started."""
        rt = self.rt
        tid = P.ID.unpack(tid_bytes)[0]
        with rt._task_lock:
            if tid not in rt._known:
                rt._precancelled.add(tid)
                ok = True
            else:
                ok = False
                for item in list(rt.pending):
                    if item[0][1:9] == tid_bytes:
                        try:
                            rt.pending.remove(item)
                            rt._known.discard(tid)
                            ok = True
                        except ValueError:
                            pass  # started meanwhile
                        break
        P.send(s, rt.signer, [P.CANCEL + tid_bytes + (b"\x01" if ok else b"\x00"), P.EMPTY])

    def _figures(self) -> dict:
        load = self.rt.load()
        if self._proc is None and time.monotonic() - self._born > 0.5:
            # psutil costs ~10 ms to import: not on the path of a cluster's start
            try:
                import psutil
                self._proc = psutil.Process()
                self._proc.cpu_percent(None)
            except Exception:
                self._proc = False
        if self._proc:
            try:
                load["cpu"] = self._proc.cpu_percent(None)
                load["mem"] = self._proc.memory_info().rss
            except Exception:
                pass
        return load

    def run(self):
        rt = self.rt
        s = rt.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, b"c" + rt.uid.encode())
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RECONNECT_IVL, 50)
        s.connect(rt.broker)
        signer = rt.signer
        next_beat = 0.0
        try:
            while not self._halt.is_set():
                now = time.monotonic()
                if now >= next_beat:
                    P.send(s, signer, [P.HEARTBEAT, json.dumps(self._figures()).encode()])
                    next_beat = now + HEARTBEAT_INTERVAL
                held = rt._held
                if held is not None and time.monotonic() - held[5] > HOLD_SECONDS:
                    self._send_held(s)
                # short polls: stop() joins this thread, and a held task must not wait long
                if s.poll(min(self.tick_ms, int(max(0.0, next_beat - time.monotonic()) * 1000) + 1)):
                    while True:
                        try:
                            frames = P.recv_verified(s, signer, zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        if frames is None:
                            continue
                        self.last_pong = time.monotonic()
                        for i in range(0, len(frames), 2):
                            t = frames[i][:1]
                            if t == P.INTERRUPT:
                                rt.on_interrupt(P.U32.unpack_from(frames[i], 1)[0])
                            elif t == P.STEAL:
                                self._give_back(s, P.U32.unpack_from(frames[i], 1)[0])
                            elif t == P.CANCEL:
                                self._cancel_pending(s, frames[i][1:9])
                            elif t == P.SHUTDOWN:
                                rt.broken = rt.broken or "the SCOOP cluster ended: " + frames[i + 1].decode()
                                if rt.role == "worker":
                                    _hard_exit(0)
                if time.monotonic() - self.last_pong > rt.broker_timeout:
                    if rt.role == "worker":
                        sys.stderr.write(f"scoop worker {rt.index}: lost the broker at {rt.broker} "
                                         f"(no answer for {rt.broker_timeout:.0f} s); exiting\n")
                        _hard_exit(3)
                    rt.broken = f"lost the SCOOP broker at {rt.broker} (no answer for {rt.broker_timeout:.0f} s)"
                    return
        finally:
            s.close(0)


def _hard_exit(code: int):
    """Leaves at once: a worker holds no state worth a graceful teardown, and parked greenlets
    would otherwise be torn down one by one."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _set_global(name, value):
    import scoop
    setattr(scoop, name, value)
