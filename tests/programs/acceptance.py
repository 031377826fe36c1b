"""SCOOP 0.7-style acceptance program: every feature, checked, under `python -m scoop -n 2`."""
import functools
import operator
import time

import scoop
from scoop import futures, shared


def leaf(x):
    return x


def node(depth, width=2):
    if depth == 0:
        return 1
    fs = [futures.submit(node, depth - 1, width) for _ in range(width)]
    done, not_done = futures.wait(fs)
    assert not not_done
    return sum(f.result() for f in fs)


def via_map(depth):
    if depth == 0:
        return 1
    return sum(futures.map(via_map, [depth - 1] * 2))


def via_as_completed(depth):
    if depth == 0:
        return 1
    fs = [futures.submit(via_as_completed, depth - 1) for _ in range(2)]
    return sum(f.result() for f in futures.as_completed(fs))


def slow(x, s=0.3):
    time.sleep(s)
    return x


def boom(x):
    if x % 5 == 3:
        raise KeyError(f"key {x}")
    return x


def nested_boom(x):
    return futures.submit(boom, x).result()


def const_user(x):
    return shared.getConst("fn")(x) + shared.getConst("base")


def gen(n):
    for i in range(n):
        yield i


if __name__ == "__main__":
    assert scoop.IS_ORIGIN and scoop.IS_RUNNING and scoop.SIZE == 2, (scoop.SIZE,)
    assert node(12) == 4096, "deep recursion"
    assert futures.submit(via_map, 8).result() == 256
    assert futures.submit(via_as_completed, 8).result() == 256
    assert futures.mapReduce(leaf, operator.add, range(101)) == 5050
    assert futures.mapScan(leaf, operator.add, range(6)) == [0, 1, 3, 6, 10, 15]
    assert list(futures.map(operator.mul, gen(10), gen(20))) == [i * i for i in range(10)]
    assert sorted(futures.map_as_completed(leaf, gen(50))) == list(range(50))
    # timeouts are honoured
    f = futures.submit(slow, 1, 1.0)
    try:
        f.result(timeout=0.1)
        raise AssertionError("no timeout")
    except futures.TimeoutError:
        pass
    assert f.result() == 1
    # FIRST_EXCEPTION
    fs = [futures.submit(slow, 0, 2.0), futures.submit(boom, 3)]
    done, not_done = futures.wait(fs, return_when=futures.FIRST_EXCEPTION)
    assert fs[1] in done and fs[0] in not_done
    # late callbacks run at once
    seen = []
    g = futures.submit(leaf, 5)
    g.result()
    g.add_done_callback(lambda fut: seen.append(fut.result()))
    assert seen == [5]
    # closures and lambdas
    k = 7
    assert list(futures.map(lambda x: x * k, range(3))) == [0, 7, 14]
    assert futures.submit(functools.partial(operator.add, 1), 2).result() == 3
    # shared constants holding functions
    shared.setConst(fn=lambda x: x * 10, base=1)
    assert list(futures.map(const_user, range(3))) == [1, 11, 21]
    # errors inside nested tasks keep their type and message
    try:
        list(futures.map(nested_boom, range(10)))
        raise AssertionError("no error")
    except KeyError as exc:
        assert "key 3" in str(exc)
    print("ACCEPTANCE OK")
