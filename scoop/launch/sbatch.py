"""SLURM batch-job clusters: ``Cluster(slurm=True, n=8, cpus_per_job=4, walltime="01:00:00")``,
``python -m scoop --slurm ...``, ``%scoop_cluster start --slurm ...``.

Each job runs its workers as the tasks of one ``srun`` step (so they count in the job's accounting
and limits); everything else -- secret files, pending/running state, the watchdog, walltimes --
is :mod:`scoop.launch.batch`.
"""
from __future__ import annotations

import re
import shlex
import signal

from .base import register, route_address
from .batch import BatchLauncher
from .srun import node_address


@register
class SbatchLauncher(BatchLauncher):
    """SLURM: each job runs its workers as the tasks of one ``srun`` step."""

    name = "sbatch"
    system = "SLURM"
    submit_cmd = "sbatch"
    cancel_cmd = "scancel"
    pending_states = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED", "REQUEUE_HOLD",
                                "REQUEUE_FED", "SPECIAL_EXIT"})
    running_states = frozenset({"RUNNING", "STAGE_OUT", "SIGNALING"})

    def script(self, job, stem, workers):
        return ("#!/bin/sh\n"
                f"# SCOOP workers {', '.join(job.names)}; configuration in {stem}.N.json (mode 0600)\n"
                + self._preamble()
                + "exec srun --label --input=none --kill-on-bad-exit=0 "
                f"sh -c {shlex.quote(self._worker_line(stem, 'SLURM_PROCID'))}\n")

    def submit_argv(self, job, stem, workers, script):
        argv = ["sbatch", "--parsable", f"--job-name=scoop-{self.tag}", f"--ntasks={workers}",
                "--cpus-per-task=1", f"--output={stem}.out", f"--chdir={self.path}"]
        if self.walltime:
            minutes = -(-self.walltime // 60)  # slurm counts whole minutes
            argv.append(f"--time={minutes}")
        if self._opt("partition"):
            argv.append(f"--partition={self._opt('partition')}")
        if self._opt("account"):
            argv.append(f"--account={self._opt('account')}")
        extra = self._opt("sbatch_arg", []) or []
        argv += [extra] if isinstance(extra, str) else list(extra)
        return argv + [script]

    def parse_job_id(self, stdout):
        m = re.match(r"\s*(\d+)", stdout)
        return m.group(1) if m else None

    def _query(self, ids):
        out = self._ask(["squeue", "-h", "-t", "all", f"--name=scoop-{self.tag}", "-o", "%i|%T|%N"])
        if out is None:
            return {"__ok__": False}
        found = {}
        for line in out.splitlines():
            parts = line.split("|")
            if len(parts) == 3:
                found[parts[0]] = (parts[1], parts[2])
        # a job missing from the listing has been purged: it ended long ago
        return {i: found.get(i, ("COMPLETED", "")) for i in ids}

    def exit_code(self, state):
        return {"COMPLETED": 0, "CANCELLED": -signal.SIGTERM, "TIMEOUT": -signal.SIGKILL}.get(state, 1)

    def _pick_address(self):
        """The local address of the route to the partition's first node."""
        argv = ["sinfo", "-h", "-N", "-o", "%N"]
        if self._opt("partition"):
            argv.append(f"--partition={self._opt('partition')}")
        nodes = (self._ask(argv) or "").split()
        return route_address(node_address(nodes[0], self._job_env()) if nodes else None)
