"""``python -m scoop.launch.watchdog CANCEL_COMMAND JOB_DIR``: cancels a batch cluster's jobs
when its origin vanishes without stopping it (SIGKILL, a kernel crash).

It runs in its own session and reads job ids on stdin, one a line, as the origin submits them.
The origin writes ``done`` when it stopped the cluster itself; at the end of stdin without
``done`` (the origin died, and its end of the pipe with it) the watchdog cancels every job it
was told of and removes the job directory, so nothing waits in the queue for a broker that is
gone.  :func:`sweep_job_dirs` removes directories of origins on this host that died anyway.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys

__all__ = ["sweep_job_dirs", "watch"]


def sweep_job_dirs(root: str) -> None:
    """Removes job directories of origins on this host that died without cleaning up."""
    me = socket.gethostname()
    try:
        entries = os.listdir(root)
    except OSError:
        return
    for entry in entries:
        m = re.fullmatch(rf"{re.escape(me)}-(\d+)-[0-9a-f]+", entry)
        if not m:
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(os.path.join(root, entry), ignore_errors=True)


def watch(cancel_cmd: str, job_dir: str, lines=None) -> None:
    """Reads job ids from ``lines`` (stdin); at their end without a ``done`` line cancels them
    all, 100 per command, and removes the job directory."""
    ids: list[str] = []
    done = False
    for line in sys.stdin if lines is None else lines:
        line = line.strip()
        if line == "done":
            done = True
        elif line:
            ids.append(line)
    if done:
        return
    for k in range(0, len(ids), 100):
        try:
            subprocess.run([cancel_cmd, *ids[k:k + 100]], capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            pass
    shutil.rmtree(job_dir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m scoop.launch.watchdog CANCEL_COMMAND JOB_DIR")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    watch(sys.argv[1], sys.argv[2])
