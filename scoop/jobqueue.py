"""A batch cluster's view of its queue: which workers joined, which wait, which failed to start.

Batch launchers (sbatch, qsub) submit jobs that wait in the scheduler's queue.  ``start`` and
``scale`` return as soon as every job is queued -- the scheduler accepted it and its first poll
lists it pending -- or runs with its workers joined, as dask-jobqueue's do: no time is spent
guessing whether a pending job will start soon.  A job the scheduler starts before that poll
(SLURM starts one at submission when nodes are free) is waited for, so one that fails at once is
an error there; one that fails after start returned is an error in :meth:`wait_for_workers` and
the views.  A worker that ends before it ever joined failed to start: its message carries the
job's id and its own output, and is kept on the job for the views.
"""
from __future__ import annotations

import time

from .errors import ClusterError
from .meta import JoinedNames

__all__ = ["QueueView"]


class QueueView:
    """Joins seen on the meta stream, and the launcher's last poll of the scheduler."""

    def __init__(self, launcher, relay, joined: JoinedNames):
        self.launcher = launcher
        self.relay = relay
        self.joined = joined    # names of workers seen in the cluster at least once (the Cluster's)

    def jobs(self) -> list[dict]:
        fn = getattr(self.launcher, "jobs_status", None)
        return fn() if fn is not None else []

    def pending_workers(self) -> int:
        """Workers of jobs still waiting in the queue (walltime replacements not counted)."""
        return sum(len(j["workers"]) for j in self.jobs()
                   if j["state"] == "pending" and not j.get("replaces"))

    def start_failure(self, h, code) -> str:
        """The message for a batch worker that ended before joining; also kept on its job.  What
        the job printed outside its workers (a prolog) is relayed under its first worker: it
        explains the failure of each of them."""
        job = getattr(h, "job", None)
        names = [h.name] + [n for n in (job.names if job is not None else ()) if n != h.name]

        def tail():
            return next((t for t in map(self.relay.tail, names) if t), "")

        self.relay.flush(0.3)
        text = tail()
        # the scheduler writes a job's output file on its own schedule, which can be after the
        # job's exit marker: give the words that explain the failure a moment to arrive
        deadline = time.monotonic() + 2.0
        while not text and time.monotonic() < deadline:
            time.sleep(0.1)
            h.poll()  # a batch handle relays what its job's output file holds by now
            text = tail()
        where = f" on {h.host}" if h.host else ""
        msg = (f"worker {h.name} (job {h.job_id}{where}) exited with status {code} before joining the "
               f"cluster" + (f":\n{text}" if text else ""))
        if job is not None and not job.error:
            job.error = msg
        return msg

    @staticmethod
    def queued(h) -> bool:
        """Whether worker ``h`` waits in the queue: its job was accepted (it has an id) and the
        scheduler's last poll lists it pending, with no worker of it started yet."""
        job = h.job
        return bool(job.id) and job.polled and h.state == "pending"

    def settle(self, handles: list, timeout: float, *, latest, pump, broker_exited, give_up) -> None:
        """Waits until each of ``handles`` either waits in the queue (:meth:`queued`) or has joined; raises
        ClusterError for one that ended first (its job rejected at start, a worker that cannot
        start), after ``give_up(names)`` drops it from the spec -- so a bad job is an error at
        once, and a full queue is not.  ``latest()`` is the last meta snapshot, ``pump(s)``
        waits (serving the origin), ``broker_exited()`` the broker's end, if any."""
        deadline = time.monotonic() + timeout
        next_refresh = 0.0
        while True:
            if time.monotonic() >= next_refresh:
                self.launcher.refresh()
                next_refresh = time.monotonic() + 0.5
            snap = latest()
            if snap:
                self.joined.note("status", snap)
            ended = [(h, h.poll()) for h in handles if not h.retired and h.name not in self.joined]
            ended = [(h, code) for h, code in ended if code is not None]
            if ended:
                h, code = ended[0]
                msg = self.start_failure(h, code)
                give_up([f for f, _ in ended])
                raise ClusterError(msg)
            waiting = [h for h in handles if not h.retired and h.name not in self.joined
                       and not self.queued(h)]
            if not waiting:
                return
            why = broker_exited()
            if why:
                raise ClusterError(why)
            if time.monotonic() > deadline:
                names = ", ".join(h.name for h in waiting)
                raise ClusterError(f"workers {names} of started jobs did not join within {timeout:.0f} s")
            pump(0.05)
