"""A tour of SCOOP on a local cluster: `python -m scoop -n 2 examples/demo.py`."""
import math
import time
from operator import add

import scoop
from scoop import futures, shared


def work(n):
    """CPU-bound work: a fixed number of loop iterations."""
    x = 0
    for i in range(n):
        x += i * i
    return x


def fib(n):
    if n < 2:
        return n
    a, b = futures.submit(fib, n - 1), futures.submit(fib, n - 2)
    return a.result() + b.result()


def risky(x):
    if x == 3:
        raise ValueError(f"{x} is unlucky")
    return x


if __name__ == "__main__":
    print(f"origin: {scoop.IS_ORIGIN}, workers: {scoop.SIZE}, broker ports: "
          f"{scoop.BROKER.task_port}/{scoop.BROKER.info_port}")

    n = 400_000  # about 20 ms of work
    t0 = time.perf_counter()
    [work(n) for _ in range(40)]
    serial = time.perf_counter() - t0
    t0 = time.perf_counter()
    list(futures.map(work, [n] * 40))
    parallel = time.perf_counter() - t0
    print(f"40 CPU-bound tasks: {serial / parallel:.2f}x faster than serial on {scoop.SIZE} workers")

    print("nested futures: fib(15) =", fib(15))
    print("mapReduce:", futures.mapReduce(math.sqrt, add, range(10_000)))
    shared.setConst(greeting="hello")
    print("shared constant on a worker:", futures.submit(shared.getConst, "greeting").result())
    try:
        list(futures.map(risky, range(5)))
    except ValueError as exc:
        print("a task's exception reaches the caller:", repr(exc))
    fs = [futures.submit(work, k) for k in (30_000, 10_000, 20_000)]
    print("as_completed:", [f.result() > 0 for f in futures.as_completed(fs)])
    print("done")
