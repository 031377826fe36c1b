"""What libzmq reads ahead from a connection that has not proven it holds the secret, bounded.

libzmq 4.3.5 bounds what it reads ahead from a connection (RCVHWM) in whole messages, and shows
no frame of a message before its last one.  A peer past the handshake that speaks ZMTP itself
and never ends its message (the MORE flag on every frame) makes libzmq read and keep its frames
for ever, and the broker never sees one: ~64 bytes of memory per frame whatever its size, so an
empty frame (2 bytes on the wire) costs 32 times what it cost to send.  Measured here: 20 MB of
empty frames grew a socket's process by 644 MB, in under a second.

What the kernel says about a connection does not depend on messages: TCP_INFO's
``tcpi_bytes_received`` minus what still waits in the kernel's queue (SIOCINQ) is what libzmq has
taken from it (:func:`taken`).  A connection is *proven* once a message from it checks against
the secret: its peer is a member, which can run code on every worker, and what it sends is the
cluster's own traffic (a single message may legitimately carry gigabytes of arguments), so it is
not bounded here.  Until then -- a peer with the token of an unencrypted cluster, or with keys
but not the secret -- libzmq may take at most ``LIMIT`` bytes from it: a handshake and a first
message (a hello, a load report) are a few KiB.  One that takes more is cut
(scoop.hangup.end_connection), which ends its engine and frees what libzmq held of its message.

:class:`Unproven` keeps the connections of one socket that have not proven themselves (learnt
from its monitor's ACCEPTED events), and checks a slice of them per call, each in O(1): a
broker of 10,000 members has none left to check once they have joined.
"""
from __future__ import annotations

import ctypes
import struct
import sys
from collections import deque

__all__ = ["LIMIT", "PER_CHECK", "INTERVAL", "Unproven", "taken", "bytes_received"]

LIMIT = 1 << 20   # bytes libzmq may take from a connection before a message of it checks
PER_CHECK = 64    # connections measured per check (each costs two system calls, ~2 us)
# seconds between checks while some connection is unproven: what libzmq can take in that time
# (~8 MB of memory from empty frames on loopback) adds to what LIMIT allows (LIMIT * 32)
INTERVAL = 0.01

# struct tcp_info (linux/tcp.h, since Linux 4.1): tcpi_bytes_received, a __u64 after 104
# bytes of fields and the pacing rates and bytes acked (3 x __u64)
_BYTES_RECEIVED = struct.Struct("=Q")
_BYTES_RECEIVED_AT = 128
_INFO_SIZE = 256
_IPPROTO_TCP, _TCP_INFO, _SIOCINQ = 6, 11, 0x541B

_linux = sys.platform.startswith("linux")
_libc = ctypes.CDLL(None, use_errno=True) if _linux else None
_buf = ctypes.create_string_buffer(_INFO_SIZE)
_len = ctypes.c_uint32()
_inq = ctypes.c_int()


def bytes_received(info: bytes, size: int) -> int | None:
    """``tcpi_bytes_received`` of a struct tcp_info of which the kernel filled ``size`` bytes;
    None if it is too short to hold the field (a kernel before 4.1)."""
    if size < _BYTES_RECEIVED_AT + _BYTES_RECEIVED.size:
        return None
    return _BYTES_RECEIVED.unpack_from(info, _BYTES_RECEIVED_AT)[0]


def taken(fd: int) -> int | None:
    """Bytes the process has read from TCP connection ``fd`` (received minus what waits in the
    kernel); None if ``fd`` is no TCP connection (closed, reused by a file, a Unix socket) or
    the kernel does not say.  Not thread-safe: the broker's loop calls it."""
    if _libc is None:
        return None
    _len.value = _INFO_SIZE
    if _libc.getsockopt(fd, _IPPROTO_TCP, _TCP_INFO, _buf, ctypes.byref(_len)) != 0:
        return None
    got = bytes_received(_buf.raw, _len.value)
    if got is None or _libc.ioctl(fd, _SIOCINQ, ctypes.byref(_inq)) != 0:
        return None
    return got - _inq.value


class Unproven:
    """The connections of one socket that no message checked on yet, measured a slice at a
    time.  Call :meth:`opened` for each accepted connection, :meth:`proven` when a message from
    it checks, :meth:`closed` when it drops, and :meth:`over` every ``INTERVAL`` s: it returns
    the connections to cut."""

    def __init__(self, limit: int = LIMIT, per_check: int = PER_CHECK, measure=taken):
        self.limit = limit
        self.per_check = per_check
        self.measure = measure
        self.fds: dict[int, int] = {}   # connection -> bytes taken when last measured
        self._turn: deque = deque()     # round-robin order (entries of gone fds are skipped)
        self.cut = 0                    # connections over the limit

    def __len__(self) -> int:
        return len(self.fds)

    def opened(self, fd: int) -> None:
        if fd is not None and fd >= 0 and fd not in self.fds:
            self.fds[fd] = 0
            self._turn.append(fd)

    def proven(self, fd) -> None:
        """A message from ``fd`` checked: its peer holds the secret."""
        self.fds.pop(fd, None)

    closed = proven

    def over(self) -> list[tuple[int, int]]:
        """Measures up to ``per_check`` connections (the next ones in turn); returns ``(fd,
        bytes taken)`` of those that took more than ``limit``, forgotten here: the caller cuts
        them.  A connection the
        kernel says nothing about (closed, or no TCP) is forgotten too."""
        fds, turn, measure, limit = self.fds, self._turn, self.measure, self.limit
        bad = []
        n = 0
        most = min(self.per_check, len(fds))  # each at most once per call
        skipped = 0
        while turn and n < most and skipped < 4 * self.per_check:
            fd = turn.popleft()
            if fd not in fds:
                skipped += 1
                continue
            n += 1
            got = measure(fd)
            if got is None:
                del fds[fd]
            elif got > limit:
                del fds[fd]
                bad.append((fd, got))
                self.cut += 1
            else:
                fds[fd] = got
                turn.append(fd)
        if len(turn) > 2 * len(fds) + self.per_check:
            self._turn = deque(fd for fd in dict.fromkeys(turn) if fd in fds)  # drop stale entries
        return bad
