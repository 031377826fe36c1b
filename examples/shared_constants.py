"""Shared constants: set once at the origin, read by every task (values may be functions).

    python -m scoop -n 2 shared_constants.py
"""
from scoop import futures, shared


def scaled(x):
    return shared.getConst("transform")(x) + shared.getConst("offset")


if __name__ == "__main__":
    shared.setConst(offset=1000, transform=lambda v: v * v)
    print(list(futures.map(scaled, range(6))))
