"""How fast can a payload be authenticated?  Keyed MACs against a plain memory copy, in GB/s.

    python bench/mac_speed.py                 # 1 MiB, 64 MiB, 512 MiB buffers
    python bench/mac_speed.py --sizes 1,64
    python bench/mac_speed.py --segments --sizes 1,32,256   # the shared-memory round trip

Candidates: keyed BLAKE2b (hashlib, 32-byte digest), HMAC-SHA256 (hashlib), keyed BLAKE3
(`blake3` package) on one thread and on all cores (max_threads=AUTO), xxh3-128 (`xxhash`, not a
MAC: no key, shown for speed only) when installed, and memcpy (numpy copyto into a preallocated
buffer) as the memory-speed yardstick.  Every figure is the best of a few runs.  GB = 10^9 bytes.
Prints a table and one JSON line (key "bench").

--segments: one shared-memory segment's whole trip in one process (written by the sender,
mapped by the receiver, a byte of every page read), as scoop._shm does it: a named file ending
with a GMAC the receiver checks (results for another worker), a sealed memfd the receiver opens
through /proc and maps with no pass over it (arguments), the same handed over a Unix socket
(results for the origin); against the same trip with no MAC (the path before segments were
checked) and with keyed BLAKE3 on both ends (the first check).
"""
import argparse
import hashlib
import hmac
import json
import os
import time

import numpy as np

KEY = os.urandom(32)


def candidates():
    """{short id: (label, function of a buffer; None for the memcpy yardstick)}"""
    c = {
        "memcpy": ("memcpy (numpy copyto)", None),
        "blake2b": ("BLAKE2b keyed (hashlib)",
                    lambda b: hashlib.blake2b(b, key=KEY, digest_size=32).digest()),
        "hmac_sha256": ("HMAC-SHA256 (hashlib)", lambda b: hmac.new(KEY, b, hashlib.sha256).digest()),
    }
    try:
        import blake3
        c["blake3_1t"] = ("BLAKE3 keyed, 1 thread", lambda b: blake3.blake3(b, key=KEY).digest())
        c["blake3_mt"] = (f"BLAKE3 keyed, all cores ({os.cpu_count()})",
                          lambda b: blake3.blake3(b, key=KEY, max_threads=blake3.blake3.AUTO).digest())
    except ImportError:
        pass
    try:
        import xxhash
        c["xxh3"] = ("xxh3-128 (xxhash, no key)", lambda b: xxhash.xxh3_128(b).digest())
    except ImportError:
        pass
    return c


def best_of(fn, seconds_budget=1.0, min_runs=3, max_runs=20):
    best, t_end, runs = float("inf"), time.perf_counter() + seconds_budget, 0
    while runs < min_runs or (runs < max_runs and time.perf_counter() < t_end):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        runs += 1
    return best


def measure(cands, table, mib):
    buf = np.random.default_rng(0).integers(0, 255, mib * 2**20, dtype=np.uint8)
    dst = np.empty_like(buf)
    mv = memoryview(buf)
    for cid, (_, fn) in cands.items():
        call = (lambda: np.copyto(dst, buf)) if fn is None else (lambda f=fn: f(mv))
        call()  # warm: pages of dst mapped, code paths hot
        table[cid][mib] = buf.nbytes / best_of(call) / 1e9


def segments(sizes):
    """{variant: {MiB: GB/s}} of a segment's trip: write, map, read every page."""
    import mmap
    import sys

    import blake3
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from scoop import _protocol as P
    from scoop import _shm
    segs = _shm.Segments(P.derive(os.urandom(32), "shared memory"))
    path = f"{_shm.DIR}/scoop-bench-{os.getpid()}"

    def bare(view, mac=None):
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.pwrite(fd, view, 0)
        os.close(fd)
        sent = mac(view) if mac else None
        fd = os.open(path, os.O_RDWR)
        got = memoryview(mmap.mmap(fd, view.nbytes, flags=mmap.MAP_PRIVATE,
                                   prot=mmap.PROT_READ | mmap.PROT_WRITE))
        os.close(fd)
        if mac and mac(got) != sent:
            raise AssertionError("MAC mismatch")
        np.frombuffer(got, np.uint8)[::4096].sum()
        os.unlink(path)

    def checked(view, put):
        seg = put(view)
        np.frombuffer(segs.open(seg, view.nbytes), np.uint8)[::4096].sum()
        segs.unlink(seg)

    import tempfile
    inbox = tempfile.mkdtemp()
    segs.listen(os.path.join(inbox, _shm.INBOX))
    segs.hand_to(os.path.join(inbox, _shm.INBOX))
    variants = {"no MAC": bare,
                "BLAKE3 keyed": lambda v: bare(v, lambda b: blake3.blake3(b, key=KEY).digest(8)),
                "named + GMAC (other results)": lambda v: checked(v, segs.put_named),
                "sealed memfd (arguments)": lambda v: checked(v, segs.put),
                "sealed, handed over (results)": lambda v: checked(v, segs.put_handed)}
    table = {k: {} for k in variants}
    try:
        for mib in sizes:
            view = memoryview(np.random.default_rng(0).integers(0, 255, mib << 20, dtype=np.uint8))
            for _ in range(2):  # alternating rounds: each variant sees the same load
                for name, fn in variants.items():
                    fn(view)
                    t = best_of(lambda f=fn, v=view: f(v), 0.5, 3, 10)
                    table[name][mib] = max(table[name].get(mib, 0), view.nbytes / t / 1e9)
    finally:
        segs.cleanup(os.getpid())
        if os.path.exists(path):
            os.unlink(path)
        os.unlink(os.path.join(inbox, _shm.INBOX))
        os.rmdir(inbox)
    return table


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1,64,512", help="buffer sizes in MiB")
    ap.add_argument("--segments", action="store_true", help="a shared-memory segment's trip instead")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    if a.segments:
        table = segments(sizes)
        w = max(map(len, table))
        head = "segment trip, GB/s (best of runs)"
        print(f"{head:<{w}}" + "".join(f"{str(m) + ' MiB':>12}" for m in sizes))
        for name, row in table.items():
            print(f"{name:<{w}}" + "".join(f"{row[m]:>12.2f}" for m in sizes))
        flat = {f"{name}_{m}": round(v, 3) for name, row in table.items() for m, v in row.items()}
        print(json.dumps({"bench": "shm_trip", "cpus": os.cpu_count(), **flat}))
        return
    cands = candidates()
    table = {cid: {} for cid in cands}
    for mib in sizes:
        measure(cands, table, mib)
    w = max(len(label) for label, _ in cands.values())
    print(f"{'GB/s (best of runs)':<{w}}" + "".join(f"{str(m) + ' MiB':>12}" for m in sizes))
    for cid, row in table.items():
        print(f"{cands[cid][0]:<{w}}" + "".join(f"{row[m]:>12.2f}" for m in sizes))
    flat = {f"{cid}_{m}": v for cid, row in table.items() for m, v in row.items()}
    print(json.dumps(dict({"bench": "mac_speed", "cpus": os.cpu_count(),
                           "labels": {cid: label for cid, (label, _) in cands.items()}}, **flat)))


if __name__ == "__main__":
    main()
