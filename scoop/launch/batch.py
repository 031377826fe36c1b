"""Batch-job clusters: workers submitted as jobs that connect back to a broker on the submitting
host -- a notebook or script on a login node.  This is what every batch system shares; each one
(:mod:`.sbatch` SLURM, :mod:`.qsub` PBS, :mod:`.gridengine` SGE, :mod:`.lsf` LSF) is a small
class declaring its commands, its directive prefix and how it writes each resource option.

Why a launcher of its own: the workers start when the scheduler decides, on nodes we cannot reach
(no SSH), with no pipe to us.  So:

- the secret travels in 0600 files in a 0700 directory under the (cluster-shared) home, one per
  worker, fed to the worker's stdin inside the job -- never the script body or a command line;
- workers are ``detached``: stdin ends once the config is read, and they leave when they lose
  the broker instead;
- a job's state (pending in the queue, running, ended) comes from the scheduler and from marker
  files the job writes in the same directory (each worker's node, pid and exit status, and the
  job script's own exit status), so the cluster shows queued jobs apart from running workers and
  reports the job's real status and output when it fails;
- a watchdog process (:mod:`.watchdog`) outlives us: if the origin is killed (SIGKILL, kernel
  crash) it cancels every job we submitted, so nothing waits in the queue for a broker that is gone;
- with a walltime each worker gets ``retire_at`` (epoch seconds, a margin before the job's end,
  stamped when the job starts): it hands its work back and exits before the scheduler kills it.

Jobs hold ``cpus_per_job`` workers each (one per CPU); scaling up submits jobs, scaling down
retires workers and a job ends with its last worker.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from typing import ClassVar

from ..errors import ClusterError
from ..options import memory_mb
from .base import Launcher, route_address
from .batchjob import EXITED, PENDING, RUNNING, BatchHandle, BatchJob
from .watchdog import sweep_job_dirs

__all__ = ["BatchLauncher", "BatchHandle", "BatchJob", "parse_walltime", "retire_margin", "job_dir_root",
           "hms"]

_POLL = 0.5  # seconds between scheduler queries


def parse_walltime(text) -> int | None:
    """``"01:00:00"``, ``"90:00"`` (min:s), ``"2-00:00:00"``, ``"45"`` (minutes, as sbatch reads it)
    -> seconds; None for no walltime."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(text).strip())
    if not m:
        raise ClusterError(f"walltime {text!r} is not [days-]hours:minutes:seconds, minutes:seconds "
                           "or minutes")
    days, a, b, c = m.groups()
    days = int(days or 0)
    if c is not None:
        secs = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:
        secs = int(a) * 3600 + int(b) * 60 if days else int(a) * 60 + int(b)
    else:
        secs = int(a) * 3600 if days else int(a) * 60
    secs += days * 86400
    if secs <= 0:
        raise ClusterError(f"walltime {text!r} must be positive")
    return secs


def hms(seconds: int) -> str:
    """Seconds as ``HH:MM:SS`` (hours may pass 99), the form PBS and SGE read."""
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def retire_margin(walltime: int) -> int:
    """How long before a job's end its workers stop taking work: enough to finish a running task
    of a few seconds and hand the queued ones back; 10% of short walltimes, at most 2 minutes."""
    return max(10, min(120, walltime // 10))


def job_dir_root() -> str:
    """Where secret-bearing job files live: must be on a filesystem the compute nodes share."""
    return os.environ.get("SCOOP_JOB_DIR") or os.path.join(os.path.expanduser("~"), ".scoop", "jobs")


class BatchLauncher(Launcher):
    """What every batch system shares.  A batch system declares:

    ``system``, ``submit_cmd`` (+ ``submit_flags``, ``script_on_stdin``), ``cancel_cmd``,
    ``directive`` (``"#SBATCH"``), ``job_id_pattern`` (read in the submit command's answer),
    ``pending_states``/``running_states``/``done_states``, ``resources`` (how each resource
    option is written: a format such as ``"--mem={}M"`` or a callable (launcher, value, workers)
    -> directives; an option missing there is an error naming the system), and three
    methods: :meth:`job_directives` (tasks, output file), :meth:`query_argv` and
    :meth:`parse_query`.  :meth:`start_tasks` (the shell that starts the job's workers) defaults
    to a loop on the job's first node."""

    name = ""
    remote = True
    #: workers wait in a queue: a Cluster returns once its jobs are submitted, not once they ran
    queues = True

    system: ClassVar[str] = ""
    submit_cmd: ClassVar[str] = ""
    submit_flags: ClassVar[tuple] = ()
    script_on_stdin: ClassVar[bool] = False   # LSF reads #BSUB lines only from a script on stdin
    cancel_cmd: ClassVar[str] = ""
    directive: ClassVar[str] = ""
    job_id_pattern: ClassVar[str] = r"^\s*(\d+)"
    #: stderr of a query naming ids the scheduler forgot (they ended): not a failed query
    query_forgot: ClassVar[str] = r"$^"
    pending_states: ClassVar[frozenset] = frozenset()
    running_states: ClassVar[frozenset] = frozenset()
    done_states: ClassVar[frozenset] = frozenset()
    #: state of a job the scheduler no longer lists: it ended (its status comes from the job's marker)
    gone_state: ClassVar[str] = "DONE"
    resources: ClassVar[dict] = {}

    def __init__(self, options, relay, **kw):
        super().__init__(options, relay, **kw)
        self.cpus_per_job = max(1, int(self._opt("cpus_per_job", 1) or 1))
        self.walltime = parse_walltime(self._opt("walltime"))
        self.retire_after = self.walltime - retire_margin(self.walltime) if self.walltime else None
        self.path = os.path.abspath(self.cwd or self._opt("path") or os.getcwd())
        self.tag = secrets.token_hex(4)
        self.job_name = self._opt("job_name") or f"scoop-{self.tag}"
        self.jobs: list[BatchJob] = []
        # the directory is named now so job_script() before start shows the submitted script
        self.job_root = job_dir_root()
        self.dir_path = os.path.join(self.job_root, f"{socket.gethostname()}-{os.getpid()}-{self.tag}")
        self.dir = ""
        self._address: str | None = None
        self._lock = threading.RLock()
        self._stopped = False
        self._wake = threading.Event()
        self._out_lock = threading.Lock()
        self._poller: threading.Thread | None = None
        self._refresh_lock = threading.Lock()
        self._watchdog: subprocess.Popen | None = None
        self._count = 0
        self.header_lines(1)  # an option this batch system cannot write is an error now, not at submit

    def _opt(self, name, default=None):
        value = getattr(self.options, name, default)
        return default if value is None else value

    # ---- what is submitted ---------------------------------------------------------------------
    def resource_values(self) -> dict:
        """The resource options given, in one form for every system (walltime in seconds,
        memory in MiB)."""
        o = self._opt
        values = {"job_name": self.job_name, "walltime": self.walltime,
                  "queue": o("queue") or o("partition"), "account": o("account"),
                  "memory": memory_mb(o("memory")) if o("memory") else None,
                  "gpus": o("gpus"), "gres": o("gres"), "qos": o("qos"), "constraint": o("constraint")}
        return {k: v for k, v in values.items() if v is not None}

    def header_lines(self, workers: int, stem: str = "") -> list[str]:
        """The job's directives: its tasks and output (:meth:`job_directives`), each resource
        option as this system writes it, then ``--job-extra-directive`` lines as given."""
        args = self.job_directives(stem, workers) if stem else []
        for key, value in self.resource_values().items():
            render = self.resources.get(key)
            if render is None:
                flag = "--" + key.replace("_", "-")
                raise ClusterError(f"the {self.system} launcher ({self.name}) has no {flag}: give the "
                                   f"directive yourself with --job-extra-directive")
            args += [render.format(value)] if isinstance(render, str) else render(self, value, workers)
        args += list(self._opt("job_extra_directive", []) or [])
        return [f"{self.directive} {a}" for a in args]

    def script(self, job: BatchJob, stem: str, workers: int) -> str:
        """The job script (no secret in it): directives, then the job's own exit status recorded
        in ``STEM.status`` whatever ends it, the prolog, and the workers' start."""
        q = shlex.quote
        lines = ["#!/bin/sh", *self.header_lines(workers, stem),
                 f"# SCOOP workers {', '.join(job.names)}; configuration in {stem}.N.json (mode 0600)",
                 f"SCOOP_JOB_STEM={q(stem)}",
                 "trap 'echo $? > \"$SCOOP_JOB_STEM.status\"' EXIT"]
        prolog = self._opt("prolog")
        if prolog:
            lines.append(f". {q(os.path.abspath(prolog))}")
        lines.append(f"cd {q(self.path)}")
        local = self._opt("local_directory")
        if local:  # worker scratch; "$TMPDIR"-style variables expand on the node
            d = '"' + local.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`") + '"'
            lines.append(f"mkdir -p {d} && export TMPDIR={d} SCOOP_LOCAL_DIRECTORY={d} || exit 1")
        if self.walltime:
            lines.append(f"export SCOOP_RETIRE_AT=$(( $(date +%s) + {self.retire_after} ))")
        lines.append(self.start_tasks(stem, workers))
        return "\n".join(lines) + "\n"

    def start_tasks(self, stem: str, workers: int) -> str:
        """Shell starting the job's workers: by default all on the job's first node, each line of
        their output prefixed with its index (as ``srun --label`` does)."""
        line = shlex.quote(self.worker_line(stem, "SCOOP_TASK"))
        return (f"for i in $(seq 0 {workers - 1}); do\n"
                f"  SCOOP_TASK=$i sh -c {line} 2>&1 | sed \"s/^/$i: /\" &\n"
                "done\nwait")

    def worker_line(self, stem: str, task_var: str) -> str:
        """Shell for one worker task: stamp its node name and retire time into a private copy of
        its config, run the worker on it (detached: it ends when it loses the broker) and leave
        markers for the origin: node, pid, exit status."""
        q = shlex.quote
        return (f'umask 077; f={q(stem)}.${task_var}; '
                f'sed -e "s/\\"@HOST@\\"/\\"$(hostname)\\"/" '
                f'-e "s/\\"@RETIRE_AT@\\"/${{SCOOP_RETIRE_AT:-null}}/" '
                f'"$f.json" > "$f.run" || exit 1; '
                f'{q(self.python)} -m scoop.launch.task --config-file "$f.run" & '
                f'echo "$!" > "$f.pid"; hostname > "$f.host"; wait "$!"; echo "$?" > "$f.exit"')

    def submit_argv(self, script: str) -> list[str]:
        """The submit command line (``--sbatch-arg`` values go on it); a script read on stdin is
        not on it."""
        extra = self._opt("sbatch_arg", []) or []
        extra = [extra] if isinstance(extra, str) else list(extra)
        return [self.submit_cmd, *self.submit_flags, *extra] + ([] if self.script_on_stdin else [script])

    def stem(self, job: BatchJob) -> str:
        return os.path.join(self.dir or self.dir_path, job.key)

    def job_script(self, names: list[str] | None = None) -> str:
        """The script the next job would be (for ``names``, default w1..wC): byte for byte what
        :meth:`start` writes and submits."""
        names = names or [f"w{i}" for i in range(1, self.cpus_per_job + 1)]
        job = BatchJob(f"job{self._count + 1}", names, [])
        return self.script(job, self.stem(job), len(names))

    def dry_run(self, names: list[str]) -> str:
        """What start would submit for workers ``names``: the command and the first job's script."""
        groups = [names[k:k + self.cpus_per_job] for k in range(0, len(names), self.cpus_per_job)]
        first = BatchJob(f"job{self._count + 1}", groups[0], [])
        script = self.stem(first) + ".sh"
        argv = " ".join(map(shlex.quote, self.submit_argv(script)))
        if self.script_on_stdin:
            argv += f" < {shlex.quote(script)}"
        jobs = "; ".join(f"{g[0]}-{g[-1]}" if len(g) > 1 else g[0] for g in groups)
        count = f"{len(groups)} {self.system} job{'s' if len(groups) != 1 else ''}"
        return f"# {count} ({jobs}), each submitted as: {argv}\n# {script}:\n" + self.job_script(groups[0])

    # ---- interface -----------------------------------------------------------------------------
    def prepare(self, hosts: list[str]) -> None:
        """Checks the batch system answers, picks the broker address the nodes reach, and makes
        the private job directory and the watchdog."""
        if self.dir:
            return  # prepared already (scaling up prepares again: the jobs go to the same queue)
        if not shutil.which(self.submit_cmd, path=self.env.get("PATH")):
            raise ClusterError(f"'{self.submit_cmd}' is not on PATH: the {self.name} launcher needs "
                               f"{self.system} client commands on this host")
        self._address = self.external_hostname() or self._pick_address()
        os.makedirs(self.job_root, mode=0o700, exist_ok=True)
        os.chmod(self.job_root, 0o700)
        sweep_job_dirs(self.job_root)
        os.mkdir(self.dir_path, 0o700)
        self.dir = self.dir_path
        self._start_watchdog()

    def broker_address(self, host, port: int) -> str:
        if self._address is None:
            self._address = self.external_hostname() or self._pick_address()
        return f"tcp://{self._address}:{port}"

    def bind_host(self) -> str:
        return "0.0.0.0"

    def job_size(self) -> int:
        return self.cpus_per_job

    def planned_end(self, code):
        return "end of its walltime" if code == 0 and self.walltime else None

    def start(self, specs: list) -> list[BatchHandle]:
        """Submits ceil(len(specs) / cpus_per_job) jobs; returns at once (jobs may wait in the
        queue: their handles say ``pending``).  A job the scheduler rejects is a ClusterError
        carrying its message, with the jobs submitted so far cancelled."""
        if not self.dir:
            self.prepare([])
        handles: list[BatchHandle] = []
        try:
            for k in range(0, len(specs), self.cpus_per_job):
                part = specs[k:k + self.cpus_per_job]
                job = self._submit_job([s.name for s in part], [s.config for s in part])
                job.handles = [BatchHandle(self, job, i) for i in range(len(part))]
                handles += job.handles
        except BaseException:
            for h in handles:
                self.cancel(h.job)
            raise
        self._ensure_poller()
        return handles

    def stop(self, timeout: float = 5.0) -> None:
        """Cancels every job still queued or running and waits (up to 10 s) until the scheduler
        lists none; removes the job directory; idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._wake.set()
        if self._poller is not None:
            self._poller.join(5)  # no replacement job may be submitted behind our back
        try:
            self.refresh()
        except (OSError, subprocess.SubprocessError):
            pass
        # jobs whose workers all left (the broker was stopped first) end by themselves
        live = [j for j in self.jobs if j.id and j.state != EXITED
                and not all(h.poll() is not None for h in j.handles)]
        for job in live:
            job.cancelled = True  # its "CANCELLED" messages are ours, not news
        cancelled = True
        if live:
            cancelled = self._cancel([j.id for j in live])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                states = self._query([j.id for j in live])
                if states.get("__ok__", True) and not any(states[j.id][0] in self.live_states for j in live):
                    break
                time.sleep(0.2)
        self._flush_outputs()
        for job in self.jobs:
            if job.state != EXITED:
                self._ended(job, self.cancelled_state)
        if self._watchdog is not None:
            try:  # without "done" (a cancel that failed) the watchdog tries once more
                self._watchdog.stdin.write(b"done\n" if cancelled else b"")
                self._watchdog.stdin.close()
            except OSError:
                pass
            try:
                self._watchdog.wait(5)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
        if self.dir:
            # a job that just ended may still have its output written by the scheduler's daemon
            # while the tree is removed: try again until it stays gone
            deadline = time.monotonic() + 3.0
            while True:
                shutil.rmtree(self.dir, ignore_errors=True)
                if not os.path.exists(self.dir) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)

    # ---- jobs ------------------------------------------------------------------------------------
    def _started(self, job: BatchJob) -> bool:
        return any(self.read_marker(job, i, "host") for i in range(len(job.names)))

    def pending(self) -> list[str]:
        """Ids of jobs still waiting in the queue."""
        return [j.id for j in self.jobs if j.id and j.state == PENDING and not self._started(j)]

    def jobs_status(self, ended_for: float = 60.0) -> list[dict]:
        """Our jobs as the views show them, oldest first: id, state (pending | running | ended),
        the workers it brings, when it was submitted, why it waits (the scheduler's reason), the
        nodes it runs on, and for a job whose workers failed to start the error.  Ended jobs stay
        listed for ``ended_for`` seconds (a failed one until it is the oldest of 5 kept)."""
        now = time.time()
        out, failed = [], []
        for job in list(self.jobs):
            if not job.id or job.cancelled:
                continue  # cancelled: by us, its workers scaled away or the cluster stopping
            state = RUNNING if job.state == PENDING and self._started(job) else job.state
            if state == EXITED and not job.error and now - (job.ended or now) > ended_for:
                continue
            live = [h.name for h in job.handles if not (h.retired or h.killed)]
            if state != EXITED and not live:
                continue  # its workers were all retired: it is ending
            entry = {"id": job.id, "state": "ended" if state == EXITED else state,
                     "workers": live if state != EXITED else list(job.names),
                     "submitted": job.submitted, "reason": job.reason if state == PENDING else "",
                     "nodes": job.nodes if state != PENDING else ""}
            if job.replaces:
                entry["replaces"] = job.replaces
            if job.error:
                entry["error"] = job.error
                failed.append(entry)
            out.append(entry)
        for entry in failed[:-5]:
            out.remove(entry)
        return out

    def job_history(self) -> list[dict]:
        """Every job this launcher submitted, oldest first, ended ones included: id, state
        (pending | running | ended), workers, nodes, submitted/started/ended (epoch s or None),
        exit_status (the job script's own, else the scheduler's reading; None while it runs),
        cancelled (by us: scaled away or stopped), reason, error, replaces."""
        out = []
        for job in list(self.jobs):
            if not job.id:
                continue
            state = RUNNING if job.state == PENDING and self._started(job) else job.state
            hosts = [self.read_marker(job, i, "host") for i in range(len(job.names))]
            nodes = job.nodes or ",".join(dict.fromkeys(h for h in hosts if h))
            started = job.started or self._marker_time(job, "0.host")
            out.append({"id": job.id, "state": "ended" if state == EXITED else state,
                        "workers": list(job.names), "nodes": nodes, "submitted": job.submitted,
                        "started": started, "ended": job.ended if state == EXITED else None,
                        "exit_status": job.code if state == EXITED else None,
                        "cancelled": job.cancelled, "reason": job.reason if state == PENDING else "",
                        "error": job.error, "replaces": job.replaces or ""})
        return out

    def cancel(self, job: BatchJob) -> None:
        if job.id and job.state != EXITED and not job.cancelled:
            job.cancelled = True
            self._cancel([job.id])

    def _submit_job(self, names: list[str], configs: list[dict]) -> BatchJob:
        with self._lock:
            self._count += 1
            key = f"job{self._count}"
        job = BatchJob(key, names, configs)
        stem = self.stem(job)
        for i, config in enumerate(configs):
            cfg = dict(config)
            cfg["detached"] = True
            cfg["host"] = "@HOST@"            # stamped inside the job: the node it landed on
            if self.walltime:
                cfg["retire_at"] = "@RETIRE_AT@"
            fd = os.open(f"{stem}.{i}.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(cfg) + "\n")
        script = f"{stem}.sh"
        with open(script, "w") as f:
            f.write(self.script(job, stem, len(configs)))
        try:
            with open(script, "rb") as stdin:
                proc = subprocess.run(self.submit_argv(script), env=self._job_env(), cwd=self.path,
                                      capture_output=True, text=True, timeout=60,
                                      stdin=stdin if self.script_on_stdin else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{self.submit_cmd} did not answer within 60 s") from None
        if proc.returncode != 0:
            msg = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}")
            names = ", ".join(job.names)
            raise ClusterError(f"{self.submit_cmd} rejected the job for workers {names}: {msg}")
        m = re.search(self.job_id_pattern, proc.stdout, re.M)
        if not m:
            raise ClusterError(f"cannot read a job id in {self.submit_cmd}'s answer: {proc.stdout.strip()!r}")
        job.id = m.group(1)
        with self._lock:
            self.jobs.append(job)
        self._tell_watchdog(job.id)
        return job

    def _replace_due(self, job: BatchJob) -> bool:
        """Whether to submit ``job``'s replacement now: a quarter of the walltime (at most 5 min)
        before its workers retire, so the new workers can wait in the queue meanwhile."""
        if not (self.walltime and self._opt("job_replace", False)) or job.replacement or job.cancelled:
            return False
        if job.state != RUNNING or job.started is None:
            return False
        if all(h.retired or h.killed for h in job.handles):
            return False
        lead = min(300, self.walltime // 4)
        return time.time() >= job.started + self.retire_after - lead

    def _replace(self, job: BatchJob) -> None:
        if self._stopped:
            return
        try:
            new = self._submit_job(job.names, job.configs)
        except ClusterError as exc:
            job.replacement = job  # do not retry every poll
            if self.relay is not None:
                self.relay.emit(job.names[0], "stderr", f"could not submit a replacement job: {exc}\n")
            return
        new.handles = job.handles
        new.replaces = job.id
        job.replacement = new
        for h in job.handles:
            h.jobs.append(new)

    def _job_env(self) -> dict:
        """The environment jobs are submitted with (the batch systems pass it on to the workers):
        the cluster's (PYTHONPATH reaching this scoop), minus what ties a process to us."""
        env = dict(self.env)
        for key in ("SCOOP_PARENT_PID", "SCOOP_ROLE", "SCOOP_SECRET"):
            env.pop(key, None)  # the job's workers are not our children
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # ---- state ---------------------------------------------------------------------------------
    def read_marker(self, job: BatchJob, index, kind: str) -> str | None:
        """A marker the job wrote: ``STEM.INDEX.KIND`` (host, pid, exit), or ``STEM.status`` for
        ``index=None``."""
        if not self.dir:
            return None
        name = f"{job.key}.{kind}" if index is None else f"{job.key}.{index}.{kind}"
        try:
            with open(os.path.join(self.dir, name)) as f:
                text = f.read().strip()
            return text or None
        except OSError:
            return None

    def job_status(self, job: BatchJob) -> int | None:
        """The job script's own exit status, once it ended by itself (a prolog's ``exit 3`` is 3)."""
        text = self.read_marker(job, None, "status")
        return int(text) if text and text.lstrip("-").isdigit() else None

    def _marker_time(self, job: BatchJob, suffix: str) -> float | None:
        try:
            return os.stat(os.path.join(self.dir, f"{job.key}.{suffix}")).st_mtime if self.dir else None
        except OSError:
            return None

    def _ensure_poller(self):
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll_loop, name=f"scoop-{self.name}", daemon=True)
            self._poller.start()

    def _poll_loop(self):
        while not self._stopped:
            try:
                self.refresh()
            except (OSError, subprocess.SubprocessError):
                pass  # a scheduler that did not answer this time: the next poll asks again
            self._wake.wait(_POLL)

    def refresh(self) -> None:
        """Asks the scheduler for our jobs' states once; relays new job output."""
        with self._refresh_lock:  # the poller and a Cluster settling its start may both ask
            self._refresh()

    def _refresh(self) -> None:
        live = [j for j in list(self.jobs) if j.id and j.state != EXITED]
        states = self._query([j.id for j in live]) if live else {}
        if states.get("__ok__", True):  # the scheduler did not answer: keep what we knew
            for job in live:
                state, nodes, reason = states.get(job.id, (self.gone_state, "", ""))
                job.sched_state, job.nodes = state, nodes or job.nodes
                job.polled = True
                if state in self.pending_states:
                    job.state = PENDING
                    job.reason = reason if reason not in ("None", "(null)") else ""
                elif state in self.running_states:
                    job.state = RUNNING
                    job.reason = ""
                    if job.started is None:
                        # when the first poll finds it running (0.5 s late at most: the job
                        # stamps its workers' retire time itself, at its start)
                        job.started = time.time()
                else:
                    self._ended(job, state)
                    self._relay_final(job)
            for job in live:
                if self._replace_due(job):
                    self._replace(job)
        self._flush_outputs()

    def _ended(self, job: BatchJob, state: str) -> None:
        job.state, job.reason = EXITED, ""
        job.ended = job.ended or self._marker_time(job, "status") or time.time()
        status = self.job_status(job)
        job.code = status if status is not None else self.exit_code(state)

    def _flush_outputs(self):
        for job in list(self.jobs):
            if job.state != PENDING:
                self.relay_output(job)

    def _relay_final(self, job: BatchJob):
        self.relay_output(job, final=True)

    def relay_output(self, job: BatchJob, final: bool = False):
        """Relays what the job printed outside tasks (worker start-up errors, the prolog, the
        scheduler's messages) under its workers' names; lines are ``TASK: text``."""
        if self.relay is None or not self.dir or job.cancelled:
            return
        path = os.path.join(self.dir, f"{job.key}.out")
        with self._out_lock:  # the poller and a handle's poll() may both relay
            try:
                with open(path, "rb") as f:
                    f.seek(job.out_pos)
                    data = f.read()
            except OSError:
                return
            cut = len(data) if final else data.rfind(b"\n") + 1
            if cut <= 0:
                return
            job.out_pos += cut
        for line in data[:cut].decode("utf-8", "replace").splitlines():
            m = re.match(r"^\s*(\d+): ?(.*)$", line)
            index, text = (int(m.group(1)), m.group(2)) if m else (0, line)
            name = job.names[index] if index < len(job.names) else job.names[0]
            try:  # the job's output is what workers print outside tasks: start-up errors mostly
                self.relay.emit(name, "stderr", text + "\n")
            except Exception:
                pass

    # ---- watchdog ------------------------------------------------------------------------------
    def _start_watchdog(self):
        """A process in its own session that cancels our jobs when we vanish without stop()."""
        cmd = [sys.executable, "-m", "scoop.launch.watchdog", self.cancel_cmd, self.dir]
        self._watchdog = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, env=self._job_env(),
                                          start_new_session=True, close_fds=True)

    def _tell_watchdog(self, job_id: str):
        if self._watchdog is not None and self._watchdog.poll() is None:
            try:
                self._watchdog.stdin.write(f"{job_id}\n".encode())
                self._watchdog.stdin.flush()
            except OSError:
                pass

    # ---- the scheduler's answers ---------------------------------------------------------------
    cancelled_state: ClassVar[str] = "CANCELLED"

    @property
    def live_states(self):
        return self.pending_states | self.running_states

    def job_directives(self, stem: str, workers: int) -> list[str]:  # pragma: no cover - interface
        """Directives every job has: its task count, its output file ``STEM.out``."""
        raise NotImplementedError

    def query_argv(self, ids: list[str]) -> list[str]:  # pragma: no cover - interface
        raise NotImplementedError

    def parse_query(self, out: str, ids: list[str]) -> dict:  # pragma: no cover - interface
        """{job id: (state, nodes, reason it waits)} for the ids the scheduler lists."""
        raise NotImplementedError

    def _query(self, ids: list[str]) -> dict:
        """{job id: (state, nodes, reason)}, ``gone_state`` for a job no longer listed; or
        ``{"__ok__": False}`` when the scheduler did not answer."""
        out = self._ask(self.query_argv(ids), forgot=self.query_forgot)
        if out is None:
            return {"__ok__": False}
        found = self.parse_query(out, ids)
        return {i: found.get(i, (self.gone_state, "", "")) for i in ids}

    def _ask(self, argv: list[str], forgot: str = r"$^") -> str | None:
        """A scheduler command's output, or None when it failed (other than by naming jobs it
        forgot, matched by ``forgot``) or did not answer in 30 s."""
        try:
            proc = subprocess.run(argv, env=self._job_env(), capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        if proc.returncode == 0 or re.search(forgot, proc.stderr):
            return proc.stdout
        return None

    def _cancel(self, ids: list[str]) -> bool:
        return self._ask([self.cancel_cmd, *ids]) is not None

    def exit_code(self, state: str) -> int:
        """The exit status a job ended in ``state`` gets when it left no status of its own."""
        return 0 if state in self.done_states or state == self.gone_state else 1

    def _pick_address(self) -> str:
        return route_address(None)
