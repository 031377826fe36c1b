"""Start-up side by side with SCOOP 0.7.2.0: a whole `python -m scoop -n 2 prog.py` run, and the
first `submit(f).result()` inside the program.

    bash bench/setup_peers.sh      # makes bench/.venv-scoop07 with SCOOP 0.7.2.0
    python bench/startup.py [--runs 10]

The program maps `abs` over 100 integers (the smallest useful SCOOP program), then times one
`futures.submit(abs, -1).result()`.  Runs alternate (ours, 0.7, ours, ...) so drift of a shared
machine hits both; each interpreter is called by its real path (a version manager's shim would
add its own start-up to one side).  Bytecode caches are allowed, as a user's installs have them.
Prints the medians, the ratio ours/0.7 (goal <= 1.0) and the first round trip (goal < 2 ms).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCOOP07 = os.path.join(HERE, ".venv-scoop07", "bin", "python")

PROGRAM = """
import time
from scoop import futures
if __name__ == "__main__":
    assert sorted(futures.map(abs, range(-50, 50)))[-1] == 50
    t = time.perf_counter()
    futures.submit(abs, -1).result()
    print("first_result_s", time.perf_counter() - t)
"""


def run(python: str, prog: str, env: dict) -> tuple[float, float]:
    t = time.perf_counter()
    r = subprocess.run([python, "-m", "scoop", "-n", "2", prog], env=env, cwd=os.path.dirname(prog),
                       capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{python} failed:\n{r.stderr[-2000:]}")
    first = [float(line.split()[1]) for line in r.stdout.splitlines() if line.startswith("first_result_s")]
    return wall, first[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    a = ap.parse_args()
    if not os.path.exists(SCOOP07):
        raise SystemExit("SCOOP 0.7.2.0 is missing: run bash bench/setup_peers.sh first")
    prog = os.path.join(tempfile.mkdtemp(), "hello100.py")
    with open(prog, "w") as f:
        f.write(PROGRAM)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    ours_env = dict(env, PYTHONPATH=ROOT)
    ours, theirs = [], []
    run(sys.executable, prog, ours_env), run(SCOOP07, prog, env)      # warm caches, write bytecode
    for _ in range(a.runs):
        ours.append(run(sys.executable, prog, ours_env))
        theirs.append(run(SCOOP07, prog, env))
    med = lambda xs, i: statistics.median(x[i] for x in xs)
    ratios = [o[0] / t[0] for o, t in zip(ours, theirs)]
    print(f"| start-up, {a.runs} alternating runs | this project | SCOOP 0.7.2.0 | ratio | goal |")
    print("|---|---|---|---|---|")
    print(f"| whole run of `python -m scoop -n 2` (median s) | {med(ours, 0):.3f} | {med(theirs, 0):.3f} | "
          f"{statistics.median(ratios):.2f}x (pairs {min(ratios):.2f}-{max(ratios):.2f}) | <= 1.0x |")
    print(f"| first submit(f).result() after the map (median ms) | {1e3 * med(ours, 1):.3f} | "
          f"{1e3 * med(theirs, 1):.3f} | {med(ours, 1) / med(theirs, 1):.2f}x | < 2 ms |")


if __name__ == "__main__":
    main()
