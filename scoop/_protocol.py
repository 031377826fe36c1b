"""Wire protocol: every byte that crosses a socket is made and read here.

A message is a ZeroMQ multipart message ``[header, payload frame, ...]``:

* The **header** frame is a 16-byte MAC followed by records.  The MAC is keyed BLAKE3 over the
  records with a key per channel, so a message signed for one channel and direction (a worker's
  task socket to the broker, the broker to a worker, a worker's results straight to the origin,
  the meta stream, ...) does not verify on any other: captured meta messages replayed to the
  task port are dropped.
* A **record** is ``REC`` (header length, inline body length, number of refs), a header (a type
  byte and fixed binary fields, read through the named structs below), an inline body (small
  pickles, JSON) and refs.  A **ref** names one payload buffer: its kind, size and either the
  BLAKE3 digest of a payload frame of this message or the id of a shared-memory segment.
* **Payload frames** carry pickle-5 out-of-band buffers (numpy arrays, bytes, ...) and large
  pickle streams.  They are sent and received without copies; the broker forwards them as the
  same frame objects and never hashes them: the sender hashed each once, the digest travels in
  the signed header, and the receiver checks it before anything is unpickled.

The broker therefore authenticates a few hundred header bytes per message whatever the size of
its payloads, and nothing it cannot authenticate is ever parsed, let alone unpickled.
"""
from __future__ import annotations

import os
import pickle
import struct
import sys
from hmac import compare_digest as _compare_digest

import blake3
import zmq
from blake3 import blake3 as _blake3


def _cloudpickle():
    """Imported on first use: brokers never need it and workers rarely do, and every
    millisecond of import is paid at each cluster start."""
    import cloudpickle
    return cloudpickle


# ---- record types (first byte of a record header) ------------------------------------------
HELLO = b"H"       # peer -> broker: body = JSON identity (name, host, host_key, pid, role)
WELCOME = b"W"     # broker -> peer: body = JSON (index, size, hosts, ports)
BLOB = b"F"        # a callable, referenced by digest: BLOB_HEADER; body = its pickle
TASK = b"T"        # TASK_HEADER; body = pickled (args, kwargs)
CHUNK = b"M"       # like TASK; body = pickled list of argument tuples (a map's inputs, run in order)
RESULT = b"R"      # RESULT_HEADER; body = pickled value / exception
CREDIT = b"K"      # worker -> broker: COUNT; how many more tasks it can take
CANCEL = b"X"      # TID [+ ok(1) in the answer]
CONST = b"S"       # S + name (utf-8); body = pickled value
INTERRUPT = b"I"   # GROUP: drop queued tasks of a group, interrupt running ones
FAIL = b"E"        # broker -> submitter: TID; body = utf-8 reason
SHUTDOWN = b"D"    # either way: the cluster (or this worker) is ending; body = utf-8 reason
SIZE = b"Z"        # broker -> peers: SIZE_HEADER (workers, distinct hosts)
BYE = b"Q"         # worker -> broker: leaving cleanly
RETIRE = b"Y"      # origin -> broker: INDEX to retire; broker -> worker: stop taking work, leave when idle
RELEASE = b"U"     # worker -> broker: TID of an unstarted task handed back
ASK = b"A"         # where is task id? TID [+ state(1) in the answer: 0 queued, 1 at a worker, 2 gone]
STEAL = b"V"       # broker -> worker: COUNT unstarted tasks wanted back
LOAD = b"h"        # control socket, peer -> broker: body = JSON load figures
OUTPUT = b"O"      # worker -> broker -> origin: GROUP; body = JSON [worker name, stream, text]
DONE = b"J"        # worker -> broker: DONE_HEADER; that task's RESULT went straight to the origin
LEASE = b"L"       # origin -> broker: L + worker uid + a TASK header; body = the task's body: that task
                   # went straight to that worker (scoop.direct), which the broker now holds it at
IDLE = b"G"        # worker -> origin, last record of a direct message: nothing else to run here
BUSY = b"N"        # worker -> origin: running something else now (its last word was IDLE)
BULK = b"B"        # broker -> peer: BULK_HEADER; the port of its bulk lane (scoop.bulk)
STATUS = b"s"      # meta socket: body = JSON cluster snapshot
EVENT = b"e"       # meta socket: body = JSON event (joined / left / const)

# RESULT status byte
OK = 0
RAISED = 1

# TASK flags
PINNED = 1  # payload in shared memory on the submitter's host: only a worker there may run it
SINGLE = 2  # a chunk of single arguments (fn(x)), not argument tuples (fn(*args))
DIRECT = 4  # the submitter (the origin) takes this task's result straight from a worker on its host

TASK_HEADER = struct.Struct("<cQI16sQB")    # type, task id, group, callable digest, submitter host key, flags
# type, task id, status, inputs, started, finished (epoch s), worker name
RESULT_HEADER = struct.Struct("<cQBIdd12s")
BLOB_HEADER = struct.Struct("<c16s")        # type, digest
SIZE_HEADER = struct.Struct("<cII")         # type, workers, hosts
TID = struct.Struct("<cQ")                  # type, task id
DONE_HEADER = struct.Struct("<cQI")         # type, task id, inputs
UID_SIZE = 16                               # a process's uid (hex) in a LEASE header
GROUP = struct.Struct("<cI")                # type, group
COUNT = struct.Struct("<ci")                # type, count
INDEX = struct.Struct("<cI")                # type, peer index
ID = struct.Struct("<Q")
BULK_HEADER = struct.Struct("<cH")          # type, port
EMPTY = b""


TID_SHIFT = 40  # a task id is its submitter's index above this bit, a count below


def task_id(hdr) -> int:
    """The task id of a TASK, CHUNK, RESULT, CANCEL, ASK, FAIL or RELEASE header."""
    return ID.unpack_from(hdr, 1)[0]


def answer(hdr, value: int) -> bytes:
    """A CANCEL (1 ok / 0 not) or ASK (0 queued, 1 at a worker, 2 gone) answer to ``hdr``."""
    return bytes(hdr[:9]) + bytes((value,))


def answer_of(hdr, default: int = 2) -> int:
    return hdr[9] if len(hdr) > 9 else default


def blob_digest(hdr) -> bytes:
    return bytes(hdr[1:17])


def const_name(hdr) -> str:
    return bytes(hdr[1:]).decode("utf-8", "replace")

REC = struct.Struct("<HIH")                 # header length, inline body length, refs
REF = struct.Struct("<BQ16s")               # kind, size, digest (frame) or segment id (shared memory)
REF_SHM = 1    # kind bit: the buffer is a shared-memory segment, not a frame of this message
REF_BODY = 2   # kind bit: the buffer is the record's pickle stream, not an out-of-band buffer
REF_SPLIT = 4  # kind bit: the buffer travels as ceil(size / FRAME_CHUNK) frames, joined by the receiver
REF_SEALED = 8  # kind bit: its frames are sealed end to end (scoop._seal); the key names sender and nonce
REF_LANE = 16   # kind bit: its sealed frames travel on the bulk lane (scoop.bulk), not in this message
LANE_MIN = 64 * 1024   # smaller buffers stay in the message (CURVE) even when a bulk lane is open
MAC_SIZE = 16

# channels: the MAC binds a message to one socket and direction
TO_BROKER = b"T>"
FROM_BROKER = b"T<"
CONTROL_TO_BROKER = b"C>"
CONTROL_FROM_BROKER = b"C<"
META = b"M<"
VIEW_HELLO = b"M>"  # a view's hello to the broker's meta socket (scoop.meta)
TO_ORIGIN = b"R>"  # a worker's results, straight to the origin on its host (no broker hop)
TO_WORKER = b"R<"  # tasks the origin leases straight to an idle worker on its host
CHANNELS = (TO_BROKER, FROM_BROKER, CONTROL_TO_BROKER, CONTROL_FROM_BROKER, META, VIEW_HELLO, TO_ORIGIN,
            TO_WORKER)

# plain ints: pyzmq's enum members cost a Python call per operation on the hot path
EVENTS, POLLIN, RCVMORE = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.RCVMORE)
NOBLOCK, SNDMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)

INLINE_MAX = 64 * 1024   # larger pickle streams travel as a payload frame, not in the header
OOB_MIN = 64 * 1024      # smaller buffers stay in the pickle stream: a frame costs ~10 us
SHM_MIN = 1 << 20        # on one host, buffers from this size go through shared memory
COPY_MAX = 1 << 20       # frames below this size are copied at packing (cheap), larger ones are not
HEADER_MAX = 16 << 20    # a larger header is dropped unhashed: checking costs at most this much
HEADER_SPLIT = 4 << 20   # senders start a new message past this many header bytes
FRAME_CHUNK = 1 << 20    # a payload buffer larger than this travels as frames of this size (REF_SPLIT)
# no frame larger than this is read at all (ZMQ_MAXMSGSIZE of the broker's sockets): what one
# connection can make a broker hold is bounded, whatever it sends
FRAME_MAX_IN = HEADER_MAX + 4096

SECRET_ENV = "SCOOP_SECRET"


def new_secret() -> bytes:
    return os.urandom(32)


def derive(secret: bytes, purpose: str) -> bytes:
    """A key for another use (the ZeroMQ handshake token, the shared-memory tag) that reveals
    nothing of the secret."""
    return blake3.blake3(secret, derive_key_context=f"scoop 2026 {purpose}").digest()


class Signer:
    """MACs with the cluster secret: keyed BLAKE3 over the header, with one key per channel (a
    message signed for one socket and direction verifies on no other).  One C call per message:
    on a round trip's path each call runs with cold caches and costs microseconds."""

    __slots__ = ("_keys",)

    def __init__(self, secret: bytes):
        if not secret or len(secret) < 16:
            raise ValueError("cluster secret must be at least 16 bytes")
        self._keys = {ch: derive(secret, "message MAC " + ch.decode()) for ch in CHANNELS}

    def mac(self, channel: bytes, data) -> bytes:
        return _blake3(data, key=self._keys[channel]).digest(MAC_SIZE)

    def check(self, channel: bytes, header) -> bool:
        """Checks a header frame's MAC without parsing anything."""
        n = len(header)
        if not MAC_SIZE + REC.size <= n <= HEADER_MAX:
            return False
        signed = header[MAC_SIZE:] if n <= 65536 else memoryview(header)[MAC_SIZE:]
        return _compare_digest(header[:MAC_SIZE], _blake3(signed, key=self._keys[channel]).digest(MAC_SIZE))


def digest(data) -> bytes:
    return blake3.blake3(data).digest(16)


# ---- records -------------------------------------------------------------------------------
class Record:
    """One received record: ``hdr`` (type byte and fixed fields), ``body`` (inline bytes),
    ``refs`` ((kind, size, key) per payload buffer), ``frames`` (this record's payload frames
    that came in its message, in ref order), ``lane`` (those of its ``REF_LANE`` refs, which came
    on the bulk lane, in ref order) and ``raw`` (its bytes in the header, for forwarding as is)."""

    __slots__ = ("hdr", "body", "refs", "frames", "raw", "lane")

    def __init__(self, hdr, body, refs=(), frames=(), raw=None, lane=()):
        self.hdr = hdr
        self.body = body
        self.refs = refs
        self.frames = frames
        self.raw = raw
        self.lane = lane

    @property
    def type(self) -> bytes:
        return self.hdr[:1]


def record(hdr: bytes, body: bytes = EMPTY) -> Record:
    """A record with no payload buffers, made here rather than received (encoded as ``Outbox``
    would, so it can be forwarded as is)."""
    return Record(hdr, body, (), (), REC.pack(len(hdr), len(body), 0) + hdr + body)


class _Missing:
    """What :func:`parse` returns when bulk-lane frames of the message have not arrived yet."""

    def __repr__(self):
        return "MISSING"


MISSING = _Missing()


def parse(header, frames, start: int = MAC_SIZE, lane=None):
    """A verified header and its payload frames -> records; None if malformed (a signed but
    malformed message is dropped, never half-applied).  ``lane``: where the frames of
    ``REF_LANE`` refs are, an object whose ``frames(key, count)`` gives them or None (then, once
    every ref was asked for, :data:`MISSING`); without it, a message with such refs is malformed."""
    out = []
    i, n = start, len(header)
    f = 0
    missing = False
    unpack, ref_unpack, rsz = REC.unpack_from, REF.unpack_from, REF.size
    try:
        while i < n:
            hl, bl, nr = unpack(header, i)
            s = i + 8
            b = s + hl
            r = b + bl
            end = r + nr * rsz
            if hl < 1 or end > n:
                return None
            hdr = header[s:b]
            body = header[b:r]
            if nr:
                refs = []
                mine = []
                bulk = ()
                for j in range(nr):
                    kind, size, key = ref_unpack(header, r + j * rsz)
                    refs.append((kind, size, key))
                    if kind & REF_LANE:
                        if lane is None or kind & REF_SHM or not kind & REF_SEALED:
                            return None
                        got = lane.frames(key, -(-size // FRAME_CHUNK) if kind & REF_SPLIT else 1)
                        if got is None:
                            missing = True
                        elif bulk:
                            bulk.extend(got)
                        else:
                            bulk = list(got)
                    elif not kind & REF_SHM:
                        if kind & REF_SPLIT:
                            k = -(-size // FRAME_CHUNK)
                            mine.extend(frames[f:f + k])
                            f += k
                        else:
                            mine.append(frames[f])
                            f += 1
                out.append(Record(hdr, body, refs, mine, header[i:end], bulk))
            else:
                out.append(Record(hdr, body, (), (), header[i:end]))
            i = end
    except (struct.error, IndexError):
        return None
    if f != len(frames) or not out:
        return None
    return MISSING if missing else out


def lane_keys(rec: Record):
    """(key, frames) of each of a record's refs whose frames travel on the bulk lane."""
    return [(key, -(-size // FRAME_CHUNK) if kind & REF_SPLIT else 1)
            for kind, size, key in rec.refs if kind & REF_LANE]


def _inline(raw, refs, frames, lane):
    """A record's bytes and frames with its bulk-lane refs turned into refs of frames that travel
    in the message (a receiver without a bulk lane): the same frame objects, in ref order."""
    hl, bl, nr = REC.unpack_from(raw, 0)
    at = REC.size + hl + bl
    data = bytearray(raw)
    out = []
    fi, li = iter(frames), iter(lane)
    for j, (kind, size, _key) in enumerate(refs):
        if kind & REF_SHM:
            continue
        k = -(-size // FRAME_CHUNK) if kind & REF_SPLIT else 1
        src = li if kind & REF_LANE else fi
        out.extend(next(src) for _ in range(k))
        data[at + j * REF.size] = kind & ~REF_LANE
    return bytes(data), out


class LaneFrame:
    """A frame an outbox holds for the receiver's bulk lane, among the message's own frames:
    whoever sends the message sends it there (:func:`send`, :func:`split_lane`)."""

    __slots__ = ("frame",)

    def __init__(self, frame):
        self.frame = frame


def split_lane(frames):
    """A message's frames -> (its own frames, those for the bulk lane)."""
    own, lane = [], []
    for fr in frames:
        if type(fr) is LaneFrame:
            lane.append(fr.frame)
        else:
            own.append(fr)
    return own, lane


class Outbox:
    """Records waiting to go out on one socket: encoded once (forwarded records are never
    decoded and encoded again) with their payload frames kept as objects, never joined.

    ``lane_ok``: its receiver has a bulk lane (scoop.bulk), and sealed frames of ``REF_LANE``
    refs go there (held as :class:`LaneFrame`); otherwise they go in the message, as frames of
    plain sealed refs."""

    __slots__ = ("parts", "frames", "nbytes", "marks", "lane_ok")

    def __init__(self):
        self.parts = []
        self.frames = []
        self.lane_ok = False
        self.nbytes = 0
        self.marks = None  # (parts, frames) counts where a message must end: headers stay small

    def __bool__(self):
        return bool(self.parts)

    def __len__(self):
        return len(self.parts)

    def _grow(self, n):
        self.nbytes += n
        if self.nbytes > HEADER_SPLIT:
            if self.marks is None:
                self.marks = []
            self.marks.append((len(self.parts), len(self.frames)))
            self.nbytes = 0

    def add(self, hdr, body=EMPTY, packed=None):
        """``packed``: a :class:`Packed` payload (its body replaces ``body``)."""
        if packed is None:
            part = REC.pack(len(hdr), len(body), 0) + hdr + body
        else:
            refs = packed.refs
            part = (REC.pack(len(hdr), len(packed.body), len(refs)) + hdr + packed.body
                    + b"".join(REF.pack(*r) for r in refs))
            if packed.lane:
                if self.lane_ok:
                    self.frames.extend(map(LaneFrame, packed.lane))
                else:
                    part, frames = _inline(part, refs, packed.frames, packed.lane)
                    self.frames.extend(frames)
                    self.parts.append(part)
                    self._grow(len(part))
                    return
            if packed.frames:
                self.frames.extend(packed.frames)
        self.parts.append(part)
        self._grow(len(part))

    def add_record(self, rec: Record):
        """A received record, forwarded as it came (the same payload frame objects)."""
        if rec.lane:
            if not self.lane_ok:
                raw, frames = _inline(rec.raw, rec.refs, rec.frames, rec.lane)
                self.parts.append(raw)
                self.frames.extend(frames)
                self._grow(len(raw))
                return
            self.frames.extend(map(LaneFrame, rec.lane))
        self.parts.append(rec.raw)
        if rec.frames:
            self.frames.extend(rec.frames)
        self._grow(len(rec.raw))

    def take(self):
        """Everything as one message: (header data, frames)."""
        return next(iter(self.take_messages()))

    def take_messages(self):
        """Everything, as messages whose headers stay under ``HEADER_SPLIT`` bytes (one record
        larger than that goes alone)."""
        parts, frames, marks = self.parts, self.frames, self.marks
        self.parts, self.frames, self.nbytes, self.marks = [], [], 0, None
        if not marks:
            return [(b"".join(parts), frames)]
        out, p0, f0 = [], 0, 0
        for p1, f1 in marks + [(len(parts), len(frames))]:
            if p1 > p0:
                out.append((b"".join(parts[p0:p1]), frames[f0:f1]))
            p0, f0 = p1, f1
        return out


def send(sock, signer: Signer, channel: bytes, box: Outbox, ident=None, flags: int = 0, lane=None) -> None:
    """Sends what ``box`` holds; payload frames go without copies.  ``lane``: the receiver's
    bulk lane (a :class:`scoop.bulk.Outlet`), where the box's bulk-lane frames go, each message's
    right after its header (a box with ``lane_ok`` needs it): the broker, holding the header,
    knows which frames it waits for."""
    for data, frames in box.take_messages():
        header = signer.mac(channel, data) + data
        bulk = ()
        if lane is not None:
            frames, bulk = split_lane(frames)
        if ident is not None:
            sock.send(ident, flags | SNDMORE)
        if not frames:
            sock.send(header, flags)
        else:
            sock.send(header, flags | SNDMORE)
            last = len(frames) - 1
            for k, fr in enumerate(frames):
                sock.send(fr, flags | (SNDMORE if k < last else 0), copy=False)
        if bulk:
            # waits while the lane's queue is full; a lane that is gone takes nothing more, and
            # the broker, which saw it drop, declares this member lost: nothing waits for them
            lane.send(bulk)


def send_records(sock, signer, channel, records, ident=None, flags: int = 0):
    """``records``: (hdr, body) pairs with no payload frames (control traffic)."""
    box = Outbox()
    for hdr, body in records:
        box.add(hdr, body)
    send(sock, signer, channel, box, ident, flags)


def recv_parts(sock, flags: int = 0):
    """One message as ``[small frames as bytes..., payload frames as zmq.Frame]``: the header
    (and a ROUTER's identity) are copied, payload frames are not."""
    first = sock.recv(flags)
    if not sock.getsockopt(RCVMORE):
        return [first]
    parts = [first]
    while sock.getsockopt(RCVMORE):
        parts.append(sock.recv(0, copy=False))
    return parts


def recv_verified(sock, signer: Signer, channel: bytes, flags: int = 0, lane=None):
    """The records of the next message on a DEALER/SUB socket, or None if it does not verify
    (or its bulk-lane frames never came: ``lane`` waits for them, bounded)."""
    parts = recv_parts(sock, flags)
    header = parts[0]
    if not signer.check(channel, header):
        return None
    recs = parse(header, parts[1:], lane=lane)
    if lane is not None:
        lane.claim(recs)  # what it took from the lane leaves it, whether the message is kept or not
    return recs if recs is not MISSING else None


# ---- serialization ---------------------------------------------------------------------------
class SerializationError(TypeError):
    """Raised when a callable, an argument or a result cannot be pickled; names the culprit."""


class IntegrityError(ValueError):
    """A payload frame does not match the digest its signed header carries."""


class Packed:
    """A pickled object ready to send: inline ``body`` (or empty), ``refs`` and the
    ``frames`` to send after the header, in ref order."""

    __slots__ = ("body", "refs", "frames", "segments", "nbytes", "lane")

    def __init__(self, body, refs=(), frames=(), segments=(), nbytes=0, lane=()):
        self.body = body
        self.refs = refs
        self.frames = frames
        self.segments = segments  # shared-memory segment ids this payload owns
        self.nbytes = nbytes
        self.lane = lane          # frames of sealed refs, for the bulk lane (``REF_LANE``)


_MAIN_MARK = b"__main__"


def _pickle(obj, by_value: bool = False):
    """Plain pickle when it is faithful, cloudpickle when the object needs shipping by value.

    Pickle is ~8x cheaper than cloudpickle for small arguments, but it refers to anything
    defined in ``__main__`` (a script or a notebook) by name, which a worker cannot resolve;
    such payloads are re-made with cloudpickle, which ships those definitions by value.
    Buffers of ``OOB_MIN`` bytes or more leave the stream (out of band); smaller ones stay in it.
    """
    bufs = []

    def out_of_band(buf):
        if memoryview(buf).nbytes >= OOB_MIN:
            bufs.append(buf)
            return False
        return True

    if not by_value:
        try:
            data = pickle.dumps(obj, 5, buffer_callback=out_of_band)
            if _MAIN_MARK not in data:
                return data, bufs
        except Exception:
            pass
        bufs.clear()
    return _cloudpickle().dumps(obj, 5, buffer_callback=out_of_band), bufs


def pack(obj, what: str = "object", shm=None, by_value: bool = False, seal=None) -> Packed:
    """Pickles ``obj`` with protocol 5: buffers of ``OOB_MIN`` bytes or more leave the pickle
    stream and become payload frames (or, given a shared-memory ``shm`` allocator, segments
    from ``SHM_MIN`` bytes), so a numpy array is never copied into a pickle.  Given a
    :class:`scoop._seal.Sealer`, payload frames of ``LANE_MIN`` bytes or more are sealed for
    their receiver (one pass, which is also their copy) and go on the bulk lane (scoop.bulk)."""
    try:
        data, bufs = _pickle(obj, by_value)
    except Exception as exc:
        raise SerializationError(f"{what} ({_kind(obj)}) could not be pickled: "
                                 f"{type(exc).__name__}: {exc}") from exc
    if not bufs and len(data) <= INLINE_MAX:
        return Packed(data, nbytes=len(data))
    refs, frames, segments, lane = [], [], [], []
    nbytes = 0
    body = data
    pieces = []
    if len(data) > INLINE_MAX:
        pieces.append((REF_BODY, data))
        body = EMPTY
    for b in bufs:
        pieces.append((0, b))
    for kind, b in pieces:
        view = memoryview(b) if kind & REF_BODY else b.raw()
        size = view.nbytes
        nbytes += size
        seg = _segment(shm, view) if shm is not None and size >= SHM_MIN else None
        if seg is not None:
            refs.append((kind | REF_SHM, size, seg))
            segments.append(seg)
        elif seal is not None and size >= LANE_MIN:
            refs.append(_sealed_ref(kind, view, lane, seal))
        else:
            if size < COPY_MAX and not kind & REF_BODY:
                # small buffers are copied: changing an argument after submit cannot race the send;
                # larger ones go zero-copy (do not change them while their task is in flight)
                view = memoryview(bytes(view))
            refs.append(_frame_ref(kind, view, frames))
    return Packed(body, refs, frames, segments, nbytes + len(body), lane)


def _frame_ref(kind, view, frames):
    """The ref of a buffer sent as frames (appended to ``frames``): one frame, or slices of
    ``FRAME_CHUNK`` bytes (no copies) when it is larger, so no frame exceeds what a broker reads."""
    size = view.nbytes
    if size <= FRAME_CHUNK:
        frames.append(view)
        return (kind, size, digest(view))
    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    frames.extend(view[o:o + FRAME_CHUNK] for o in range(0, size, FRAME_CHUNK))
    return (kind | REF_SPLIT, size, digest(view))


def _sealed_ref(kind, view, frames, seal):
    """The ref of a buffer sealed as frames of ``FRAME_CHUNK`` plaintext bytes (appended to
    ``frames``), for the bulk lane (``REF_LANE``, which the sealed data does not depend on)."""
    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    kind |= REF_SEALED | (REF_SPLIT if view.nbytes > FRAME_CHUNK else 0)
    key, sealed = seal.seal(kind, view, FRAME_CHUNK)
    frames.extend(sealed)
    return (kind | REF_LANE, view.nbytes, key)


def _segment(shm, view):
    """A shared-memory copy of ``view``, or None when /dev/shm is full: a frame then."""
    try:
        return shm.put(view)
    except OSError:
        return None


def packed_bytes(data, shm=None, seal=None) -> Packed:
    """Bytes that are already a pickle (a callable, an exception): inline when small, else a
    payload frame (or segment), like any large pickle stream."""
    if len(data) <= INLINE_MAX:
        return Packed(data, nbytes=len(data))
    view = memoryview(data)
    seg = _segment(shm, view) if shm is not None and len(data) >= SHM_MIN else None
    if seg is not None:
        return Packed(EMPTY, [(REF_BODY | REF_SHM, len(data), seg)], (), [seg], len(data))
    frames = []
    if seal is None or len(data) < LANE_MIN:
        return Packed(EMPTY, [_frame_ref(REF_BODY, view, frames)], frames, (), len(data))
    ref = _sealed_ref(REF_BODY, view, frames, seal)
    return Packed(EMPTY, [ref], (), (), len(data), frames)


def body_bytes(rec: Record, shm=None, seal=None):
    """The pickle stream of a record whose payload has no out-of-band buffers."""
    if not rec.refs:
        return rec.body
    kind, size, key = rec.refs[0]
    if kind & REF_SHM:
        if shm is None:
            raise IntegrityError("a shared-memory payload reached a process on another host")
        return shm.open(key, size, copy=True)  # a pickle stream: what is checked is what is read
    return _buffer(iter(rec.lane if kind & REF_LANE else rec.frames), kind, size, key, seal)


def _buffer(frames, kind, size, key, seal):
    """The checked buffer of one frame ref: sealed (opened here) or signed (digest checked)."""
    if not kind & REF_SEALED:
        return _frame_view(frames, kind, size, key)
    if seal is None:
        raise IntegrityError("a sealed payload reached a process that holds no key to open it")
    k = -(-size // FRAME_CHUNK) if kind & REF_SPLIT else 1
    return seal.open(kind & ~REF_LANE, size, key, [next(frames) for _ in range(k)], FRAME_CHUNK)


def fresh(n: int) -> memoryview:
    """``n`` writable bytes that are about to be overwritten whole.  numpy's allocator when numpy
    is loaded (a received array's unpickling loads it anyway): no memset, and its large blocks
    come back reused or as huge pages (32 MiB: ~0.01 ms against ~19 ms for a zeroed bytearray,
    which faults in every page twice over)."""
    np = sys.modules.get("numpy")
    return memoryview(np.empty(n, np.uint8)) if np is not None else memoryview(bytearray(n))


def _frame_view(frames, kind, size, key):
    """The checked buffer of one ref: a view on its frame, or its frames joined (REF_SPLIT)."""
    if kind & REF_SPLIT:
        view = fresh(size)
        h = _blake3()
        o = 0
        for _ in range(-(-size // FRAME_CHUNK)):
            fr = next(frames)
            part = fr.buffer if hasattr(fr, "buffer") else memoryview(fr)
            n = part.nbytes
            if n != min(FRAME_CHUNK, size - o):
                raise IntegrityError("a payload frame does not match its signed size")
            h.update(part)
            view[o:o + n] = part  # right after the hash read it: from cache
            o += n
        got = h.digest(16)
    else:
        fr = next(frames)
        view = fr.buffer if hasattr(fr, "buffer") else memoryview(fr)
        got = digest(view) if view.nbytes == size else None
    if got is None or not _compare_digest(got, key):
        raise IntegrityError("a payload frame does not match its signed digest (forged, or an array "
                             "changed after it was submitted and before it was sent)")
    return view


def unpack(rec: Record, shm=None, seal=None):
    """The object a received record carries.  Every payload frame is checked against the
    digest in the (already verified) header, or opened with ``seal`` (a sealed one), before the
    unpickler sees a byte."""
    if not rec.refs:
        return pickle.loads(rec.body)
    body = rec.body
    buffers = []
    frames = iter(rec.frames)
    lane = iter(rec.lane)
    for kind, size, key in rec.refs:
        if kind & REF_SHM:
            if shm is None:
                raise IntegrityError("a shared-memory payload reached a process on another host")
            view = shm.open(key, size, copy=bool(kind & REF_BODY))
        else:
            view = _buffer(lane if kind & REF_LANE else frames, kind, size, key, seal)
        if kind & REF_BODY:
            body = view
        else:
            buffers.append(view)
    return pickle.loads(body, buffers=buffers)


def pack_callable(fn, shm=None) -> tuple[bytes, Packed]:
    """A callable by value, and its digest (what workers cache it under)."""
    try:
        packed = pack(fn, "function", shm, by_value=True)
    except SerializationError as exc:
        name = getattr(fn, "__qualname__", None) or type(fn).__name__
        cause = exc.__cause__
        raise SerializationError(f"function {name} could not be pickled: {_captured(fn)}"
                                 f"{type(cause).__name__}: {cause}") from cause
    keys = b"".join(r[2] for r in packed.refs if not r[0] & REF_SHM)
    if packed.segments:  # segment ids are not content: hash what they hold, once
        keys += os.urandom(16)
    return digest(bytes(packed.body) + keys), packed


def _captured(fn) -> str:
    """What a function captures that does not pickle: ``it captures lock (a _thread.lock): ``."""
    fn = getattr(fn, "func", fn)  # functools.partial
    code = getattr(fn, "__code__", None)
    if code is None:
        return ""
    names = list(zip(code.co_freevars, (c.cell_contents for c in (fn.__closure__ or ()))))
    glob = getattr(fn, "__globals__", {})
    names += [(n, glob[n]) for n in code.co_names if n in glob]
    names += [(f"default {i + 1}", d) for i, d in enumerate(fn.__defaults__ or ())]
    for name, value in names:
        if _fails(value):
            return f"it captures {name} ({_kind(value)}): "
    return ""


def loads(data):
    return pickle.loads(data)


def _describe(obj) -> str:
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if name and callable(obj):
        mod = getattr(obj, "__module__", None)
        return f"{mod}.{name}" if mod and mod != "builtins" else name
    text = repr(obj)
    return text if len(text) <= 120 else text[:117] + "..."


def _kind(obj) -> str:
    t = type(obj)
    if t.__module__ in ("builtins", None):
        return f"a {t.__qualname__}"
    return f"a {t.__module__}.{t.__qualname__}"


def _fails(item) -> bool:
    try:
        _cloudpickle().dumps(item)
        return False
    except Exception:
        return True


def find_unpicklable(args, kwargs=None, task: str = "task") -> str:
    """Names the first argument of a task that does not pickle, in words a user can act on:
    ``argument 1 of task use_lock (a _thread.lock)``."""
    for i, item in enumerate(args):
        if _fails(item):
            return f"argument {i + 1} of task {task} ({_kind(item)}{_inner(item)})"
    for k, v in (kwargs or {}).items():
        if _fails(v):
            return f"keyword argument {k!r} of task {task} ({_kind(v)}{_inner(v)})"
    return f"an argument of task {task}"


def _inner(obj, depth: int = 0) -> str:
    """Where inside a container the culprit sits: ``, item 2: a _thread.lock``."""
    if depth > 3:
        return ""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        if _fails(v):
            return f", item {k!r}: {_kind(v)}{_inner(v, depth + 1)}"
    return ""


class RemoteTraceback(Exception):
    """Carries a worker's formatted traceback; set as ``__cause__`` of re-raised exceptions."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return self.tb


def dump_exception(exc: BaseException, tb_text: str) -> bytes:
    """Pickles a task's exception with its remote traceback.  Whether the caller can rebuild
    it is tried here, where the class is known: an exception whose ``__init__`` does not
    accept its own ``args`` (very common) would otherwise surface as a bare TypeError from the
    caller's unpickler with the message lost; such ones degrade to a ``RemoteError`` that
    keeps the original type name, message and traceback."""
    for dumps in (pickle.dumps, lambda o, p: _cloudpickle().dumps(o, p)):
        try:
            data = dumps((exc, tb_text), 5)
            pickle.loads(data)  # the caller must be able to rebuild it
            return data
        except Exception:
            continue
    from .errors import RemoteError
    err = RemoteError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}",
                      type_name=f"{type(exc).__module__}.{type(exc).__qualname__}", message=str(exc))
    return pickle.dumps((err, tb_text), 5)


def load_exception(data) -> BaseException:
    exc, tb_text = pickle.loads(data)
    if tb_text:
        exc.__cause__ = RemoteTraceback(tb_text)
    return exc
