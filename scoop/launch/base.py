"""What every way of starting workers provides: the Launcher interface and its registry.

A :class:`Cluster <scoop.cluster.Cluster>` decides *which* workers it wants (a list of
:class:`WorkerSpec`); a launcher only knows *how* to start them on its kind of host (a fork or a
fresh interpreter here, an SSH channel, a SLURM job step, a PBS or SGE task, a batch job) and
hands back one :class:`Handle` per worker to watch and end it.  Launchers never decide how many
workers run or where; they are chosen by name from :data:`LAUNCHERS`.
"""
from __future__ import annotations

import abc
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from ..errors import ClusterError

if TYPE_CHECKING:  # pragma: no cover
    from ..options import ClusterOptions
    from .relay import OutputRelay

__all__ = ["WorkerSpec", "Handle", "ProcessHandle", "Launcher", "AllocationLauncher", "LAUNCHERS", "register",
           "launcher_class", "config_line", "route_address"]


@dataclass
class WorkerSpec:
    """One worker the cluster wants.  ``config`` is the JSON line the worker reads on stdin (it
    holds the secret: it never goes on a command line, in the environment or in a file others
    can read)."""
    name: str
    host: str | None
    config: dict = field(default_factory=dict, repr=False)


def config_line(config: dict) -> bytes:
    return (json.dumps(config) + "\n").encode()


class Handle:
    """One started worker (a batch job's workers share its ``job_id``)."""

    def __init__(self, name: str, host: str | None, pid: int | None = None, job_id: str | None = None):
        self.name = name
        self.host = host
        self.pid = pid
        self.job_id = job_id
        self.retired = False  # set by the Cluster when it retires or gives up on this worker

    #: whether poll() and kill() concern this worker alone (not so for one task of a job step)
    separate: ClassVar[bool] = True

    def poll(self) -> int | None:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def state(self) -> str:
        return "running" if self.poll() is None else "exited"

    def kill(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def label(self) -> str:  # the name under its former title
        return self.name

    @property
    def remote(self) -> bool:
        """Whether the worker runs elsewhere than this machine (its host is named)."""
        return self.host is not None

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} on {self.host or 'localhost'} {self.state}>"


class ProcessHandle(Handle):
    """A worker that is one process we hold (a Popen, a fork, an SSH channel, a qrsh)."""

    def __init__(self, name, host, proc, job_id=None):
        super().__init__(name, host, getattr(proc, "pid", None), job_id)
        self.proc = proc

    def poll(self):
        return self.proc.poll()

    def kill(self):
        try:
            self.proc.kill()
        except Exception:
            pass


class Launcher(abc.ABC):
    """Starts workers of one kind; :meth:`stop` ends everything it started."""

    name: ClassVar[str]
    #: whether workers of this launcher run on other machines (the broker then listens on every
    #: interface, and workers get an address they can reach)
    remote: ClassVar[bool] = False
    #: whether workers go through the batch system even on this node (srun, pbsdsh, qrsh)
    in_allocation: ClassVar[bool] = False

    def __init__(self, options: "ClusterOptions", relay: "OutputRelay", *, env: dict | None = None,
                 cwd: str | None = None, python: str | None = None):
        self.options = options
        self.relay = relay
        self.env = dict(env if env is not None else os.environ)
        self.cwd = cwd
        self.python = python or options.python or sys.executable
        self.handles: list[Handle] = []

    @classmethod
    def in_allocation_env(cls, env) -> bool:
        """Whether ``env`` is inside an allocation this launcher can start workers in."""
        return False

    def prepare(self, hosts: list[str]) -> None:  # noqa: B027 - most launchers have nothing to prepare
        """Connects, checks interpreters; raises ClusterError naming the host and the reason."""

    def broker_address(self, host: str | None, port: int) -> str:
        return f"tcp://127.0.0.1:{port}"

    def planned_end(self, code: int | None) -> str | None:
        """Why a worker that exited with ``code`` on its own ended as planned, or None for a
        failure.  Only batch workers have a planned end (their walltime)."""
        return None

    def job_size(self) -> int:
        """Workers one start brings at most (a batch job's workers): adaptive scaling adds and
        removes whole jobs."""
        return 1

    def external_hostname(self) -> str | None:
        """The address remote workers are told to reach the broker at, when the user gave one."""
        return self.options.external_hostname

    def bind_host(self) -> str:
        return "0.0.0.0" if self.remote else "127.0.0.1"

    @abc.abstractmethod
    def start(self, specs: list[WorkerSpec]) -> list[Handle]:
        """Starts these workers (all in one step where the launcher can) and returns their handles."""

    def stop(self, timeout: float = 5.0) -> None:
        """Ends every process or job this launcher started; idempotent."""
        for h in self.handles:
            h.kill()

    def worker_argv(self) -> list[str]:
        return [self.python, "-m", "scoop.worker"]


LAUNCHERS: dict[str, type[Launcher]] = {}

#: where each launcher lives, imported on first use (SSH pulls in paramiko, which a local
#: cluster should not pay for)
MODULES = {"fork": "local", "spawn": "local", "ssh": "ssh", "srun": "srun", "pbsdsh": "pbs",
           "qrsh": "sge", "blaunch": "blaunch", "sbatch": "sbatch", "qsub": "qsub", "sge": "gridengine",
           "lsf": "lsf"}


def register(cls: type[Launcher]) -> type[Launcher]:
    LAUNCHERS[cls.name] = cls
    return cls


def launcher_class(name: str) -> type[Launcher]:
    """The launcher registered as ``name``, importing its module if needed."""
    if name not in LAUNCHERS and name in MODULES:
        import importlib
        try:
            importlib.import_module(f"{__package__}.{MODULES[name]}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{MODULES[name]}":
                raise
    if name not in LAUNCHERS:
        raise ClusterError(f"launcher {name!r} is not available (known: {', '.join(sorted(MODULES))})")
    return LAUNCHERS[name]


class AllocationLauncher(Launcher):
    """Starts workers with the batch system's own launcher inside an allocation (srun, pbsdsh,
    qrsh, blaunch): one check that we are in one and that its command is here, and the broker address the
    nodes reach."""

    remote = True
    in_allocation = True
    program: ClassVar[str]
    #: the variable the batch system sets inside an allocation, and what to call that allocation
    allocation_var: ClassVar[str]
    allocation: ClassVar[str]
    hint: ClassVar[str] = ""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._address = None

    @classmethod
    def in_allocation_env(cls, env) -> bool:
        return bool(env.get(cls.allocation_var))

    def prepare(self, hosts):
        if not shutil.which(self.program):
            raise ClusterError(f"launcher {self.name}: {self.program!r} is not on PATH")
        if not self.env.get(self.allocation_var):
            raise ClusterError(f"launcher {self.name} runs workers inside {self.allocation}, and this is "
                               f"not one (no {self.allocation_var}){self.hint}")
        self._address = self.external_hostname() or route_address(
            self.reachable(next((h for h in hosts if h), None)))

    def reachable(self, host: str | None) -> str | None:
        """The name or address of ``host`` to route to (the batch system may know it better)."""
        return host

    def broker_address(self, host, port):
        if self._address is None:
            self._address = self.external_hostname() or route_address(self.reachable(host))
        return f"tcp://{self._address}:{port}"

    def run_program(self, argv: list[str], stdin: bytes | None = None, env: dict | None = None):
        """Runs the batch system's launcher command in its own session, its output piped (and
        ``stdin`` written to it); a command that cannot run is named in the error."""
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or self.env,
                                    cwd=self.cwd, close_fds=True, start_new_session=True)
        except OSError as exc:
            raise ClusterError(f"launcher {self.name}: cannot run {self.program!r}: {exc.strerror}") from None
        if stdin is not None:
            proc.stdin.write(stdin)
            proc.stdin.flush()
        return proc


def route_address(target: str | None) -> str:
    """This machine's address on the route to ``target`` (a node name or an address), found
    without sending anything: a UDP socket's connect only asks the kernel for a route.  Node
    names that do not resolve here fall back to the default route, then to the host name."""
    candidates = [target] if target else []
    candidates.append("192.0.2.1")  # TEST-NET-1: never answers, but has a route when a default exists
    for dest in candidates:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((dest, 9))
                addr = s.getsockname()[0]
            if addr and not addr.startswith("0."):
                return addr
        except OSError:
            continue
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def terminate(procs, timeout: float) -> None:
    """Waits for processes until the deadline, then kills the ones left."""
    import time
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            try:
                p.wait(2)
            except subprocess.TimeoutExpired:
                pass
