"""mapReduce and mapScan: parallel reductions that give the serial answer for any
associative operation, commutative or not.

    python -m scoop -n 2 map_reduce.py
"""
from operator import add

from scoop import futures


def square(x):
    return x * x


if __name__ == "__main__":
    print("sum of squares:", futures.mapReduce(square, add, range(1000)))
    print("prefix sums:", futures.mapScan(square, add, range(8)))
    print("concatenation:", futures.mapReduce(str, add, range(15)))
