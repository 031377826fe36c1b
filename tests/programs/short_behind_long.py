"""A short task submitted after a long one finishes first, wherever in a federation the two
landed: a worker holding both gives the short one back when another worker is idle, also when
the idle worker is on another broker of the tree."""
import time

from scoop import futures


def leaf(x):
    return x


def slow(x, t):
    time.sleep(t)
    return x


def boom(x):
    raise ValueError(x)


if __name__ == "__main__":
    late = []
    for i in range(8):
        list(futures.map(leaf, range(200)))  # a burst first: every worker has just been busy
        fs = [futures.submit(slow, 0, 1.0), futures.submit(boom, i)]
        done, not_done = futures.wait(fs, return_when=futures.FIRST_EXCEPTION)
        if not (fs[1] in done and fs[0] in not_done):
            late.append(i)
        futures.wait(fs)
    print("LATE", late)
