"""Payload GB/s with encryption on (CurveZMQ) and off, across TCP, and dask with TLS beside it.

    python bench/encryption.py                 # ~2 min on 2 cores
    python bench/encryption.py --quick         # ~40 s
    python bench/encryption.py --only hop,lane,cluster --repeat 3

Parts (GB/s are 10^9 bytes per second; each figure is the median of --repeat runs):
  hop      one TCP connection (loopback), two processes, the cluster's own handshakes
           (scoop.security): 32 MiB messages in 1 MiB frames, as scoop._protocol sends them,
           and as one 32 MiB frame (the shape measured before frames were split); sealed: the
           1 MiB frames sealed by the sender (AES-256-GCM, scoop._seal) on a PLAIN connection
           and opened by the receiver into one buffer per message.
  lane     the same link with the protocol's own work on both ends: a 32 MiB float64 array
           packed (scoop._protocol.pack), its signed header and frames sent, checked and
           unpacked into an array by the receiver.  plain: one PLAIN connection, frames checked
           against their signed digests (--encryption off); curve: the same on a CURVE
           connection (today's default); sealed: the header on a CURVE connection, the frames
           sealed end to end with AES-256-GCM (scoop._seal) on a second connection beside it
           that does not encrypt again (PLAIN handshake), opened by the receiver.
  cluster  a real 2-worker cluster whose origin poses as another host (no shared memory, no
           same-host socket: every byte goes origin -> broker -> worker over TCP and back, two
           hops each way): 32 MiB float64 arrays as map arguments and as map results.  plain:
           --encryption off; sealed: encryption on (the default: headers on CURVE, payload
           frames sealed on the bulk lane, scoop.bulk); curve: encryption on with the lane off
           (SCOOP_BULK_LANE=off: payloads on CURVE, the path before the lane).
  aead     AES-256-GCM (the `cryptography` package, if installed) and keyed BLAKE3 on one core:
           what a payload lane sealed outside CURVE would cost per byte.
  dask     dask.distributed LocalCluster(2 workers) over tcp:// and over tls:// with
           Security.temporary() (self-signed, in memory): client.submit of 32 MiB arrays.
Prints each figure, the encrypted/unencrypted ratios, and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402
import zmq  # noqa: E402

from scoop import _protocol as P  # noqa: E402
from scoop import security  # noqa: E402

MiB = 1 << 20


# ---- one TCP hop ---------------------------------------------------------------------------------
def _sink(q, secret, mode, total, msg):
    from scoop._seal import Sealer
    ctx = zmq.Context()
    auth = security.Authenticator(ctx, secret)
    s = ctx.socket(zmq.ROUTER)
    s.setsockopt(zmq.RCVHWM, 0)
    security.secure_server(s, secret, "tcp://127.0.0.1", mode == "curve")
    q.put(s.bind_to_random_port("tcp://127.0.0.1"))
    opener = Sealer(secret, os.urandom(8))
    got = 0
    ident = None
    while got < total:
        parts = s.recv_multipart(copy=False)
        ident = parts[0]
        if mode == "sealed":
            key = parts[1].bytes
            got += opener.open(P.REF_SEALED | P.REF_SPLIT, msg, key, parts[2:], P.FRAME_CHUNK).nbytes
        else:
            got += sum(len(p) for p in parts[1:])
    s.send_multipart([ident, b"done"])
    time.sleep(0.2)
    s.close(0)
    auth.stop()
    ctx.term()


def hop(mode: str, frame: int, total: int, msg: int = 32 * MiB) -> float:
    from scoop._seal import Sealer
    secret = P.new_secret()
    q = mp.Queue()
    p = mp.Process(target=_sink, args=(q, secret, mode, total, msg))
    p.start()
    ctx = zmq.Context()
    try:
        addr = f"tcp://127.0.0.1:{q.get(timeout=20)}"
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.SNDHWM, 4)
        s.setsockopt(zmq.LINGER, 0)
        security.secure_client(s, secret, addr, mode == "curve")
        s.connect(addr)
        buf = memoryview(bytearray(os.urandom(MiB) * (msg // MiB)))
        frames = [buf[o:o + frame] for o in range(0, msg, frame)]
        sealer = Sealer(secret, os.urandom(8))
        t0 = time.perf_counter()
        sent = 0
        while sent < total:
            if mode == "sealed":
                key, sealed = sealer.seal(P.REF_SEALED | P.REF_SPLIT, buf, P.FRAME_CHUNK)
                s.send_multipart([key, *sealed], copy=False)
            else:
                s.send_multipart(frames, copy=False)
            sent += msg
        s.recv_multipart()
        return sent / (time.perf_counter() - t0) / 1e9
    finally:
        ctx.destroy(0)
        p.join(10)


# ---- the protocol's own work on both ends: signed, CURVE, or sealed beside CURVE --------------------
def _lane_sink(q, secret, mode, total):
    from scoop._seal import Sealer
    ctx = zmq.Context()
    auth = security.Authenticator(ctx, secret)
    signer = P.Signer(secret)
    sealer = Sealer(secret, os.urandom(8))
    socks = []
    for enc in ((mode == "curve",) if mode != "sealed" else (True, False)):
        s = ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.RCVHWM, 0)
        security.secure_server(s, secret, "tcp://127.0.0.1", enc)
        socks.append((s, s.bind_to_random_port("tcp://127.0.0.1")))
    q.put([port for _, port in socks])
    head, bulk = socks[0][0], socks[-1][0]
    got = 0
    ident = None
    while got < total:
        parts = head.recv_multipart(copy=False)
        ident, header, frames = parts[0], parts[1].bytes, parts[2:]
        if mode == "sealed":
            frames = bulk.recv_multipart(copy=False)[1:]
        if not signer.check(P.TO_BROKER, header):
            raise SystemExit("lane: a header failed its check")
        (rec,) = P.parse(header, frames)
        a = P.unpack(rec, seal=sealer)
        got += a.nbytes
    head.send_multipart([ident, b"done"])
    time.sleep(0.2)
    for s, _ in socks:
        s.close(0)
    auth.stop()
    ctx.term()


def lane(mode: str, total: int, msg: int = 32 * MiB) -> float:
    from scoop._seal import Sealer
    secret = P.new_secret()
    q = mp.Queue()
    p = mp.Process(target=_lane_sink, args=(q, secret, mode, total))
    p.start()
    ctx = zmq.Context()
    try:
        ports = q.get(timeout=20)
        socks = []
        for port, enc in zip(ports, (mode == "curve",) if mode != "sealed" else (True, False)):
            addr = f"tcp://127.0.0.1:{port}"
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.SNDHWM, 4 * (msg // P.FRAME_CHUNK + 1))
            s.setsockopt(zmq.LINGER, 0)
            security.secure_client(s, secret, addr, enc)
            s.connect(addr)
            socks.append(s)
        head, bulk = socks[0], socks[-1]
        signer = P.Signer(secret)
        sealer = Sealer(secret, os.urandom(8)) if mode == "sealed" else None
        a = np.frombuffer(bytearray(os.urandom(MiB) * (msg // MiB)), dtype=np.float64)
        t0 = time.perf_counter()
        sent = 0
        while sent < total:
            box = P.Outbox()
            box.add(P.TID.pack(P.CANCEL, 1), packed=P.pack(a, seal=sealer))
            data, frames = box.take()
            header = signer.mac(P.TO_BROKER, data) + data
            if sealer is None:
                head.send_multipart([header, *frames], copy=False)
            else:
                head.send(header)
                bulk.send_multipart(frames, copy=False)
            sent += msg
        head.recv_multipart()
        return sent / (time.perf_counter() - t0) / 1e9
    finally:
        ctx.destroy(0)
        p.join(10)


# ---- a cluster whose origin is "on another host" ----------------------------------------------------
def consume(a):
    return a.nbytes, float(a[0])


def produce(i, nbytes):
    a = np.empty(nbytes // 8)
    a.fill(i)
    return a


def _cluster_child(q, encryption, count, size, lane=True):
    """In a fresh process: the origin takes another host key and neither shared memory nor the
    same-host socket, so the workers (on this host) treat it as remote."""
    from scoop import _runtime, _shm, bulk
    os.environ[bulk.SWITCH] = "on" if lane else "off"  # read by the broker it starts
    from scoop.cluster import Cluster
    _runtime.host_key = lambda: 0x5C00B
    _shm.available = lambda: False
    _runtime.direct_available = lambda: False
    from scoop import futures
    arrays = [np.full(size // 8, float(i)) for i in range(count)]
    out = {}
    with Cluster(2, encryption=encryption):
        list(futures.map(consume, arrays[:2]))  # warm: callables shipped, connections up
        t0 = time.perf_counter()
        assert [r[0] for r in futures.map(consume, arrays)] == [size] * count
        out["args"] = count * size / (time.perf_counter() - t0) / 1e9
        list(futures.map(produce, range(2), [size] * 2))
        t0 = time.perf_counter()
        got = list(futures.map(produce, range(count), [size] * count))
        out["results"] = count * size / (time.perf_counter() - t0) / 1e9
        assert all(g.nbytes == size and g[-1] == i for i, g in enumerate(got))
    q.put(out)


def cluster(encryption: bool, count: int, size: int = 32 * MiB, lane: bool = True) -> dict:
    q = mp.Queue()
    p = mp.Process(target=_cluster_child, args=(q, encryption, count, size, lane))
    p.start()
    try:
        return q.get(timeout=300)
    finally:
        p.join(30)


# ---- cipher and MAC speed ------------------------------------------------------------------------------
def aead(total: int) -> dict:
    import blake3
    buf = bytearray(os.urandom(MiB) * 4)
    out = {}
    t0 = time.perf_counter()
    for _ in range(total // len(buf)):
        blake3.blake3(buf, key=b"k" * 32).digest()
    out["blake3_mac"] = total / (time.perf_counter() - t0) / 1e9
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        return out
    g = AESGCM(os.urandom(32))
    sealed = bytearray(len(buf) + 16)
    t0 = time.perf_counter()
    for i in range(total // len(buf)):
        g.encrypt_into(i.to_bytes(12, "little"), buf, None, sealed)
    out["aes_gcm_seal"] = total / (time.perf_counter() - t0) / 1e9
    opened = bytearray(len(buf))
    g.encrypt_into(bytes(12), buf, None, sealed)
    t0 = time.perf_counter()
    for _ in range(total // len(buf)):
        g.decrypt_into(bytes(12), sealed, None, opened)
    out["aes_gcm_open"] = total / (time.perf_counter() - t0) / 1e9
    return out


# ---- dask, tcp and tls -------------------------------------------------------------------------------
def _dask_consume(a):
    return a.nbytes


def _dask_child(q, tls, count, size):
    import logging

    from distributed import Client, LocalCluster
    logging.getLogger("distributed").setLevel(logging.ERROR)
    kw = {"n_workers": 2, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
    if tls:
        from distributed.security import Security
        sec = Security.temporary()
        kw.update(protocol="tls://", security=sec)
    with LocalCluster(**kw) as lc, Client(lc, security=kw.get("security")) as client:
        arrays = [np.full(size // 8, float(i)) for i in range(count)]
        client.gather([client.submit(_dask_consume, a, pure=False) for a in arrays[:2]])
        t0 = time.perf_counter()
        assert client.gather([client.submit(_dask_consume, a, pure=False) for a in arrays]) == [size] * count
        q.put(count * size / (time.perf_counter() - t0) / 1e9)


def dask(tls: bool, count: int, size: int = 32 * MiB):
    q = mp.Queue()
    p = mp.Process(target=_dask_child, args=(q, tls, count, size))
    p.start()
    try:
        return q.get(timeout=300)
    finally:
        p.join(30)


def _median(fn, repeat):
    vals = [fn() for _ in range(repeat)]
    if isinstance(vals[0], dict):
        return {k: round(statistics.median(v[k] for v in vals), 3) for k in vals[0]}
    return round(statistics.median(vals), 3)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", "-R", type=int, default=None)
    ap.add_argument("--only", default="hop,lane,cluster,aead,dask")
    a = ap.parse_args()
    parts = set(a.only.split(","))
    repeat = a.repeat or (1 if a.quick else 3)
    total = (1 if a.quick else 2) << 30
    count = 8 if a.quick else 16
    res = {}
    if "hop" in parts:
        for mode, frame in (("plain", P.FRAME_CHUNK), ("plain", 32 * MiB), ("curve", P.FRAME_CHUNK),
                            ("curve", 32 * MiB), ("sealed", P.FRAME_CHUNK)):
            key = f"hop_{mode}_{frame // MiB}MiB_frames"
            res[key] = _median(lambda m=mode, f=frame: hop(m, f, total), repeat)
            print(f"{key:32s} {res[key]:6.2f} GB/s", flush=True)
    if "lane" in parts:
        for mode in ("plain", "curve", "sealed"):
            key = f"lane_{mode}_32MiB"
            res[key] = _median(lambda m=mode: lane(m, total), repeat)
            print(f"{key:32s} {res[key]:6.2f} GB/s", flush=True)
    if "cluster" in parts:
        for mode, enc, lane_on in (("plain", False, False), ("sealed", True, True), ("curve", True, False)):
            r = _median(lambda e=enc, ln=lane_on: cluster(e, count, lane=ln), repeat)
            for k, v in r.items():
                key = f"cluster_{mode}_{k}"
                res[key] = v
                print(f"{key:32s} {v:6.2f} GB/s", flush=True)
    if "aead" in parts:
        r = aead(total)
        for k, v in r.items():
            res[k] = round(v, 2)
            print(f"{k:32s} {v:6.2f} GB/s (one core)", flush=True)
    if "dask" in parts:
        for tls in (False, True):
            key = f"dask_{'tls' if tls else 'tcp'}_args"
            try:
                res[key] = _median(lambda t=tls: dask(t, count), repeat)
                print(f"{key:32s} {res[key]:6.2f} GB/s", flush=True)
            except Exception as exc:  # a missing or broken dask is reported, not fatal
                print(f"{key}: not measured ({type(exc).__name__}: {exc})", flush=True)
    ratios = {}
    for plain_key in [k for k in res if "_plain_" in k]:
        enc_key = plain_key.replace("_plain_", "_curve_")
        if res.get(plain_key) and enc_key in res:
            ratios[enc_key + "/plain"] = round(res[enc_key] / res[plain_key], 2)
    if res.get("hop_plain_1MiB_frames") and "hop_sealed_1MiB_frames" in res:
        ratios["hop_sealed/plain"] = round(res["hop_sealed_1MiB_frames"] / res["hop_plain_1MiB_frames"], 2)
    for k in ("args", "results"):
        plain, sealed = res.get(f"cluster_plain_{k}"), res.get(f"cluster_sealed_{k}")
        if plain and sealed is not None:
            ratios[f"cluster_sealed_{k}/plain"] = round(sealed / plain, 2)
    if res.get("lane_plain_32MiB") and "lane_sealed_32MiB" in res:
        ratios["lane_sealed/plain"] = round(res["lane_sealed_32MiB"] / res["lane_plain_32MiB"], 2)
    if res.get("dask_tcp_args") and "dask_tls_args" in res:
        ratios["dask_tls/tcp"] = round(res["dask_tls_args"] / res["dask_tcp_args"], 2)
    for k, v in ratios.items():
        print(f"ratio {k:40s} {v:5.2f}")
    print(json.dumps({"results": res, "ratios": ratios, "repeat": repeat}))


if __name__ == "__main__":
    main()
