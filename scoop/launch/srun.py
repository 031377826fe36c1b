"""Workers inside a SLURM allocation, as job steps started with ``srun``.

Workers started this way run inside the job: they count in its accounting and limits, and no
SSH to the compute nodes is needed (many sites forbid it).  Each :meth:`SrunLauncher.start` runs
one ``srun`` step per node it places workers on, with as many tasks as workers there; srun sends
its stdin to every task, so the config line (with the secret) travels as with every other
launcher, and each task takes its own worker name by its rank (``scoop.launch.task``).  Closing
srun's stdin ends the workers; ending srun ends the step.

Steps run with ``--overlap`` (a later step, from ``scale()``, must not wait for the CPUs or
memory the first one holds: the cluster itself keeps count of the slots) and one CPU per task
(a worker runs one task at a time; SLURM_CPUS_PER_TASK of the job sets how many workers a node
gets, see :mod:`scoop.launch.placement`).
"""
from __future__ import annotations

import os
import re
import subprocess
import threading

from .base import (
    AllocationLauncher,
    Handle,
    WorkerSpec,
    config_line,
    register,
    terminate,
)

_LABELLED = re.compile(r"^\s*(\d+): ?(.*)$", re.S)
# "srun: error: node1: task 1: Exited with exit code 3", "... tasks 0-1,3: Killed"
_TASK_ENDED = re.compile(r"^srun: error: \S+: tasks? ([\d,\-]+): (.*)$")


def task_numbers(text: str) -> list[int]:
    """``"0-2,5"`` -> ``[0, 1, 2, 5]``."""
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit() and (not hi or hi.isdigit()):
            out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def ended_tasks(line: str) -> tuple[list[int], int] | None:
    """The tasks an srun error line reports as ended, with their status (-1: a signal)."""
    m = _TASK_ENDED.match(line.strip())
    if not m:
        return None
    code = re.search(r"exit code (\d+)", m.group(2))
    return task_numbers(m.group(1)), int(code.group(1)) if code else -1


class StepHandle(Handle):
    """A worker that is one task of a job step: alive while its step runs, unless srun reported
    that this task ended badly (its status is then known; a task that ended well is not
    reported by srun, which is why the step is still waited for as a whole)."""

    separate = False

    def __init__(self, name, host, step, job_id):
        super().__init__(name, host, None, job_id)
        self.step = step
        self.reported: int | None = None

    def poll(self):
        return self.reported if self.reported is not None else self.step.poll()

    def kill(self):
        # one task of a step cannot be ended alone; the runtime retires it, stop() ends the step
        pass


@register
class SrunLauncher(AllocationLauncher):
    name = "srun"
    program = "srun"
    allocation_var = "SLURM_JOB_ID"
    allocation = "a SLURM allocation"
    hint = ": run under salloc or sbatch, or use --slurm"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.steps: list[subprocess.Popen] = []
        self._readers: list[threading.Thread] = []

    def reachable(self, host):
        return node_address(host, self.env)  # node names may not resolve here: SLURM's NodeAddr

    def step_argv(self, host: str | None, ntasks: int) -> list[str]:
        argv = [self.program, "--nodes=1", f"--ntasks={ntasks}", "--cpus-per-task=1", "--overlap",
                "--label", "--kill-on-bad-exit=0", "--job-name=scoop-workers"]
        if host:
            argv.append(f"--nodelist={host}")
        if self.options.oversubscribe:
            argv.append("--overcommit")
        prolog = self.options.prolog
        task = [self.python, "-m", "scoop.launch.task"]
        if prolog:
            import shlex
            task = ["/bin/sh", "-c", f". {shlex.quote(prolog)} </dev/null && exec "
                    + " ".join(shlex.quote(a) for a in task)]
        return argv + task

    def start(self, specs: list[WorkerSpec]) -> list[Handle]:
        by_host: dict = {}
        for spec in specs:
            by_host.setdefault(spec.host, []).append(spec)
        handles = []
        for host, group in by_host.items():
            config = dict(group[0].config, names=[s.name for s in group])
            config.pop("name", None)
            config.pop("label", None)
            env = dict(self.env)
            env.pop("SCOOP_PARENT_PID", None)  # a task's parent is slurmstepd, not us
            step = self.run_program(self.step_argv(host, len(group)), config_line(config), env)
            self.steps.append(step)
            job = self.env.get("SLURM_JOB_ID")
            tasks = [StepHandle(spec.name, host, step, job) for spec in group]
            for stream, pipe in (("stdout", step.stdout), ("stderr", step.stderr)):
                t = threading.Thread(target=self._relay, args=(pipe, stream, tasks, host), daemon=True,
                                     name=f"scoop-srun-{stream}")
                t.start()
                self._readers.append(t)
            self.handles += tasks
            handles += tasks
        return handles

    def _relay(self, pipe, stream, tasks, host):
        """srun's output, labelled by task number, back to each worker's name; srun's reports of
        tasks that ended badly mark those workers ended (the supervisor replaces them)."""
        fallback = f"srun@{host}" if host else "srun"
        names = [t.name for t in tasks]
        for raw in iter(pipe.readline, b""):
            text = raw.decode("utf-8", "replace")
            m = _LABELLED.match(text)
            if m and int(m.group(1)) < len(names):
                self.relay.emit(names[int(m.group(1))], stream, m.group(2))
                continue
            ended = ended_tasks(text) if stream == "stderr" else None
            if ended:
                for k in ended[0]:
                    if k < len(tasks):
                        tasks[k].reported = ended[1]
                self.relay.emit(fallback, stream, text)
            else:
                # srun's own messages concern the whole step: printed once, kept in the tail of
                # every worker of the step so that a step that failed is explained
                self.relay.emit(fallback, stream, text)
                if stream == "stderr":
                    for name in names:
                        self.relay.note(name, text)
        pipe.close()

    def stop(self, timeout: float = 5.0):
        for step in self.steps:
            try:
                step.stdin.close()  # every task sees its stdin end and leaves
            except OSError:
                pass
        terminate_step(self.steps, timeout)
        for t in self._readers:
            t.join(1)


def terminate_step(steps, timeout):
    """Waits for steps to end; srun ends a step on SIGTERM (tasks get SIGTERM, then SIGKILL)."""
    import time
    deadline = time.monotonic() + timeout
    for step in steps:
        try:
            step.wait(max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            step.terminate()
    terminate(steps, 5.0)


def node_address(node: str | None, env=None) -> str | None:
    """Where ``node`` is: its name if it resolves here, else its NodeAddr as SLURM knows it
    (compute node names often do not resolve on a login node)."""
    import socket
    if not node:
        return None
    try:
        socket.getaddrinfo(node, None)
        return node
    except OSError:
        pass
    try:
        out = subprocess.run(["scontrol", "-o", "show", "node", node], env=env, capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return node
    m = re.search(r"\bNodeAddr=(\S+)", out)
    return m.group(1) if m else node


def slurm_job(env=None) -> str | None:
    env = os.environ if env is None else env
    return env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
