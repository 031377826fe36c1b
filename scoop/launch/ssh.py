"""Workers on remote hosts over SSH: the launcher, and :class:`RemoteHost` (a connection that
starts programs and opens tunnels).

The parts, one concern each: the connection (config, agent, ProxyJump, host keys:
:mod:`.ssh_connection`), a program running on a host (:mod:`.ssh_process`) and the tunnels
(:mod:`.ssh_tunnel`).  One connection per host carries every worker started there, and one
agent on it (:mod:`.ssh_agent`) forks them.

Why the agent starts as soon as its host is connected, before the broker: its interpreter start
and imports (~0.1 s of CPU on each host, all hosts at once) then overlap the other connects and
the broker's start, and its ``ready`` line is the check of the host's Python, instead of a
session of its own per host.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

from .._launchtrace import VARIABLE as TRACE_VARIABLE
from .._launchtrace import mark
from ..errors import ClusterError
from . import ssh_process
from .base import Launcher, ProcessHandle, register
from .local import SpawnLauncher
from .ssh_connection import SSHConnection, SSHError
from .ssh_process import REMOTE_KILL_GRACE, REMOTE_TERM_GRACE, OutputCallback, RemoteProcess, remote_command
from .ssh_tunnel import Tunnels

__all__ = [
    "SSHError",
    "RemoteHost",
    "RemoteProcess",
    "connect_hosts",
    "remote_command",
    "REMOTE_TERM_GRACE",
    "REMOTE_KILL_GRACE",
    "SSHLauncher",
]


class RemoteHost(SSHConnection):
    """One SSH connection to a host, used to start processes on it and to tunnel to us.

    ``host`` may be ``[user@]name`` where ``name`` is an alias from ``~/.ssh/config`` (read at
    :meth:`connect` time, relative to ``HOME``) or ``config_path``.
    """

    def __init__(self, host: str, **kw):
        super().__init__(host, **kw)
        self.procs: list[RemoteProcess] = []
        self.tunnels = Tunnels(self)

    def start(self, argv: list[str], *, stdin_data: bytes = b"", cwd: Optional[str] = None,
              env: Optional[dict] = None, prolog: Optional[str] = None,
              on_output: Optional[OutputCallback] = None) -> RemoteProcess:
        """Runs ``argv`` on the host (:func:`.ssh_process.start`); :meth:`close` ends it."""
        proc = ssh_process.start(self, argv, stdin_data=stdin_data, cwd=cwd, env=env, prolog=prolog,
                                 on_output=on_output)
        with self._lock:
            self.procs = [p for p in self.procs if not p.channel.closed]
            self.procs.append(proc)
        return proc

    def check_python(self, interpreter: str) -> None:
        """Fails fast, with a readable reason, if ``interpreter`` cannot run there."""
        ssh_process.check_python(self, interpreter)

    def forward_remote_port(self, local_host: str, local_port: int) -> int:
        """Like ``ssh -R``: the host's 127.0.0.1:<returned port> reaches us."""
        return self.tunnels.forward(local_host, local_port)

    def close(self) -> None:
        with self._lock:
            procs, self.procs = self.procs, []
        self.tunnels.clear()
        for proc in procs:
            proc.kill()
        super().close()


#: hosts connected to at once (each connect is mostly waiting on the network and the host)
CONNECT_PARALLEL = 64


def connect_hosts(names: list[str], then: Optional[Callable[[RemoteHost], None]] = None,
                  **kw) -> dict[str, RemoteHost]:
    """Connect to every host at once; all or nothing.

    Parallel because a cluster launch should cost one connect timeout, not
    one per dead host.  ``then(host)`` runs right after each connect, in
    the same thread (starting a host's agent while others still connect); an
    :class:`SSHError` it raises is that host's failure.  On any failure the
    good connections are closed and one :class:`SSHError` lists every
    failing host with its reason.
    """
    unique = list(dict.fromkeys(names))
    hosts = {name: RemoteHost(name, **kw) for name in unique}
    if not hosts:
        return {}

    def one(host: RemoteHost) -> None:
        host.connect()
        mark("ssh connected", host.name)
        if then is not None:
            then(host)

    errors: list[SSHError] = []
    with ThreadPoolExecutor(max_workers=min(CONNECT_PARALLEL, len(hosts))) as pool:
        futures = {name: pool.submit(one, host) for name, host in hosts.items()}
        for name, fut in futures.items():
            try:
                fut.result()
            except SSHError as e:
                errors.append(e if e.host == name else SSHError(name, e.reason))
            except Exception as e:
                errors.append(SSHError(name, f"unexpected error: {e!r}"))
    if errors:
        for host in hosts.values():
            host.close()
        raise SSHError.combine(errors)
    return hosts


#: seconds a host's agent may take to start and import (32 at once on a loaded machine take a
#: few); a missing interpreter or a failing prolog is reported as soon as the agent exits
AGENT_READY_TIMEOUT = 60.0


@register
class SSHLauncher(Launcher):
    """Workers on hosts reached over SSH; workers of this machine (host None) are spawned
    here, so one cluster can mix both."""

    name = "ssh"
    remote = True

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.hosts: dict[str, RemoteHost] = {}
        self._tunnel_ports: dict = {}
        self._local = SpawnLauncher(*args, **kw)
        self._agents: dict[str, tuple] = {}  # host -> (agent, its output) ready, given no workers yet

    def prepare(self, hosts):
        """Connects to the hosts not connected yet (a scale-up may add some), each starting its
        agent as soon as it is connected (:meth:`start` waits for them)."""
        names = [h for h in dict.fromkeys(hosts) if h is not None and h not in self.hosts]
        if not names:
            return
        try:
            new = connect_hosts(names, then=self._begin_agent, config_path=self.options.ssh_config,
                                connect_timeout=self.options.connect_timeout)
        except SSHError as exc:
            for name in names:
                self._agents.pop(name, None)
            raise ClusterError(str(exc)) from None
        self.hosts.update(new)

    def _env(self) -> dict:
        """The environment of a host's agent and of the workers it forks."""
        # the hosts import the scoop this process runs when its directory exists there too (a
        # shared file system, a source checkout); a missing directory on PYTHONPATH is ignored
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {"PYTHONUNBUFFERED": "1", **(self.options.env or {}),
               "PYTHONPATH": os.pathsep.join(dict.fromkeys(self.options.pythonpath + [here])),
               "SCOOP_ROLE": "agent"}  # ps finds it and its forks by their environment
        if os.environ.get(TRACE_VARIABLE):
            env[TRACE_VARIABLE] = os.environ[TRACE_VARIABLE]
        return env

    def _agent(self, rh: RemoteHost) -> tuple:
        out = _AgentOutput(self.relay, rh.name)
        agent = rh.start([self.python, "-m", "scoop.launch.ssh_agent"], cwd=self.cwd, env=self._env(),
                         prolog=self.options.prolog, on_output=out)
        return agent, out

    def _begin_agent(self, rh: RemoteHost) -> None:
        self._agents[rh.name] = self._agent(rh)

    def _await_agents(self, started: list[tuple]) -> None:
        """Returns once each ``(host, agent, output)`` said ``ready``; else one ClusterError
        naming every host whose interpreter, directory or prolog failed, and why."""
        deadline = time.monotonic() + AGENT_READY_TIMEOUT
        waiting, errors = list(started), []
        while waiting:
            host, agent, out = waiting[0]
            if out.ready.wait(0.02):
                waiting.pop(0)
                continue
            for item in list(waiting):
                code = item[1].poll()
                if code is not None and not item[2].ready.is_set():
                    errors.append(SSHError(item[0], self._agent_failure(code, item[2])))
                    waiting.remove(item)
            if waiting and time.monotonic() > deadline:
                errors += [SSHError(h, f"python interpreter {self.python!r} did not start the SCOOP agent "
                                       f"within {AGENT_READY_TIMEOUT:g} s") for h, _, _ in waiting]
                break
        if errors:
            raise ClusterError(str(SSHError.combine(errors)))

    def _agent_failure(self, code: int, out: "_AgentOutput") -> str:
        detail = out.said[-1] if out.said else "no message"
        if code in (126, 127):
            what = "not found" if code == 127 else "not executable"
            return f"python interpreter {self.python!r} {what}: {detail}"
        prolog = f" (--prolog {self.options.prolog!r} was sourced first)" if self.options.prolog else ""
        if code == 125:  # remote_command: the directory or the prolog
            return f"cannot start in {self.cwd!r}{prolog}: {detail}"
        return (f"python interpreter {self.python!r} failed to start the SCOOP agent "
                f"(exit {code}){prolog}: {detail}")

    def bind_host(self) -> str:
        """Through tunnels the broker is reached on loopback only."""
        return "127.0.0.1" if self.options.tunnel else "0.0.0.0"

    def broker_address(self, host, port):
        if host is None:
            return f"tcp://127.0.0.1:{port}"
        rh = self.hosts[host]
        if self.options.tunnel:
            key = (host, port)
            if key not in self._tunnel_ports:
                try:
                    self._tunnel_ports[key] = rh.forward_remote_port("127.0.0.1", port)
                except SSHError as exc:
                    raise ClusterError(str(exc)) from None
            return f"tcp://127.0.0.1:{self._tunnel_ports[key]}"
        return f"tcp://{self.options.external_hostname or rh.local_address}:{port}"

    def start(self, specs):
        """The workers of one host start from one process there (:mod:`.ssh_agent`), on one SSH
        session of the host's one connection, however many they are."""
        handles = []
        by_host: dict[str, list] = {}
        for spec in specs:
            if spec.host is None:
                handles += self._local.start([spec])
            else:
                by_host.setdefault(spec.host, []).append(spec)
        started = []
        for host, group in by_host.items():
            workers = [HostWorker(spec.name) for spec in group]
            line = json.dumps({"workers": [spec.config for spec in group]}).encode() + b"\n"
            try:
                agent, out = self._agents.pop(host, None) or self._agent(self.hosts[host])
            except SSHError as exc:
                raise ClusterError(str(exc)) from None
            out.workers = workers  # before the agent can name one
            started.append((host, agent, out))
            try:
                agent.write_stdin(line)  # read once it is ready: it forks at once then
            except SSHError:
                pass  # it ended: why is told below
            mark("workers sent", host)
            for i, (spec, w) in enumerate(zip(group, workers)):
                w.agent, w.index = agent, i
                h = ProcessHandle(spec.name, host, w)
                self.handles.append(h)
                handles.append(h)
        self._await_agents(started)
        return handles

    def stop(self, timeout: float = 5.0):
        self._local.stop(timeout)
        for h in self.handles:
            agent = getattr(h.proc, "agent", None)
            if agent is not None:
                agent.kill()  # the agent's end: its workers leave
        for agent, _ in self._agents.values():
            agent.kill()  # ready, never given workers
        self._agents.clear()
        for rh in self.hosts.values():
            try:
                rh.close()
            except Exception:
                pass


class HostWorker:
    """One worker that an agent (:mod:`.ssh_agent`) forked on its host: what a Popen would say
    of it comes from the agent's output; the agent's end is its end too (it dies with it)."""

    pid = None

    def __init__(self, name: str):
        self.name = name
        self.agent: RemoteProcess | None = None
        self.index = -1
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and self.agent is not None:
            code = self.agent.poll()
            if code is not None and self.returncode is None:
                self.returncode = code if code else -1  # gone without word: killed with the agent
        return self.returncode

    def wait(self, timeout=None):
        self.agent.wait(timeout)
        return self.poll()

    def kill(self) -> None:
        try:
            self.agent.write_stdin(f"k {self.index}\n".encode())
        except SSHError:
            pass


class _AgentOutput:
    """Sorts an agent's output lines by worker, for the relay; its exit lines end a worker.
    Before it has workers, its ``ready`` sets :attr:`ready` and its other words are kept (the
    reason it could not start)."""

    def __init__(self, relay, host: str):
        self.workers: list[HostWorker] = []
        self.relay = relay
        self.host = host
        self.ready = threading.Event()
        self.said: deque = deque(maxlen=20)

    def __call__(self, stream: str, line: str) -> None:
        if stream == "stdout":
            if not self.ready.is_set() and line.startswith("ready "):
                mark("agent ready", self.host)
                self.ready.set()
                return
            i, kind, text = (line.split(" ", 2) + ["", ""])[:3]
            if i.isdigit() and int(i) < len(self.workers) and kind in ("o", "e", "x"):
                w = self.workers[int(i)]
                if kind == "x":
                    w.returncode = int(text) if text.lstrip("-").isdigit() else -1
                else:
                    self.relay.emit(w.name, "stdout" if kind == "o" else "stderr", text + "\n")
                return
        if line.strip():
            self.said.append(line.strip())
        for w in self.workers:  # the agent's own words (it could not start): every worker's reason
            self.relay.emit(w.name, "stderr", line + "\n")
