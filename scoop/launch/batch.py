"""Batch-job clusters: workers submitted as jobs (SLURM ``sbatch``; PBS/SGE ``qsub``) that connect
back to a broker on the submitting host -- a notebook or script on a login node.

Why a launcher of its own: the workers start when the scheduler decides, on nodes we cannot reach
(no SSH), with no pipe to us.  So:

- the secret travels in 0600 files in a 0700 directory under the (cluster-shared) home, one per
  worker, fed to the worker's stdin inside the job -- never the script body or a command line;
- workers are ``detached``: stdin ends once the config is read, and they leave when they lose
  the broker instead;
- a job's state (pending in the queue, running, ended) comes from the scheduler and per-worker
  exit markers in the same directory, so the cluster shows queued jobs apart from running workers;
- a small watchdog process outlives us: if the origin is killed (SIGKILL, kernel crash) it
  cancels every job we submitted, so nothing waits in the queue for a broker that is gone;
- with a walltime each worker gets ``retire_at`` (epoch seconds, a margin before the job's end,
  stamped when the job starts): it hands its work back and exits before the scheduler kills it.

Jobs hold ``cpus_per_job`` workers each (one per CPU); scaling up submits jobs, scaling down
retires workers and a job ends with its last worker.
"""
from __future__ import annotations

import abc
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from ..errors import ClusterError
from .base import Handle, Launcher, route_address

__all__ = ["BatchLauncher", "BatchHandle", "parse_walltime", "retire_margin", "job_dir_root"]

PENDING, RUNNING, EXITED = "pending", "running", "exited"
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


def retire_margin(walltime: int) -> int:
    """How long before a job's end its workers stop taking work: enough to finish a running task
    of a few seconds and hand the queued ones back; 10% of short walltimes, at most 2 minutes."""
    return max(10, min(120, walltime // 10))


def job_dir_root() -> str:
    """Where secret-bearing job files live: must be on a filesystem the compute nodes share."""
    return os.environ.get("SCOOP_JOB_DIR") or os.path.join(os.path.expanduser("~"), ".scoop", "jobs")


class _Job:
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
        self.replacement: "_Job | None" = None
        self.handles: list["BatchHandle"] = []


class BatchHandle(Handle):
    """One worker of a batch job; the job's workers share its ``job_id``.  Its node and pid are
    known once the job started it (markers the job writes), its exit status once it ended.

    With ``job_replace`` a worker lives on in a replacement job submitted before its job's
    walltime: the handle then covers both, and stays alive while either runs."""

    separate = False  # kill() ends the whole job: the scheduler cannot end one task of a step

    def __init__(self, launcher: "BatchLauncher", job: _Job, index: int):
        self.launcher = launcher
        self.index = index
        self.jobs = [job]         # the first job, then its replacements
        self.name = job.names[index]
        self.retired = False
        self.killed = False

    @property
    def job(self) -> _Job:
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
        return self.launcher._read_marker(self.job, self.index, "host")

    @property
    def pid(self):
        pid = self.launcher._read_marker(self.job, self.index, "pid")
        return int(pid) if pid and pid.isdigit() else None

    def _code(self, job: _Job):
        code = self.launcher._read_marker(job, self.index, "exit")
        if code is not None:
            if code != "0":
                self.launcher._relay_output(job)  # why it ended, before anyone asks for the tail
            try:
                return int(code)
            except ValueError:
                return 1
        if job.state == EXITED:
            return job.code if job.code is not None else 1
        return None

    def _job_state(self, job: _Job) -> str:
        if self._code(job) is not None:
            return EXITED
        if job.state == PENDING and self.launcher._read_marker(job, self.index, "host"):
            return RUNNING  # started before the scheduler's answer came
        return job.state

    def poll(self):
        for job in self.jobs:
            if self._code(job) is None:
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


class BatchLauncher(Launcher):
    """What every batch system shares; subclasses say how to write, submit, query and cancel jobs."""

    name = ""
    remote = True
    #: workers wait in a queue: a Cluster returns once its jobs are submitted, not once they ran
    queues = True
    submit_cmd = ""
    cancel_cmd = ""

    def __init__(self, options, relay, **kw):
        super().__init__(options, relay, **kw)
        self.cpus_per_job = max(1, int(self._opt("cpus_per_job", 1) or 1))
        self.walltime = parse_walltime(self._opt("walltime"))
        self.path = os.path.abspath(self.cwd or self._opt("path") or os.getcwd())
        self.tag = secrets.token_hex(4)
        self.jobs: list[_Job] = []
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

    def _opt(self, name, default=None):
        value = getattr(self.options, name, default)
        return default if value is None else value

    # ---- interface -----------------------------------------------------------------------------
    def prepare(self, hosts: list[str]) -> None:
        """Checks the batch system answers, picks the broker address the nodes reach, and makes
        the private job directory and the watchdog."""
        if self.dir:
            return  # prepared already (scaling up prepares again: the jobs go to the same queue)
        if not shutil.which(self.submit_cmd):
            raise ClusterError(f"'{self.submit_cmd}' is not on PATH: the {self.name} launcher needs "
                               f"{self.system} client commands on this host")
        self._address = self._opt("external_hostname") or self._pick_address()
        root = job_dir_root()
        os.makedirs(root, mode=0o700, exist_ok=True)
        os.chmod(root, 0o700)
        _sweep_job_dirs(root)
        self.dir = os.path.join(root, f"{socket.gethostname()}-{os.getpid()}-{self.tag}")
        os.mkdir(self.dir, 0o700)
        self._start_watchdog()

    def broker_address(self, host, port: int) -> str:
        if self._address is None:
            self._address = self._opt("external_hostname") or self._pick_address()
        return f"tcp://{self._address}:{port}"

    def bind_host(self) -> str:
        return "0.0.0.0"

    def job_size(self) -> int:
        return self.cpus_per_job

    def start(self, specs: list) -> list[BatchHandle]:
        """Submits ceil(len(specs) / cpus_per_job) jobs; returns at once (jobs may wait in the
        queue: their handles say ``pending``).  A job the scheduler rejects is a ClusterError
        carrying its message, with the jobs submitted so far cancelled."""
        if not self.dir:
            self.prepare([])
        handles: list[BatchHandle] = []
        try:
            for k in range(0, len(specs), self.cpus_per_job):
                handles += self._submit(specs[k:k + self.cpus_per_job])
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
                job.state, job.code = EXITED, self.exit_code("CANCELLED")
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
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---- jobs ------------------------------------------------------------------------------------
    def pending(self) -> list[str]:
        """Ids of jobs still waiting in the queue."""
        return [j.id for j in self.jobs if j.id and j.state == PENDING
                and not any(self._read_marker(j, i, "host") for i in range(len(j.names)))]

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
            started = any(self._read_marker(job, i, "host") for i in range(len(job.names)))
            state = job.state
            if state == PENDING and started:
                state = RUNNING  # started before the scheduler's next answer
            if state == EXITED and not job.error and (job.cancelled or now - (job.ended or now) > ended_for):
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

    def cancel(self, job: _Job) -> None:
        if job.id and job.state != EXITED and not job.cancelled:
            job.cancelled = True
            self._cancel([job.id])

    def _submit(self, specs: list) -> list[BatchHandle]:
        job = self._submit_job([s.name for s in specs], [s.config for s in specs])
        job.handles = [BatchHandle(self, job, i) for i in range(len(specs))]
        return job.handles

    def _submit_job(self, names: list[str], configs: list[dict]) -> _Job:
        with self._lock:
            self._count += 1
            key = f"job{self._count}"
        job = _Job(key, names, configs)
        stem = os.path.join(self.dir, key)
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
        argv = self.submit_argv(job, stem, len(configs), script)
        try:
            proc = subprocess.run(argv, env=self._job_env(), cwd=self.path, capture_output=True, text=True,
                                  timeout=60, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{self.submit_cmd} did not answer within 60 s") from None
        if proc.returncode != 0:
            msg = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}")
            names = ", ".join(job.names)
            raise ClusterError(f"{self.submit_cmd} rejected the job for workers {names}: {msg}")
        job.id = self.parse_job_id(proc.stdout)
        if not job.id:
            raise ClusterError(f"cannot read a job id in {self.submit_cmd}'s answer: {proc.stdout.strip()!r}")
        with self._lock:
            self.jobs.append(job)
        self._tell_watchdog(job.id)
        return job

    def _replace_due(self, job: _Job) -> bool:
        """Whether to submit ``job``'s replacement now: a quarter of the walltime (at most 5 min)
        before its workers retire, so the new workers can wait in the queue meanwhile."""
        if not (self.walltime and self._opt("job_replace", False)) or job.replacement or job.cancelled:
            return False
        if job.state != RUNNING or job.started is None:
            return False
        if all(h.retired or h.killed for h in job.handles):
            return False
        lead = min(300, self.walltime // 4)
        return time.time() >= job.started + self.walltime - retire_margin(self.walltime) - lead

    def _replace(self, job: _Job) -> None:
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
        """The environment jobs are submitted with (sbatch/qsub -V pass it on to the workers):
        the cluster's (PYTHONPATH reaching this scoop), minus what ties a process to us."""
        env = dict(self.env)
        for key in ("SCOOP_PARENT_PID", "SCOOP_ROLE", "SCOOP_SECRET"):
            env.pop(key, None)  # the job's workers are not our children
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _worker_line(self, stem: str, task_var: str) -> str:
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

    def _preamble(self) -> str:
        lines = []
        prolog = self._opt("prolog")
        if prolog:
            lines.append(f". {shlex.quote(os.path.abspath(prolog))}")
        lines.append(f"cd {shlex.quote(self.path)}")
        if self.walltime:
            retire_after = self.walltime - retire_margin(self.walltime)
            lines.append(f"export SCOOP_RETIRE_AT=$(( $(date +%s) + {retire_after} ))")
        return "\n".join(lines) + "\n"

    # ---- state ---------------------------------------------------------------------------------
    def _read_marker(self, job: _Job, index: int, kind: str) -> str | None:
        if not self.dir:
            return None
        try:
            with open(os.path.join(self.dir, f"{job.key}.{index}.{kind}")) as f:
                text = f.read().strip()
            return text or None
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
                state, nodes, *more = states.get(job.id, ("", ""))
                job.sched_state, job.nodes = state, nodes or job.nodes
                job.polled = True
                if state in self.pending_states:
                    job.state = PENDING
                    job.reason = more[0] if more and more[0] not in ("None", "(null)") else ""
                elif state in self.running_states:
                    job.state = RUNNING
                    job.reason = ""
                    if job.started is None:
                        job.started = self._start_time(job)
                else:
                    job.state = EXITED
                    job.reason = ""
                    job.ended = time.time()
                    job.code = self.exit_code(state)
                    self._relay_output(job, final=True)
            for job in live:
                if self._replace_due(job):
                    self._replace(job)
        self._flush_outputs()

    @staticmethod
    def _start_time(job: _Job) -> float:
        """When the job started, as seen by the first poll that finds it running (0.5 s late at
        most: the job stamps its workers' retire time itself, at its start)."""
        return time.time()

    def _flush_outputs(self):
        for job in list(self.jobs):
            if job.state != PENDING:
                self._relay_output(job)

    def _relay_output(self, job: _Job, final: bool = False):
        """Relays what the job printed outside tasks (worker start-up errors, scheduler messages)
        under its workers' names; lines are ``TASK: text`` (srun --label)."""
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
        cmd = [sys.executable, "-m", "scoop.launch.batch", "watchdog", self.cancel_cmd, self.dir]
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

    # ---- per batch system ----------------------------------------------------------------------
    system = ""
    pending_states: frozenset = frozenset()
    running_states: frozenset = frozenset()

    @property
    def live_states(self):
        return self.pending_states | self.running_states

    @abc.abstractmethod
    def script(self, job: _Job, stem: str, workers: int) -> str:
        """The job script (no secret in it)."""

    @abc.abstractmethod
    def submit_argv(self, job: _Job, stem: str, workers: int, script: str) -> list[str]:
        """The submit command line (no secret in it)."""

    @abc.abstractmethod
    def parse_job_id(self, stdout: str) -> str | None: ...

    @abc.abstractmethod
    def _query(self, ids: list[str]) -> dict:
        """{job id: (state, nodes)}, plus ``"__ok__": False`` when the scheduler did not answer."""

    def _ask(self, argv: list[str]) -> str | None:
        """A scheduler command's output, or None when it failed or did not answer in 30 s."""
        try:
            proc = subprocess.run(argv, env=self._job_env(), capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout if proc.returncode == 0 else None

    def _cancel(self, ids: list[str]) -> bool:
        return self._ask([self.cancel_cmd, *ids]) is not None

    def exit_code(self, state: str) -> int:
        return 0 if state in ("COMPLETED", "C", "F") else 1

    def _pick_address(self) -> str:
        return route_address(None)


def _sweep_job_dirs(root: str) -> None:
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
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(os.path.join(root, entry), ignore_errors=True)


def _watchdog(cancel_cmd: str, job_dir: str) -> None:
    """Reads job ids on stdin; at EOF without a ``done`` line (the origin died) cancels them all
    and removes the job directory."""
    ids: list[str] = []
    done = False
    for line in sys.stdin:
        line = line.strip()
        if line == "done":
            done = True
        elif line:
            ids.append(line)
    if done:
        return
    for k in range(0, len(ids), 100):
        subprocess.run([cancel_cmd, *ids[k:k + 100]], capture_output=True, timeout=60)
    shutil.rmtree(job_dir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "watchdog":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        _watchdog(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m scoop.launch.batch watchdog CANCEL_COMMAND JOB_DIR")
