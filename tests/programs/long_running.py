"""Keeps the cluster busy until killed; prints READY once tasks run."""
import time

from scoop import futures


def spin(x):
    time.sleep(60)
    return x


if __name__ == "__main__":
    fs = [futures.submit(spin, i) for i in range(4)]
    time.sleep(0.5)
    print("READY", flush=True)
    futures.wait(fs)
