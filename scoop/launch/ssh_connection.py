"""An SSH connection to one host, with paramiko instead of the ``ssh`` program.

Why paramiko: one process holds every connection, so the launcher sees real errors (auth,
host key, timeout) as exceptions instead of parsing ``ssh``'s stderr, learns the local address
of each connection, and can forward ports and open sessions on one transport without control
sockets.

OpenSSH's ``~/.ssh/config`` is honoured (aliases, HostName, Port, User, IdentityFile,
IdentitiesOnly, UserKnownHostsFile, GlobalKnownHostsFile, StrictHostKeyChecking, HostKeyAlias,
ProxyJump, ServerAliveInterval), so a host that works with ``ssh alias`` works here; keys come
from the agent and the usual files, and host keys are checked against known_hosts.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import shlex
import socket
import threading
from typing import Optional

import paramiko

__all__ = ["SSHError", "SSHConnection"]

log = logging.getLogger("scoop.launch.ssh")

_MAX_JUMPS = 8


class SSHError(RuntimeError):
    """Any failure to reach or use a host.

    The message always starts with ``host '<name>': `` so that a launcher
    can print it as is; ``host`` and ``reason`` are kept as attributes.
    When several hosts failed (:func:`connect_hosts`), ``failures`` maps each
    host to its reason and the message lists them all.
    """

    def __init__(self, host: str, reason: str, *, failures: Optional[dict] = None):
        self.host = host
        self.reason = reason
        self.failures = dict(failures) if failures else {host: reason}
        text = "; ".join(f"host {h!r}: {r}" for h, r in self.failures.items())
        super().__init__(text)

    @classmethod
    def combine(cls, errors: list["SSHError"]) -> "SSHError":
        failures = {e.host: e.reason for e in errors}
        first = errors[0]
        return cls(first.host, first.reason, failures=failures)


class _UnknownHostKey(Exception):
    pass


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """StrictHostKeyChecking for keys absent from every known_hosts file.

    ``yes`` and ``ask`` (OpenSSH's default, and there is nobody to ask)
    refuse; ``accept-new`` trusts and records the key; ``no`` trusts it for
    this connection only.  A *changed* key is refused by paramiko in every
    mode, which is stricter than OpenSSH's ``no`` and what a launcher wants.
    """

    def __init__(self, mode: str, save_path: Optional[str], files: list[str]):
        self.mode = mode
        self.save_path = save_path
        self.files = files

    def missing_host_key(self, client, hostname, key):
        fingerprint = f"{key.get_name()} {key.fingerprint}"
        if self.mode == "no":
            log.warning("accepting unknown host key %s for %s (StrictHostKeyChecking no)",
                        fingerprint, hostname)
            return
        if self.mode == "accept-new" and self.save_path:
            os.makedirs(os.path.dirname(self.save_path) or ".", exist_ok=True)
            with open(self.save_path, "a", encoding="utf-8") as f:
                f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
            log.info("added host key %s for %s to %s", fingerprint, hostname, self.save_path)
            return
        raise _UnknownHostKey(
            f"unknown host key ({fingerprint}) for {hostname}: not in "
            f"{', '.join(self.files) or 'any known_hosts file'}; add it, or set "
            "StrictHostKeyChecking accept-new for this host in ~/.ssh/config"
        )


def _parse_hop(spec: str) -> tuple[Optional[str], str, Optional[int]]:
    """``[user@]host[:port]`` (``[v6]:port`` too) of a ProxyJump hop."""
    user = None
    if "@" in spec:
        user, spec = spec.rsplit("@", 1)
    port = None
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", spec)
    if m:
        spec, port = m.group(1), m.group(2)
    elif spec.count(":") == 1:
        spec, port = spec.split(":")
    return user, spec, int(port) if port else None


def _socket_reason(e: BaseException, target: str, timeout: float) -> str:
    if isinstance(e, socket.gaierror):
        return f"cannot resolve host name {target.rsplit(':', 1)[0]!r}: {e.strerror or e}"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"unreachable: no answer from {target} within {timeout:g}s (timeout)"
    if isinstance(e, ConnectionRefusedError):
        return f"connection refused by {target}"
    if isinstance(e, OSError):
        return f"unreachable: cannot connect to {target}: {e.strerror or e}"
    return f"cannot connect to {target}: {e}"


class SSHConnection:
    """One SSH connection to a host (processes and tunnels go over it: :mod:`.ssh_process`,
    :mod:`.ssh_tunnel`).

    ``host`` may be ``[user@]name`` where ``name`` is an alias from
    ``~/.ssh/config`` (read at :meth:`connect` time, relative to ``HOME``)
    or ``config_path``.
    """

    def __init__(self, host: str, *, config_path: Optional[str] = None,
                 connect_timeout: float = 10.0, _port: Optional[int] = None,
                 _proxy_jump: Optional[str] = None, _depth: int = 0):
        self.name = host
        self.config_path = config_path
        self.connect_timeout = float(connect_timeout)
        user, alias = (host.rsplit("@", 1) if "@" in host else (None, host))
        self.alias = alias
        self.user: Optional[str] = user
        self.hostname: Optional[str] = None
        self.port: Optional[int] = _port
        self._proxy_jump_override = _proxy_jump
        self._depth = _depth
        self._client: Optional[paramiko.SSHClient] = None
        self._jump: Optional[SSHConnection] = None
        self._local_address: Optional[str] = None
        self._lock = threading.Lock()
        # paramiko tracks one pending global request per transport.
        self.global_lock = threading.Lock()

    # -- configuration ----------------------------------------------------

    def _config(self) -> dict:
        path = self.config_path or os.path.expanduser("~/.ssh/config")
        if os.path.exists(path):
            try:
                cfg = paramiko.SSHConfig.from_path(path)
            except Exception as e:
                raise SSHError(self.name, f"cannot parse ssh config {path}: {e}") from e
        else:
            cfg = paramiko.SSHConfig()
        return cfg.lookup(self.alias)

    @staticmethod
    def _files(value, default: str) -> list[str]:
        if value is None:
            value = default
        items = value if isinstance(value, list) else shlex.split(value)
        return [os.path.expanduser(v) for v in items if v.lower() != "none"]

    # -- connecting -------------------------------------------------------

    def connect(self) -> "SSHConnection":
        if self._client is not None:
            return self
        if self._depth > _MAX_JUMPS:
            raise SSHError(self.name, "too many ProxyJump hops (loop in ssh config?)")
        opts = self._config()
        timeout = self.connect_timeout
        self.hostname = opts.get("hostname", self.alias)
        if self.port is None:
            self.port = int(opts.get("port", 22))
        if self.user is None:
            self.user = opts.get("user") or getpass.getuser()
        proxycommand = opts.get("proxycommand")
        if proxycommand and proxycommand.lower() != "none":
            raise SSHError(self.name, "ProxyCommand is not supported; use ProxyJump")
        jump = self._proxy_jump_override
        if jump is None:
            jump = opts.get("proxyjump")
        if jump and jump.lower() == "none":
            jump = None
        target = f"{self.hostname}:{self.port}"

        sock = self._open_socket(jump, target, timeout)

        known = self._files(opts.get("userknownhostsfile"), "~/.ssh/known_hosts ~/.ssh/known_hosts2")
        global_known = self._files(opts.get("globalknownhostsfile"),
                                   "/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2")
        strict = opts.get("stricthostkeychecking", "ask").lower()
        if strict in ("off", "false"):
            strict = "no"
        client = paramiko.SSHClient()
        try:
            for path in global_known:
                if os.path.isfile(path):
                    client.load_system_host_keys(path)
            for path in known:
                if os.path.isfile(path):
                    client.get_host_keys().load(path)
        except Exception as e:
            sock.close()
            raise SSHError(self.name, f"cannot read known_hosts: {e}") from e
        client.set_missing_host_key_policy(
            _HostKeyPolicy(strict, known[0] if known else None, known + global_known))

        keys = [p for p in opts.get("identityfile", []) if os.path.isfile(p)]
        only = opts.get("identitiesonly", "no").lower() == "yes"
        try:
            client.connect(
                opts.get("hostkeyalias") or self.hostname,
                port=self.port,
                username=self.user,
                key_filename=keys or None,
                timeout=timeout,
                allow_agent=not only,
                look_for_keys=not only,
                sock=sock,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
            )
        except BaseException as e:
            client.close()
            sock.close()
            if self._jump is not None:
                self._jump.close()
                self._jump = None
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise SSHError(self.name, self._handshake_reason(e, target, keys)) from e
        transport = client.get_transport()
        alive = opts.get("serveraliveinterval")
        if alive and alive.isdigit() and int(alive) > 0:
            transport.set_keepalive(int(alive))
        self._client = client
        return self

    def _open_socket(self, jump: Optional[str], target: str, timeout: float):
        if not jump:
            try:
                sock = socket.create_connection((self.hostname, self.port), timeout=timeout)
            except OSError as e:
                raise SSHError(self.name, _socket_reason(e, target, timeout)) from e
            self._local_address = sock.getsockname()[0]
            return sock
        # ProxyJump a,b: reach b (itself through a), then open a
        # direct-tcpip channel from b's transport to us -- what `ssh -J` does.
        hops = [h.strip() for h in jump.split(",") if h.strip()]
        user, alias, port = _parse_hop(hops[-1])
        rest = ",".join(hops[:-1]) or None
        hop_name = f"{user}@{alias}" if user else alias
        jumper = SSHConnection(hop_name, config_path=self.config_path,
                            connect_timeout=timeout, _port=port,
                            _proxy_jump=rest, _depth=self._depth + 1)
        try:
            jumper.connect()
        except SSHError as e:
            raise SSHError(self.name, f"via jump host {e.host!r}: {e.reason}") from e
        try:
            chan = jumper._client.get_transport().open_channel(
                "direct-tcpip", (self.hostname, self.port), ("127.0.0.1", 0), timeout=timeout)
        except Exception as e:
            jumper.close()
            detail = getattr(e, "text", None) or str(e) or type(e).__name__
            raise SSHError(self.name, f"unreachable via jump host {hop_name!r}: "
                                      f"cannot connect to {target}: {detail}") from e
        self._jump = jumper
        self._local_address = jumper.local_address
        return chan

    def _handshake_reason(self, e: BaseException, target: str, keys: list[str]) -> str:
        if isinstance(e, _UnknownHostKey):
            return str(e)
        if isinstance(e, paramiko.BadHostKeyException):
            return (f"host key mismatch for {target}: got {e.key.get_name()} "
                    f"{e.key.fingerprint}, known_hosts has {e.expected_key.fingerprint} "
                    "(host reinstalled, or someone in the middle)")
        tried = ", ".join(keys) if keys else "agent/default keys"
        if isinstance(e, paramiko.AuthenticationException):
            return f"auth failed for user {self.user!r} (tried {tried}): {e}"
        if isinstance(e, paramiko.SSHException) and "authentication methods" in str(e).lower():
            return f"auth failed for user {self.user!r}: no usable key (tried {tried})"
        if isinstance(e, (socket.timeout, TimeoutError)):
            return f"timeout: no SSH handshake with {target} within {self.connect_timeout:g}s"
        if isinstance(e, paramiko.SSHException):
            text = str(e)
            if "banner" in text.lower() or "timed out" in text.lower():
                return f"timeout: no SSH handshake with {target} within {self.connect_timeout:g}s ({text})"
            return f"ssh error with {target}: {text}"
        if isinstance(e, EOFError):
            return f"connection to {target} closed during SSH handshake"
        if isinstance(e, OSError):
            return _socket_reason(e, target, self.connect_timeout)
        return f"cannot connect to {target}: {e!r}"

    def transport(self) -> paramiko.Transport:
        """The live transport that sessions and forwards open on; SSHError when closed."""
        t = self._client.get_transport() if self._client else None
        if t is None or not t.is_active():
            raise SSHError(self.name, "not connected")
        return t

    @property
    def connected(self) -> bool:
        t = self._client.get_transport() if self._client else None
        return bool(t and t.is_active())

    @property
    def local_address(self) -> str:
        """Our IP on the TCP connection, i.e. an address the host can reach.

        Behind ProxyJump this is our address towards the first hop, which
        the target may not be able to reach: use a reverse tunnel there.
        """
        if self._local_address is None:
            raise SSHError(self.name, "not connected")
        return self._local_address

    def alive(self, timeout: float = 5.0) -> bool:
        """Whether the host answers on this connection within ``timeout``.

        paramiko's keepalive only sends, it never notices silence, so a cut
        link would go unseen until TCP gives up (many minutes).  This sends
        an OpenSSH keepalive request, which sshd always answers; polling it
        is how a launcher detects a dead host and calls :meth:`close`.
        """
        t = self._client.get_transport() if self._client else None
        if t is None or not t.is_active():
            return False
        answered = threading.Event()

        def probe():
            with self.global_lock:
                try:
                    t.global_request("keepalive@openssh.com", wait=True)
                except Exception:
                    return
            if t.is_active():
                answered.set()

        threading.Thread(target=probe, daemon=True, name=f"ssh-alive-{self.name}").start()
        return answered.wait(timeout)

    @property
    def jumped(self) -> bool:
        """Whether the connection goes through ProxyJump hosts."""
        return self._jump is not None

    def close(self) -> None:
        """Ends every session and forward on this connection, then the connection."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._jump is not None:
            self._jump.close()
            self._jump = None

    def __enter__(self) -> "SSHConnection":
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "connected" if self.connected else "closed"
        return f"<{type(self).__name__} {self.name!r} {state}>"
