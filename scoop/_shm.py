"""Shared-memory segments for payload buffers between processes of one host.

A buffer of ``SHM_MIN`` bytes or more sent to a process on the same host is copied once into a
segment; only its id crosses the broker, and the receiver maps it (copy-on-write, so the
received array is writable and the sender's copy unaffected).  Two kinds, by who frees them:

**Sealed** (:meth:`Segments.put`: task arguments, shared constants), for segments their sender
frees anyway (arguments when the task is done, constants when the process ends).  The sender
writes an anonymous ``memfd`` and seals it (``F_SEAL_WRITE | SHRINK | GROW | SEAL``): from then
on nobody, not its user and not root, can change its bytes or its size, so the receiver needs no
pass over them.  The receiver opens it as ``/proc/<sender pid>/fd/<n>`` (the same user; Yama's
``ptrace_scope`` restricts attaching, not this), checks the seals, its owner, its size and its
name (the cluster's tag, the creator's pid and counter: a reused pid or descriptor number, or
another cluster's, is refused), and maps it: the bytes unpickled are the bytes written, at the
speed of an unchecked mapping.  The memory lives while the sender holds the descriptor or a
receiver maps it, and dies with them: nothing is left in /dev/shm when a process is killed.
Needs one pid namespace for sender and receiver (one host key: see ``scoop._runtime``).

**Handed** (``Segments.to_origin``: results for the origin, which their receiver frees once
mapped, so the sender cannot keep them): sealed the same way, and the descriptor itself goes to
the origin's inbox, a Unix datagram socket in its private directory (``SCM_RIGHTS``), before the
record naming it leaves; the worker keeps none, and the origin holds it until it took the result.

**Named** (``Segments.results``: results for other workers, nested tasks' submitters with no
inbox; and the fallback when the origin's inbox cannot be reached or is full): files under
/dev/shm.  The broker unlinks what it drops, and every
name starts with the cluster's tag and its creator's pid, so whoever outlives a crash (a
process's own exit, the broker, the Cluster's stop) removes what is left by prefix.
Checked as payload frames are: each ends with a MAC of its content, made by the sender
and checked by the receiver before anything is unpickled, so a segment rewritten after the send
(only its user or root can) is refused.  The MAC is GMAC (AES-GCM authenticating the content
as associated data, OpenSSL through ``cryptography``): ~20 GB/s on one core with AES-NI and
carry-less multiplication, faster than the copy, where keyed BLAKE3 (~5 GB/s) made the path
20-45 % slower.  Its key is derived from the secret and its nonce is the segment's whole id:
creator pid, a counter that starts at the creator's start time in ns (above any count an earlier
process with that pid reached) and 4 random bytes per process (pid namespaces sharing a
/dev/shm, hosts started at the same instant), so no two segments share one, a MAC cannot be
moved to another segment, and none can be made without the key.
A pickle stream is copied out of its segment before the check, so what is checked is what the
unpickler reads; an array's buffer is checked in place (a later rewrite changes data, never
which code runs).  The id travels in the signed header.
"""
from __future__ import annotations

import array
import fcntl
import glob
import mmap
import os
import socket
import struct
import threading
import time
import weakref
from hmac import compare_digest as _compare_digest

from blake3 import blake3 as _blake3

DIR = "/dev/shm"
_ID = struct.Struct("<IQ4s")  # named: creator pid, counter, the creator's random salt: the MAC's nonce
_SEALED_ID = struct.Struct("<IQI")  # sealed: creator pid, counter | SEALED, its descriptor there
SEALED = 1 << 63  # the counter's top bit (a named one starts at time_ns, far below it)
HANDED = 1 << 62  # the next: its descriptor went to the receiver's inbox (SCM_RIGHTS), not kept
INBOX = "segments"  # the origin's inbox socket, in its private directory (scoop.direct)
MAC_SIZE = 16                 # a GMAC tag, after a named segment's content
_ONE_CALL = 1 << 30
_PIECE = 1 << 18  # fits in a core's L2 cache
# the MAC reads every page at once: mapping them in one call costs less than a fault per few pages
# (read-only mappings only: populating a writable private one would copy every page)
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
# every seal that matters (F_SEAL_SEAL: none can be added or tested away later); numeric values
# of <linux/fcntl.h> where this Python's fcntl lacks the names
_F_ADD_SEALS = getattr(fcntl, "F_ADD_SEALS", 1033)
_F_GET_SEALS = getattr(fcntl, "F_GET_SEALS", 1034)
_SEALS = (getattr(fcntl, "F_SEAL_SEAL", 1) | getattr(fcntl, "F_SEAL_SHRINK", 2)
          | getattr(fcntl, "F_SEAL_GROW", 4) | getattr(fcntl, "F_SEAL_WRITE", 8))
_LIVE: weakref.WeakSet = weakref.WeakSet()  # every Segments of this process, for its forked children


class SegmentError(ValueError):
    """A segment that is missing, of the wrong owner or size, or whose content changed."""


def available() -> bool:
    return os.path.isdir(DIR) and os.access(DIR, os.W_OK)


def sealing() -> bool:
    """Whether this kernel seals memfds (Linux 3.17+) and shows other processes' descriptors."""
    return hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


class Segments:
    """This process's view of the cluster's segments (``tag``: derived from the secret; its first
    8 bytes name the cluster's files, all of it keys their MACs)."""

    def __init__(self, tag: bytes):
        self.tag = tag[:8]
        self._key = _blake3(tag, derive_key_context="scoop 2026 shared memory GMAC").digest()
        self._gmac = None  # the cipher, made on first use: processes that never map pay nothing
        self._prefix = f"{DIR}/scoop-{self.tag.hex()}-"
        self._memfd = f"scoop-{self.tag.hex()}-"  # a sealed segment's name: this, pid-counter
        self._held: dict[int, int] = {}  # counter -> descriptor of each sealed segment we hold
        self.sealed = sealing()
        self.results = _Named(self)
        self.to_origin = _Handed(self)
        self._inbox = None  # the origin: the socket where workers hand it their results' segments
        self._got: dict[tuple[int, int], int] = {}  # (pid, counter) -> a segment handed to us
        self._reading = threading.Lock()  # one reader of the inbox (a kernel pumps from two threads)
        self._to = None     # a worker: the origin's inbox
        self._trusted = None
        self._out = None    # and our socket to it
        self.pid = -1  # set for this process (again in a forked child) by _own()
        _LIVE.add(self)

    def _name(self, seg: bytes) -> str:
        pid, n, _salt = _ID.unpack(seg)
        return f"{self._prefix}{pid}-{n}"

    def _own(self):
        """This process's pid, counter and salt: a forked child never reuses its parent's."""
        if self.pid != os.getpid():
            self.pid = os.getpid()
            self._next = time.time_ns()
            self._salt = os.urandom(4)

    def _mac(self, nonce: bytes, data, fd: int = -1) -> bytes:
        """The GMAC of ``data`` under ``nonce`` (a segment's id): AES-GCM's tag over it as associated data
        (in one call up to ``_ONE_CALL`` bytes, the cipher's limit).  Given ``fd``, ``data`` is
        also written there, piece by piece, each right after the MAC read it (one pass through
        memory, the second read from cache)."""
        if fd < 0 and data.nbytes <= _ONE_CALL:
            if self._gmac is None:
                from cryptography.hazmat.primitives.ciphers.aead import AESGCM
                self._gmac = AESGCM(self._key)
            return self._gmac.encrypt(nonce, b"", data)
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
        enc = Cipher(algorithms.AES(self._key), modes.GCM(nonce)).encryptor()
        for o in range(0, data.nbytes, _PIECE):
            piece = data[o:o + _PIECE]
            enc.authenticate_additional_data(piece)
            done = 0 if fd >= 0 else piece.nbytes
            while done < piece.nbytes:
                done += os.pwrite(fd, piece[done:], o + done)
        enc.finalize()
        return enc.tag

    def put(self, view) -> bytes:
        """Copies ``view`` into a new sealed segment (a named one where memfds cannot be
        sealed); returns its 16-byte id.  We hold it until :meth:`unlink` or our end."""
        if not self.sealed:
            return self.put_named(view)
        n, fd = self._seal(view)
        self._held[n] = fd
        return _SEALED_ID.pack(self.pid, n | SEALED, fd)

    def _seal(self, view) -> tuple[int, int]:
        """A new sealed memfd holding ``view``: its counter and descriptor."""
        data = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        self._own()
        n = self._next
        self._next += 1
        fd = os.memfd_create(f"{self._memfd}{self.pid}-{n}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            done = 0
            while done < data.nbytes:  # written, not mapped: no memory is an error, not a SIGBUS
                done += os.pwrite(fd, data[done:], done)
            fcntl.fcntl(fd, _F_ADD_SEALS, _SEALS)
        except BaseException:
            os.close(fd)
            raise
        return n, fd

    def listen(self, path: str) -> None:
        """The origin: takes the segments workers hand it at ``path`` (a socket in a directory
        only our user can enter).  Without it, they send named segments."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            _remove(path)  # the directory is ours: anything there is a dead origin's
            s.bind(path)
        except OSError:
            s.close()
            return
        self._inbox = s

    def hand_to(self, path: str, trusted=None) -> None:
        """A worker: segments for the origin are handed to its inbox at ``path``, once
        ``trusted()`` says its directory is ours (asked until it does)."""
        self._to = path
        self._trusted = trusted

    def put_handed(self, view) -> bytes:
        """Copies ``view`` into a sealed segment and hands its descriptor to the origin's inbox,
        keeping none (the origin frees it once mapped, as a result's receiver does); a named
        segment when that cannot be (no inbox here, its queue full)."""
        if self._to is None or not self.sealed:
            return self.put_named(view)
        if self._trusted is not None:
            if not self._trusted():
                return self.put_named(view)
            self._trusted = None
        n, fd = self._seal(view)
        seg = _SEALED_ID.pack(self.pid, n | SEALED | HANDED, 0)
        try:
            if self._out is None:
                self._out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._out.sendmsg([seg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))],
                              socket.MSG_DONTWAIT, self._to)
        except OSError as exc:
            if not isinstance(exc, BlockingIOError):
                self._to = None  # no inbox there (another mount namespace, no origin's directory)
            return self.put_named(view)
        finally:
            os.close(fd)
        return seg

    def _handed(self, key: tuple[int, int]) -> int | None:
        """The descriptor handed to us as ``key``, reading our inbox as far as it (its sender
        queued it before sending the record that names it)."""
        with self._reading:
            return self._read_inbox(key)

    def _read_inbox(self, key: tuple[int, int]) -> int | None:
        got, inbox = self._got, self._inbox
        while key not in got and inbox is not None:
            try:
                msg, anc, _flags, _addr = inbox.recvmsg(_SEALED_ID.size, socket.CMSG_SPACE(16))
            except (BlockingIOError, InterruptedError):
                break
            fds = array.array("i")
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
            if len(msg) == _SEALED_ID.size and len(fds) == 1:
                pid, n, _ = _SEALED_ID.unpack(msg)
                old = got.pop((pid, n), None)
                if old is not None:
                    os.close(old)
                got[(pid, n)] = fds[0]
            else:
                for fd in fds:
                    os.close(fd)
        return got.get(key)

    def put_named(self, view) -> bytes:
        """Copies ``view`` into a new named segment, its MAC at the end; returns its 16-byte id."""
        data = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        size = view.nbytes
        self._own()
        n = self._next
        self._next += 1
        seg = _ID.pack(self.pid, n, self._salt)
        path = f"{self._prefix}{self.pid}-{n}"
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
        try:
            # written, not copied into a mapping: a full /dev/shm (Docker's default is 64 MB) is
            # an OSError here instead of a SIGBUS that kills the process, and it is ~2x faster
            os.pwrite(fd, self._mac(seg, data, fd), size)
        except BaseException:
            os.close(fd)
            _remove(path)
            raise
        os.close(fd)
        return seg

    def open(self, seg: bytes, size: int, shared: bool = False, copy: bool = False):
        """Maps a segment as a writable memoryview; copy-on-write unless ``shared`` (read-only,
        one copy per host: shared constants); with ``copy`` (a pickle stream), a named segment is
        read into private memory (checked bytes cannot change) and a sealed one mapped read-only.
        Only this cluster's segments, owned by us, with the content they were sent with."""
        if _ID.unpack(seg)[1] & SEALED:
            return self._open_sealed(seg, size, shared or copy)
        try:
            fd = os.open(self._name(seg), os.O_RDONLY if shared or copy else os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise SegmentError("shared-memory segment not found (another cluster's, or already "
                               "freed)") from None
        try:
            st = os.fstat(fd)
            macs = MAC_SIZE
            if st.st_uid != os.getuid() or st.st_size != size + macs:
                raise SegmentError("shared-memory segment has the wrong owner or size")
            if copy:
                buf = bytearray(size)
                sent = bytearray(macs)
                if os.preadv(fd, [buf, sent], 0) != size + macs:
                    raise SegmentError("shared-memory segment shrank while it was read")
            else:
                sent = os.pread(fd, macs, size)
            if copy or not size:
                view = memoryview(buf if copy else b"")
            elif shared:
                view = memoryview(mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ))
            else:
                view = memoryview(mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE,
                                            prot=mmap.PROT_READ | mmap.PROT_WRITE))
        finally:
            os.close(fd)
        if not _compare_digest(self._mac(bytes(seg), view), bytes(sent)):
            raise SegmentError("a shared-memory segment does not match the digest it was sent with "
                               "(rewritten after the send, or another cluster's); refused before "
                               "unpickling")
        return view

    def _open_sealed(self, seg: bytes, size: int, read_only: bool):
        pid, n, fd = _SEALED_ID.unpack(seg)
        name = f"/memfd:{self._memfd}{pid}-{n & ~(SEALED | HANDED)} (deleted)"
        if n & HANDED:
            fd = self._handed((pid, n))
            if fd is None:
                raise SegmentError("shared-memory segment not found (another cluster's, or not "
                                   "handed to this process)")
            return self._map_sealed(fd, name, size, read_only)
        try:
            fd = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # its process is gone, the descriptor closed, or not ours to open
            raise SegmentError("shared-memory segment not found (another cluster's, or already "
                               "freed)") from None
        try:
            return self._map_sealed(fd, name, size, read_only)
        finally:
            os.close(fd)

    @staticmethod
    def _map_sealed(fd: int, name: str, size: int, read_only: bool):
        """Checks a sealed segment's name, owner, size and seals, then maps it."""
        if os.readlink(f"/proc/self/fd/{fd}") != name:
            raise SegmentError("shared-memory segment not found (another cluster's, or already "
                               "freed: its descriptor now holds another file)")
        st = os.fstat(fd)
        if st.st_uid != os.getuid() or st.st_size != size:
            raise SegmentError("shared-memory segment has the wrong owner or size")
        if fcntl.fcntl(fd, _F_GET_SEALS) & _SEALS != _SEALS:
            raise SegmentError("shared-memory segment is not sealed: refused before unpickling")
        if not size:
            return memoryview(b"")
        if read_only:  # a pickle stream or a constant: sealed, so read in place
            return memoryview(mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ))
        return memoryview(mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE))

    def unlink(self, seg: bytes) -> None:
        """Frees a segment: a named one for everybody; a sealed one only if we made it (its
        receivers keep what they mapped; the broker and others have nothing to free)."""
        pid, n, _ = _ID.unpack(seg)
        if not n & SEALED:
            _remove(self._name(seg))
        elif n & HANDED:
            self._handed((pid, n))
            fd = self._got.pop((pid, n), None)
            if fd is not None:
                os.close(fd)
        elif pid == self.pid:
            fd = self._held.pop(n & ~SEALED, None)
            if fd is not None:
                os.close(fd)

    def held(self) -> int:
        """How many sealed segments this process holds (made, or handed to it)."""
        return (len(self._held) if self.pid == os.getpid() else 0) + len(self._got)

    def cleanup(self, pid: int | None = None) -> int:
        """Removes this cluster's named segments (only those ``pid`` created, if given) and, for
        our own pid or none, frees the sealed segments we hold."""
        n = 0
        if pid is None or pid == os.getpid():
            held, self._held = self._held, {}
            got, self._got = self._got, {}
            for fd in [*held.values(), *got.values()]:
                os.close(fd)
            n += len(held) + len(got)
            if self._inbox is not None and pid is not None:  # our end: nothing more is taken
                self._inbox.close()
                self._inbox = None
        pattern = f"{self._prefix}{pid if pid is not None else '*'}-*"
        for path in glob.glob(pattern):
            try:
                os.unlink(path)
                n += 1
            except OSError:
                pass
        return n

    def _forked(self):
        """In a forked child: the parent's sealed segments and inbox are the parent's."""
        for fd in [*self._held.values(), *self._got.values()]:
            try:
                os.close(fd)
            except OSError:
                pass
        self._held, self._got = {}, {}
        for s in (self._inbox, self._out):
            if s is not None:
                s.close()
        self._inbox = self._out = None
        self._reading = threading.Lock()  # a fork may have caught another thread holding it


class _Named:
    """The allocator for results to anyone but the origin: named segments their receiver frees."""

    def __init__(self, segments: Segments):
        self.put = segments.put_named


class _Handed:
    """The allocator for results to the origin: sealed segments handed to its inbox."""

    def __init__(self, segments: Segments):
        self.put = segments.put_handed


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def cleanup_cluster(secret: bytes) -> int:
    """Removes every segment of the cluster with this secret (the Cluster's stop, the broker's end)."""
    from ._protocol import derive
    return Segments(derive(secret, "shared memory")).cleanup() if available() else 0


def leftovers(secret: bytes) -> list[str]:
    """The cluster's named segments in /dev/shm and, as /proc/<pid>/fd/<n>, the sealed ones
    any process still holds: nothing once the cluster ended."""
    from ._protocol import derive
    tag = derive(secret, "shared memory")[:8].hex()
    found = glob.glob(f"{DIR}/scoop-{tag}-*")
    want = f"/memfd:scoop-{tag}-"
    for fd_dir in glob.glob("/proc/[0-9]*/fd"):
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for name in names:
            try:
                if os.readlink(f"{fd_dir}/{name}").startswith(want):
                    found.append(f"{fd_dir}/{name}")
            except OSError:
                pass
    return found


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: [s._forked() for s in list(_LIVE)])
