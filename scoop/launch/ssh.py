"""Remote hosts over SSH, with paramiko instead of the ``ssh`` program.

Why paramiko: one process holds every connection, so the launcher sees real
errors (auth, host key, timeout) as exceptions instead of parsing ``ssh``'s
stderr, learns the local address of each connection, and can forward ports
and open sessions on one transport without control sockets.

OpenSSH's ``~/.ssh/config`` is honoured (aliases, HostName, Port, User,
IdentityFile, IdentitiesOnly, UserKnownHostsFile, GlobalKnownHostsFile,
StrictHostKeyChecking, HostKeyAlias, ProxyJump, ServerAliveInterval), so a
host that works with ``ssh alias`` works here.

Remote process lifetime: SSH has no "kill the remote command" that works
without a pty, and a pty would echo secrets written to stdin and mangle
binary data.  So every command runs under a small POSIX ``sh`` wrapper
(:func:`remote_command`) that relays the channel's stdin to the program
through ``cat``; when the channel closes (``kill()``, ``close()``, origin
death, or sshd dropping a dead connection) ``cat`` sees EOF, the program's
stdin is closed so it can exit by itself, and after
:data:`REMOTE_TERM_GRACE` seconds the session's process group gets SIGTERM,
then SIGKILL after :data:`REMOTE_KILL_GRACE` more.  sshd starts each session
in its own session/process group, so this reaches the program's children
too (unless they start their own session).
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import shlex
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

import paramiko

from ..errors import ClusterError
from .base import Launcher, ProcessHandle, config_line, register
from .local import SpawnLauncher

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

log = logging.getLogger(__name__)

#: Seconds between the remote program's stdin EOF and SIGTERM to its group.
REMOTE_TERM_GRACE = 1
#: Seconds between SIGTERM and SIGKILL.
REMOTE_KILL_GRACE = 2

_MAX_JUMPS = 8
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

OutputCallback = Callable[[str, str], None]


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


def remote_command(argv: list[str], *, cwd: Optional[str] = None,
                   env: Optional[dict] = None, prolog: Optional[str] = None) -> str:
    """The command line sent to sshd for :meth:`RemoteHost.start`.

    It is ``exec /bin/sh -c SCRIPT scoop-remote ARGV...``: the user's login
    shell (bash, zsh, even csh) only has to run ``exec`` with quoted words,
    and the script itself is plain POSIX sh.  The script:

    - ``cd`` to ``cwd`` and sources ``prolog`` (stdin from /dev/null, so a
      prolog cannot swallow the secrets on stdin);
    - ignores SIGTERM/SIGUSR1 itself (the program gets default handling)
      and runs ``cat <channel-stdin> | program``, its own stderr going to
      /dev/null so that shell job notices ("Terminated") never reach the
      output, while the program keeps the channel's stderr;
    - when the program exits, SIGTERMs the process group (ending ``cat``
      and stray children), SIGUSR1s it (telling a post-EOF ``cat`` side that
      its escalation is no longer needed) and exits with the program's
      status;
    - when ``cat`` sees EOF, closes the program's stdin, waits
      REMOTE_TERM_GRACE s, SIGTERMs the group, waits REMOTE_KILL_GRACE s and
      SIGKILLs it.
    """
    if not argv:
        raise ValueError("empty argv")
    env = env or {}
    for key in env:
        if not _ENV_NAME.match(key):
            raise ValueError(f"invalid environment variable name {key!r}")
    q = shlex.quote
    pre = []
    if cwd:
        pre.append(f"cd {q(cwd)} || exit 125")
    if prolog:
        pre.append(
            f"if [ -r {q(prolog)} ]; then . {q(prolog)} </dev/null; else "
            f"echo 'scoop: cannot read prolog '{q(prolog)} >&2; exit 125; fi"
        )
    assigns = " ".join(q(f"{k}={v}") for k, v in env.items())
    feeder = (
        "{ trap - TERM; cat <&3; exec >/dev/null 3<&-; "
        "trap 'kill $s; exit 0' USR1; trap '' TERM; "
        f"sleep {int(REMOTE_TERM_GRACE)} & s=$!; wait $s; kill -TERM 0; "
        f"sleep {int(REMOTE_KILL_GRACE)} & s=$!; wait $s; kill -KILL 0; }} 4>&-"
    )
    runner = (
        "{ exec 3<&-; "
        f"(trap - TERM USR1; exec env {assigns} \"$@\" 2>&4 4>&-); "
        "rc=$?; kill -TERM 0; kill -USR1 0; exit $rc; }"
    )
    script = "; ".join(pre + [
        "exec 3<&0 </dev/null 4>&2 2>/dev/null",
        "trap '' TERM USR1",
        f"{feeder} | {runner}",
    ])
    return "exec /bin/sh -c " + q(script) + " scoop-remote " + " ".join(q(a) for a in argv)


def _default_output(stream: str, line: str) -> None:
    out = sys.stderr if stream == "stderr" else sys.stdout
    print(line, file=out, flush=True)


class RemoteProcess:
    """A command running on a remote host, tied to one SSH channel.

    ``returncode`` is the remote exit status, or -1 when the channel ended
    without one (killed, connection lost).
    """

    def __init__(self, host: str, channel: paramiko.Channel,
                 on_output: Optional[OutputCallback] = None):
        self.host = host
        self.channel = channel
        self.returncode: Optional[int] = None
        self._on_output = on_output or _default_output
        self._readers = [
            threading.Thread(target=self._read, args=(name, recv), daemon=True,
                             name=f"ssh-{name}-{host}")
            for name, recv in (("stdout", channel.recv), ("stderr", channel.recv_stderr))
        ]
        for t in self._readers:
            t.start()

    def _emit(self, stream: str, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace")
        if line.endswith("\r"):
            line = line[:-1]
        try:
            self._on_output(stream, line)
        except Exception:  # a broken callback must not stall the channel
            log.exception("on_output callback failed for host %r", self.host)

    def _read(self, stream: str, recv) -> None:
        buf = b""
        while True:
            try:
                data = recv(65536)
            except Exception:
                break
            if not data:
                break
            buf += data
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                self._emit(stream, raw)
        if buf:
            self._emit(stream, buf)

    def _finish(self, reader_timeout: float) -> int:
        if self.returncode is None:
            self.returncode = self.channel.recv_exit_status()
        # Output may still be in flight after the exit status: give readers
        # a moment so callers see every line once wait() returns.
        for t in self._readers:
            t.join(reader_timeout)
        return self.returncode

    def poll(self) -> Optional[int]:
        if not self.channel.status_event.is_set():
            return None
        return self._finish(0.5)

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        if not self.channel.status_event.wait(timeout):
            return None
        return self._finish(2.0)

    def kill(self) -> None:
        """Close the channel; the remote wrapper then ends the program."""
        try:
            self.channel.close()
        except Exception:
            pass

    def write_stdin(self, data: bytes) -> None:
        if self.channel.closed:
            raise SSHError(self.host, "cannot write to stdin: channel closed")
        try:
            self.channel.sendall(data)
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise SSHError(self.host, f"cannot write to stdin: {e}") from e


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


class RemoteHost:
    """One SSH connection to a host, used to start processes on it.

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
        self._jump: Optional[RemoteHost] = None
        self._local_address: Optional[str] = None
        self._procs: list[RemoteProcess] = []
        self._forwards: dict[int, tuple[str, int]] = {}
        self._lock = threading.Lock()
        # paramiko tracks one pending global request per transport.
        self._global_lock = threading.Lock()

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

    def connect(self) -> "RemoteHost":
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
        jumper = RemoteHost(hop_name, config_path=self.config_path,
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

    def _transport(self) -> paramiko.Transport:
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
            with self._global_lock:
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

    # -- using ----------------------------------------------------------

    def start(self, argv: list[str], *, stdin_data: bytes = b"", cwd: Optional[str] = None,
              env: Optional[dict] = None, prolog: Optional[str] = None,
              on_output: Optional[OutputCallback] = None) -> RemoteProcess:
        """Run ``argv`` on the host; see :func:`remote_command` for how.

        ``env`` travels on the command line (visible in ``ps`` there), so
        secrets belong in ``stdin_data``, which is written to the program's
        stdin; stdin then stays open until the process is killed or the
        host closed, which is how the program notices that we are gone.
        """
        command = remote_command(argv, cwd=cwd, env=env, prolog=prolog)
        transport = self._transport()
        try:
            chan = transport.open_session(timeout=self.connect_timeout)
            chan.exec_command(command)
        except Exception as e:
            raise SSHError(self.name, f"cannot start {argv[0]!r}: {e}") from e
        proc = RemoteProcess(self.name, chan, on_output)
        if stdin_data:
            try:
                proc.write_stdin(stdin_data)
            except SSHError:
                proc.kill()
                raise
        with self._lock:
            self._procs = [p for p in self._procs if not p.channel.closed]
            self._procs.append(proc)
        return proc

    def check_python(self, interpreter: str) -> None:
        """Fail fast, with a readable reason, if ``interpreter`` cannot run."""
        transport = self._transport()
        probe = "import sys; sys.stdout.write('%d.%d' % sys.version_info[:2])"
        timeout = self.connect_timeout
        try:
            chan = transport.open_session(timeout=timeout)
        except Exception as e:
            raise SSHError(self.name, f"cannot open session: {e}") from e
        try:
            chan.settimeout(timeout)
            chan.exec_command(f"{shlex.quote(interpreter)} -c {shlex.quote(probe)}")
            out = chan.makefile("rb").read()
            err = chan.makefile_stderr("rb").read()
            if not chan.status_event.wait(timeout):
                raise socket.timeout()
            status = chan.recv_exit_status()
        except (socket.timeout, TimeoutError) as e:
            raise SSHError(self.name, f"python interpreter {interpreter!r} failed: "
                                      f"no answer within {timeout:g}s") from e
        except SSHError:
            raise
        except Exception as e:
            raise SSHError(self.name, f"python interpreter {interpreter!r} failed: {e}") from e
        finally:
            chan.close()
        detail = err.decode("utf-8", "replace").strip().splitlines()
        detail = detail[-1] if detail else ""
        if status in (126, 127):
            what = "not found" if status == 127 else "not executable"
            raise SSHError(self.name, f"python interpreter {interpreter!r} {what}: {detail}")
        if status != 0 or not re.fullmatch(rb"\d+\.\d+", out.strip()):
            raise SSHError(self.name, f"python interpreter {interpreter!r} failed "
                                      f"(exit {status}): {detail or out[-200:]!r}")

    def forward_remote_port(self, local_host: str, local_port: int) -> int:
        """Like ``ssh -R``: the host's 127.0.0.1:<returned port> reaches us.

        paramiko keeps one forwarding handler per transport, so a single
        dispatcher routes each incoming channel by the remote port it came
        in on.
        """
        transport = self._transport()
        with self._global_lock, self._lock:
            try:
                port = transport.request_port_forward("127.0.0.1", 0, handler=self._on_forward)
            except Exception as e:
                raise SSHError(self.name, f"remote port forwarding refused: {e}") from e
            self._forwards[port] = (local_host, int(local_port))
        return port

    def _on_forward(self, chan, origin, server) -> None:
        # Called on paramiko's transport thread: never block it.
        threading.Thread(target=self._serve_forward, args=(chan, server[1]),
                         daemon=True, name=f"ssh-fwd-{self.name}").start()

    def _serve_forward(self, chan, remote_port: int) -> None:
        with self._lock:
            target = self._forwards.get(remote_port)
        if target is None:
            chan.close()
            return
        try:
            sock = socket.create_connection(target, timeout=self.connect_timeout)
        except OSError as e:
            log.warning("host %r: forwarded connection to %s:%s failed: %s",
                        self.name, target[0], target[1], e)
            chan.close()
            return
        sock.settimeout(None)
        _splice(sock, chan)

    def close(self) -> None:
        with self._lock:
            procs, self._procs = self._procs, []
            self._forwards.clear()
        for proc in procs:
            proc.kill()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._jump is not None:
            self._jump.close()
            self._jump = None

    def __enter__(self) -> "RemoteHost":
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "connected" if self.connected else "closed"
        return f"<RemoteHost {self.name!r} {state}>"


def _splice(sock: socket.socket, chan) -> None:
    """Copy both ways between a socket and a channel, passing half-closes."""

    def pump(recv, send, done):
        try:
            while True:
                data = recv(65536)
                if not data:
                    break
                send(data)
        except Exception:
            pass
        try:
            done()
        except Exception:
            pass

    def sock_eof():
        chan.shutdown_write()

    def chan_eof():
        sock.shutdown(socket.SHUT_WR)

    back = threading.Thread(target=pump, args=(chan.recv, sock.sendall, chan_eof), daemon=True)
    back.start()
    pump(sock.recv, chan.sendall, sock_eof)
    back.join()
    chan.close()
    sock.close()


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


# --------------------------------------------------------------------------
# The launcher


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
        handles = []
        # the hosts import the scoop this process runs when its directory exists there too (a
        # shared file system, a source checkout); a missing directory on PYTHONPATH is ignored
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {"PYTHONUNBUFFERED": "1", **(self.options.env or {}),
               "PYTHONPATH": os.pathsep.join(dict.fromkeys(self.options.pythonpath + [here]))}
        for spec in specs:
            if spec.host is None:
                handles += self._local.start([spec])
                continue
            try:
                proc = self.hosts[spec.host].start(
                    self.worker_argv(), stdin_data=config_line(spec.config), cwd=self.cwd, env=env,
                    prolog=self.options.prolog,
                    on_output=lambda stream, line, _n=spec.name: self.relay.emit(_n, stream, line + "\n"))
            except SSHError as exc:
                raise ClusterError(str(exc)) from None
            h = ProcessHandle(spec.name, spec.host, proc)
            self.handles.append(h)
            handles.append(h)
        return handles

    def stop(self, timeout: float = 5.0):
        self._local.stop(timeout)
        for h in self.handles:
            h.kill()
        for rh in self.hosts.values():
            try:
                rh.close()
            except Exception:
                pass
