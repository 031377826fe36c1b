"""The bulk lane: sealed payload frames on a connection of their own, beside the CURVE one.

CurveZMQ encrypts every byte of a connection, ~1 GB/s.  Payload frames sealed end to end
(scoop._seal: AES-256-GCM, several GB/s) need no second encryption, so a member across the
network sends them on a second, "bulk" connection to the broker that has no CURVE (ZeroMQ's
NULL handshake), and keeps its CURVE connection for the handshake, the signed headers and
everything small.  The broker pairs each bulk frame with its header by (sender, counter) --
which the header's signed ref names -- and forwards it as the same frame, on the receiver's
bulk connection or, for a receiver without one, in the message beside its header.

The bulk socket admits anyone, so nothing on it is trusted before its prefix is checked:

* Every frame starts with a prefix MAC'd with a key from the secret (scoop._seal.Prefix: sender,
  counter, length).  A frame whose prefix does not check, or names another sender than its
  connection, or a process that is not a member here, is dropped unread and its connection cut.
* A counter is taken once per sender (a sliding window of ``WINDOW`` counters), so a captured
  frame replayed is dropped too.
* What the broker holds unpaired is bounded per sender: ``MAX_UNPAIRED`` bytes of frames whose
  header has not come, headers waiting for frames up to ``MAX_WAITING`` bytes, and either
  waiting more than ``MAX_WAIT`` seconds with no new frame from that sender (counted from when
  the first waiting header came, if later) is dropped.  A
  member that leaves or is lost leaves nothing here (:meth:`Pairing.forget`).

What is queued on a lane is bounded both ways, by back-pressure, never by drops: a member queues
at most ``QUEUE`` frames for the broker and waits for room (:class:`Outlet`), and the broker
queues at most ``QUEUE`` frames for a member, the rest waiting in that member's outbox with the
headers that need them.  A member sends a message's header before its frames, so the broker,
holding the header, knows the frames it waits for and counts them against what the header
signed, not against ``MAX_UNPAIRED``.

A lane has no heartbeats of its own: its member's CURVE connection says whether the member is
alive, and a member that is lost has its lane cut.  (libzmq drops a connection whose reading
it paused at its queue bound once heartbeats go unanswered for the timeout, so a busy broker
would otherwise lose members that are alive.)

:class:`Pairing` is the broker's side and :class:`Inbox` the receiver's (neither does I/O);
:class:`Outlet` is a member's sending end.
"""
from __future__ import annotations

import os
import time
from collections import deque

import zmq

from . import _protocol as P
from ._seal import KEY, PREFIX, TAG, Prefix, frame_key
from .liveness import bound_handshakes
from .monitor import events

__all__ = ["Pairing", "Inbox", "Outlet", "enabled", "MAX_UNPAIRED", "MAX_WAITING", "MAX_WAIT", "WINDOW",
           "QUEUE"]

MAX_UNPAIRED = 256 << 20   # bytes of a sender's frames whose header has not come
MAX_WAITING = 64 << 20     # header bytes of a sender's messages waiting for their frames
MAX_WAIT = 20.0            # seconds a sender's half-pairs wait with no new frame from it
WINDOW = 4096              # counters behind the highest one that may still come (reordering)
QUEUE = 32                 # frames (1 MiB each at most) queued on one lane, each way (its SNDHWM)
READ_AHEAD = 16            # frames the broker's libzmq reads ahead from one lane (its RCVHWM)

OK, HELLO, BAD = "ok", "hello", "bad"
SWITCH = "SCOOP_BULK_LANE"  # "off" in the broker's environment: it offers no lane (on by default)


def enabled() -> bool:
    """Whether a broker with encryption on offers the bulk lane (its members open one only when
    offered).  On unless its environment has ``SCOOP_BULK_LANE=off``: payloads then stay on the
    CURVE connections (~3x slower for large arrays, nothing else changes)."""
    return os.environ.get(SWITCH, "on").strip().lower() not in ("off", "0", "no", "false")


class _Sender:
    """One member's half-pairs: its frames by counter, and its messages waiting for frames."""

    __slots__ = ("frames", "nbytes", "top", "seen", "waiting", "waiting_bytes", "missing", "last")

    def __init__(self, now: float):
        self.frames: dict[int, tuple] = {}  # counter -> (frame, bytes counted as unpaired)
        self.nbytes = 0                     # frames no waiting message named when they came
        self.top = -1        # highest counter taken
        self.seen = 0        # bit i: counter top - i taken
        self.waiting: deque = deque()   # (item, parts) in arrival order; the first may miss frames
        self.waiting_bytes = 0
        self.missing: set[int] = set()  # counters the first waiting message still needs
        self.last = now      # when a frame last came

    def take_counter(self, c: int) -> bool:
        """False for a counter taken before (a replay) or too far behind."""
        top = self.top
        if c > top:
            shift = c - top
            self.seen = ((self.seen << shift) | 1) & ((1 << WINDOW) - 1) if shift < WINDOW else 1
            self.top = c
            return True
        back = top - c
        if back >= WINDOW or self.seen >> back & 1:
            return False
        self.seen |= 1 << back
        return True


class Pairing:
    """The broker's half-pairs: bulk frames and the signed messages that name them.

    ``secret``: the cluster's secret (only the prefix key is derived from it)."""

    def __init__(self, secret: bytes, *, max_unpaired: int = MAX_UNPAIRED, max_waiting: int = MAX_WAITING,
                 max_wait: float = MAX_WAIT):
        self.prefix = Prefix(secret)
        self.max_unpaired = max_unpaired
        self.max_waiting = max_waiting
        self.max_wait = max_wait
        self.senders: dict[bytes, _Sender] = {}   # member uid (raw 8 bytes) -> its half-pairs
        self._used: list = []
        self._misses: list = []
        self.dropped_frames = 0
        self.dropped_messages = 0

    # ---- members --------------------------------------------------------------------------------
    def join(self, uid: bytes, now: float | None = None):
        """``uid`` (raw 8 bytes) is a member: its frames are taken from now on."""
        if uid not in self.senders:
            self.senders[uid] = _Sender(time.monotonic() if now is None else now)

    def forget(self, uid: bytes):
        """A member left or was lost: everything held for it goes."""
        self.senders.pop(uid, None)

    def held_bytes(self) -> int:
        """Bytes held here: frames (paired or not) and waiting headers."""
        return sum(sum(len(fr) for fr, _ in s.frames.values()) + s.waiting_bytes
                   for s in self.senders.values())

    # ---- frames -----------------------------------------------------------------------------------
    def frame(self, uid: bytes, frame, now: float):
        """A frame from the bulk connection of ``uid`` (raw 8 bytes, from its identity).
        Returns (verdict, messages now complete): ``BAD`` (drop, cut the connection), ``HELLO``
        (a connection's first frame, nothing sealed), or ``OK``; the messages are the items
        given to :meth:`message` whose frames are all here now, with their records, in order."""
        key = self.prefix.check(frame)
        sender = self.senders.get(uid)
        if key is None or key[0] != uid or sender is None or not sender.take_counter(key[1]):
            self.dropped_frames += 1
            return BAD, ()
        size = len(frame)
        sender.last = now
        if size == PREFIX:
            return HELLO, ()
        c = key[1]
        if c in sender.missing:  # its header is here: bounded by the sizes that header signed
            sender.frames[c] = (frame, 0)
            sender.missing.discard(c)
            if not sender.missing:
                return OK, self._release(sender)
            return OK, ()
        sender.frames[c] = (frame, size)
        sender.nbytes += size
        if sender.nbytes > self.max_unpaired:
            self._drop(sender)
            return BAD, ()
        return OK, ()

    # ---- messages ---------------------------------------------------------------------------------
    def message(self, uid: bytes, item, header, frames, now: float | None = None):
        """A verified message from member ``uid``: its records, or None if it waits for frames
        (it, and every later message of ``uid``, until they come) or is malformed (``P.parse``'s
        None: the caller drops it).  A message that starts waiting starts ``max_wait`` too: its
        frames come on another connection, maybe later than it, however long the member sent
        nothing before."""
        sender = self.senders.get(uid)
        if sender is not None and sender.waiting:
            if sender.waiting_bytes + len(header) > self.max_waiting:
                self._drop(sender)
                return None
            sender.waiting.append((item, header, frames))
            sender.waiting_bytes += len(header)
            return None
        recs = self._parse(sender, header, frames)
        if recs is P.MISSING:
            if sender is None:
                return None
            sender.waiting.append((item, header, frames))
            sender.waiting_bytes += len(header)
            sender.missing = set(self._misses)
            sender.last = time.monotonic() if now is None else now
            return None
        return recs

    def frames(self, key, count):
        """For ``P.parse``: the frames of a lane ref, if all here (taken only once the whole
        message parsed)."""
        uid, n = KEY.unpack(key)
        sender = self.senders.get(uid)
        got = []
        if sender is not None:
            have = sender.frames
            for c in range(n, n + count):
                fr = have.get(c)
                if fr is None:
                    break
                got.append(fr[0])
            else:
                self._used.append((sender, n, count))
                return got
        self._misses.extend(range(n + len(got), n + count))
        return None

    def _parse(self, sender, header, frames):
        self._used, self._misses = [], []
        recs = P.parse(header, frames, lane=self)
        if recs is not None and recs is not P.MISSING:
            for s, n, count in self._used:  # taken: the records hold them now
                for c in range(n, n + count):
                    s.nbytes -= s.frames.pop(c)[1]
        return recs

    def _release(self, sender: _Sender) -> list:
        """The waiting messages of ``sender`` that are complete now, in order, as (item, records)."""
        out = []
        while sender.waiting:
            item, header, frames = sender.waiting[0]
            recs = self._parse(sender, header, frames)
            if recs is P.MISSING:
                sender.missing = set(self._misses)
                break
            sender.waiting.popleft()
            sender.waiting_bytes -= len(header)
            if recs is None:
                self.dropped_messages += 1
                continue
            out.append((item, recs))
        return out

    # ---- bounds -----------------------------------------------------------------------------------
    def _drop(self, sender: _Sender):
        self.dropped_frames += len(sender.frames)
        self.dropped_messages += len(sender.waiting)
        sender.frames.clear()
        sender.nbytes = 0
        sender.waiting.clear()
        sender.waiting_bytes = 0
        sender.missing = set()

    def expire(self, now: float) -> list[bytes]:
        """Drops the half-pairs of every sender that sent no frame for ``max_wait`` seconds while
        something of it waits; returns their uids."""
        out = []
        for uid, s in self.senders.items():
            if (s.frames or s.waiting) and now - s.last > self.max_wait:
                self._drop(s)
                out.append(uid)
        return out


class Inbox:
    """A receiver's bulk frames until their header asks for them.  ``recv(timeout_s)`` gives the
    next frame from the bulk connection, or None when none came within the time.  The broker
    sends a message's frames just before its header, so they are at most a transfer away."""

    def __init__(self, recv, wait: float = MAX_WAIT):
        self.recv = recv
        self.wait = wait
        self.store: dict[tuple, object] = {}
        self._used: list = []

    def frames(self, key, count):
        uid, n = KEY.unpack(key)
        store = self.store
        got = []
        deadline = None
        for c in range(n, n + count):
            fr = store.get((uid, c))
            while fr is None:
                if deadline is None:
                    deadline = time.monotonic() + self.wait
                f = self.recv(max(0.0, deadline - time.monotonic()))
                if f is None:
                    return None
                k = frame_key(f)
                store[k] = f
                if k == (uid, c):
                    fr = f
            got.append(fr)
        self._used.append((uid, n, count))
        return got

    def claim(self, recs):
        """The frames the records just parsed hold now leave the store (``recs`` None: the
        message was dropped, and they stay for nothing: they go too)."""
        store = self.store
        for uid, n, count in self._used:
            for c in range(n, n + count):
                store.pop((uid, c), None)
        self._used = []


def tune(sock, end: str, timeout: float) -> None:
    """A lane socket's options, at either ``end`` ("broker": its ROUTER; "member": a member's
    DEALER), before it binds or connects.  ``QUEUE`` frames queued each way; the broker reads
    ahead at most ``READ_AHEAD`` frames per connection and none larger than a sealed chunk (a
    ZeroMQ message of several parts is held whole before it is read); a member reads all that
    comes (bounded at the broker) and does not reconnect (its ticket is good once).  Handshakes
    are bounded by ``timeout``; no heartbeats (see the module's docstring)."""
    if end == "broker":
        opts = ((zmq.SNDHWM, QUEUE), (zmq.RCVHWM, READ_AHEAD), (zmq.LINGER, 1000), (zmq.ROUTER_MANDATORY, 1),
                (zmq.MAXMSGSIZE, PREFIX + P.FRAME_CHUNK + TAG), (zmq.BACKLOG, 4096))
    else:
        opts = ((zmq.SNDHWM, QUEUE), (zmq.RCVHWM, 0), (zmq.LINGER, 2000), (zmq.RECONNECT_IVL, -1))
    for opt, val in opts:
        sock.setsockopt(opt, val)
    bound_handshakes(sock, timeout)


class Outlet:
    """A member's sending end of its lane: at most ``QUEUE`` frames queued, then :meth:`send`
    waits for room (back-pressure: a broker that reads slowly slows its senders).  It stops
    waiting once the lane is gone (its connection dropped: the broker declares this member
    lost and nothing waits for these frames) or ``stop()`` is true (this process is ending)."""

    __slots__ = ("sock", "monitor", "gone", "stop")

    def __init__(self, sock, monitor, stop=lambda: False):
        self.sock = sock
        self.monitor = monitor  # the lane socket's: its drop (EVENT_DISCONNECTED, EVENT_CLOSED)
        self.gone = False
        self.stop = stop

    def alive(self) -> bool:
        if not self.gone:
            for event, _ in events(self.monitor):
                if event in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED, zmq.EVENT_MONITOR_STOPPED):
                    self.gone = True
        return not self.gone

    def send(self, frames) -> bool:
        """Sends ``frames`` in order, each a message of its own, without copies; waits while
        the queue is full.  False when the lane is gone (the rest is not sent)."""
        sock = self.sock
        for fr in frames:
            while True:
                try:
                    sock.send(fr, zmq.NOBLOCK, copy=False)
                    break
                except zmq.Again:
                    if not self.alive() or self.stop():
                        return False
                    sock.poll(50, zmq.POLLOUT)
        return True

    def close(self, linger: int):
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(0)
        self.sock.close(linger=linger)
