"""How fast can a payload be authenticated?  Keyed MACs against a plain memory copy, in GB/s.

    python bench/mac_speed.py                 # 1 MiB, 64 MiB, 512 MiB buffers
    python bench/mac_speed.py --sizes 1,64

Candidates: keyed BLAKE2b (hashlib, 32-byte digest), HMAC-SHA256 (hashlib), keyed BLAKE3
(`blake3` package) on one thread and on all cores (max_threads=AUTO), xxh3-128 (`xxhash`, not a
MAC: no key, shown for speed only) when installed, and memcpy (numpy copyto into a preallocated
buffer) as the memory-speed yardstick.  Every figure is the best of a few runs.  GB = 10^9 bytes.
Prints a table and one JSON line (key "bench").
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1,64,512", help="buffer sizes in MiB")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
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
