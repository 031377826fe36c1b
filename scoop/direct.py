"""Results straight from a worker to the origin on the same host, without the broker's hop.

A round trip through the broker is four socket hops; a result sent straight back makes it three.
The origin listens on an abstract Unix socket named from the cluster's secret
(:func:`scoop._protocol.direct_address`), so no address has to be handed out: a worker on the
same host connects at start, a worker on another host (or in another network namespace) cannot
reach it, and its results simply go through the broker as before.

The broker still learns that the task is over: the worker sends it a small DONE record (the task
id and its inputs) with its next message to the broker, or within ``DONE_DELAY`` -- not at once,
because a broker woken right then competes for the CPU with the origin taking the result.
Duplicates stay harmless: the origin completes a future once, and the broker drops a late RESULT
of a DONE task (a task whose worker was lost before its DONE left runs again, and is dropped).

Security is the broker's: ZeroMQ's PLAIN handshake with the token derived from the secret, then
headers MAC'd for their own channel (``TO_ORIGIN``) and payload digests checked before anything
is unpickled.
"""
from __future__ import annotations

import sys
import time

import zmq

from . import _protocol as P
from .broker import Authenticator, secure_client, secure_server

DONE_DELAY = 0.002  # seconds a DONE may wait for a message to ride on


def available() -> bool:
    """Abstract Unix sockets are Linux's: elsewhere an ``ipc://@name`` would be a file in the
    working directory, so results keep to the broker."""
    return sys.platform.startswith("linux")


class DirectInbox:
    """The origin's end: a ROUTER in a context of its own (its own handshake checker)."""

    def __init__(self, secret: bytes, signer: P.Signer):
        self.signer = signer
        self.received = 0  # messages that came this way and verified (for tests and the curious)
        self.dropped = 0   # and those that did not
        self.ctx = zmq.Context()
        self.auth = None
        self.sock = None
        try:
            self.auth = Authenticator(self.ctx, secret)
            s = self.sock = self.ctx.socket(zmq.ROUTER)
            s.setsockopt(zmq.RCVHWM, 0)
            s.setsockopt(zmq.LINGER, 0)
            secure_server(s)
            s.bind(P.direct_address(secret))
        except zmq.ZMQError:
            # the name is taken (another origin with this secret on this host): results then
            # come through the broker, as from any other host
            self.close()

    def drain(self, handle, ready: bool = False) -> int:
        """Hands every verified record waiting in the socket to ``handle`` (``ready``: a poll
        just found a message); returns messages read."""
        sock, signer = self.sock, self.signer
        n = 0
        while ready or sock.getsockopt(P.EVENTS) & P.POLLIN:
            ready = False
            sock.recv(P.NOBLOCK)  # the worker's routing id: nothing is ever sent back
            if not sock.getsockopt(P.RCVMORE):
                self.dropped += 1
                continue
            recs = P.recv_verified(sock, signer, P.TO_ORIGIN)
            n += 1
            if recs is None:
                self.dropped += 1
            else:
                self.received += 1
                handle(recs)
        return n

    def close(self):
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
        self.ctx.term()


class DirectOutbox:
    """A worker's end: results for the origin wait here until the worker flushes."""

    def __init__(self, ctx, secret: bytes, signer: P.Signer):
        self.signer = signer
        self.pending: list = []  # (result header, packed payload, task id, inputs)
        self.dones: list = []    # DONE records for the broker, not sent yet
        self.dones_since = 0.0
        s = ctx.socket(zmq.DEALER)
        # IMMEDIATE: a message goes only to a connection whose handshake completed, so a worker
        # that cannot reach the origin is told at once (EAGAIN) and uses the broker
        s.setsockopt(zmq.IMMEDIATE, 1)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.LINGER, 0)
        # the origin usually binds just after its workers start: look again soon, and at least
        # every second (a failed connect to an abstract socket costs one system call)
        s.setsockopt(zmq.RECONNECT_IVL, 50)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        secure_client(s, secret)
        s.connect(P.direct_address(secret))
        self.sock = s

    def add(self, hdr: bytes, packed: P.Packed, tid: int, inputs: int):
        self.pending.append((hdr, packed, tid, inputs))

    def __bool__(self):
        return bool(self.pending)

    def __len__(self):
        return len(self.pending)

    def due(self) -> bool:
        return bool(self.dones) and time.monotonic() - self.dones_since >= DONE_DELAY

    def take_dones(self, out: P.Outbox):
        for hdr in self.dones:
            out.add(hdr)
        self.dones = []

    def flush(self, out: P.Outbox):
        """Sends the waiting results to the origin and keeps a DONE for each (for the broker);
        when the origin is out of reach, the results themselves go into ``out``."""
        items, self.pending = self.pending, []
        box = P.Outbox()
        for hdr, packed, _tid, _inputs in items:
            box.add(hdr, packed=packed)
        sent = False
        if box.marks is None:  # one message (under HEADER_SPLIT): all or nothing
            try:
                P.send(self.sock, self.signer, P.TO_ORIGIN, box, flags=P.NOBLOCK)
                sent = True
            except zmq.Again:
                pass
        if sent:
            if not self.dones:
                self.dones_since = time.monotonic()
            self.dones.extend(P.DONE_HEADER.pack(P.DONE, tid, inputs) for _h, _p, tid, inputs in items)
        else:
            for hdr, packed, _tid, _inputs in items:
                out.add(hdr, packed=packed)

    def close(self):
        self.sock.close(0)
