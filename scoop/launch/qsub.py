"""PBS/Torque and SGE batch-job clusters (``--launcher qsub``).

UNTESTED: there is no PBS or SGE test cluster here; written from the schedulers' documentation.
Each job starts its ``cpus_per_job`` workers on the job's first node from the job script itself
(``nodes=1:ppn=K`` on PBS, ``-pe smp K`` on SGE); the rest is :mod:`scoop.launch.batch`.
"""
from __future__ import annotations

import re
import shlex

from .base import register
from .batch import BatchLauncher


@register
class QsubLauncher(BatchLauncher):
    """PBS/Torque (and SGE with ``flavour="sge"``): one job per ``cpus_per_job`` workers, all on the
    job's first node, started by the job script itself.  UNTESTED: no PBS or SGE test cluster here;
    written from the schedulers' documentation."""

    name = "qsub"
    system = "PBS/SGE"
    submit_cmd = "qsub"
    cancel_cmd = "qdel"
    pending_states = frozenset({"Q", "H", "W", "T", "qw", "hqw", "hRwq", "t"})
    running_states = frozenset({"R", "E", "r", "Rr", "Rt"})

    def __init__(self, options, relay, flavour: str | None = None, **kw):
        super().__init__(options, relay, **kw)
        self.flavour = flavour or ("sge" if self.env.get("SGE_ROOT") else "pbs")

    def script(self, job, stem, workers):
        body = ["#!/bin/sh",
                f"# SCOOP workers {', '.join(job.names)} (configuration in {stem}.N.json, mode 0600)"]
        body.append(self._preamble().rstrip("\n"))
        body.append(f"for i in $(seq 0 {workers - 1}); do")
        line = shlex.quote(self._worker_line(stem, "SCOOP_TASK"))
        body.append(f"  SCOOP_TASK=$i sh -c {line} 2>&1 | sed \"s/^/$i: /\" &")
        body.append("done")
        body.append("wait")
        return "\n".join(body) + "\n"

    def submit_argv(self, job, stem, workers, script):
        argv = ["qsub", "-N", f"scoop-{self.tag}", "-o", f"{stem}.out",
                "-j", "oe" if self.flavour == "pbs" else "y", "-V"]
        hms = None
        if self.walltime:
            w = self.walltime
            hms = f"{w // 3600:02d}:{w % 3600 // 60:02d}:{w % 60:02d}"
        if self.flavour == "sge":
            argv += ["-cwd", "-pe", "smp", str(workers), "-S", "/bin/sh"]
            if hms:
                argv += ["-l", f"h_rt={hms}"]
        else:
            argv += ["-l", f"nodes=1:ppn={workers}"]
            if hms:
                argv += ["-l", f"walltime={hms}"]
        queue = self._opt("queue") or self._opt("partition")
        if queue:
            argv += ["-q", queue]
        if self._opt("account"):
            argv += ["-A", self._opt("account")]
        extra = self._opt("sbatch_arg", []) or []
        argv += [extra] if isinstance(extra, str) else list(extra)
        return argv + [script]

    def parse_job_id(self, stdout):
        text = stdout.strip()
        m = re.search(r"Your job (\d+)", text)  # SGE
        if m:
            return m.group(1)
        return text.split()[0] if text else None  # PBS: 123.server

    def _query(self, ids):
        out = self._ask(["qstat"])
        if out is None:
            return {"__ok__": False}
        found = {}
        for line in out.splitlines():
            parts = line.split()
            if not parts:
                continue
            jid = parts[0]
            for i in ids:
                if jid == i or jid.split(".")[0] == i.split(".")[0]:
                    if self.flavour == "sge":
                        state = parts[4] if len(parts) > 4 else ""
                    else:
                        state = parts[-2] if len(parts) > 2 else ""
                    found[i] = (state, "")
        return {i: found.get(i, ("C", "")) for i in ids}
