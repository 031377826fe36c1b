"""The origin of a many-hosts run (tests/many_hosts.py): says when every worker has joined (the
launcher returns only then), waits for the watcher's go, then maps a tiny task over all of them."""
import os
import time

import scoop
from scoop import futures


def where(_):
    return os.getpid()


if __name__ == "__main__":
    print("JOINED", scoop.SIZE, flush=True)
    while not os.path.exists(os.environ["GO"]):  # the watcher has looked at the hosts
        time.sleep(0.01)
    t = time.perf_counter()
    pids = set(futures.map(where, range(4 * scoop.SIZE)))
    print("MAPPED", round(time.perf_counter() - t, 3), len(pids), flush=True)
