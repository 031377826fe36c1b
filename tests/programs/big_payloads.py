"""Keeps moving big arrays through the cluster until killed (shared-memory cleanup tests)."""
import sys

import numpy as np

from scoop import futures

import tasklib as T

if __name__ == "__main__":
    arrays = [np.full(1 << 19, k, dtype="f8") for k in range(8)]  # 4 MB each
    print("READY", flush=True)
    while True:
        out = list(futures.map(T.same, arrays))
        assert all(np.array_equal(x, y) for x, y in zip(arrays, out))
        sys.stdout.flush()
