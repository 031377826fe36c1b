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
* :func:`ignore_resets` puts a socket filter on a listening socket, inherited by every
  connection it accepts, that drops TCP resets.  A reset is then no event at all: a peer that
  reset its connection is dropped by the heartbeat timeout (a peer that exits normally closes
  with a FIN and is seen at once, as before).  What else makes a hang-up (TCP's retransmission
  timeout, ~15 minutes) comes long after the heartbeat has closed the connection.

A connection is cut by its descriptor's number, learned from a message (``SRCFD``) and kept for
later.  If the connection ended meanwhile, the kernel may have given that number to a new one
(another member's, the origin's): cutting it would end an innocent connection.  So the broker
keeps the connection's :func:`identity` with its number (its socket's inode, unique while the
socket lives, and its peer's address and port), and :func:`end_connection` cuts only while the
number still names that socket; a number whose socket changed is left alone (its own connection
is gone, and its peer is handled as gone by the drop that ended it).  The check runs on a
duplicate of the descriptor, so the socket checked is the socket cut.
"""
from __future__ import annotations

import ctypes
import os
import socket
import stat
import sys

__all__ = ["end_connection", "identity", "ignore_resets", "same_connection"]

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
    except OSError:
        return None
    try:
        return _identity(dup)
    finally:
        os.close(dup)


def same_connection(fd, known) -> bool:
    """Whether descriptor ``fd`` still is the connection whose :func:`identity` was ``known``."""
    return _matches(identity(fd), known)


def _identity(fd) -> tuple | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
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
    n = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            s = socket.socket(fileno=os.dup(int(name)))
        except (OSError, ValueError):
            continue
        try:
            if (s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_STREAM
                    and s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                    and s.getsockname()[1] == port):
                s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(_PROG))
                n += 1
        except OSError:
            pass
        finally:
            s.close()
    return n
