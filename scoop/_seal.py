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
"""
from __future__ import annotations

import struct

from blake3 import blake3 as _blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._protocol import fresh as _buffer  # memory the cipher writes whole: not zeroed first

TAG = 16                      # bytes a sealed frame carries beyond its plaintext
KEY = struct.Struct("<8sQ")   # a sealed ref's key: sender uid, counter of its first frame
_AAD = struct.Struct("<BQI")  # ref kind, buffer size, frame index
_NONCE = struct.Struct("<Q4x")
_INTO = hasattr(AESGCM, "encrypt_into")


class SealError(ValueError):
    """A sealed frame that does not open: forged, replayed, reordered, cut or another sender's."""


def _key(secret: bytes, uid: bytes) -> bytes:
    return _blake3(secret + uid, derive_key_context="scoop 2026 payload seal").digest()


class Sealer:
    """This process's sealing key and counter, and the keys of the senders it opened frames of.

    ``uid``: this process's 8 random bytes (``Runtime.uid``)."""

    __slots__ = ("uid", "_secret", "_aead", "_next", "_peers")

    def __init__(self, secret: bytes, uid: bytes):
        if len(uid) != 8:
            raise ValueError("a sealer's uid is 8 bytes")
        self.uid = bytes(uid)
        self._secret = secret
        self._aead = AESGCM(_key(secret, self.uid))
        self._next = 0
        self._peers: dict[bytes, AESGCM] = {}

    def seal(self, kind: int, view, chunk: int) -> tuple[bytes, list]:
        """``view`` (1-D bytes) sealed as frames of ``chunk`` plaintext bytes each: (ref key, frames)."""
        size = view.nbytes
        n = self._next
        count = max(1, -(-size // chunk))
        self._next = n + count
        aead = self._aead
        frames = []
        for i in range(count):
            part = view[i * chunk:(i + 1) * chunk]
            nonce, aad = _NONCE.pack(n + i), _AAD.pack(kind, size, i)
            if _INTO:
                out = _buffer(part.nbytes + TAG)
                aead.encrypt_into(nonce, part, aad, out)
            else:
                out = aead.encrypt(nonce, part, aad)
            frames.append(out)
        return KEY.pack(self.uid, n), frames

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
                part = fr.buffer if hasattr(fr, "buffer") else memoryview(fr)
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
