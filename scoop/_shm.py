"""Shared-memory segments for payload buffers between processes of one host.

A buffer of ``SHM_MIN`` bytes or more sent to a process on the same host is copied once into a
segment under /dev/shm; only its id crosses the broker, and the receiver maps it (copy-on-write,
so the received array is writable and the sender's copy unaffected).  Ownership keeps /dev/shm
clean: the sender of a task's arguments unlinks them when the task is done, the receiver of a
result unlinks it once mapped, the broker unlinks what it drops, and every segment's name starts
with the cluster's tag and its creator's pid, so whoever outlives a crash (a process's own exit,
the broker, the Cluster's stop) removes what is left by prefix.

Checked as payload frames are: the id carries a MAC of the content (keyed BLAKE3, 64 bits, key
derived from the secret), made by the sender as it copies and checked by the receiver before
anything is unpickled, so a segment rewritten after the send (only its user or root can) is
refused.  A pickle stream is copied out of its segment before the check, so what is checked is
what the unpickler reads; an array's buffer is checked in place (a later rewrite changes data,
never which code runs).  The id travels in the signed header.
"""
from __future__ import annotations

import glob
import itertools
import mmap
import os
import struct

from blake3 import blake3 as _blake3

DIR = "/dev/shm"
_ID = struct.Struct("<II8s")  # creator pid, counter, MAC of the content
MAC_SIZE = 8


class SegmentError(ValueError):
    """A segment that is missing, of the wrong owner or size, or whose content changed."""


def available() -> bool:
    return os.path.isdir(DIR) and os.access(DIR, os.W_OK)


class Segments:
    """This process's view of the cluster's segments (``tag``: derived from the secret; its first
    8 bytes name the cluster's files, all of it keys their MACs)."""

    def __init__(self, tag: bytes):
        self.tag = tag[:8]
        self._key = _blake3(tag, derive_key_context="scoop 2026 shared memory MAC").digest()
        self._prefix = f"{DIR}/scoop-{self.tag.hex()}-"
        self.pid = os.getpid()
        self._count = itertools.count(1)

    def _name(self, seg: bytes) -> str:
        pid, n, _mac = _ID.unpack(seg)
        return f"{self._prefix}{pid}-{n}"

    def mac(self, data) -> bytes:
        return _blake3(data, key=self._key).digest(MAC_SIZE)

    def put(self, view) -> bytes:
        """Copies ``view`` into a new segment; returns its 16-byte id."""
        data = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        n = next(self._count)
        path = f"{self._prefix}{self.pid}-{n}"
        size = view.nbytes
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
        try:
            # written, not copied into a mapping: a full /dev/shm (Docker's default is 64 MB) is
            # an OSError here instead of a SIGBUS that kills the process, and it is ~2x faster
            done = 0
            while done < size:
                done += os.pwrite(fd, data[done:], done)
        except BaseException:
            os.close(fd)
            _remove(path)
            raise
        os.close(fd)
        return _ID.pack(self.pid, n, self.mac(data))

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
            if st.st_uid != os.getuid() or st.st_size != size:
                raise SegmentError("shared-memory segment has the wrong owner or size")
            if not size:
                view = memoryview(b"")
            elif copy:
                buf = bytearray(size)
                got = os.preadv(fd, [buf], 0)
                if got != size:
                    raise SegmentError("shared-memory segment shrank while it was read")
                view = memoryview(buf)
            elif shared:
                view = memoryview(mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ))
            else:
                view = memoryview(mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE,
                                            prot=mmap.PROT_READ | mmap.PROT_WRITE))
        finally:
            os.close(fd)
        if self.mac(view) != _ID.unpack(seg)[2]:
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
