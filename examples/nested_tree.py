"""Futures submitted from inside tasks: a binary recursion tree, deadlock-free on any number
of workers because a waiting task yields its worker to other tasks (greenlets).

    python -m scoop -n 2 nested_tree.py 12
"""
import sys

from scoop import futures


def tree(depth):
    if depth == 0:
        return 1
    left = futures.submit(tree, depth - 1)
    right = futures.submit(tree, depth - 1)
    return left.result() + right.result()


if __name__ == "__main__":
    depth = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    leaves = tree(depth)
    print(f"depth {depth}: {leaves} leaves, {2 * leaves - 1} futures")
