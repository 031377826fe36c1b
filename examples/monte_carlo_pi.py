"""Monte Carlo estimate of pi with futures.mapReduce.

    python -m scoop monte_carlo_pi.py 40 200000
"""
import random
import sys
from operator import add

from scoop import futures


def hits(seed, n):
    rnd = random.Random(seed)
    return sum(1 for _ in range(n) if rnd.random() ** 2 + rnd.random() ** 2 <= 1.0)


if __name__ == "__main__":
    tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    per_task = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000
    inside = futures.mapReduce(hits, add, range(tasks), [per_task] * tasks)
    print(f"pi ~ {4.0 * inside / (tasks * per_task):.5f} from {tasks * per_task} points")
