"""Shared-memory segments for payload buffers between processes of one host.

A buffer of ``SHM_MIN`` bytes or more sent to a process on the same host is copied once into a
segment under /dev/shm; only its id crosses the broker, and the receiver maps it (copy-on-write,
so the received array is writable and the sender's copy unaffected).  Ownership keeps /dev/shm
clean: the sender of a task's arguments unlinks them when the task is done, the receiver of a
result unlinks it once mapped, the broker unlinks what it drops, and every segment's name starts
with the cluster's tag and its creator's pid, so whoever outlives a crash (a process's own exit,
the broker, the Cluster's stop) removes what is left by prefix.

Checked as payload frames are: each segment ends with a MAC of its content, made by the sender
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

import glob
import mmap
import os
import struct
import time
from hmac import compare_digest as _compare_digest

from blake3 import blake3 as _blake3

DIR = "/dev/shm"
_ID = struct.Struct("<IQ4s")  # creator pid, counter, the creator's random salt: the MAC's nonce
MAC_SIZE = 16                 # a GMAC tag, after the content
_ONE_CALL = 1 << 30
_PIECE = 1 << 18  # fits in a core's L2 cache
# the MAC reads every page at once: mapping them in one call costs less than a fault per few pages
# (read-only mappings only: populating a writable private one would copy every page)
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


class SegmentError(ValueError):
    """A segment that is missing, of the wrong owner or size, or whose content changed."""


def available() -> bool:
    return os.path.isdir(DIR) and os.access(DIR, os.W_OK)


class Segments:
    """This process's view of the cluster's segments (``tag``: derived from the secret; its first
    8 bytes name the cluster's files, all of it keys their MACs)."""

    def __init__(self, tag: bytes):
        self.tag = tag[:8]
        self._key = _blake3(tag, derive_key_context="scoop 2026 shared memory GMAC").digest()
        self._gmac = None  # the cipher, made on first use: processes that never map pay nothing
        self._prefix = f"{DIR}/scoop-{self.tag.hex()}-"
        self.pid = -1  # set for this process (again in a forked child) by _own()

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
        """Copies ``view`` into a new segment; returns its 16-byte id."""
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
        one copy per host: shared constants); read into private memory with ``copy`` (a pickle
        stream: checked bytes cannot change).  Only this cluster's segments, owned by us, with
        the content they were sent with."""
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

    def unlink(self, seg: bytes) -> None:
        _remove(self._name(seg))

    def cleanup(self, pid: int | None = None) -> int:
        """Removes this cluster's segments (only those ``pid`` created, if given)."""
        pattern = f"{self._prefix}{pid if pid is not None else '*'}-*"
        n = 0
        for path in glob.glob(pattern):
            try:
                os.unlink(path)
                n += 1
            except OSError:
                pass
        return n


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
    from ._protocol import derive
    return glob.glob(f"{DIR}/scoop-{derive(secret, 'shared memory')[:8].hex()}-*")
