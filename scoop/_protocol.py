"""Wire protocol: signed multipart messages made of records, and (de)serialization.

A message is one ZeroMQ frame: a 16-byte signature, then records, each a length prefix, a
header and a body.
The broker reads only record headers (a type byte and fixed binary fields); bodies are opaque
to it, so it never unpickles a payload.  Every message carries a keyed BLAKE2b MAC over all
its records: a message whose MAC does not verify is dropped before any frame is parsed, so no
peer without the cluster secret can make a process unpickle anything.

Batching falls out of the format: one message may carry any number of records.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import struct


def _cloudpickle():
    """Imported on first use: brokers never need it and workers rarely do, and every
    millisecond of import is paid at each cluster start."""
    import cloudpickle
    return cloudpickle

# ---- record types (first byte of a record header) ------------------------------------------
HELLO = b"H"       # worker -> broker: body = JSON identity (host, pid, role)
WELCOME = b"W"     # broker -> worker: body = JSON (index, size, broker info)
BLOB = b"F"        # callable, referenced by digest: header = F + digest(16)
TASK = b"T"        # header = T + task id(8) + group(4) + digest(16); body = pickled (args, kwargs)
CHUNK = b"M"       # like TASK; body = pickled list of argument tuples (a map's inputs, run in order)
RESULT = b"R"      # header = R + task id(8) + status(1) + inputs(4); body = pickled value / exception
CREDIT = b"K"      # worker -> broker: header = K + count(i4); how many more tasks it can take
CANCEL = b"X"      # header = X + task id(8) [+ ok(1) in the broker's reply]
CONST = b"S"       # header = S + name (utf-8); body = pickled value
INTERRUPT = b"I"   # header = I + group(4): drop queued tasks of a group, interrupt running ones
FAIL = b"E"        # broker -> submitter: header = E + task id(8); body = utf-8 reason
SHUTDOWN = b"D"    # either way: the cluster (or this worker) is ending; body = utf-8 reason
SIZE = b"Z"        # broker -> workers: header = Z + size(4)
BYE = b"Q"         # worker -> broker: leaving cleanly
RETIRE = b"Y"      # broker -> worker: stop taking work, return unstarted tasks, exit when idle
RELEASE = b"U"     # worker -> broker: hands back unstarted tasks (header = U + task id(8))
ASK = b"A"         # where is task id? header = A + task id(8) [+ state(1) in the reply: 0 queued, 1 at a worker, 2 gone]
STEAL = b"V"       # broker -> worker: hand back up to n unstarted tasks (header = V + n(4))
HEARTBEAT = b"h"   # control socket, worker -> broker: body = JSON load figures
PONG = b"p"        # control socket, broker -> worker: liveness of the broker
STATUS = b"s"      # meta socket: body = JSON cluster snapshot
EVENT = b"e"       # meta socket: body = JSON event (joined / left / const)

# RESULT status byte
OK = 0
RAISED = 1

TASK_HEADER = struct.Struct("<cQI16s")
RESULT_HEADER = struct.Struct("<cQBI")
ID = struct.Struct("<Q")
I32 = struct.Struct("<i")
U32 = struct.Struct("<I")
EMPTY = b""

SECRET_ENV = "SCOOP_SECRET"


class AuthError(Exception):
    """Raised for a message whose signature does not verify."""


def new_secret() -> bytes:
    return os.urandom(32)


class Signer:
    """Signs and verifies messages with the cluster secret (keyed BLAKE2b, 128-bit tag).

    Frame lengths are hashed in, so frames cannot be re-split to forge a different message.
    """

    __slots__ = ("_key",)

    def __init__(self, secret: bytes):
        if not secret or len(secret) < 16:
            raise ValueError("cluster secret must be at least 16 bytes")
        self._key = secret[:64]

    def sign(self, frames) -> bytes:
        h = hashlib.blake2b(key=self._key, digest_size=16)
        if len(frames) == 1:
            h.update(frames[0])
        else:
            pack = U32.pack
            for f in frames:
                h.update(pack(len(f)))
                h.update(f)
        return h.digest()

    def verify(self, sig, frames) -> bool:
        return len(sig) == 16 and hmac.compare_digest(sig, self.sign(frames))


REC = struct.Struct("<HI")  # header length, body length
_SIG = 16


def encode(frames) -> bytes:
    """``[hdr0, body0, hdr1, body1, ...]`` -> one buffer of length-prefixed records.

    One ZeroMQ frame per message: pyzmq costs ~10 us per frame sent, far more than the
    copy of a small record, so a batch of 256 tasks is one send instead of 513.
    """
    pack = REC.pack
    pieces = []
    for j in range(0, len(frames), 2):
        h, b = frames[j], frames[j + 1]
        pieces += (pack(len(h), len(b)), h, b)
    return b"".join(pieces)


def decode(data, offset: int = 0):
    """Inverse of :func:`encode`; None if the buffer is not a well-formed record list."""
    out = []
    i, n = offset, len(data)
    unpack = REC.unpack_from
    try:
        while i < n:
            hl, bl = unpack(data, i)
            i += 6
            out.append(data[i:i + hl])
            i += hl
            out.append(data[i:i + bl])
            i += bl
    except struct.error:
        return None
    if i != n or not out:
        return None
    return out


SIG_SIZE = _SIG


def verify_sealed(signer: Signer, msg) -> bool:
    """Checks a sealed message's signature without parsing anything."""
    return len(msg) >= _SIG + 6 and hmac.compare_digest(msg[:_SIG], signer.sign((memoryview(msg)[_SIG:],)))


def seal(signer: Signer, frames) -> bytes:
    data = encode(frames)
    return signer.sign((data,)) + data


def open_sealed(signer: Signer, msg):
    """Verifies a sealed message before parsing anything; returns the record list or None."""
    if len(msg) < _SIG + 6:
        return None
    if not hmac.compare_digest(msg[:_SIG], signer.sign((memoryview(msg)[_SIG:],))):
        return None
    return decode(msg, _SIG)


def send(sock, signer: Signer, frames: list, flags: int = 0) -> None:
    sock.send(seal(signer, frames), flags)


def recv_verified(sock, signer: Signer, flags: int = 0):
    """Returns the record list of the next message, or None for one that does not verify."""
    return open_sealed(signer, sock.recv(flags))


def split_routed(msg, signer: Signer):
    """ROUTER side: ``[identity, sealed]`` -> (identity, records) or (identity, None)."""
    if len(msg) != 2:
        return (msg[0] if msg else b""), None
    return msg[0], open_sealed(signer, msg[1])


# ---- serialization ---------------------------------------------------------------------------
class SerializationError(TypeError):
    """Raised when a callable, an argument or a result cannot be pickled; names the culprit."""


_MAIN_MARK = b"__main__"


def dumps(obj, what: str = "object") -> bytes:
    """Plain pickle when it is faithful, cloudpickle when the object needs shipping by value.

    Pickle is ~8x cheaper than cloudpickle for small arguments, but it refers to anything
    defined in ``__main__`` (a script or a notebook) by name, which a worker cannot resolve;
    such payloads are re-made with cloudpickle, which ships those definitions by value.
    """
    try:
        data = pickle.dumps(obj, 5)
        if _MAIN_MARK not in data:
            return data
    except Exception:
        pass
    try:
        return _cloudpickle().dumps(obj, 5)
    except Exception as exc:
        raise SerializationError(f"{what} could not be pickled: {_describe(obj)}: "
                                 f"{type(exc).__name__}: {exc}") from exc


def dumps_callable(fn) -> bytes:
    try:
        return _cloudpickle().dumps(fn, 5)
    except Exception as exc:
        raise SerializationError(f"function {_describe(fn)} could not be pickled: "
                                 f"{type(exc).__name__}: {exc}") from exc


def loads(data):
    return pickle.loads(data)


def digest(blob: bytes) -> bytes:
    return hashlib.blake2b(blob, digest_size=16).digest()


def _describe(obj) -> str:
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if name and callable(obj):
        mod = getattr(obj, "__module__", None)
        return f"{mod}.{name}" if mod and mod != "builtins" else name
    text = repr(obj)
    return text if len(text) <= 120 else text[:117] + "..."


def find_unpicklable(obj, path: str = "") -> str:
    """Best-effort path to the first part of ``obj`` that does not pickle, for error messages."""
    if isinstance(obj, (tuple, list)):
        for i, item in enumerate(obj):
            try:
                _cloudpickle().dumps(item)
            except Exception:
                return find_unpicklable(item, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            try:
                _cloudpickle().dumps(v)
            except Exception:
                return find_unpicklable(v, f"{path}[{k!r}]")
    return f"{path or 'value'} = {_describe(obj)}"


class RemoteTraceback(Exception):
    """Carries a worker's formatted traceback; set as ``__cause__`` of re-raised exceptions."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return self.tb


def dump_exception(exc: BaseException, tb_text: str) -> bytes:
    """Pickles a task's exception with its remote traceback; unpicklable ones degrade to a
    ``RemoteError`` that keeps the original type name and message."""
    try:
        return pickle.dumps((exc, tb_text), 5)
    except Exception:
        try:
            return _cloudpickle().dumps((exc, tb_text), 5)
        except Exception:
            from .errors import RemoteError
            return pickle.dumps((RemoteError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"), tb_text), 5)


def load_exception(data: bytes) -> BaseException:
    exc, tb_text = pickle.loads(data)
    if tb_text:
        exc.__cause__ = RemoteTraceback(tb_text)
    return exc
