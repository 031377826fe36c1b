"""The broker processes of a cluster: a root, and with ``--brokers B`` B-1 sub-brokers under it
(a federation), all on this machine, each on ports chosen in advance (:mod:`scoop.addresses`).

A broker reads its config (with the secret) from stdin and prints one ready line with its ports
on stdout; closing its stdin is its cue to end, and its stderr goes to the output relay.
"""
from __future__ import annotations

import json
import select
import time

from .launch.base import terminate
from .launch.local import close_pipes, start_process

__all__ = ["Brokers"]


class Brokers:
    """Starts, watches and ends the brokers of one cluster."""

    def __init__(self, secret: bytes, heartbeat_timeout: float, relay, env_factory, encryption=None):
        self.secret = secret
        self.heartbeat_timeout = heartbeat_timeout
        self.relay = relay
        self._env = env_factory
        self.encryption = encryption
        self.procs: list = []
        self.ports: list[tuple[int, int]] = []
        self.bind_host = "127.0.0.1"

    @property
    def root(self):
        return self.procs[0] if self.procs else None

    def spawn_all(self, ports: list[tuple[int, int]], bind_host: str, fork: bool = False) -> None:
        self.ports, self.bind_host, self.procs = ports, bind_host, []
        for k, (main, meta) in enumerate(ports):
            self.spawn(k, main, meta, fork=fork)

    def spawn(self, k: int, main: int, meta: int, replace: bool = False, fork: bool = False) -> None:
        """Broker 0 is the root; the others are sub-brokers under it, each serving its share of
        the workers."""
        cfg = {"secret": self.secret.hex(), "heartbeat_timeout": self.heartbeat_timeout,
               "main": f"tcp://{self.bind_host}:{main}", "meta": f"tcp://{self.bind_host}:{meta}",
               "encryption": self.encryption}
        if k:
            cfg["upstream"] = f"tcp://127.0.0.1:{self.ports[0][0]}"
        line = (json.dumps(cfg) + "\n").encode()
        module = "scoop.federation" if k else "scoop.broker"
        proc = start_process(module, line, env=self._env(), cwd=None, fork=fork)
        if replace:
            self.procs[k] = proc
        else:
            self.procs.append(proc)
        # stdout carries the ready line; stderr is relayed
        self.relay.add("broker" if not k else f"broker{k}", stderr=proc.stderr)

    def ready(self, k: int, timeout: float = 20.0) -> bool:
        """Whether broker ``k`` started on the port chosen for it (False: it died, or the port
        was taken meanwhile and it bound another)."""
        deadline = time.monotonic() + timeout
        proc = self.procs[k]
        while time.monotonic() < deadline:
            r, _, _ = select.select([proc.stdout], [], [], 0.1)
            if r:
                line = proc.stdout.readline()
                if line:
                    return json.loads(line)["main_port"] == self.ports[k][0]
                break
            if proc.poll() is not None:
                break
        self.relay.flush(0.3)
        return False

    def all_ready(self) -> bool:
        return all(self.ready(k) for k in range(len(self.procs)))

    def restart_dead_subbrokers(self, notice) -> None:
        """A sub-broker died: its tasks are re-dispatched by the root; it restarts on the same
        ports so its workers' replacements have somewhere to join."""
        for k in range(1, len(self.procs)):
            code = self.procs[k].poll()
            if code is not None:
                notice("warning", f"sub-broker {k} exited with status {code}; restarting it")
                main, meta = self.ports[k]
                self.spawn(k, main, meta, replace=True)

    def kill(self) -> None:
        for bp in self.procs:
            bp.kill()
            bp.wait()
        self.procs = []

    def ask_to_end(self) -> None:
        """Closes each broker's stdin, its cue to end (they end while the workers do)."""
        for bp in self.procs:
            if bp.stdin:
                try:
                    bp.stdin.close()
                except OSError:
                    pass

    def wait(self, timeout: float) -> None:
        """Waits for the brokers to end until the deadline, then kills the ones left."""
        terminate(self.procs, timeout)

    def close(self) -> None:
        close_pipes(self.procs)
