"""Starting broker and worker processes on this machine (their output goes to :mod:`.relay`).

Two launchers: :class:`SpawnLauncher` starts a fresh interpreter per worker (always safe);
:class:`ForkLauncher` forks this process instead (no interpreter start, no imports), which only a
fresh single-threaded process without ZeroMQ contexts may do -- ``python -m scoop``'s launcher
before its cluster runs; once that no longer holds (threads run), it spawns like the other.
"""
from __future__ import annotations

import gc
import os
import shlex
import subprocess
import sys
import threading

from .._procutil import local_worker_limit
from ..errors import ClusterError
from .base import Launcher, ProcessHandle, WorkerSpec, config_line, register, terminate
from .relay import OutputRelay  # noqa: F401 - where callers found it before


def spawn(argv: list[str], config_line: bytes, *, env: dict, cwd: str | None, prolog: str | None = None,
          pipe_output: bool = True) -> subprocess.Popen:
    """Starts a broker or worker whose configuration (with the secret) goes through stdin,
    which then stays open: the child ends when we do."""
    if prolog:
        # stdin from /dev/null: a prolog that reads must not swallow the configuration (the secret)
        argv = ["/bin/sh", "-c", f". {shlex.quote(prolog)} </dev/null && exec "
                + " ".join(shlex.quote(a) for a in argv)]
    env = dict(env, SCOOP_PARENT_PID=str(os.getpid()), SCOOP_ROLE=argv[-1].rsplit(".", 1)[-1])
    if prolog:
        env.pop("SCOOP_PARENT_PID")  # the shell is our child, the worker its child
    out = subprocess.PIPE if pipe_output else None
    # own session: the SIGINT that Ctrl-C or Kernel > Interrupt sends to the origin's process
    # group must not reach the cluster; the origin decides what an interrupt stops
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=out, env=env, cwd=cwd,
                            close_fds=True, start_new_session=True)
    try:
        proc.stdin.write(config_line)
        proc.stdin.flush()
    except BrokenPipeError:
        # it ended before reading its configuration (a prolog that failed, say): its words say why
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        said = (proc.stderr.read().decode("utf-8", "replace").strip() if proc.stderr else "") or "no message"
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f:
                try:
                    f.close()
                except OSError:
                    pass
        what = f" after sourcing the prolog {prolog!r} (--prolog)" if prolog else ""
        raise ClusterError(f"a worker exited at once{what} with status {proc.returncode}: {said}") from None
    return proc


class Forked:
    """A broker or worker forked from this process, with the parts of Popen the launcher uses."""

    def __init__(self, pid, stdin, stdout, stderr):
        self.pid = pid
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout=None):
        import time
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.005)
        return self.returncode

    def kill(self):
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass


def can_fork() -> bool:
    """Forking is safe only from a single-threaded process (no lock can be held mid-fork) that
    has no ZeroMQ context yet (a child would inherit its descriptors); `python -m scoop`'s
    launcher is one before it starts its cluster, a notebook kernel is not."""
    return hasattr(os, "fork") and threading.active_count() == 1 and sys.platform.startswith("linux")


def fork_spawn(module: str, config_line: bytes, *, env: dict, cwd: str | None) -> Forked:
    """Starts ``module.main()`` in a forked child: no interpreter start and no imports, which
    is most of what a local worker costs to start (it would otherwise be ~60 ms of CPU each).
    The child gets what a fresh process would: its own session, stdin/stdout/stderr pipes, the
    environment, and a reseeded ``random`` (forked workers must not share random streams)."""
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    env = dict(env, SCOOP_PARENT_PID=str(os.getpid()), SCOOP_ROLE=module.rsplit(".", 1)[-1])
    _import_once(module)
    gc.freeze()  # the child's collector never walks (and so never copies) the pages it inherits
    pid = os.fork()
    if pid == 0:  # the child: becomes the broker or worker and never returns
        code = 1
        try:
            os.setsid()
            os.dup2(r_in, 0)
            os.dup2(w_out, 1)
            os.dup2(w_err, 2)
            keep = {0, 1, 2}
            for fd in map(int, os.listdir("/proc/self/fd")):
                if fd not in keep:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            import io
            import random
            sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)))
            sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
            sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
            os.environ.clear()
            os.environ.update(env)
            # what a fresh interpreter would take from PYTHONPATH (--pythonpath)
            for path in reversed([p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]):
                if path not in sys.path:
                    sys.path.insert(0, path)
            if cwd:
                os.chdir(cwd)
            random.seed()
            import importlib
            importlib.import_module(module).main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    gc.unfreeze()
    for fd in (r_in, w_out, w_err):
        os.close(fd)
    proc = Forked(pid, os.fdopen(w_in, "wb", buffering=0), os.fdopen(r_out, "rb"), os.fdopen(r_err, "rb"))
    proc.stdin.write(config_line)
    return proc


#: what a worker imports after it starts (its loop) or at its first task (a function shipped by
#: value needs cloudpickle to be unpickled): imported once before forking, the children share
#: these pages instead of each importing them, 256 at once, while the first map waits
_WORKER_IMPORTS = ("scoop.worker", "scoop.executor", "cloudpickle")


def _import_once(module: str) -> None:
    import importlib
    for name in (module,) + (_WORKER_IMPORTS if module == "scoop.worker" else ()):
        if name not in sys.modules:
            importlib.import_module(name)


def start_process(module: str, line: bytes, *, env: dict, cwd: str | None, fork: bool = False,
                  python: str | None = None, prolog: str | None = None):
    """Starts ``python -m module`` here (forked when ``fork`` and safe) with its config line."""
    if fork and not prolog and (python is None or python == sys.executable) and can_fork():
        return fork_spawn(module, line, env=env, cwd=cwd)
    return spawn([python or sys.executable, "-m", module], line, env=env, cwd=cwd, prolog=prolog)


@register
class SpawnLauncher(Launcher):
    """Workers on this machine, each a fresh interpreter (``--launcher local`` from a library or
    a notebook kernel)."""

    name = "spawn"
    fork = False

    def start(self, specs: list[WorkerSpec]) -> list[ProcessHandle]:
        if not specs:
            return []
        # before the first one: a count this host cannot take fails at once, naming the limit
        why = local_worker_limit(len(specs))
        if why:
            raise ClusterError(f"cannot start {len(specs)} local workers: {why}")
        prolog = self.options.prolog
        if prolog:
            prolog = os.path.join(self.cwd or os.getcwd(), os.path.expanduser(prolog))
            if not os.path.isfile(prolog) or not os.access(prolog, os.R_OK):
                raise ClusterError(f"the prolog {self.options.prolog!r} (--prolog) "
                                   f"{'is not readable' if os.path.isfile(prolog) else 'does not exist'}")
        out = []
        for spec in specs:
            try:
                proc = start_process("scoop.worker", config_line(spec.config), env=self.env, cwd=self.cwd,
                                     fork=self.fork, python=self.python, prolog=prolog)
            except OSError as exc:
                raise ClusterError(f"cannot start a worker with the Python interpreter {self.python!r} "
                                   f"in {self.cwd!r}: {exc.strerror}") from None
            self.relay.add(spec.name, proc.stdout, proc.stderr)
            handle = ProcessHandle(spec.name, None, proc)
            self.handles.append(handle)
            out.append(handle)
        return out

    def stop(self, timeout: float = 5.0) -> None:
        procs = [h.proc for h in self.handles]
        for p in procs:
            if p.stdin:
                try:
                    p.stdin.close()  # a worker's cue to end
                except OSError:
                    pass
        terminate(procs, timeout)
        close_pipes(procs)


def close_pipes(procs) -> None:
    """Closes what we read of ended children (their stdout and stderr pipes)."""
    for p in procs:
        for f in (p.stdout, p.stderr):
            if f:
                try:
                    f.close()
                except OSError:
                    pass


@register
class ForkLauncher(SpawnLauncher):
    """Workers forked from this process while that is safe (``python -m scoop`` on one machine)."""

    name = "fork"
    fork = True
