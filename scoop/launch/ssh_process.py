"""A program running on a remote host, tied to one SSH channel of its connection.

SSH has no "kill the remote command" that works without a pty, and a pty would echo secrets
written to stdin and mangle binary data.  So every command runs under a small POSIX ``sh``
wrapper (:func:`remote_command`) that relays the channel's stdin to the program through
``cat``; when the channel closes (``kill()``, the connection's ``close()``, origin death, or
sshd dropping a dead connection) ``cat`` sees EOF, the program's stdin is closed so it can exit
by itself, and after :data:`REMOTE_TERM_GRACE` seconds the session's process group gets
SIGTERM, then SIGKILL after :data:`REMOTE_KILL_GRACE` more.  sshd starts each session in its own
session/process group, so this reaches the program's children too (unless they start their own
session).
"""

from __future__ import annotations

import re
import shlex
import socket
import sys
import threading
from typing import Callable, Optional

import paramiko

from .ssh_connection import SSHError, log

__all__ = ["RemoteProcess", "remote_command", "start", "check_python", "REMOTE_TERM_GRACE",
           "REMOTE_KILL_GRACE"]

#: Seconds between the remote program's stdin EOF and SIGTERM to its group.
REMOTE_TERM_GRACE = 1
#: Seconds between SIGTERM and SIGKILL.
REMOTE_KILL_GRACE = 2

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

OutputCallback = Callable[[str, str], None]


def remote_command(argv: list[str], *, cwd: Optional[str] = None,
                   env: Optional[dict] = None, prolog: Optional[str] = None) -> str:
    """The command line sent to sshd for :func:`start`.

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


def start(host, argv: list[str], *, stdin_data: bytes = b"", cwd: Optional[str] = None,
          env: Optional[dict] = None, prolog: Optional[str] = None,
          on_output: Optional[OutputCallback] = None) -> RemoteProcess:
    """Run ``argv`` on the host; see :func:`remote_command` for how.

    ``env`` travels on the command line (visible in ``ps`` there), so
    secrets belong in ``stdin_data``, which is written to the program's
    stdin; stdin then stays open until the process is killed or the
    host closed, which is how the program notices that we are gone.
    """
    command = remote_command(argv, cwd=cwd, env=env, prolog=prolog)
    transport = host.transport()
    try:
        chan = transport.open_session(timeout=host.connect_timeout)
        chan.exec_command(command)
    except Exception as e:
        raise SSHError(host.name, f"cannot start {argv[0]!r}: {e}") from e
    proc = RemoteProcess(host.name, chan, on_output)
    if stdin_data:
        try:
            proc.write_stdin(stdin_data)
        except SSHError:
            proc.kill()
            raise
    return proc


def check_python(host, interpreter: str) -> None:
    """Fail fast, with a readable reason, if ``interpreter`` cannot run."""
    transport = host.transport()
    probe = "import sys; sys.stdout.write('%d.%d' % sys.version_info[:2])"
    timeout = host.connect_timeout
    try:
        chan = transport.open_session(timeout=timeout)
    except Exception as e:
        raise SSHError(host.name, f"cannot open session: {e}") from e
    try:
        chan.settimeout(timeout)
        chan.exec_command(f"{shlex.quote(interpreter)} -c {shlex.quote(probe)}")
        out = chan.makefile("rb").read()
        err = chan.makefile_stderr("rb").read()
        if not chan.status_event.wait(timeout):
            raise socket.timeout()
        status = chan.recv_exit_status()
    except (socket.timeout, TimeoutError) as e:
        raise SSHError(host.name, f"python interpreter {interpreter!r} failed: "
                                  f"no answer within {timeout:g}s") from e
    except SSHError:
        raise
    except Exception as e:
        raise SSHError(host.name, f"python interpreter {interpreter!r} failed: {e}") from e
    finally:
        chan.close()
    detail = err.decode("utf-8", "replace").strip().splitlines()
    detail = detail[-1] if detail else ""
    if status in (126, 127):
        what = "not found" if status == 127 else "not executable"
        raise SSHError(host.name, f"python interpreter {interpreter!r} {what}: {detail}")
    if status != 0 or not re.fullmatch(rb"\d+\.\d+", out.strip()):
        raise SSHError(host.name, f"python interpreter {interpreter!r} failed "
                                  f"(exit {status}): {detail or out[-200:]!r}")
