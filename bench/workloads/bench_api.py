"""One small interface over every executor, for the workloads that compare data paths.

Each executor is used the way its own users use it: its default `map` (and its default
chunking), its plain `submit(...).result()`; a documented tuning knob appears only as an extra,
clearly named measurement (`map_chunked`).  bench/peers.py builds one of these per peer;
`scoop_api()` builds ours.
"""
import math


class Api:
    """map(f, xs) -> list; submit(f, *a) -> object with .result(); the rest is optional.

    map_chunked(f, xs, chunksize): the documented chunksize argument (None if the executor has none).
    dispatched(f, *a): a round trip that must cross to another process (peers: plain submit).
    chunk1: True when the default map sends one input per task.
    """

    def __init__(self, name, map, submit, map_chunked=None, dispatched=None, chunk1=False):
        self.name = name
        self.map = map
        self.submit = submit
        self.map_chunked = map_chunked
        self.dispatched = dispatched or (lambda f, *a: submit(f, *a).result())
        self.chunk1 = chunk1


def pool_chunksize(n, workers=2):
    """multiprocessing.Pool.map's automatic chunksize (ceil(n / (4 * workers)))."""
    return max(1, math.ceil(n / (4 * workers)))


def scoop_api():
    from scoop import futures

    def dispatched(f, *a):
        # a wait with a timeout is never run in place: the task crosses the broker to a worker
        fut = futures.submit(f, *a)
        futures.wait([fut], timeout=600)
        return fut.result()

    return Api("us", map=lambda f, xs: list(futures.map(f, xs)), submit=futures.submit,
               dispatched=dispatched)
