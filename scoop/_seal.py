"""Payload buffers sealed end to end: AES-256-GCM from the sender to the receiver.

CurveZMQ encrypts every byte of a connection in libzmq's I/O thread with XSalsa20-Poly1305,
~1 GB/s per connection (bench/encryption.py).  AES-256-GCM through OpenSSL (the
``cryptography`` package: AES-NI, carry-less multiplication) seals ~10 GB/s on one core, so a
payload frame sealed here can travel on a connection that does not encrypt again (a bulk lane
beside the CURVE connection that carries the signed headers) at the speed of the socket.

* **Keys**: each sending process seals with its own key, derived from the cluster secret and
  the process's random uid (8 bytes).  Every member can derive every sender's key, so a frame
  is sealed once by its sender and opened once by its receiver; whoever forwards it between
  them (a broker, a sub-broker) holds only ciphertext and never needs to touch it.
* **Nonces never repeat**: a sender's counter, advanced by one per frame, under a key no other
  process has (the uid is in the key).  Nothing is drawn at random per frame.
* **Bound to the header**: a sealed buffer's ref (signed in the header, see scoop._protocol)
  carries the sender's uid and the counter of its first frame; frame ``i`` must open with
  nonce ``counter + i`` and associated data (ref kind, buffer size, ``i``).  A frame from
  another message, another position or another sender, replayed, reordered, cut or swapped,
  does not open, and the receiver refuses the buffer before anything is unpickled.
* **A prefix the broker checks**: every sealed frame starts with ``PREFIX`` bytes, the sender's
  uid and the frame's counter under a MAC keyed from the secret (see :class:`Prefix`).  A broker
  taking frames on a connection that has no handshake of its own (scoop.bulk) checks those few
  bytes before it keeps anything, and pairs the frame with its signed header by (uid, counter);
  it never reads the sealed part.
"""
from __future__ import annotations

import struct
import threading
from hmac import compare_digest as _compare_digest

from blake3 import blake3 as _blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._protocol import fresh as _buffer  # memory the cipher writes whole: not zeroed first

TAG = 16                      # bytes a sealed frame carries beyond its plaintext
KEY = struct.Struct("<8sQ")   # a sealed ref's key: sender uid, counter of its first frame
_AAD = struct.Struct("<BQI")  # ref kind, buffer size, frame index
_NONCE = struct.Struct("<Q4x")
_INTO = hasattr(AESGCM, "encrypt_into")
_PREFIX = struct.Struct("<16s8sQ")  # MAC, sender uid, counter
_SIGNED = struct.Struct("<8sQQ")    # what the MAC covers: uid, counter, the frame's length
PREFIX = _PREFIX.size               # bytes before the sealed part of every sealed frame


class SealError(ValueError):
    """A sealed frame that does not open: forged, replayed, reordered, cut or another sender's."""


def _key(secret: bytes, uid: bytes) -> bytes:
    return _blake3(secret + uid, derive_key_context="scoop 2026 payload seal").digest()


class Prefix:
    """The MAC'd prefix of sealed frames: made by their sender, checked by a broker (which needs
    nothing else of the secret).  It covers the sender's uid, the frame's counter and its
    length, so a frame cut, grown or sent under another counter or uid is refused unread."""

    __slots__ = ("_key",)

    def __init__(self, secret: bytes):
        self._key = _blake3(secret, derive_key_context="scoop 2026 bulk frame prefix").digest()

    def mac(self, uid: bytes, counter: int, length: int) -> bytes:
        return _blake3(_SIGNED.pack(uid, counter, length), key=self._key).digest(16)

    def check(self, frame) -> tuple[bytes, int] | None:
        """(uid, counter) of a frame whose prefix is genuine, else None."""
        buf = frame.buffer if hasattr(frame, "buffer") else memoryview(frame)
        n = buf.nbytes
        if n < PREFIX:
            return None
        mac, uid, counter = _PREFIX.unpack_from(buf)
        if not _compare_digest(mac, self.mac(uid, counter, n)):
            return None
        return uid, counter


def frame_key(frame) -> tuple[bytes, int]:
    """(uid, counter) a sealed frame's prefix names (not checked: opening checks everything)."""
    buf = frame.buffer if hasattr(frame, "buffer") else memoryview(frame)
    return _PREFIX.unpack_from(buf)[1:]


class Sealer:
    """This process's sealing key and counter, and the keys of the senders it opened frames of.

    ``uid``: this process's 8 random bytes (``Runtime.uid``)."""

    __slots__ = ("uid", "_secret", "_aead", "_next", "_peers", "_prefix", "_lock")

    def __init__(self, secret: bytes, uid: bytes):
        if len(uid) != 8:
            raise ValueError("a sealer's uid is 8 bytes")
        self.uid = bytes(uid)
        self._secret = secret
        self._aead = AESGCM(_key(secret, self.uid))
        self._next = 0
        self._peers: dict[bytes, AESGCM] = {}
        self._prefix = Prefix(secret)
        self._lock = threading.Lock()  # any thread may pack: a counter (a nonce) is never given twice

    def _take(self, count: int) -> int:
        with self._lock:
            n = self._next
            self._next = n + count
        return n

    def hello(self) -> bytes:
        """A frame with a prefix and nothing sealed: a bulk connection's first, naming its sender."""
        n = self._take(1)
        return _PREFIX.pack(self._prefix.mac(self.uid, n, PREFIX), self.uid, n)

    def seal(self, kind: int, view, chunk: int) -> tuple[bytes, list]:
        """``view`` (1-D bytes) sealed as frames of ``chunk`` plaintext bytes each, each behind its
        prefix: (ref key, frames)."""
        size = view.nbytes
        count = max(1, -(-size // chunk))
        n = self._take(count)
        aead, prefix, uid = self._aead, self._prefix, self.uid
        frames = []
        for i in range(count):
            part = view[i * chunk:(i + 1) * chunk]
            nonce, aad = _NONCE.pack(n + i), _AAD.pack(kind, size, i)
            length = PREFIX + part.nbytes + TAG
            if _INTO:
                out = _buffer(length)
                aead.encrypt_into(nonce, part, aad, out[PREFIX:])
            else:
                out = memoryview(bytearray(PREFIX) + aead.encrypt(nonce, part, aad))
            _PREFIX.pack_into(out, 0, prefix.mac(uid, n + i, length), uid, n + i)
            frames.append(out)
        return KEY.pack(uid, n), frames

    def open(self, kind: int, size: int, key: bytes, frames, chunk: int) -> memoryview:
        """The plaintext of a sealed buffer, written once into fresh memory (a writable view)."""
        uid, n = KEY.unpack(key)
        aead = self._peers.get(uid)
        if aead is None:
            aead = self._aead if uid == self.uid else AESGCM(_key(self._secret, uid))
            if len(self._peers) > 4096:
                self._peers.clear()
            self._peers[uid] = aead
        out = _buffer(size) if _INTO else memoryview(bytearray(size))
        o = 0
        try:
            for i, fr in enumerate(frames):
                part = (fr.buffer if hasattr(fr, "buffer") else memoryview(fr))[PREFIX:]
                m = part.nbytes - TAG
                if m != min(chunk, size - o) or (m == 0 and size):
                    raise SealError("a sealed payload frame does not match its signed size")
                nonce, aad = _NONCE.pack(n + i), _AAD.pack(kind, size, i)
                if _INTO:
                    aead.decrypt_into(nonce, part, aad, out[o:o + m])
                else:
                    out[o:o + m] = aead.decrypt(nonce, part, aad)
                o += m
        except InvalidTag:
            raise SealError("a sealed payload frame does not open (forged, replayed, reordered or "
                            "another sender's); refused before unpickling") from None
        if o != size:
            raise SealError("a sealed payload is missing frames")
        return out


def frames_of(size: int, chunk: int) -> int:
    """How many frames a sealed buffer of ``size`` bytes travels as."""
    return max(1, -(-size // chunk))
