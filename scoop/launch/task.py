"""``python -m scoop.launch.task``: a worker started as one task of a multi-task launch.

A SLURM job step (``srun -n K``) starts K copies of one command and sends every copy the same
stdin; PBS's ``pbsdsh`` gives its tasks no stdin at all.  This entry point turns either into
what ``python -m scoop.worker`` expects -- its own configuration as one JSON line on stdin --
and then runs the worker in this process:

- the config line may carry ``names`` (one per task); the task takes the one of its rank
  (``SLURM_PROCID``, else ``PBS_TASKNUM``/``PMI_RANK``; 0 if none) as its ``name``;
- ``--config-file F`` reads the line from F instead (a file only its owner can read, for
  launchers without stdin); the worker's stdin then never ends, and the config says
  ``"detached": true`` so the worker ends when it loses the broker instead.
"""
from __future__ import annotations

import io
import json
import os
import sys
import threading

RANK_VARIABLES = ("SLURM_PROCID", "PBS_TASKNUM", "PMI_RANK", "OMPI_COMM_WORLD_RANK")


def task_rank(env=None) -> int:
    env = os.environ if env is None else env
    for var in RANK_VARIABLES:
        value = env.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def own_config(cfg: dict, env=None) -> dict:
    """This task's config: its own name taken from ``names`` by rank."""
    cfg = dict(cfg)
    names = cfg.pop("names", None)
    if names:
        rank = task_rank(env)
        if rank >= len(names):
            raise SystemExit(f"scoop task: rank {rank} but only {len(names)} worker names")
        cfg["name"] = cfg["label"] = names[rank]
    return cfg


class _Then(io.RawIOBase):
    """Serves ``first``, then reads ``fd`` (or blocks forever when fd is None)."""

    def __init__(self, first: bytes, fd: int | None):
        self.first = first
        self.fd = fd

    def readable(self):
        return True

    def readinto(self, buf):
        if self.first:
            n = min(len(buf), len(self.first))
            buf[:n] = self.first[:n]
            self.first = self.first[n:]
            return n
        if self.fd is None:
            threading.Event().wait()
        data = os.read(self.fd, len(buf))
        buf[:len(data)] = data
        return len(data)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--config-file"] and len(argv) == 2:
        with open(argv[1], "rb") as f:
            line = f.readline()
        rest_fd = None
    else:
        line = sys.stdin.buffer.readline()
        rest_fd = 0
    if not line:
        sys.stderr.write("scoop task: expected its configuration on stdin\n")
        raise SystemExit(2)
    cfg = own_config(json.loads(line))
    if rest_fd is None:
        cfg["detached"] = True
    sys.stdin = io.TextIOWrapper(io.BufferedReader(_Then((json.dumps(cfg) + "\n").encode(), rest_fd)))
    import importlib
    importlib.import_module("scoop.worker").main()  # `from .. import worker` finds scoop.worker = None


if __name__ == "__main__":
    main()
