"""The cluster connection of one process (origin or worker).

Two roles share it: the :class:`~scoop.submitter.Submitter` (every process may submit futures)
and, on workers, the :class:`~scoop.executor.Executor` (runs tasks).  The thread that runs user
code owns the task socket: submits, results and tasks cross only ZeroMQ hops, no thread
hand-off on the hot path.  A small control thread owns a second socket for load figures,
interrupts, steals and cancels, so those work while user code computes; to hand back tasks a
busy worker has not even received yet, it may take the task socket under ``lock`` (uncontended
on the hot path) and drain it.

Liveness is ZeroMQ's (see scoop.liveness): this process takes the broker for gone only when its
connection dropped and did not come back, never because it was itself too busy to listen.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket as _socket
import sys
import threading
import time
from collections import deque

import zmq

from . import _protocol as P
from . import _shm
from ._procutil import SelfLoad, end_children, raise_fd_limit
from ._seal import Sealer
from .bulk import Inbox, Outlet
from .bulk import tune as tune_lane
from .census import report_interval
from .direct import DONE_DELAY, OriginEnd, WorkerEnd, socket_dir
from .direct import available as direct_available
from .errors import ClusterError
from .liveness import DEFAULT_TIMEOUT, LOAD_INTERVAL, configure_socket, reconnect_grace
from .monitor import events
from .security import bulk_client, secure_client
from .submitter import Submitter

#: seconds a process waits for its welcome once the broker accepted its handshake
JOIN_PATIENCE = 120.0
#: seconds it waits for the broker to accept it again when the connection dropped after that:
#: a broker that is gone (its origin was killed) must not keep a starting worker for 2 minutes
REJOIN_PATIENCE = 8.0
#: seconds a process waits for its bulk lane's handshake (scoop.bulk) before it does without
LANE_PATIENCE = 2.0
INLINE_DEPTH = 50      # inline runs nest in one greenlet's stack: keep far from the recursion limit


def host_key() -> int:
    """Which processes share this host's memory: hostname, boot id and pid namespace (a sealed
    segment is opened through its sender's pid), hashed."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            boot = f.read().strip()
    except OSError:
        boot = b""
    try:
        pid_ns = os.readlink("/proc/self/ns/pid").encode()
    except OSError:
        pid_ns = b""
    h = hashlib.blake2b(_socket.gethostname().encode() + b"/" + boot + b"/" + pid_ns, digest_size=8).digest()
    return int.from_bytes(h, "little") or 1


TIMELINE_FIELDS = ("worker", "name", "start", "end", "inputs", "group", "ok")


class Runtime:
    """Connection of this process to the broker; one per process."""

    def __init__(self, broker: str, secret: bytes, role: str, *, info: dict | None = None,
                 broker_timeout: float = DEFAULT_TIMEOUT, context: zmq.Context | None = None,
                 inline: bool = True, encryption: bool = True):
        self.broker = broker
        self.secret = secret
        self.encryption = encryption
        self.signer = P.Signer(secret)
        self.role = role
        self.info = dict(info or {})
        self.broker_timeout = broker_timeout
        self.ctx = context or zmq.Context.instance()
        self.uid = os.urandom(8).hex()
        self.index = -1
        self.name = self.info.get("name") or role
        self.size = 0
        self.hosts = 1
        self.host_key = host_key()
        self.shm = _shm.Segments(P.derive(secret, "shared memory")) if _shm.available() else None
        # payload frames sealed end to end: opened from any sender; sealed here once a bulk lane
        # to the broker is open (``lane_seal``; scoop.bulk)
        self.sealer = Sealer(secret, bytes.fromhex(self.uid))
        self.lane_seal = None
        self.lane_sock = None
        self.outlet = None  # the lane's sending end (scoop.bulk.Outlet)
        self.inbox = None
        self.welcome: dict = {}
        self.out = P.Outbox()
        self.lock = threading.Lock()  # the task socket, when the control thread drains it
        self.deferred: deque = deque()  # records the control thread took from the task socket
        self.consts: dict[str, object] = {}
        self.closed = False
        self.confirmed = time.monotonic()  # when the broker last proved it still holds us (fencing)
        self.broken: str | None = None
        self.batching = 0
        self.sock = None
        self.direct_in = None   # origin: results straight from the workers on this host, leases to them
        self.direct_out = None  # worker: results for the origin, straight when it is on this host
        self.direct = None      # whichever of the two this process has
        self.control = None
        self.hub = None
        self.executor = None
        self.output_handler = None  # origin: fn(name, stream, text, group) for task output
        self.submitter = Submitter(self, inline)
        self._handlers = {
            P.RESULT: self.submitter.on_result, P.FAIL: self.submitter.on_fail,
            P.CANCEL: self.submitter.on_cancel_answer, P.ASK: self.submitter.on_ask_answer,
            P.CONST: self._on_const, P.SIZE: self._on_size, P.WELCOME: self._on_welcome,
            P.SHUTDOWN: self._on_shutdown, P.OUTPUT: self._on_output, P.BULK: self._on_bulk,
        }

    # ---- the submitter's API, used by scoop.futures, scoop.shared and scoop.origin --------------
    @property
    def futures(self):
        return self.submitter.futures

    @property
    def group(self):
        return self.submitter.group

    @group.setter
    def group(self, value):
        self.submitter.group = value

    @property
    def closed_for_submit(self):
        return self.submitter.closed_for_submit

    @closed_for_submit.setter
    def closed_for_submit(self, value):
        self.submitter.closed_for_submit = value

    def submit(self, fn, args, kwargs, flush: bool = True, digest: bytes | None = None):
        fut = self.submitter.submit(fn, args, kwargs, flush, digest)
        control = self.control
        if control is not None and control.dozing and self.submitter.held is not None:
            control.wake()  # the held task goes out after HOLD_SECONDS, not at the next report
        return fut

    def submit_chunk(self, fn, digest, arglist, name, single=False):
        return self.submitter.submit_chunk(fn, digest, arglist, name, single)

    @property
    def last_nbytes(self) -> int:
        return self.submitter.last_nbytes

    def _callable_digest(self, fn):
        return self.submitter.callable_digest(fn)

    def cancel(self, fut):
        return self.submitter.cancel(fut)

    def where(self, fut):
        return self.submitter.where(fut)

    def cancel_many(self, futs):
        self.submitter.cancel_many(futs)

    def set_const(self, name, value):
        self.submitter.set_const(name, value)

    def get_const(self, name, timeout):
        if name not in self.consts:
            self.wait_until(lambda: name in self.consts, timeout, None, const=True)
        return self.consts.get(name)

    def interrupt(self, group=None):
        self.submitter.interrupt(group)

    def retire(self, index: int):
        """Safe from any thread (a panel scales the cluster while this thread waits on a map):
        a message of its own, sent under the socket's lock, apart from the outbox."""
        box = P.Outbox()
        box.add(P.INDEX.pack(P.RETIRE, index))
        with self.lock:
            if self.sock is not None and not self.closed:
                P.send(self.sock, self.signer, P.TO_BROKER, box)

    def timeline(self) -> list[dict]:
        return [dict(zip(TIMELINE_FIELDS, t)) for t in list(self.submitter.timeline)]

    # ---- connection ------------------------------------------------------------------------
    def _socket(self, ident: bytes):
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, ident)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.setsockopt(zmq.RECONNECT_IVL, 50)
        configure_socket(s, self.broker_timeout)
        secure_client(s, self.secret, self.broker, self.encryption)
        return s

    def connect(self, timeout: float = 30.0):
        raise_fd_limit()  # an origin's own: a worker's and a broker's are raised at their start
        s = self._socket(b"t" + self.uid.encode())
        s.setsockopt(zmq.LINGER, 2000)
        admitted = s.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        accepted = dropped = False
        s.connect(self.broker)
        self.sock = s
        self._poll_items = [(s, zmq.POLLIN)]
        if self.role == "origin" and direct_available():
            end = OriginEnd(self.secret, self.signer)
            if end.sock is not None:
                self.direct = self.direct_in = end
                if self.shm is not None:  # where workers hand it their results' sealed segments
                    self.shm.listen(os.path.join(socket_dir(self.secret), _shm.INBOX))
        elif self.role == "worker" and direct_available():
            self.direct = self.direct_out = WorkerEnd(self.ctx, self.secret, self.signer, self.uid)
            if self.shm is not None:  # once the origin's directory here is known to be ours
                self.shm.hand_to(os.path.join(socket_dir(self.secret), _shm.INBOX), self.direct_out.reach)
        if self.direct is not None:
            self._poll_items.append((self.direct.sock, zmq.POLLIN))
        hello = dict(self.info, uid=self.uid, role=self.role, pid=os.getpid(), name=self.name,
                     host=self.info.get("host") or _socket.gethostname(), host_key=self.host_key)
        deadline = time.monotonic() + timeout
        control = None
        said = False
        try:
            # the hello names our control connection's id (random), and goes once that
            # connection is up: nobody who reads the id off the wire can take it first
            control = _Control(self)
            hello["control"] = control.id
            while self.index < 0:
                if not said and control.up():
                    self.out.add(P.HELLO, json.dumps(hello).encode())
                    self.send_out()
                    said = True
                for event, _ in events(admitted):
                    if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                        # the broker is alive and took our credentials; it may be busy welcoming
                        # hundreds of workers started at once on a few cores: be patient with it
                        accepted = True
                        deadline = max(deadline, time.monotonic() + JOIN_PATIENCE)
                    elif event == zmq.EVENT_DISCONNECTED and accepted:
                        # dropped after that: patient again only once a reconnect is accepted
                        accepted, dropped = False, True
                        deadline = min(deadline, time.monotonic() + REJOIN_PATIENCE)
                left = deadline - time.monotonic()
                if left <= 0 and dropped:
                    raise ClusterError(f"the broker at {self.broker} dropped this process's connection "
                                       f"before welcoming it and did not take it back (it has stopped)")
                if left <= 0:
                    raise ClusterError(f"no answer from the broker at {self.broker} within {timeout:.0f} s "
                                       f"(is it running, and is this the cluster's secret?)")
                if self.broken:
                    raise ClusterError(self.broken)
                if said:
                    self.pump(min(left, 0.2))
                else:  # nothing comes before our hello: wait for the control connection
                    control.monitor.poll(int(min(left, 0.2) * 1000) + 1)
        except BaseException:
            if control is not None:
                control.discard()
            raise
        finally:
            self._stop_monitor(s, admitted)
        self.confirmed = time.monotonic()  # welcomed
        self.control = control
        self.control.start()
        if self.shm is not None:
            _exit_cleanup.append(self.shm)
        return self

    @staticmethod
    def _stop_monitor(sock, monitor):
        if monitor is not None:
            sock.disable_monitor()
            monitor.close(0)

    def close(self, notify: bool = True):
        if self.closed:
            return
        self.closed = True
        if self.control is not None:
            self.control.stop()
        if self.sock is not None:
            try:
                if notify and not self.broken:
                    self.goodbye()
            except zmq.ZMQError:
                pass
            self.sock.close(linger=500 if notify else 0)
            self.sock = None
        if self.outlet is not None:
            self.outlet.close(linger=500 if notify else 0)
            self.outlet = self.lane_sock = None
        if self.direct is not None:
            self.direct.close()
        self.direct = self.direct_in = self.direct_out = None
        self.submitter.fail_all(ClusterError("the SCOOP cluster connection was closed"))
        if self.shm is not None:
            self.shm.cleanup(os.getpid())

    # ---- sending ---------------------------------------------------------------------------
    def goodbye(self):
        """Tells the broker this process leaves: what it finished first (the broker reads nothing
        of a peer after its goodbye, and would run again a task it had not heard was done)."""
        self.flush_all()
        self.out.add(P.BYE)
        self.send_out()

    def flush(self):
        self.submitter.release_held()
        self.send_out()

    def flush_all(self):
        """Everything out now, DONEs of results sent straight too: before a task that may be long,
        the broker must not count those tasks in flight (it would run them again if this worker
        died meanwhile)."""
        self.flush()
        direct = self.direct_out
        if direct is not None and direct.dones:
            direct.take_dones(self.out)
            self.send_out()

    def send_out(self):
        ex = self.executor
        if ex is not None:
            direct = self.direct_out
            if direct is not None:
                if direct.pending:
                    direct.flush(self.out, ex.idle())  # first: the origin waits on these
                if direct.dones and (self.out or direct.due()):
                    direct.take_dones(self.out)
            ex.request_credit()
        elif self.submitter.leases and self.out:
            self.submitter.take_leases(self.out)  # they ride along (else the control thread sends them)
        if self.out and self.sock is not None:
            with self.lock:
                P.send(self.sock, self.signer, P.TO_BROKER, self.out,
                       lane=self.outlet if self.out.lane_ok else None)

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
        if self.out or self.direct_out:
            self.flush()
        if self.deferred:
            self._handle(self._take_deferred())
        direct = self.direct
        ready = direct_ready = False
        look = True  # at the task socket
        if timeout:
            found = zmq.zmq_poll(self._poll_items, int(timeout * 1000))
            if not found:
                return 0
            # a socket found ready need not be asked again (but the control thread may drain
            # the task socket); one not found waits for the next pump: each question costs
            ready = look = found[0][0] is sock
            direct_ready = len(found) > ready
        n = 0
        if direct is not None and (direct_ready or not timeout):
            handle = self._handle if self.executor is None else self._handle_direct
            n += direct.drain(handle, direct_ready)
        while look:
            with self.lock:
                if not ready and not sock.getsockopt(P.EVENTS) & P.POLLIN:
                    break
                ready = False
                try:
                    recs = P.recv_verified(sock, self.signer, P.FROM_BROKER, P.NOBLOCK, self.inbox)
                except zmq.Again:
                    break
            n += 1
            if recs is not None:
                self._handle(recs)
        if self.deferred:
            self._handle(self._take_deferred())
        return n

    def _take_deferred(self):
        out = []
        while self.deferred:
            out.extend(self.deferred.popleft())
        return out

    def drain_into_pending(self):
        """Control thread: moves everything waiting in the task socket out of it, tasks into
        the executor's queue (where they can be handed back), the rest for the main thread."""
        ex = self.executor
        with self.lock:
            sock = self.sock
            while sock is not None and sock.getsockopt(P.EVENTS) & P.POLLIN:
                recs = P.recv_verified(sock, self.signer, P.FROM_BROKER, P.NOBLOCK, self.inbox)
                if recs is None:
                    continue
                rest = []
                for rec in recs:
                    t = rec.hdr[:1]
                    if (t == P.TASK or t == P.CHUNK) and ex is not None:
                        ex.on_task(rec)
                    elif t == P.BLOB and ex is not None:
                        ex.on_blob(rec)
                    else:
                        rest.append(rec)
                if rest:
                    self.deferred.append(rest)

    def _handle(self, recs):
        handlers = self._handlers
        for rec in recs:
            h = handlers.get(rec.hdr[:1])
            if h is not None:
                h(rec)

    def _handle_direct(self, recs):
        """A worker: what the origin sent straight here is a leased task and its callable."""
        ex = self.executor
        for rec in recs:
            t = rec.hdr[:1]
            if t == P.TASK or t == P.CHUNK:
                ex.on_task(rec, leased=True)
            elif t == P.BLOB:
                ex.on_blob(rec)

    def _on_const(self, rec):
        name = P.const_name(rec.hdr)
        if name not in self.consts:
            try:
                self.consts[name] = P.unpack(rec, self.shm, self.sealer)
            except Exception as exc:
                from . import logger
                logger.error("shared constant %r could not be unpickled: %s", name, exc)
        self.submitter.const_arrived()

    def _on_bulk(self, rec):
        """The broker offers a bulk lane (scoop.bulk): sealed payload frames go on a connection of
        their own, beside this CURVE one, and come back on it."""
        if self.lane_sock is not None or self.closed or not self.broker.startswith("tcp://"):
            return
        port = P.BULK_HEADER.unpack(rec.hdr)[1]
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, b"b" + self.uid.encode())
        tune_lane(s, "member", self.broker_timeout)  # a full queue makes the sender wait (Outlet)
        bulk_client(s, self.secret, self.sealer.uid)
        monitor = s.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                       | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_CLOSED
                                       | zmq.EVENT_DISCONNECTED)
        s.connect(f"{self.broker.rsplit(':', 1)[0]}:{port}")
        up = gone = None
        deadline = time.monotonic() + LANE_PATIENCE
        while up is None and monitor.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            for event, _ in events(monitor):
                if up is None:
                    up = event == zmq.EVENT_HANDSHAKE_SUCCEEDED
                elif event in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED):
                    gone = True  # the broker ended right after: its lane with it
        if not up or gone:
            # not reachable here (an SSH tunnel forwards the task port only): payloads stay on CURVE
            self._stop_monitor(s, monitor)
            s.close(0)
            return

        def recv(timeout):
            if s.poll(int(timeout * 1000) + 1):
                return s.recv(copy=False)
            return None

        # ready to take frames before the hello tells the broker to send them here: a header
        # read meanwhile (by the control thread too) finds its frames' inbox
        with self.lock:
            self.lane_sock = s
            self.outlet = Outlet(s, monitor, lambda: self.closed or self.broken is not None)
            self.inbox = Inbox(recv)
            # names this member to the broker: frames for it come here now.  Through the outlet,
            # never a plain send: a lane whose broker ended has no peer (it does not reconnect),
            # and a blocking send there would wait for ever
            if not self.outlet.send([self.sealer.hello()]):
                self.outlet.close(0)
                self.outlet = self.lane_sock = self.inbox = None
                return
            self.out.lane_ok = True
        self.lane_seal = self.sealer

    def seal_for(self, direct: bool = False):
        """The sealer to pack a payload with: none without a bulk lane, nor for a result that goes
        straight to the origin on this host (scoop.direct: a same-host socket, as it was)."""
        return None if direct else self.lane_seal

    def _on_size(self, rec):
        _, self.size, self.hosts = P.SIZE_HEADER.unpack(rec.hdr)
        _set_global("SIZE", self.size)

    def _on_welcome(self, rec):
        w = json.loads(bytes(rec.body))
        self.welcome = w
        self.index = w["index"]
        self.name = w.get("name") or self.name
        self.submitter.prefix = self.index << P.TID_SHIFT
        self.size = w["size"]
        self.hosts = w.get("hosts", 1)

    def _on_output(self, rec):
        group = P.GROUP.unpack(rec.hdr)[1]
        try:
            name, stream, text = json.loads(bytes(rec.body))
        except ValueError:
            return
        handler = self.output_handler
        if handler is not None:
            try:
                handler(name, stream, text, group)
                return
            except Exception:
                pass
        out = sys.stderr if stream == "stderr" else sys.stdout
        out.write(text)
        out.flush()

    def _on_shutdown(self, rec):
        reason = bytes(rec.body).decode() or "the cluster is shutting down"
        if self.role == "worker":
            _hard_exit(0)
        self.broken = f"the SCOOP cluster ended: {reason}"
        self.submitter.fail_all(ClusterError(self.broken))

    # ---- waiting -----------------------------------------------------------------------------
    def wait_until(self, pred, timeout, futures, const: bool = False) -> bool:
        if pred():
            return True
        sub = self.submitter
        # in place only for an unbounded wait: a timeout must be honoured, and a run cannot be cut
        if sub.held is not None and timeout is None and futures is not None and len(futures) == 1 \
                and sub.inline_depth < INLINE_DEPTH:
            held = sub.claim(next(iter(futures)))
            if held is not None:
                sub.run_inline(held)
                if pred():
                    return True
        if sub.held is not None:
            # about to block on something else: the held task must run meanwhile, leased to an
            # idle worker if nothing else is in flight
            sub.release_held(lease=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        hub = self.hub
        if hub is not None and hub.current_task() is not None:
            if self.out:
                self.flush()
            waitables = list(futures or ())
            if const:
                waitables.append(sub.const_event)
            while True:
                hub.block(waitables, deadline)
                if pred():
                    return True
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                if const:
                    waitables[-1] = sub.const_event
        try:
            while True:
                if self.broken:
                    raise ClusterError(self.broken)
                step = 0.5 if deadline is None else min(max(0.0, deadline - time.monotonic()), 0.5)
                self.pump(step)  # at least once: what already arrived counts, even at timeout=0
                if pred():
                    return True
                if step == 0.0:
                    return False
        except KeyboardInterrupt:
            if self.role == "origin" and not self.broken:
                sub.interrupt()
            raise

    def load(self) -> dict:
        figures = {"done": self.submitter.done_count, "submitted": self.submitter.submitted,
                   "waiting": len(self.submitter.futures)}
        if self.executor is not None:
            figures.update(self.executor.load())
        return figures


class _Control(threading.Thread):
    """Load figures, interrupts, steals, cancels and broker-loss detection, off the user's thread."""

    def __init__(self, rt: Runtime):
        super().__init__(name="scoop-control", daemon=True)
        self.rt = rt
        self._halt = threading.Event()
        # the origin waits on results and wants a held task out within ms; a worker computes,
        # and every wake-up of this thread costs its main thread a GIL hand-off
        self.tick_ms = 5 if rt.role == "origin" else 25
        # a worker's thread sleeps until its next load report unless a held task waits on it:
        # 256 idle workers waking at 40 Hz took half of 2 cores.  ``dozing`` says so; a submit
        # that holds a task, and stop(), wake it through a pipe
        self.may_doze = rt.role == "worker"
        self.dozing = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._proc = None
        self.disconnected_at = None
        self.id = os.urandom(8).hex()  # not the uid: read off the wire, that one tells nothing of this
        self.sock = self.monitor = None
        try:
            self.sock = s = rt._socket(b"c" + self.id.encode())
            s.setsockopt(zmq.LINGER, 0)
            # a refused connect (CONNECT_RETRIED) counts as a drop: a broker that ended between
            # our welcome and this connect never connected, so it can never disconnect
            self.monitor = s.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED
                                                | zmq.EVENT_HANDSHAKE_SUCCEEDED
                                                | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                                | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
            s.connect(rt.broker)
        except BaseException:
            self.discard()
            raise
        self._up = False

    def up(self) -> bool:
        """Whether this connection's handshake succeeded (before the thread runs: the join
        waits for it).  Events before that one are of no use to the thread."""
        if not self._up:
            for event, _ in events(self.monitor):  # read lazily: later events stay for the thread
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self._up = True
                    break
                if event in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                    raise ClusterError(f"the broker at {self.rt.broker} refused this process's "
                                       f"credentials (not this cluster's secret)")
        return self._up

    def wake(self):
        self.dozing = False
        try:
            os.write(self._wake_w, b"w")
        except OSError:  # full (it will wake anyway) or closed (it has ended)
            pass

    def stop(self):
        self._halt.set()
        self.wake()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(2)

    def _figures(self) -> dict:
        load = self.rt.load()
        if self._proc is None:
            self._proc = SelfLoad()
        load["cpu"] = self._proc.cpu_percent()
        load["mem"] = self._proc.rss()
        return load

    def _on_connection_event(self, monitor):
        for ev, _ in events(monitor):
            if ev in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CONNECT_RETRIED):
                self.disconnected_at = self.disconnected_at or time.monotonic()
            elif ev == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.disconnected_at = None
            elif ev in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                self._lost("the broker refused this process's credentials (not this cluster's secret)")

    def _lost(self, why: str):
        rt = self.rt
        if rt.role == "worker":
            _hard_exit(3, f"scoop worker {rt.name}: {why}; exiting\n")
        rt.broken = why
        self._halt.set()

    def run(self):
        rt = self.rt
        s, monitor = self.sock, self.monitor
        poller = zmq.Poller()
        poller.register(s, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        signer = rt.signer
        sub = rt.submitter
        grace = reconnect_grace(rt.broker_timeout)
        next_load = 0.0
        handlers = {P.INTERRUPT: self._interrupt, P.STEAL: self._steal, P.CANCEL: self._cancel,
                    P.SHUTDOWN: self._shutdown}
        try:
            while not self._halt.is_set():
                now = time.monotonic()
                if now >= next_load:
                    load = json.dumps(self._figures()).encode()
                    P.send_records(s, signer, P.CONTROL_TO_BROKER, [(P.LOAD, load)])
                    next_load = now + report_interval(rt.size, LOAD_INTERVAL)
                held = sub.held
                if held is not None and now - held.since > sub.hold_seconds:
                    box = sub.take_held_box()
                    if box is not None:
                        P.send(s, signer, P.CONTROL_TO_BROKER, box)
                if sub.leases and now - sub.leases_since > DONE_DELAY:
                    box = P.Outbox()
                    sub.take_leases(box)  # the main thread sent nothing they could ride on
                    if box:
                        P.send(s, signer, P.CONTROL_TO_BROKER, box)
                # short polls while a held task or leases wait (they must not wait long)
                wait_ms = int(max(0.0, next_load - time.monotonic()) * 1000) + 1
                if self.may_doze:
                    self.dozing = True  # before the look at held: a submit that holds sees it
                if not self.may_doze or sub.held is not None or sub.leases:
                    self.dozing = False
                    wait_ms = min(self.tick_ms, wait_ms)
                events = dict(poller.poll(wait_ms))
                self.dozing = False
                if self._wake_r in events:
                    os.read(self._wake_r, 4096)
                if monitor in events:
                    self._on_connection_event(monitor)
                if s in events:
                    while True:
                        try:
                            recs = P.recv_verified(s, signer, P.CONTROL_FROM_BROKER, P.NOBLOCK)
                        except zmq.Again:
                            break
                        for rec in recs or ():
                            h = handlers.get(rec.hdr[:1])
                            if h is not None:
                                h(s, rec)
                if self.disconnected_at is not None and time.monotonic() - self.disconnected_at > grace:
                    self._lost(f"lost the SCOOP broker at {rt.broker} (its connection dropped and did not "
                               f"come back within {grace:.0f} s)")
        finally:
            self.discard()

    def discard(self):
        """Closes what this thread holds, also when it never ran (a join that failed)."""
        s = self.sock
        if s is not None:
            s.disable_monitor()
            s.close(0)
        if self.monitor is not None:
            self.monitor.close(0)
        os.close(self._wake_r)
        w, self._wake_w = self._wake_w, -1
        os.close(w)

    def _interrupt(self, s, rec):
        if self.rt.executor is not None:
            self.rt.executor.on_interrupt(P.GROUP.unpack(rec.hdr)[1])

    def _steal(self, s, rec):
        if self.rt.executor is not None:
            box = self.rt.executor.give_back(P.COUNT.unpack(rec.hdr)[1])
            if box:
                P.send(s, self.rt.signer, P.CONTROL_TO_BROKER, box)

    def _cancel(self, s, rec):
        if self.rt.executor is not None:
            box = self.rt.executor.cancel_pending(P.task_id(rec.hdr))
            P.send(s, self.rt.signer, P.CONTROL_TO_BROKER, box)

    def _shutdown(self, s, rec):
        rt = self.rt
        rt.broken = rt.broken or "the SCOOP cluster ended: " + bytes(rec.body).decode()
        if rt.role == "worker":
            _hard_exit(0)


def _hard_exit(code: int, why: str = ""):
    """Leaves at once: a worker holds no state worth a graceful teardown, and parked greenlets
    would otherwise be torn down one by one.  Saying ``why`` may fail (the launcher that read
    our output is gone: a broken pipe); leaving may not."""
    try:
        if why:
            sys.stderr.write(why)
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        try:
            for shm in _exit_cleanup:
                shm.cleanup(os.getpid())  # segments this process made that nobody will free now
            end_children()  # a worker's tasks' processes end with it
        finally:
            os._exit(code)


_exit_cleanup: list = []


def _set_global(name, value):
    import scoop
    setattr(scoop, name, value)
