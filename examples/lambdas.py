"""Lambdas, closures, partials and bound methods travel by value.

    python -m scoop -n 2 lambdas.py
"""
import functools

from scoop import futures


class Polynomial:
    def __init__(self, *coefficients):
        self.c = coefficients

    def __call__(self, x):
        return sum(c * x ** i for i, c in enumerate(self.c))


def make_power(p):
    return lambda x: x ** p


if __name__ == "__main__":
    cube = make_power(3)
    print("lambda:", list(futures.map(lambda x: x + 1, range(5))))
    print("closure:", list(futures.map(cube, range(5))))
    print("partial:", list(futures.map(functools.partial(pow, 2), range(5))))
    print("callable object:", list(futures.map(Polynomial(1, 0, 2), range(5))))
