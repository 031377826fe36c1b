"""SLURM batch-job clusters: ``Cluster(slurm=True, n=8, cpus_per_job=4, walltime="01:00:00")``,
``python -m scoop --slurm ...``, ``%scoop_cluster start --slurm ...``.

Each job runs its workers as the tasks of one ``srun`` step (so they count in the job's accounting
and limits); everything else is :mod:`scoop.launch.batch`.
"""
from __future__ import annotations

import shlex
import signal

from .base import register, route_address
from .batch import BatchLauncher
from .srun import node_address


@register
class SbatchLauncher(BatchLauncher):
    """SLURM: ``sbatch``/``squeue``/``scancel``, ``#SBATCH`` directives, workers as srun tasks."""

    name = "sbatch"
    system = "SLURM"
    submit_cmd, submit_flags, cancel_cmd = "sbatch", ("--parsable",), "scancel"
    directive = "#SBATCH"
    job_id_pattern = r"^\s*(\d+)"  # --parsable: "ID" or "ID;cluster"
    pending_states = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED", "REQUEUE_HOLD",
                                "REQUEUE_FED", "SPECIAL_EXIT"})
    running_states = frozenset({"RUNNING", "STAGE_OUT", "SIGNALING"})
    done_states = frozenset({"COMPLETED"})
    gone_state = "COMPLETED"  # purged from the controller: it ended a while ago
    resources = {
        "job_name": "--job-name={}",
        "walltime": lambda self, s, _: [f"--time={-(-s // 60)}"],  # whole minutes
        "queue": "--partition={}",
        "account": "--account={}",
        "memory": "--mem={}M",
        "gpus": "--gpus={}",
        "gres": "--gres={}",
        "qos": "--qos={}",
        "constraint": "--constraint={}",
    }

    def job_directives(self, stem, workers):
        return [f"--ntasks={workers}", "--cpus-per-task=1", f"--output={stem}.out", f"--chdir={self.path}"]

    def start_tasks(self, stem, workers):
        return ("srun --label --input=none --kill-on-bad-exit=0 "
                f"sh -c {shlex.quote(self.worker_line(stem, 'SLURM_PROCID'))}")

    def query_argv(self, ids):
        return ["squeue", "-h", "-t", "all", f"--name={self.job_name}", "-o", "%i|%T|%N|%r"]

    def parse_query(self, out, ids):
        found = {}
        for line in out.splitlines():
            parts = line.split("|", 3)
            if len(parts) == 4:
                found[parts[0]] = (parts[1], parts[2], parts[3])  # state, nodes, reason it waits
        return found

    def exit_code(self, state):
        return {"COMPLETED": 0, "CANCELLED": -signal.SIGTERM, "TIMEOUT": -signal.SIGKILL}.get(state, 1)

    def _pick_address(self):
        """The local address of the route to the partition's first node."""
        argv = ["sinfo", "-h", "-N", "-o", "%N"]
        if self._opt("partition"):
            argv.append(f"--partition={self._opt('partition')}")
        nodes = (self._ask(argv) or "").split()
        return route_address(node_address(nodes[0], self._job_env()) if nodes else None)
