"""Ending the broker's connections, and letting peers end theirs, without aborting libzmq.

libzmq 4.3.5 (what pyzmq's wheels carry) stops reading a connection whose receive queue is full
(RCVHWM: the broker bounds what a peer can make it hold that way).  If the kernel then reports a
hang-up or an error on that connection, libzmq drops its descriptor from its poller but keeps
the engine until the queue is read down; the engine's next heartbeat then aborts the whole
process (``Assertion failed: !_io_error (src/stream_engine_base.cpp:310)``).  Any peer past the
handshake could do it: fill its queue, then reset its connection (or just exit, and let the
broker's next heartbeat provoke the reset).  Two rules keep the state unreachable:

* :func:`end_connection` ends a connection with ``shutdown(SHUT_RD)``: libzmq reads the end of
  input and closes it as any other, and the kernel reports no hang-up (that needs both
  directions shut, which ``SHUT_RDWR`` gives).
* A connection drops TCP resets (a socket filter) from just before its handshake is admitted
  (:class:`Admissions`; :func:`ignore_resets` puts it on a listening socket, inherited by every
  connection it accepts).  A reset is then no event at all: a peer that reset its connection is
  dropped by the heartbeat timeout (a peer that exits normally closes with a FIN and is seen at
  once, as before).  What else makes a hang-up (TCP's retransmission timeout, ~15 minutes) comes
  long after the heartbeat has closed the connection.  Before admission libzmq holds no queue
  and runs no heartbeat for a connection, so resets pass: a stranger that resets is closed at
  once.  Filtered from accept on, strangers resetting 1,400 connections a second each stayed
  open until the handshake bound (3 s), then, closed, retried their FIN for minutes (the peer's
  answering reset is dropped too: all 3,100 of them still after 20 s), and a new connection from
  such a port could not be made meanwhile (not in 20 s: a member joining from that host could
  not); filtered at admission, none stays.  A member that resets still leaves
  that trace; nothing the broker can see tells its reset from one it must not take: the
  kernel's queue is not libzmq's, and with the reset dropped, ``TCP_INFO`` and a peek show a
  live connection.
* A socket without heartbeats of its own is no safer: once the broker reads the queue down,
  libzmq decodes what it had read before it stopped, and a peer's PING among it is answered on
  the same path (``out_event``): it aborted a ROUTER without heartbeats in 1 of 3 runs here (a
  peer pinging every millisecond while it fills the queue, then reset).  So the meta stream's
  listener filters resets too (its strangers that reset linger as described above), and so
  does the bulk lane's.

A connection is cut by its descriptor's number, learned from a message (``SRCFD``) and kept for
later.  If the connection ended meanwhile, the kernel may have given that number to a new one
(another member's, the origin's): cutting it would end an innocent connection.  So the broker
keeps the connection's :func:`identity` with its number (its socket's inode, unique while the
socket lives, and its peer's address and port), and :func:`end_connection` cuts only while the
number still names that socket; a number whose socket changed is left alone (its own connection
is gone, and its peer is handled as gone by the drop that ended it).  The check runs on a
duplicate of the descriptor, so the socket checked is the socket cut.  What it cannot tell: a
message read after its connection ended carries a number the kernel may have given since to a
connection the broker does not know yet, and libzmq tells no more than the number; such a
number is taken for the message's (a number another known peer holds is not: the broker cuts
nothing then).
"""
from __future__ import annotations

import ctypes
import errno
import os
import socket
import stat
import sys
import time

__all__ = ["Admissions", "drop_resets", "end_connection", "identity", "ignore_resets", "same_connection"]

SO_ATTACH_FILTER = 26  # Linux
_DISCARD = 1 << 20     # bytes one call discards from a cut connection (MSG_TRUNC: nothing is copied)
_DISCARD_CALLS = 64


class _Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_Insn))]


# classic BPF over a TCP segment (the filter sees it from its TCP header on): drop it if RST is set
_DROP_RESETS = (_Insn * 4)(
    _Insn(0x30, 0, 0, 13),          # ldb [13]        the flags byte
    _Insn(0x45, 0, 1, 0x04),        # jset #0x04      RST?
    _Insn(0x06, 0, 0, 0),           # ret #0          drop
    _Insn(0x06, 0, 0, 0xFFFFFFFF),  # ret #-1         keep all of it
)
_PROG = _Prog(len(_DROP_RESETS), _DROP_RESETS)  # lives as long as the module: the kernel copies it


def identity(fd) -> tuple | None:
    """What tells the connection on descriptor ``fd`` from any later one given the same number:
    ``(device, inode, peer address)`` of its socket (the peer is None if it has none any more).
    None if ``fd`` is not an open socket.  A few microseconds: take it once per connection."""
    try:
        dup = os.dup(fd)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            return None
        # out of descriptors: this one is open, and cannot be told from another
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino, _peer(fd)) if stat.S_ISSOCK(st.st_mode) else None
    try:
        return _identity(dup)
    finally:
        os.close(dup)


class Reused:
    """Descriptor numbers closed lately: a message read now may have come on the connection
    that closed, and the number may name a newcomer since (the lowest free number is given
    next).  A message that fails the check on such a number is dropped, its connection not cut:
    the cut could end the newcomer (a member joining).  Its sender's connection is bounded all
    the same (scoop.readahead) and gets nothing."""

    SECONDS = 5.0  # far longer than a closed connection's last messages wait to be read

    __slots__ = ("_closed",)

    def __init__(self):
        self._closed: dict[int, float] = {}

    def closed(self, fd) -> None:
        now = time.monotonic()
        closed = self._closed
        if len(closed) > 4096:
            for k in [k for k, t in closed.items() if now - t > self.SECONDS]:
                del closed[k]
        closed[fd] = now

    def lately(self, fd) -> bool:
        t = self._closed.get(fd)
        return t is not None and time.monotonic() - t < self.SECONDS


def same_connection(fd, known) -> bool:
    """Whether descriptor ``fd`` still is the connection whose :func:`identity` was ``known``."""
    return _matches(identity(fd), known)


def _identity(fd) -> tuple | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None  # closed: os.dup in identity() failed first on anything else
    if not stat.S_ISSOCK(st.st_mode):
        return None
    return st.st_dev, st.st_ino, _peer(fd)


def _peer(fd):
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        return s.getpeername()
    except OSError:
        return None
    finally:
        s.detach()


def _matches(now, known) -> bool:
    """The same socket: same inode (no two live sockets share one), and the same peer where both
    are known (a connection that was reset may have lost its peer's address)."""
    if now is None or known is None or now[:2] != known[:2]:
        return False
    return now[2] is None or known[2] is None or now[2] == known[2]


def end_connection(fd, known=None) -> bool:
    """Ends a connection ZeroMQ owns: ``shutdown(SHUT_RD)`` on a duplicate of its descriptor,
    and what the kernel holds of its input discarded.  Its engine reads the end of input and
    closes the connection as any other that ended -- at once, or, if its receive queue is full,
    once the broker has read that queue down (or at the heartbeat timeout).  With ``known`` (the
    connection's :func:`identity` when its number was learned), only if the number still names
    that connection.  False if nothing was cut: ``fd`` is no longer open, or is another
    connection now."""
    try:
        dup = os.dup(fd)
    except OSError:
        return False
    if known is not None and not _matches(_identity(dup), known):
        os.close(dup)
        return False
    try:
        s = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return False
    try:
        s.shutdown(socket.SHUT_RD)
        # and what the kernel had received is discarded (not copied): the engine reads the end
        # at once, not after the broker has read every message of it
        for _ in range(_DISCARD_CALLS):
            if not s.recv(_DISCARD, socket.MSG_TRUNC | socket.MSG_DONTWAIT):
                break
    except OSError:
        pass
    finally:
        s.close()
    return True


def ignore_resets(port: int) -> int:
    """Puts the reset-dropping filter on this process's listening TCP sockets on ``port`` (call it
    after ``bind``, before connections arrive); returns how many it filtered (0 off Linux)."""
    if not sys.platform.startswith("linux"):
        return 0
    return _filter_on_port(port, listening=True)


def drop_resets(fd) -> bool:
    """Puts the reset-dropping filter on connection ``fd``; False if it is no open socket."""
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        return False
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(_PROG))
        return True
    except OSError:
        return False
    finally:
        s.detach()


def _drop_resets_on_port(port: int) -> int:
    """The filter on every connection this process accepted on ``port`` (a scan of its
    descriptors: the fallback when a listener's accepts cannot be followed)."""
    return _filter_on_port(port, listening=False)


def _filter_on_port(port: int, listening: bool) -> int:
    """The filter on this process's TCP sockets on local ``port``: its listeners, or the
    connections they accepted; how many it filtered."""
    n = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            s = socket.socket(fileno=int(name))
        except (OSError, ValueError):
            continue
        try:
            if (s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_STREAM
                    and bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)) == listening
                    and s.getsockname()[1] == port):
                s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(_PROG))
                n += 1
        except OSError:
            pass
        finally:
            s.detach()  # the descriptor stays ZeroMQ's
    return n


class Admissions:
    """The reset filter put on each connection of a ZeroMQ listener just before its handshake
    is admitted, not at accept (:func:`ignore_resets`).  Until its handshake is admitted a
    connection has no queue in libzmq and no heartbeat, so a reset cannot abort it; a stranger
    that resets is then closed at once, instead of staying open until the handshake bound and
    then, closed, retrying its FIN for minutes towards a peer whose reset is dropped (a new
    connection from that peer's port cannot be made meanwhile).

    libzmq tells the accepted descriptor (``EVENT_ACCEPTED``, fed to :meth:`accepted`) only after
    handing the connection to its engine, so a handshake may be ready for admission before its
    accept is told.  Admitting replies therefore wait (:meth:`hold`) for a barrier: this process
    connects to the listener itself, and once that probe's accept is told, every connection
    accepted before it -- among them each whose handshake waits -- has been told too (one
    listener accepts in order, and tells in order); all are filtered, then the replies go.
    If the probe cannot be made or is not told within ``timeout``, every connection on the port
    is filtered from a scan of this process's descriptors instead."""

    def __init__(self, endpoint: str, send, timeout: float = 0.5):
        self.send = send                  # sends one admitting reply
        host, port = endpoint.split("://", 1)[1].rsplit(":", 1)
        host = host.strip("[]")
        self.port = int(port)
        self.host = {"0.0.0.0": "127.0.0.1", "*": "127.0.0.1", "::": "::1"}.get(host, host)
        self.timeout = timeout
        self.unfiltered: set[int] = set()  # connections accepted, not filtered yet
        self.waiting: list = []            # admitting replies held
        self._covered = 0                  # how many of them the probe in flight covers
        self._probe = None
        self._probe_name = None
        self._since = 0.0
        self.barriers = 0
        self.scans = 0

    def hold(self, reply) -> None:
        """An admitting reply: sent once its connection carries the filter."""
        self.waiting.append(reply)
        if self._probe is None:
            self._start()

    def accepted(self, fd) -> None:
        """A connection the listener accepted (its monitor's ``EVENT_ACCEPTED``)."""
        if self._probe is not None and (_peer(fd) or (None, None))[:2] == self._probe_name:
            self._release()
        else:
            self.unfiltered.add(fd)

    def dropped(self, fd) -> None:
        self.unfiltered.discard(fd)

    def tick(self, now: float) -> None:
        """The fallback for a probe not told in time (the listener cannot accept it)."""
        if self._probe is not None and now - self._since > self.timeout:
            self._scan()

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None

    def _start(self) -> None:
        self._covered = len(self.waiting)
        try:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            self._scan()
            return
        try:
            probe.setblocking(False)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            probe.connect_ex((self.host, self.port))
            self._probe_name = probe.getsockname()[:2]
        except OSError:
            probe.close()
            self._scan()
            return
        self._probe = probe
        self._since = time.monotonic()
        self.barriers += 1

    def _scan(self) -> None:
        self.scans += 1
        self._covered = len(self.waiting)
        _drop_resets_on_port(self.port)
        self._release()

    def _release(self) -> None:
        for fd in self.unfiltered:
            drop_resets(fd)
        self.unfiltered.clear()
        self.close()
        covered, self.waiting = self.waiting[:self._covered], self.waiting[self._covered:]
        for reply in covered:
            self.send(reply)
        if self.waiting:
            self._start()
