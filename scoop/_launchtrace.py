"""``SCOOP_LAUNCH_TRACE=FILE``: each process of a launch appends its milestones to FILE, one line
each, ``<unix time> <pid> <event> [<where>]``, so the time from ``python -m scoop`` to all
workers joined can be laid out as a timeline (bench/many_hosts.py prints one).

Why a file and wall-clock time: the launcher, the SSH agents and the workers are different
processes (on test hosts sharing this machine's clock and filesystem); appends of one short
line with ``O_APPEND`` do not interleave.  Without the variable every call is a no-op.
"""
from __future__ import annotations

import os
import time

VARIABLE = "SCOOP_LAUNCH_TRACE"


def mark(event: str, where: str = "") -> None:
    """Appends one milestone, when the variable names a file (it is read at each call: a forked
    worker has the environment its launcher gave it)."""
    path = os.environ.get(VARIABLE)
    if not path:
        return
    line = f"{time.time():.4f} {os.getpid()} {event} {where}".rstrip() + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:
        pass  # a trace must never change what it traces
