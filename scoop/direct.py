"""The origin and the workers on its host, talking without the broker in between.

A round trip through the broker is four socket hops, each a wake-up of another process.  Here:

* **Results** go straight from a worker to the origin (three hops).
* **Leases**: a task the origin waits on alone goes straight to a worker that said it is idle,
  and its result straight back (two hops).  This is owner-based submission: the origin tells
  the broker afterwards (a LEASE record: the task and the worker), so a lost worker's leased
  task still runs elsewhere.  The origin leases only while it has nothing else in flight and
  only a task inline in its header (no payload frames), so a leased task never waits behind
  other work and the broker's copy costs nothing; a worker that said IDLE and then starts other
  work (another submitter's) says BUSY.

The origin listens on a Unix socket in a directory only its user can enter (mode 0700, under
``$XDG_RUNTIME_DIR`` or the temporary directory), named from the cluster's secret
(:func:`address`), so no address has to be handed out and nobody else on the host can connect
to it at all: another user's connect fails with EACCES before a descriptor of ours is spent.  A
worker on the same host connects at start; a worker on another host (or in another mount or
network namespace) finds no such socket, and its results simply go through the broker as before.
The origin removes the directory when it closes, and the broker when the cluster ends (an origin
killed with SIGKILL cannot).

The broker still learns that the task is over: the worker sends it a small DONE record (the task
id and its inputs) with its next message to the broker, or within ``DONE_DELAY`` -- not at once,
because a broker woken right then competes for the CPU with the origin taking the result.  A
LEASE waits the same way, so a DONE may reach the broker before the LEASE of its task; the
broker remembers such DONEs a while (scoop.scheduling).  Duplicates stay harmless: the origin
completes a future once, and the broker drops a late RESULT of a DONE task (a task whose worker
was lost before its DONE left runs again, and is dropped).

Security is the broker's: ZeroMQ's PLAIN handshake with the token derived from the secret, then
headers MAC'd for their own channel and direction (``TO_ORIGIN``, ``TO_WORKER``) and payload
digests checked before anything is unpickled.
"""
from __future__ import annotations

import os
import socket
import stat
import sys
import time

import zmq

from . import _protocol as P
from .liveness import DEFAULT_TIMEOUT, bound_handshakes
from .security import Authenticator, secure_client, secure_server

DONE_DELAY = 0.002  # seconds a DONE (or a LEASE) may wait for a message to ride on


def available() -> bool:
    """Linux only (where it is tested); elsewhere results keep to the broker."""
    return sys.platform.startswith("linux")


def socket_dir(secret: bytes) -> str:
    """The origin's private directory: its name comes from the secret (nobody else can guess it,
    so nobody can create it first), its base is the user's runtime directory when there is a
    private one, else the temporary directory."""
    base = os.environ.get("XDG_RUNTIME_DIR", "")
    if not (base and _private(base) and len(base) < 64):
        base = "/tmp"
    return os.path.join(base, "scoop-" + P.derive(secret, "direct results")[:12].hex())


def address(secret: bytes) -> str:
    """Where the origin takes results straight from the workers on its host."""
    return "ipc://" + os.path.join(socket_dir(secret), "origin")


def _private(path: str) -> bool:
    """A real directory (not a symlink) of ours that nobody else can enter."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def _make_private_dir(path: str) -> bool:
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # whatever the umask
    except FileExistsError:
        pass
    except OSError:
        return False
    return _private(path)


def _in_use(path: str) -> bool:
    """Whether a live process listens on this socket (another origin with this secret), rather
    than a file left by one that was killed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
            return True
        except OSError:
            return False


def remove(secret: bytes) -> None:
    """Removes the origin's socket and directory (the origin's close, the broker's end)."""
    d = socket_dir(secret)
    if not _private(d):
        return
    for name in ("origin", "segments"):  # the origin's sockets: results, and their segments (scoop._shm)
        try:
            os.unlink(os.path.join(d, name))
        except OSError:
            pass
    try:
        os.rmdir(d)
    except OSError:
        pass


class OriginEnd:
    """The origin's end: a ROUTER in a context of its own (its own handshake checker)."""

    def __init__(self, secret: bytes, signer: P.Signer):
        self.signer = signer
        self.received = 0  # messages that came this way and verified (for tests and the curious)
        self.dropped = 0   # and those that did not
        self.leased = 0    # tasks sent straight to a worker
        self.idle: dict[bytes, None] = {}     # routing ids of workers whose last word was "idle"
        self.have: dict[bytes, set] = {}      # routing id -> callables sent to that worker
        self.ctx = zmq.Context()
        self.auth = None
        self.sock = None
        self.secret = secret
        self.bound = False
        path = address(secret)[len("ipc://"):]
        if not _make_private_dir(os.path.dirname(path)) or _in_use(path):
            # no private directory here, or the socket is taken (another origin with this secret
            # on this host): results then come through the broker, as from any other host
            self.close()
            return
        try:
            self.auth = Authenticator(self.ctx, secret)
            s = self.sock = self.ctx.socket(zmq.ROUTER)
            s.setsockopt(zmq.RCVHWM, 0)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a worker that is gone is an error, not a drop
            bound_handshakes(s, DEFAULT_TIMEOUT)
            secure_server(s, secret, address(secret))
            s.bind(address(secret))
            self.bound = True
        except zmq.ZMQError:
            self.close()

    def drain(self, handle, ready: bool = False) -> int:
        """Hands every verified record waiting in the socket to ``handle`` (``ready``: a poll
        just found a message); returns messages read."""
        sock, signer, idle = self.sock, self.signer, self.idle
        n = 0
        while ready or sock.getsockopt(P.EVENTS) & P.POLLIN:
            ready = False
            ident = sock.recv(P.NOBLOCK)
            if not sock.getsockopt(P.RCVMORE):
                self.dropped += 1
                continue
            recs = P.recv_verified(sock, signer, P.TO_ORIGIN)
            n += 1
            if recs is None:
                self.dropped += 1
                continue
            self.received += 1
            if recs[-1].hdr[:1] == P.IDLE:
                idle[ident] = None
            else:
                idle.pop(ident, None)
            handle(recs)
        return n

    def lease(self, hdr: bytes, packed: P.Packed, digest: bytes, blob: P.Packed) -> bytes | None:
        """Sends a task to the worker that said it was idle last; returns that worker's uid (for
        the broker's LEASE record), or None when no worker is idle or it is gone."""
        if not self.idle:
            return None
        ident = next(reversed(self.idle))  # the latest: its caches are the warmest
        del self.idle[ident]
        have = self.have.setdefault(ident, set())
        box = P.Outbox()
        if digest not in have:
            box.add(P.BLOB_HEADER.pack(P.BLOB, digest), packed=blob)
        box.add(hdr, packed=packed)
        try:
            P.send(self.sock, self.signer, P.TO_WORKER, box, ident, P.NOBLOCK)
        except zmq.ZMQError:  # gone (EHOSTUNREACH) or not reading (EAGAIN): the broker's way
            self.have.pop(ident, None)
            return None
        have.add(digest)
        self.leased += 1
        return ident[1:]

    def close(self):
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
        self.ctx.term()
        if self.bound:
            self.bound = False
            remove(self.secret)


class WorkerEnd:
    """A worker's end: results for the origin wait here until the worker flushes, and leased
    tasks come in here."""

    def __init__(self, ctx, secret: bytes, signer: P.Signer, uid: str):
        self.signer = signer
        self.pending: list = []  # (result header, packed payload, task id, inputs)
        self.dones: list = []    # DONE records for the broker, not sent yet
        self.dones_since = 0.0
        self.said_idle = False   # the origin's last word from here was IDLE
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, b"d" + uid.encode())  # the origin names this worker to the broker
        # IMMEDIATE: a message goes only to a connection whose handshake completed, so a worker
        # that cannot reach the origin is told at once (EAGAIN) and uses the broker
        s.setsockopt(zmq.IMMEDIATE, 1)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.LINGER, 0)
        # the origin usually binds just after its workers start: look again soon, and at least
        # every second (a failed connect to a Unix socket costs one system call)
        s.setsockopt(zmq.RECONNECT_IVL, 50)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        secure_client(s, secret, address(secret))
        self.sock = s
        self._dir, self._addr = socket_dir(secret), address(secret)
        self._reached = False
        self.reach()

    def reach(self) -> bool:
        """Connects once the origin's directory on this host is a private one of our user (an
        lstat until then: the origin makes it as it starts).  On a host where the origin does
        not run, another user may have made one of that name (it shows in /tmp on the origin's
        host), and must get no handshake token, result or segment."""
        if not self._reached and _private(self._dir):
            self.sock.connect(self._addr)
            self._reached = True
        return self._reached

    def add(self, hdr: bytes, packed: P.Packed, tid: int, inputs: int):
        self.pending.append((hdr, packed, tid, inputs))

    def __bool__(self):
        return bool(self.pending)

    def __len__(self):
        return len(self.pending)

    def waiting(self) -> bool:
        """Results or DONEs not sent yet."""
        return bool(self.pending or self.dones)

    def due(self) -> bool:
        return bool(self.dones) and time.monotonic() - self.dones_since >= DONE_DELAY

    def take_dones(self, out: P.Outbox):
        for hdr in self.dones:
            out.add(hdr)
        self.dones = []

    def flush(self, out: P.Outbox, idle: bool = False):
        """Sends the waiting results to the origin and keeps a DONE for each (for the broker);
        when the origin is out of reach, the results themselves go into ``out``.  ``idle``: this
        worker has nothing else to run, and may be leased a task."""
        items, self.pending = self.pending, []
        if not self.reach():
            for hdr, packed, _tid, _inputs in items:
                out.add(hdr, packed=packed)
            return
        box = P.Outbox()
        for hdr, packed, _tid, _inputs in items:
            box.add(hdr, packed=packed)
        if idle:
            box.add(P.IDLE)
        sent = False
        if box.marks is None:  # one message (under HEADER_SPLIT): all or nothing
            try:
                P.send(self.sock, self.signer, P.TO_ORIGIN, box, flags=P.NOBLOCK)
                sent = True
            except zmq.Again:
                pass
        self.said_idle = sent and idle
        if sent:
            if not self.dones:
                self.dones_since = time.monotonic()
            self.dones.extend(P.DONE_HEADER.pack(P.DONE, tid, inputs) for _h, _p, tid, inputs in items)
        else:
            for hdr, packed, _tid, _inputs in items:
                out.add(hdr, packed=packed)

    def say_busy(self):
        """This worker said it was idle and starts other work now: no lease should wait behind
        it (one small message per such change, none while the origin's leases keep it busy)."""
        self.said_idle = False
        if not self._reached:
            return
        box = P.Outbox()
        box.add(P.BUSY)
        try:
            P.send(self.sock, self.signer, P.TO_ORIGIN, box, flags=P.NOBLOCK)
        except zmq.Again:
            pass

    def drain(self, handle, ready: bool = False) -> int:
        """Hands the records of every verified message from the origin (leased tasks and their
        callables) to ``handle``; returns messages read."""
        sock, signer = self.sock, self.signer
        n = 0
        while ready or sock.getsockopt(P.EVENTS) & P.POLLIN:
            ready = False
            try:
                recs = P.recv_verified(sock, signer, P.TO_WORKER, P.NOBLOCK)
            except zmq.Again:
                break
            n += 1
            if recs is not None:
                handle(recs)
        return n

    def close(self):
        self.sock.close(0)
