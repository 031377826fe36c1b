"""The wire protocol without sockets: packing, payload frames, shared memory, integrity, MACs.

Messages are built the way a sender builds them (``pack``, an ``Outbox``, a MAC) and received
the way a receiver does (``Signer.check``, ``parse``, ``unpack``); payload frames are copied
into ``zmq.Frame`` objects in between, as the wire would.
"""
from __future__ import annotations

import glob
import os
import pickle
import random
import threading

import numpy as np
import pytest
import zmq

from scoop import _protocol as P
from scoop import _shm
from scoop.errors import RemoteError

SECRET = b"s" * 32
SIGNER = P.Signer(SECRET)
HDR = P.TID.pack(P.RESULT, 7)  # any record header will do: the payload is what is tested
BIG = P.OOB_MIN // 8 + 1000     # float64 elements: out of band, but below SHM_MIN
rng = np.random.default_rng(1)


# ---- helpers -------------------------------------------------------------------------------------
def send(obj, shm=None, channel=P.TO_BROKER, hdr=HDR):
    """What a sender puts on the wire: (signed header, payload frames as sent)."""
    packed = P.pack(obj, shm=shm)
    box = P.Outbox()
    box.add(hdr, packed=packed)
    data, frames = box.take()
    return SIGNER.mac(channel, data) + data, list(frames)


def receive(header, frames, channel=P.TO_BROKER):
    assert SIGNER.check(channel, header)
    recs = P.parse(header, frames)
    assert recs is not None and len(recs) == 1
    return recs[0]


def wire(frames):
    """Payload frames as a receiver gets them: new memory, owned by ZeroMQ frames."""
    return [zmq.Frame(bytes(memoryview(f).cast("B"))) for f in frames]


def roundtrip(obj, shm=None):
    header, frames = send(obj, shm)
    rec = receive(header, wire(frames))
    return P.unpack(rec, shm), rec


def assert_same_array(a, b):
    assert type(b) is type(a)
    assert b.dtype == a.dtype and b.shape == a.shape
    if a.dtype.hasobject:
        assert a.tolist() == b.tolist()
    else:  # bit for bit (NaNs, padding of aligned structs and all)
        assert a.tobytes(order="A") == b.tobytes(order="A")


def _spring(path):
    with open(path, "w") as f:
        f.write("unpickled")
    return "sprung"


class Trapped:
    """Unpickling it creates a file: proof that something was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return _spring, (self.path,)


@pytest.fixture
def trap(tmp_path):
    path = tmp_path / "unpickled"
    yield Trapped(str(path)), path


@pytest.fixture
def segments():
    """A cluster's shared memory; every segment it made is gone afterwards, also on failure."""
    if not _shm.available():
        pytest.skip("no writable /dev/shm")
    segs = _shm.Segments(os.urandom(8))
    pattern = f"{_shm.DIR}/scoop-{segs.tag.hex()}-*"
    try:
        yield segs
    finally:
        segs.cleanup()
    assert glob.glob(pattern) == [] and segs.held() == 0


# ---- numpy round trips ---------------------------------------------------------------------------
DTYPES = [
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64, np.longdouble, np.complex64, np.complex128, np.clongdouble,
    "datetime64[ns]", "datetime64[D]", "timedelta64[s]", "S5", "U4", "V3",
    [("a", "<i4"), ("b", "<f8"), ("c", "S3")],
    np.dtype([("x", ">u2"), ("y", "<f4", (2,))], align=True),
    ">i8", ">f8",
]


def make(dtype, shape, order="C"):
    dt = np.dtype(dtype)
    n = int(np.prod(shape))
    raw = rng.integers(0, 256, size=n * dt.itemsize, dtype=np.uint8)
    if dt.kind == "b":
        raw = raw % 2
    if dt.kind == "S":
        raw = rng.integers(ord("a"), ord("z") + 1, size=n * dt.itemsize, dtype=np.uint8)
    if dt.kind == "U":  # valid code points
        codes = rng.integers(ord("a"), ord("z") + 1, size=n * dt.itemsize // 4, dtype="<u4")
        raw = codes.view(np.uint8)
    arr = np.frombuffer(raw.tobytes(), dtype=dt).reshape(shape).copy()
    return np.asarray(arr, order=order)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(np.dtype(d))[:40])
@pytest.mark.parametrize("n", [7, BIG], ids=["small", "large"])
def test_array_of_every_dtype(dtype, n):
    a = make(dtype, (n,))
    b, _ = roundtrip(a)
    assert_same_array(a, b)
    assert b.flags.writeable


@pytest.mark.parametrize("dtype", [np.float64, np.int16, np.complex64, [("a", "<i4"), ("b", "<f8")]], ids=str)
def test_fortran_order_kept(dtype):
    a = make(dtype, (300, 257), order="F")
    assert a.flags.f_contiguous and not a.flags.c_contiguous
    b, rec = roundtrip(a)
    assert_same_array(a, b)
    assert b.flags.f_contiguous
    assert rec.frames  # large: out of band, not copied into the pickle


@pytest.mark.parametrize("view", ["step", "column", "transpose", "reversed", "diagonal"])
def test_non_contiguous_views(view):
    base = make(np.float64, (200, 300))
    a = {"step": base[::3, ::2], "column": base[:, 7], "transpose": base[:, 1:].T,
         "reversed": base[::-1], "diagonal": np.diagonal(base)}[view]
    b, _ = roundtrip(a)
    assert_same_array(a, b)
    assert not np.shares_memory(a, b)


def test_object_arrays():
    a = np.empty(5, dtype=object)
    a[:] = [1, "two", [3.0], {"four": 4}, None]
    b, _ = roundtrip(a)
    assert_same_array(a, b)
    big = np.array([np.arange(BIG, dtype=np.float64), "x"], dtype=object)
    c, rec = roundtrip(big)
    np.testing.assert_array_equal(c[0], big[0])
    assert c[1] == "x" and len(rec.frames) == 1  # the array inside still goes out of band


@pytest.mark.parametrize("a", [
    np.empty((0,)), np.empty((0, 5), dtype=np.int32), np.empty((3, 0), order="F"),
    np.zeros((0,), dtype=[("a", "<i4")]), np.array(3.5), np.array(np.datetime64("2020-01-02")),
    np.array(b"xyz"), np.array(7, dtype=np.uint64), np.array("text"),
], ids=lambda a: f"{a.dtype}{a.shape}")
def test_zero_size_and_zero_d(a):
    b, _ = roundtrip(a)
    assert_same_array(a, b)


def test_large_array_travels_as_a_frame_without_copy():
    a = make(np.float64, (P.COPY_MAX // 8,))
    header, frames = send(a)
    assert len(frames) == 1 and memoryview(frames[0]).nbytes == a.nbytes
    assert np.shares_memory(np.frombuffer(frames[0], np.uint8), a)  # sent without a copy
    assert len(header) < 512  # the header carries the digest, not the data
    received = wire(frames)
    rec = receive(header, received)
    assert [r[:2] for r in rec.refs] == [(0, a.nbytes)]
    b = P.unpack(rec)
    np.testing.assert_array_equal(a, b)
    assert np.shares_memory(b, np.frombuffer(received[0].buffer, np.uint8))  # a view on the frame
    assert not np.shares_memory(a, b)


def test_larger_array_travels_as_slices_without_copy():
    """Over ``FRAME_CHUNK`` bytes: slices of the array as frames (no frame a broker refuses),
    joined by the receiver into one writable array."""
    a = make(np.float64, (3 * P.FRAME_CHUNK // 8 + 1000,))
    header, frames = send(a)
    assert len(frames) == 4 and all(memoryview(f).nbytes <= P.FRAME_CHUNK for f in frames)
    assert all(np.shares_memory(np.frombuffer(f, np.uint8), a) for f in frames)
    rec = receive(header, wire(frames))
    assert [r[:2] for r in rec.refs] == [(P.REF_SPLIT, a.nbytes)]
    b = P.unpack(rec)
    np.testing.assert_array_equal(a, b)
    assert b.flags.writeable and not np.shares_memory(a, b)


def test_small_array_stays_inline():
    a = np.arange(100)
    header, frames = send(a)
    assert frames == []
    rec = receive(header, frames)
    assert rec.refs == () and rec.frames == ()
    np.testing.assert_array_equal(P.unpack(rec), a)


def test_many_arrays_nested_in_containers():
    obj = {"a": [make(np.float32, (BIG * 2,)), (1, make(np.int64, (BIG,)))],
           "b": {"c": np.arange(4), "d": make("U4", (BIG,))}, "e": "text"}
    b, rec = roundtrip(obj)
    assert len(rec.frames) == 3  # one frame per large buffer
    assert_same_array(obj["a"][0], b["a"][0])
    assert_same_array(obj["a"][1][1], b["a"][1][1])
    assert_same_array(obj["b"]["c"], b["b"]["c"])
    assert_same_array(obj["b"]["d"], b["b"]["d"])
    assert b["a"][1][0] == 1 and b["e"] == "text"


def test_same_array_twice_keeps_identity():
    a = make(np.float64, (BIG,))
    b, _ = roundtrip([a, a])
    assert b[0] is b[1]


@pytest.mark.parametrize("obj", [
    b"", b"abc", b"\x00" * (P.OOB_MIN + 3), bytearray(b"xy" * 40000), bytearray(),
    [b"\x01" * 70000, {"k": bytearray(b"\x02" * 70000)}],
], ids=["empty", "small", "large", "bytearray", "empty-bytearray", "nested"])
def test_bytes_and_bytearray(obj):
    b, _ = roundtrip(obj)
    assert b == obj and type(b) is type(obj)


@pytest.mark.parametrize("size", [10, P.OOB_MIN + 10])
def test_memoryview_arrives_with_its_bytes(size):
    data = bytes(range(256)) * (size // 256 + 1)
    b, _ = roundtrip(memoryview(data)[:size])
    assert bytes(b) == data[:size]


def test_large_pickle_stream_travels_as_a_frame():
    obj = list(range(50_000))  # no buffer, but a pickle stream above INLINE_MAX
    header, frames = send(obj)
    rec = receive(header, wire(frames))
    assert rec.body == b"" and [r[0] for r in rec.refs] == [P.REF_BODY]
    assert P.unpack(rec) == obj


def test_packed_bytes_small_and_large():
    small = P.packed_bytes(b"abc")
    assert small.body == b"abc" and not small.refs
    data = pickle.dumps(list(range(50_000)))
    large = P.packed_bytes(data)
    box = P.Outbox()
    box.add(HDR, packed=large)
    raw, frames = box.take()
    rec = P.parse(raw, wire(frames), start=0)[0]
    assert bytes(P.body_bytes(rec)) == data


def test_several_records_in_one_message():
    arrays = [make(np.float64, (BIG,)), np.arange(3), make(np.int8, (P.OOB_MIN + 1,))]
    box = P.Outbox()
    for i, a in enumerate(arrays):
        box.add(P.TID.pack(P.RESULT, i), packed=P.pack(a))
    box.add(P.TID.pack(P.CANCEL, 9))
    data, frames = box.take()
    header = SIGNER.mac(P.FROM_BROKER, data) + data
    recs = P.parse(header, wire(frames))
    assert [r.type for r in recs] == [P.RESULT] * 3 + [P.CANCEL]
    assert [len(r.frames) for r in recs] == [1, 0, 1, 0]
    for a, r in zip(arrays, recs):
        np.testing.assert_array_equal(P.unpack(r), a)


def test_forwarded_record_keeps_its_frames():
    """The broker forwards a record as received: same bytes, same frame objects."""
    a = make(np.float64, (BIG,))
    header, frames = send(a)
    received = wire(frames)
    rec = receive(header, received)
    box = P.Outbox()
    box.add_record(rec)
    data, out_frames = box.take()
    assert out_frames[0] is received[0]
    fwd = P.parse(SIGNER.mac(P.FROM_BROKER, data) + data, out_frames)[0]
    np.testing.assert_array_equal(P.unpack(fwd), a)


def test_unpicklable_argument_named():
    with pytest.raises(P.SerializationError, match="lock"):
        P.pack((threading.Lock(),), "argument of task f")


# ---- shared memory -------------------------------------------------------------------------------
def shm_count(segs):
    """Named segments in /dev/shm and the sealed ones this process holds."""
    return len(glob.glob(f"{_shm.DIR}/scoop-{segs.tag.hex()}-*")) + segs.held()


def test_shared_memory_round_trip(segments):
    a = make(np.float64, (P.SHM_MIN // 8 + 100,))
    small = make(np.float64, (BIG,))  # out of band, below SHM_MIN: a frame
    header, frames = send([a, small], shm=segments)
    rec = receive(header, wire(frames))
    kinds = [k for k, _, _ in rec.refs]
    assert kinds == [P.REF_SHM, 0] and len(rec.frames) == 1
    assert shm_count(segments) == 1
    b, c = P.unpack(rec, segments)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(small, c)
    b[0] = -1.0  # copy-on-write: the segment (and the next reader) are unaffected
    again = P.unpack(rec, segments)[0]
    assert again[0] == a[0]
    for kind, _, key in rec.refs:
        if kind & P.REF_SHM:
            segments.unlink(key)
    assert shm_count(segments) == 0


def test_shared_memory_pickle_stream(segments):
    data = pickle.dumps(list(range(300_000)))
    assert len(data) >= P.SHM_MIN
    packed = P.packed_bytes(data, segments)
    assert packed.frames == () and len(packed.segments) == 1
    box = P.Outbox()
    box.add(HDR, packed=packed)
    raw, frames = box.take()
    rec = P.parse(raw, frames, start=0)[0]
    assert bytes(P.body_bytes(rec, segments)) == data
    with pytest.raises(P.IntegrityError):
        P.body_bytes(rec)  # another host has no such segment
    segments.unlink(packed.segments[0])


def test_shared_memory_payload_needs_the_segments(segments):
    header, frames = send(make(np.uint8, (P.SHM_MIN,)), shm=segments)
    rec = receive(header, frames)
    with pytest.raises(P.IntegrityError, match="another host"):
        P.unpack(rec)
    other = _shm.Segments(os.urandom(8))
    with pytest.raises(ValueError, match="another cluster"):
        P.unpack(rec, other)


def test_segment_of_the_wrong_size_is_refused(segments):
    seg = segments.put(memoryview(b"x" * 100))
    with pytest.raises(ValueError, match="size"):
        segments.open(seg, 99)
    assert bytes(segments.open(seg, 100)) == b"x" * 100
    assert segments.cleanup(os.getpid()) == 1


def test_empty_segment(segments):
    seg = segments.put(memoryview(b""))
    assert bytes(segments.open(seg, 0)) == b""
    segments.unlink(seg)


def test_full_shared_memory_is_an_error_not_a_crash(segments, monkeypatch):
    """/dev/shm full (Docker gives containers 64 MB): the segment is refused with an OSError and
    removed; copying into a mapping instead would kill the process with SIGBUS."""
    import errno

    def no_space(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(_shm.os, "pwrite", no_space)
    with pytest.raises(OSError):
        segments.put(memoryview(b"x" * 100))
    assert shm_count(segments) == 0


class FullSegments(_shm.Segments):
    def put(self, view):
        raise OSError(28, "No space left on device")


def test_full_shared_memory_falls_back_to_frames():
    full = FullSegments(os.urandom(8))
    a = make(np.float64, (P.SHM_MIN // 8 + 100,))
    header, frames = send(a, shm=full)
    rec = receive(header, wire(frames))
    assert [k for k, _, _ in rec.refs] == [P.REF_SPLIT] and len(rec.frames) == 2
    np.testing.assert_array_equal(P.unpack(rec, full), a)
    data = pickle.dumps(list(range(300_000)))
    packed = P.packed_bytes(data, full)
    assert not packed.segments and len(packed.frames) == 2 and b"".join(packed.frames) == data


# ---- integrity -----------------------------------------------------------------------------------
def trapped_message(trap_obj):
    """A message whose payload unpickles the trap, with two large frames."""
    return send([trap_obj, make(np.float64, (BIG,)), make(np.int32, (BIG * 2,))])


def frame_bytes(frames):
    return [bytearray(memoryview(f).cast("B")) for f in frames]


@pytest.mark.parametrize("tamper", ["flip", "truncate", "extend", "reorder", "swap", "zero"])
def test_tampered_frame_is_refused_before_unpickling(trap, tamper):
    trap_obj, path = trap
    header, frames = trapped_message(trap_obj)
    fr = frame_bytes(frames)
    if tamper == "flip":
        fr[1][12345] ^= 1
    elif tamper == "truncate":
        fr[0] = fr[0][:-1]
    elif tamper == "extend":
        fr[1] = fr[1] + b"\x00"
    elif tamper == "reorder":
        fr.reverse()
    elif tamper == "swap":  # a frame of the same size from another message
        _, other = send(make(np.float64, (BIG,)))
        fr[0] = bytearray(memoryview(other[0]).cast("B"))
    elif tamper == "zero":
        fr[0] = bytearray(len(fr[0]))
    rec = receive(header, [zmq.Frame(bytes(f)) for f in fr])
    with pytest.raises(P.IntegrityError):
        P.unpack(rec)
    assert not path.exists()


def test_untampered_trap_does_spring(trap):
    """The trap works: the tests above prove something."""
    trap_obj, path = trap
    header, frames = trapped_message(trap_obj)
    assert P.unpack(receive(header, wire(frames)))[0] == "sprung"
    assert path.exists()


def test_tampered_pickle_stream_frame_is_refused(trap):
    trap_obj, path = trap
    header, frames = send([trap_obj, list(range(50_000))])
    rec = receive(header, wire(frames))
    assert rec.refs[0][0] == P.REF_BODY
    fr = frame_bytes(frames)
    fr[0][-3] ^= 0xFF
    rec = receive(header, [zmq.Frame(bytes(f)) for f in fr])
    with pytest.raises(P.IntegrityError):
        P.unpack(rec)
    with pytest.raises(P.IntegrityError):
        P.body_bytes(rec)
    assert not path.exists()


def test_missing_or_extra_frame_makes_the_message_malformed():
    header, frames = trapped_message("harmless")
    received = wire(frames)
    assert P.parse(header, received[:1]) is None
    assert P.parse(header, received + [zmq.Frame(b"extra")]) is None
    assert P.parse(header, []) is None


def test_small_array_changed_after_packing_arrives_as_submitted():
    """Buffers below COPY_MAX are copied at packing: a change after submit cannot race the send."""
    a = np.zeros(BIG)
    header, frames = send(a)
    a[5] = 1.0
    assert P.unpack(receive(header, wire(frames)))[5] == 0.0


def test_large_array_changed_after_packing_is_refused():
    """Larger buffers are not copied: one changed before the receiver checks it no longer
    matches its digest (the receiver refuses it rather than see half of a change)."""
    a = np.zeros(P.COPY_MAX // 8 + 1000)
    header, frames = send(a)
    a[5] = 1.0
    with pytest.raises(P.IntegrityError, match="changed after it was submitted"):
        P.unpack(receive(header, wire(frames)))


# ---- MACs ----------------------------------------------------------------------------------------
def test_signer_binds_channel_key_and_every_byte():
    header, _ = send("hello", channel=P.TO_BROKER)
    assert SIGNER.check(P.TO_BROKER, header)
    for channel in (P.META, P.FROM_BROKER, P.CONTROL_TO_BROKER, P.CONTROL_FROM_BROKER):
        assert not SIGNER.check(channel, header)
    assert not P.Signer(b"t" * 32).check(P.TO_BROKER, header)
    for cut in (0, 1, P.MAC_SIZE, P.MAC_SIZE + P.REC.size - 1, len(header) - 1):
        assert not SIGNER.check(P.TO_BROKER, header[:cut])
    assert not SIGNER.check(P.TO_BROKER, header + b"\x00")
    for i in (0, P.MAC_SIZE - 1, P.MAC_SIZE, len(header) - 1):
        bad = bytearray(header)
        bad[i] ^= 0x40
        assert not SIGNER.check(P.TO_BROKER, bytes(bad))


def test_meta_message_replayed_to_the_task_port_is_dropped():
    box = P.Outbox()
    box.add(P.STATUS, b"{}")
    data, _ = box.take()
    header = SIGNER.mac(P.META, data) + data
    assert SIGNER.check(P.META, header) and not SIGNER.check(P.TO_BROKER, header)


def test_short_secret_is_refused():
    for secret in (b"", b"x" * 15, None):
        with pytest.raises(ValueError, match="16 bytes"):
            P.Signer(secret)


def test_derived_keys_differ_by_purpose():
    keys = {P.derive(SECRET, p) for p in ("message MAC", "handshake", "shared memory")}
    assert len(keys) == 3 and SECRET not in keys


# ---- malformed headers ---------------------------------------------------------------------------
def test_parse_refuses_malformed_headers():
    good_box = P.Outbox()
    good_box.add(P.TID.pack(P.CANCEL, 1))
    good = good_box.take()[0]
    mac = b"\x00" * P.MAC_SIZE
    assert P.parse(mac + good, []) is not None
    assert P.parse(mac, []) is None                                  # no record
    assert P.parse(mac + good[:-1], []) is None                       # truncated record
    assert P.parse(mac + good + b"\x00", []) is None                  # trailing garbage
    assert P.parse(mac + P.REC.pack(0, 0, 0), []) is None             # empty record header
    assert P.parse(mac + P.REC.pack(1, 5, 0) + b"T", []) is None      # body past the end
    assert P.parse(mac + P.REC.pack(1, 0, 1) + b"T" + P.REF.pack(0, 3, b"d" * 16), []) is None  # no frame
    assert P.parse(mac + P.REC.pack(1, 0, 1) + b"T" + P.REF.pack(P.REF_SHM, 3, b"d" * 16),
                   [b"stray"]) is None                                # a frame no ref names


def test_fuzzed_headers_never_raise_nor_unpickle(monkeypatch):
    def no_unpickling(*a, **k):
        raise AssertionError("parse unpickled something")
    monkeypatch.setattr(P.pickle, "loads", no_unpickling)
    monkeypatch.setattr(P, "loads", no_unpickling)
    fuzz = random.Random(12)
    box = P.Outbox()
    box.add(P.TASK_HEADER.pack(P.TASK, 1, 0, b"d" * 16, 0, 0), b"body")
    box.add(P.TID.pack(P.CANCEL, 2))
    box.add(HDR, packed=P.Packed(b"", [(0, 4, b"k" * 16), (P.REF_SHM, 9, b"s" * 16)], [b"abcd"]))
    template = box.take()[0]
    frames_pool = [b"abcd", b"", zmq.Frame(b"xyz")]
    parsed = 0
    for i in range(3000):
        if i % 2:
            data = bytes(fuzz.getrandbits(8) for _ in range(fuzz.randrange(0, 80)))
        else:  # a near-valid message: a few bytes of a real one changed, cut or extended
            data = bytearray(template)
            for _ in range(fuzz.randrange(1, 4)):
                data[fuzz.randrange(len(data))] = fuzz.getrandbits(8)
            data = bytes(data[: fuzz.randrange(len(data) + 1)]) if fuzz.random() < 0.3 else bytes(data)
        frames = fuzz.sample(frames_pool, fuzz.randrange(0, 3))
        header = SIGNER.mac(P.TO_BROKER, data) + data  # signed: the worst case
        recs = P.parse(header, frames)
        if recs is not None:
            parsed += 1
            for r in recs:
                assert len(r.hdr) >= 1
                assert len(r.frames) == sum(1 for k, _, _ in r.refs if not k & P.REF_SHM)
    assert parsed  # some near-valid ones do parse: the fuzzing reached past the first check


def test_parse_accepts_memoryviews():
    box = P.Outbox()
    box.add(P.TID.pack(P.CANCEL, 3), b"why")
    data, _ = box.take()
    recs = P.parse(memoryview(b"\x00" * P.MAC_SIZE + data), [])
    assert bytes(recs[0].body) == b"why" and P.ID.unpack_from(recs[0].hdr, 1)[0] == 3


# ---- exceptions ----------------------------------------------------------------------------------
class HTTPFailure(Exception):
    def __init__(self, code, url):
        super().__init__(f"{code} for {url}")
        self.code = code
        self.url = url


def test_exception_whose_init_takes_two_arguments():
    data = P.dump_exception(HTTPFailure(404, "http://x/y"), "Traceback (most recent call last):\n  boom\n")
    exc = P.load_exception(data)
    assert isinstance(exc, RemoteError)
    assert exc.type_name.endswith("HTTPFailure") and exc.message == "404 for http://x/y"
    assert "HTTPFailure" in str(exc) and "404 for http://x/y" in str(exc)
    assert isinstance(exc.__cause__, P.RemoteTraceback) and "boom" in str(exc.__cause__)
    again = pickle.loads(pickle.dumps(exc))  # a RemoteError itself travels on
    assert again.type_name == exc.type_name and again.message == exc.message


def test_normal_exception_keeps_its_type():
    exc = P.load_exception(P.dump_exception(KeyError("missing"), "remote tb text"))
    assert type(exc) is KeyError and exc.args == ("missing",)
    assert str(exc.__cause__) == "remote tb text"
    plain = P.load_exception(P.dump_exception(ValueError("bad"), ""))
    assert type(plain) is ValueError and plain.__cause__ is None


def test_exception_with_unpicklable_attribute():
    exc = ValueError("holds a lock")
    exc.lock = threading.Lock()
    got = P.load_exception(P.dump_exception(exc, "tb"))
    assert "holds a lock" in str(got)
    assert "ValueError" in (getattr(got, "type_name", "") or type(got).__name__)


# ---- naming what does not pickle -----------------------------------------------------------------
def f():
    pass


def test_find_unpicklable_names_the_argument():
    lock = threading.Lock()
    assert P.find_unpicklable((lock,), None, "f") == "argument 1 of task f (a _thread.lock)"
    assert P.find_unpicklable((1, [2, lock]), None, "f") == \
        "argument 2 of task f (a list, item 1: a _thread.lock)"
    assert P.find_unpicklable((1,), {"k": {"x": lock}}, "f") == \
        "keyword argument 'k' of task f (a dict, item 'x': a _thread.lock)"
    assert P.find_unpicklable((1,), {}, "f") == "an argument of task f"


def test_callable_digest_is_stable_and_distinct():
    d1, p1 = P.pack_callable(f)
    d2, _ = P.pack_callable(f)
    d3, _ = P.pack_callable(test_find_unpicklable_names_the_argument)
    assert d1 == d2 != d3 and len(d1) == 16
    assert P.loads(p1.body)() is None


def test_a_name_is_taken_once_and_the_oldest_are_forgotten_past_the_cap():
    from scoop.security import Once, hello_names
    once = Once(cap=3)
    assert [once.take(n) for n in (b"a", b"b", b"a", b"c")] == [True, True, False, True]
    assert once.take(b"d") and once.take(b"a")  # past the cap the oldest, b"a", was forgotten
    assert hello_names(b"ab12", {"uid": "ab12"}) is None
    assert hello_names(b"ab12", {"uid": "cd34"}) and hello_names(b"ab12", {}) and hello_names(b"ab12", [1])
