"""One submitted batch job and the worker handles it runs, as the origin sees them.

A job's state comes from two sources: the scheduler (pending, running, ended: polled by the
launcher) and the marker files its workers write in the private job directory (node, pid, exit
status), which arrive first.  The handle combines them so the cluster sees a worker start and
end without waiting for the scheduler's next answer.
"""
from __future__ import annotations

import time

from .base import Handle

__all__ = ["BatchJob", "BatchHandle", "PENDING", "RUNNING", "EXITED"]

PENDING, RUNNING, EXITED = "pending", "running", "exited"


class BatchJob:
    """One submitted job and the workers it runs."""

    def __init__(self, key: str, names: list[str], configs: list[dict]):
        self.key = key            # file stem in the job directory
        self.names = names
        self.configs = configs    # kept for a replacement job (job_replace)
        self.id: str | None = None
        self.state = PENDING      # scheduler view: pending | running | exited
        self.sched_state = "PENDING"
        self.code: int | None = None
        self.nodes = ""
        self.out_pos = 0
        self.cancelled = False
        self.started: float | None = None
        self.submitted = time.time()
        self.ended: float | None = None
        self.polled = False       # the scheduler has answered about it once (its state is not a guess)
        self.reason = ""          # why it waits, as the scheduler says (squeue's %r: Resources, JobHeldUser)
        self.error = ""           # set when its workers failed to start: shown by the views
        self.replaces: str | None = None  # the id of the job it takes over from (job_replace)
        self.replacement: "BatchJob | None" = None
        self.handles: list["BatchHandle"] = []


class BatchHandle(Handle):
    """One worker of a batch job; the job's workers share its ``job_id``.  Its node and pid are
    known once the job started it (markers the job writes), its exit status once it ended.

    With ``job_replace`` a worker lives on in a replacement job submitted before its job's
    walltime: the handle then covers both, and stays alive while either runs.  Without it, a
    worker that left at its walltime reads as running until the other workers of its job left
    too: the job ends as a whole, so the cluster replaces it with whole jobs."""

    separate = False  # kill() ends the whole job: the scheduler cannot end one task of a step

    def __init__(self, launcher, job: BatchJob, index: int):  # launcher: the BatchLauncher above
        self.launcher = launcher
        self.index = index
        self.jobs = [job]         # the first job, then its replacements
        self.name = job.names[index]
        self.retired = False
        self.killed = False

    @property
    def job(self) -> BatchJob:
        """The job the worker runs in now: the newest one that started, else the first."""
        for job in reversed(self.jobs):
            if self._code(job) is None and self._job_state(job) == RUNNING:
                return job
        return next((j for j in self.jobs if self._code(j) is None), self.jobs[-1])

    @property
    def job_id(self):
        return self.job.id

    @property
    def remote(self) -> bool:
        return True  # on a compute node, even before the scheduler says which

    @property
    def host(self):
        """The node the worker runs on, once it started."""
        return self.launcher.read_marker(self.job, self.index, "host")

    @property
    def pid(self):
        pid = self.launcher.read_marker(self.job, self.index, "pid")
        return int(pid) if pid and pid.isdigit() else None

    def _code(self, job: BatchJob):
        code = self.launcher.read_marker(job, self.index, "exit")
        if code is not None:
            if code != "0":
                self.launcher.relay_output(job)  # why it ended, before anyone asks for the tail
            try:
                return int(code)
            except ValueError:
                return 1
        status = self.launcher.job_status(job)  # the job script ended (its prolog failed...)
        if status is not None:
            return status
        if job.state == EXITED:
            return job.code if job.code is not None else 1
        return None

    def _job_state(self, job: BatchJob) -> str:
        if self._code(job) is not None:
            return EXITED
        if job.state == PENDING and self.launcher.read_marker(job, self.index, "host"):
            return RUNNING  # started before the scheduler's answer came
        return job.state

    def _retired_with_job(self, job: BatchJob) -> bool:
        """Whether this worker left at its job's walltime (status 0 past the retire time) while
        other workers of the job still run: then it ends when they do, as one job."""
        if job.state == EXITED or not self.launcher.walltime or job.started is None:
            return False
        if self._code(job) != 0 or time.time() < job.started + self.launcher.retire_after - 1:
            return False
        return any(h is not self and not (h.killed or h.retired) and h._code(job) is None
                   for h in job.handles)

    def poll(self):
        for job in self.jobs:
            if self._code(job) is None or self._retired_with_job(job):
                return None
        return self._code(self.jobs[-1])

    @property
    def state(self) -> str:
        states = {self._job_state(j) for j in self.jobs}
        return RUNNING if RUNNING in states else PENDING if PENDING in states else EXITED

    def kill(self) -> None:
        """Ends this worker's jobs once every worker of a job is killed, retired or gone (the
        scheduler cannot end one task of a job step)."""
        self.killed = True
        for job in self.jobs:
            if all(h.killed or h.retired or h.poll() is not None for h in job.handles):
                self.launcher.cancel(job)

    def __repr__(self):
        return f"<{self.launcher.name} worker {self.name} job {self.job_id} {self.state}>"
