"""The job history as a plain-text table (``%scoop_cluster jobs``): one line per batch job."""
from __future__ import annotations

import time

__all__ = ["job_table"]


def _clock(t) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else "-"


def _workers(names) -> str:
    return f"{names[0]}-{names[-1]}" if len(names) > 1 else (names[0] if names else "-")


def job_table(jobs: list[dict]) -> str:
    """``jobs`` as Cluster.jobs(history=True) gives them; ended jobs show their exit status,
    cancelled ones say so, pending ones why they wait."""
    if not jobs:
        return "no batch jobs in this session"
    rows = [("JOB", "STATE", "WORKERS", "NODES", "SUBMITTED", "STARTED", "ENDED", "EXIT", "NOTE")]
    for j in jobs:
        state = "cancelled" if j.get("cancelled") and j["state"] == "ended" else j["state"]
        code = j.get("exit_status")
        note = j.get("reason") or (f"replaces {j['replaces']}" if j.get("replaces") else "")
        if j.get("error"):
            note = str(j["error"]).splitlines()[0]
        rows.append((str(j["id"]), state, _workers(j.get("workers") or []), j.get("nodes") or "-",
                     _clock(j.get("submitted")), _clock(j.get("started")), _clock(j.get("ended")),
                     "-" if code is None else str(code), note))
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + ("  " + r[-1] if r[-1] else "")
                     for r in rows).rstrip()
