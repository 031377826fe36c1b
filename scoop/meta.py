"""The meta stream: cluster snapshots and events, from the broker to the views.

Observers (the Cluster object, the notebook dashboard, the lab panel) read them here instead of
polling workers.  The broker's meta socket is a ROUTER (:class:`Views`), not a PUB: a PUB files
every subscription a peer sends in libzmq's trie before the broker sees it, so one peer past the
handshake could grow the broker without bound with distinct subscriptions.  Here a view (a
DEALER, :class:`MetaSubscriber`) says hello once, a signed record, and the broker sends each
message to each view it knows; libzmq keeps nothing per message a view sends.  The bounds:

* only peers past the handshake (CURVE over TCP, keys from the secret) reach the socket, and a
  hello must carry the secret's MAC (channel ``P.VIEW_HELLO``): a peer with the PLAIN token of an
  unencrypted cluster but not the secret is cut at its first message, and each hello carries a
  nonce and is taken once (one read off an unencrypted wire and sent again is cut too);
* at most ``VIEWS_MAX`` views at once; a hello beyond them is dropped (the view says hello again
  every ``HELLO_AGAIN`` s while it hears nothing, so it gets in once a place is free);
* ``VIEW_QUEUE`` messages queued per view (SNDHWM): a view that stops reading misses snapshots
  (each one is whole, the newest wins) and costs the broker no more;
* a view's messages are at most ``VIEW_IN_MAX`` bytes (MAXMSGSIZE); what a registered view sends
  beyond its hellos is read and dropped, and a view that sends more than ``VIEW_SAYS_MAX`` in
  ``VIEW_WINDOW`` s is cut (its connection ended: it must handshake again);
* a view whose connection is gone is forgotten at the next message sent to it (ROUTER_MANDATORY);
* a connection no valid hello came on yet may make libzmq read ahead at most
  ``scoop.readahead.LIMIT`` bytes (a message whose frames never end is cut, :meth:`Views.guard`).

Each message is one signed frame with one record: STATUS (a snapshot) or EVENT, with a JSON
body.  A snapshot comes every 0.2 s (every ``workers / 20000`` s beyond 4,000 workers), and soon
after a join or a leave; its size does not grow with the workers (scoop.census):

    state     "running" | "stopped";   time: epoch seconds;   tick: its sequence number
    totals    workers (the whole cluster), busy (share 0..1), idle, retiring, done, queued,
              in_flight, running (tasks held by workers), rate (tasks/s), lost_workers,
              dropped_messages, routed_messages, views (views registered now), refused_hellos
              (peers' hellos refused: used before, or not naming their own connection)
    hist      {"held": {"edges", "counts"}, "cpu": {"edges", "counts"}}: workers per bin of tasks
              held and of CPU %, bins starting at each edge
    top       {"busiest", "idle", "changed"}: worker ids (busiest first; idle ones; state changed
              lately, latest last)
    workers   records {id, name, host, pid, host_key, role, state, queued, running, blocked,
              assigned, done, cpu, mem, retiring[, via: the sub-broker's index]}: every worker
              while there are at most 256 (complete: true), else those named in top plus a page
              of 64 that rotates over all of them (page: {start, size, of})
    left      ids of workers gone since the previous snapshot
    origin    the origin's record or null;   broker: {main_port, meta_port}

An event is {event: "joined" | "left" | "retiring" | "const" | "shutdown", time, worker: record
(joined, left, retiring), reason (left, shutdown), name (const)}.

:class:`MetaSubscriber` keeps every worker's latest record (scoop.census.Book), so ``latest``
and the callbacks see a snapshot whose ``workers`` lists every worker known; ``complete`` says
whether that is all of them yet (a subscriber that joins a large cluster late has them all
after one rotation).
"""
from __future__ import annotations

import errno
import json
import os
import threading
import time

import zmq

from . import _protocol as P
from .census import Book
from .hangup import end_connection, identity
from .liveness import bound_handshakes
from .monitor import events
from .readahead import Unproven
from .security import Once, secure_client, secure_server

VIEWS_MAX = 64       # views registered at once
VIEW_QUEUE = 16      # messages queued for one view (SNDHWM); beyond, it misses them
VIEW_IN_MAX = 512    # bytes of the largest message a view may send (a hello is ~60)
VIEW_IN_QUEUE = 16   # messages libzmq reads ahead from one view (RCVHWM)
VIEW_SAYS_MAX = 40   # messages a registered view may send per VIEW_WINDOW (hellos again: ~4)
VIEW_WINDOW = 10.0   # seconds
VIEW_GONE_MS = 60_000  # ms a view's connection may leave snapshots unacknowledged (TCP_MAXRT)
HELLO_AGAIN = 3.0    # seconds a view hears nothing before it says hello again (its connection
                     # may be new: the broker knows a view by its connection)
_HELLO_BODY = b"view"
_NONCE = 16
_ACCEPTED = int(zmq.EVENT_ACCEPTED)


def hello(signer: P.Signer) -> bytes:
    """A view's hello: one signed record, for the meta channel towards the broker only, with a
    nonce of its own: the broker takes each hello once (scoop.security.Once), so one read off an
    unencrypted wire registers nobody."""
    box = P.Outbox()
    box.add(P.HELLO, _HELLO_BODY + os.urandom(_NONCE))
    data, _ = box.take()
    return signer.mac(P.VIEW_HELLO, data) + data


def open_view(ctx: zmq.Context, secret: bytes, address: str, encryption: bool = True) -> zmq.Socket:
    """A view's socket, connected to the broker's meta socket at ``address``, its hello sent:
    read it with :func:`read_view`, and send :func:`hello` again after ``HELLO_AGAIN`` s of
    silence."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 1)  # hellos only: an unsent one is replaced by the next
    s.setsockopt(zmq.RCVHWM, VIEW_QUEUE)
    secure_client(s, secret, address, encryption)
    s.connect(address)
    try:
        s.send(hello(P.Signer(secret)), zmq.NOBLOCK)
    except zmq.Again:
        pass  # not connected yet: the next hello goes
    return s


def read_view(sock: zmq.Socket, signer: P.Signer):
    """The next message on a view's socket as ``(kind, data)``: kind ``"status"`` or ``"event"``,
    data the decoded JSON; None for a message that does not verify or decode."""
    msg = sock.recv_multipart(zmq.NOBLOCK)
    if len(msg) != 1 or not signer.check(P.META, msg[0]):
        return None
    recs = P.parse(msg[0], [])
    if not recs:
        return None
    t = recs[0].hdr[:1]
    if t not in (P.STATUS, P.EVENT):
        return None
    try:
        data = json.loads(bytes(recs[0].body))
    except ValueError:
        return None
    return ("status" if t == P.STATUS else "event"), data


class Views:
    """The broker's end of the meta stream: a ROUTER on which views register with a hello, and
    each message goes to each view, dropped for one whose queue is full (see the module's
    bounds).  The broker polls :attr:`sock` and calls :meth:`read` when it is readable."""

    def __init__(self, ctx: zmq.Context, secret: bytes, address: str, heartbeat_timeout: float,
                 encryption: bool = True):
        self.signer = P.Signer(secret)
        s = self.sock = ctx.socket(zmq.ROUTER)
        for opt, val in ((zmq.LINGER, 0), (zmq.MAXMSGSIZE, VIEW_IN_MAX), (zmq.SNDHWM, VIEW_QUEUE),
                         (zmq.RCVHWM, VIEW_IN_QUEUE), (zmq.ROUTER_MANDATORY, 1), (zmq.BACKLOG, 256),
                         # a view on a host that is gone: its connection drops once snapshots
                         # stay unacknowledged this long, and it is forgotten
                         (zmq.TCP_MAXRT, VIEW_GONE_MS)):
            s.setsockopt(opt, val)
        # no ZMTP heartbeats; resets are dropped all the same (the broker filters this socket:
        # a view's own PING, read before it reset, aborts libzmq as a heartbeat would, scoop.hangup)
        bound_handshakes(s, heartbeat_timeout)
        secure_server(s, secret, address, encryption)
        # before any bind: every connection is seen, and measured until a valid hello comes
        self.monitor = s.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self.unproven = Unproven()
        self.views: dict[bytes, int] = {}   # identity (one per connection) -> messages this window
        self._window = time.monotonic()
        self.refused = 0   # hellos beyond VIEWS_MAX
        self.hellos = Once()  # nonces of the hellos taken
        self.replayed = 0  # hellos taken before: read off the wire and sent again
        self.cut = 0       # connections ended: a message that failed the check, or too many
        # descriptors of connections cut and not yet closed: libzmq may still hand over what it
        # had read from them (the frames of a message cut short), which must not cut that number
        # again -- by then it may name another connection
        self._ended: set = set()
        # this socket's open connections: fd -> socket identity (scoop.hangup), so that a cut
        # never ends a number another socket of the broker (a member's) was given since
        self._open: dict[int, tuple | None] = {}
        self.missed = 0    # messages a view's full queue did not take

    def read(self, most: int = 64) -> None:
        """What views sent: a valid hello registers its connection; anything else from a
        stranger to the secret ends its connection; a registered view's messages are counted
        and dropped."""
        s = self.sock
        views = self.views
        self._connections()  # first: a hello read before its connection's acceptance would not count
        now = time.monotonic()
        if now - self._window >= VIEW_WINDOW:
            self._window = now
            for ident in views:
                views[ident] = 0
        for _ in range(most):
            try:
                ident = s.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not s.getsockopt(zmq.RCVMORE):
                continue
            head = s.recv(copy=False)
            single = not s.getsockopt(zmq.RCVMORE)
            while s.getsockopt(zmq.RCVMORE):
                s.recv(copy=False)
            said = views.get(ident)
            checked = single and self.signer.check(P.VIEW_HELLO, head.bytes)
            nonce = _hello_nonce(head.bytes) if checked else None
            fresh = nonce is not None and self.hellos.take(nonce)  # every hello's, so none is taken twice
            if said is not None:
                views[ident] = said + 1
                if said < VIEW_SAYS_MAX:
                    continue  # a hello again, or noise: read, dropped
                del views[ident]
            elif fresh:
                self.unproven.proven(head.get(zmq.SRCFD))
                if len(views) < VIEWS_MAX:
                    views[ident] = 1
                else:
                    self.refused += 1
                continue
            elif nonce is not None:
                self.replayed += 1
            self._cut(head.get(zmq.SRCFD))

    def send(self, kind: bytes, body: bytes) -> None:
        """One signed record to every view.  The same frame goes to each (no copy per view)."""
        box = P.Outbox()
        box.add(kind, body)
        data, _ = box.take()
        frame = zmq.Frame(self.signer.mac(P.META, data) + data)
        s = self.sock
        gone = None
        for ident in self.views:
            try:
                s.send(ident, zmq.NOBLOCK | zmq.SNDMORE)
                s.send(frame, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self.missed += 1  # its queue is full: this one is dropped, the next may go
            except zmq.ZMQError as exc:
                if exc.errno != errno.EHOSTUNREACH:
                    raise
                gone = gone or []
                gone.append(ident)  # its connection is gone
        for ident in gone or ():
            del self.views[ident]

    def guard(self) -> None:
        """Connections accepted and dropped since the last call, and a slice of those no valid
        hello came on yet measured: one libzmq read more than ``scoop.readahead.LIMIT`` bytes
        from (a message that never ends) is cut.  Call it every ``scoop.readahead.INTERVAL`` s
        while :attr:`unproven` is not empty, whether or not :attr:`sock` is readable."""
        self._connections()
        if self.unproven:
            for fd, _ in self.unproven.over():
                self._cut(fd)

    def _connections(self) -> None:
        unproven = self.unproven
        for event, fd in events(self.monitor):
            self._ended.discard(fd)
            if event == _ACCEPTED:
                unproven.opened(fd)
                self._open[fd] = identity(fd)
            else:
                unproven.closed(fd)
                self._open.pop(fd, None)

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(linger=0)

    def _cut(self, fd) -> None:
        """Ends a view's connection as the broker ends any other (scoop.hangup): only one of
        this socket's, still the socket it was when accepted."""
        if fd is None or fd < 0 or fd in self._ended:
            return
        self._connections()  # a number closed since is not this socket's any more
        known = self._open.get(fd)
        if known is not None and end_connection(fd, known):
            self._ended.add(fd)
            self.cut += 1


def _hello_nonce(header: bytes) -> bytes | None:
    """The nonce of a view's hello (its MAC checked), None for anything else."""
    recs = P.parse(header, [])
    if not recs or len(recs) != 1 or recs[0].hdr != P.HELLO:
        return None
    body = bytes(recs[0].body)
    if len(body) != len(_HELLO_BODY) + _NONCE or not body.startswith(_HELLO_BODY):
        return None
    return body[len(_HELLO_BODY):]


class MetaSubscriber(threading.Thread):
    def __init__(self, address: str, secret: bytes, context: zmq.Context | None = None,
                 encryption: bool = True):
        super().__init__(name="scoop-meta", daemon=True)
        self.address = address
        self.signer = P.Signer(secret)
        self.secret = secret
        self.encryption = encryption
        self.ctx = context or zmq.Context.instance()
        self.latest: dict | None = None
        self.book = Book()
        self.events: list[dict] = []
        self._callbacks: list = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._halt = threading.Event()

    def subscribe(self, callback):
        """``callback(kind, data)`` with kind "status" (a snapshot, ~5/s) or "event"; called from
        this thread.  Returns a function that unsubscribes."""
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe():
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)
        return unsubscribe

    def wait_for(self, pred, timeout: float) -> dict | None:
        """Blocks until a snapshot satisfies ``pred`` (or timeout); returns the latest snapshot."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.latest is None or not pred(self.latest):
                left = deadline - time.monotonic()
                if left <= 0 or self._halt.is_set():
                    break
                self._cond.wait(min(left, 0.1))
            return self.latest

    def stop(self, wait: bool = False):
        """Asks the thread to end; it does within one 50 ms poll, so stopping a cluster need
        not wait for it (unless ``wait``)."""
        self._halt.set()
        if wait and self.is_alive() and threading.current_thread() is not self:
            self.join(2)

    def run(self):
        s = open_view(self.ctx, self.secret, self.address, self.encryption)
        heard = time.monotonic()
        try:
            while not self._halt.is_set():
                if not s.poll(50):
                    if time.monotonic() - heard >= HELLO_AGAIN:
                        # nothing for a while: maybe a new connection the broker does not know yet
                        heard = time.monotonic()
                        try:
                            s.send(hello(self.signer), zmq.NOBLOCK)
                        except zmq.Again:
                            pass
                    continue
                heard = time.monotonic()
                while True:
                    try:
                        got = read_view(s, self.signer)
                    except zmq.Again:
                        break
                    if got is None:
                        continue
                    kind, data = got
                    if kind == "status" and isinstance(data, dict):
                        data = self.book.apply(data)
                    with self._cond:
                        if kind == "status":
                            self.latest = data
                        else:
                            self.events.append(data)
                            del self.events[:-200]
                        self._cond.notify_all()
                        callbacks = list(self._callbacks)
                    for cb in callbacks:
                        try:
                            cb(kind, data)
                        except Exception:
                            from . import logger
                            logger.exception("meta-stream callback %r failed", cb)
        finally:
            s.close(0)


class JoinedNames(set):
    """The names of every worker seen in the cluster at least once: a worker that ends after
    joining was lost (and is replaced); one that ends before never started."""

    def note(self, kind: str, data: dict) -> None:
        """Meta-stream callback."""
        if kind == "event" and data.get("event") == "joined":
            name = (data.get("worker") or {}).get("name")
            if name:
                self.add(name)
        elif kind == "status":
            self.update(w["name"] for w in data.get("workers", ()) if w.get("name"))

