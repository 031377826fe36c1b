"""Run inside a batch job after `python -m scoop`: waits up to 15 s for the job's workers to end
and prints how many are left.  argv[1] names the variable holding the job's id (JOB_ID, LSB_JOBID)."""
import os
import sys
import time

import psutil

VAR = sys.argv[1]


def left():
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            mine = p.environ().get(VAR) == os.environ[VAR]
            if mine and "scoop.worker" in " ".join(p.info["cmdline"] or []):
                out.append(p.pid)
        except psutil.Error:
            pass
    return out


t0 = time.monotonic()
while left() and time.monotonic() - t0 < 15:
    time.sleep(0.1)
print("LEFT", len(left()), "after %.1f s" % (time.monotonic() - t0))
