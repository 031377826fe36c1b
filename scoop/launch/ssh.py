"""Workers on remote hosts over SSH: the launcher, and :class:`RemoteHost` (a connection that
starts programs and opens tunnels).

The parts, one concern each: the connection (config, agent, ProxyJump, host keys:
:mod:`.ssh_connection`), a program running on a host (:mod:`.ssh_process`) and the tunnels
(:mod:`.ssh_tunnel`).  One connection per host carries every worker started there.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

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


def connect_hosts(names: list[str], **kw) -> dict[str, RemoteHost]:
    """Connect to every host at once; all or nothing.

    Parallel because a cluster launch should cost one connect timeout, not
    one per dead host.  On any failure the good connections are closed and
    one :class:`SSHError` lists every failing host with its reason.
    """
    unique = list(dict.fromkeys(names))
    hosts = {name: RemoteHost(name, **kw) for name in unique}
    if not hosts:
        return {}
    errors: list[SSHError] = []
    with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
        futures = {name: pool.submit(host.connect) for name, host in hosts.items()}
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

    def prepare(self, hosts):
        """Connects to the hosts not connected yet (a scale-up may add some) and checks their Python."""
        names = [h for h in dict.fromkeys(hosts) if h is not None and h not in self.hosts]
        if not names:
            return
        try:
            new = connect_hosts(names, config_path=self.options.ssh_config,
                                connect_timeout=self.options.connect_timeout)
        except SSHError as exc:
            raise ClusterError(str(exc)) from None
        self.hosts.update(new)
        errors = []
        for rh in new.values():
            try:
                rh.check_python(self.python)
            except SSHError as exc:
                errors.append(str(exc))
        if errors:
            raise ClusterError("; ".join(errors))

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
        # the hosts import the scoop this process runs when its directory exists there too (a
        # shared file system, a source checkout); a missing directory on PYTHONPATH is ignored
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {"PYTHONUNBUFFERED": "1", **(self.options.env or {}),
               "PYTHONPATH": os.pathsep.join(dict.fromkeys(self.options.pythonpath + [here]))}
        by_host: dict[str, list] = {}
        for spec in specs:
            if spec.host is None:
                handles += self._local.start([spec])
            else:
                by_host.setdefault(spec.host, []).append(spec)
        for host, group in by_host.items():
            workers = [HostWorker(spec.name) for spec in group]
            line = json.dumps({"workers": [spec.config for spec in group]}).encode() + b"\n"
            try:
                agent = self.hosts[host].start(
                    [self.python, "-m", "scoop.launch.ssh_agent"], stdin_data=line, cwd=self.cwd,
                    env=dict(env, SCOOP_ROLE="agent"),  # ps finds it and its forks by their environment
                    prolog=self.options.prolog, on_output=_AgentOutput(workers, self.relay))
            except SSHError as exc:
                raise ClusterError(str(exc)) from None
            for i, (spec, w) in enumerate(zip(group, workers)):
                w.agent, w.index = agent, i
                h = ProcessHandle(spec.name, host, w)
                self.handles.append(h)
                handles.append(h)
        return handles

    def stop(self, timeout: float = 5.0):
        self._local.stop(timeout)
        for h in self.handles:
            agent = getattr(h.proc, "agent", None)
            if agent is not None:
                agent.kill()  # the agent's end: its workers leave
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
    """Sorts an agent's output lines by worker, for the relay; its exit lines end a worker."""

    def __init__(self, workers: list[HostWorker], relay):
        self.workers = workers
        self.relay = relay

    def __call__(self, stream: str, line: str) -> None:
        if stream == "stdout":
            i, kind, text = (line.split(" ", 2) + ["", ""])[:3]
            if i.isdigit() and int(i) < len(self.workers) and kind in ("o", "e", "x"):
                w = self.workers[int(i)]
                if kind == "x":
                    w.returncode = int(text) if text.lstrip("-").isdigit() else -1
                else:
                    self.relay.emit(w.name, "stdout" if kind == "o" else "stderr", text + "\n")
                return
        for w in self.workers:  # the agent's own words (it could not start): every worker's reason
            self.relay.emit(w.name, "stderr", line + "\n")
