"""``python -m scoop.launch.ssh_agent``: on a host reached over SSH, one process that forks all the
workers the launcher asked for there, instead of one SSH session and one interpreter per worker.

Why: an interpreter start with a worker's imports costs ~0.1 s of CPU; 256 of them on a few
cores took longer than the whole cluster should take to join, and sshd limits the sessions of a
connection (``MaxSessions``, 10 by default).  A fork costs no imports (they are done once here,
before the first fork).  The agent is single-threaded, so forking is safe.

It starts while the launcher still prepares the cluster (right after the SSH connection is up),
imports what a worker needs, then says ``ready X.Y`` (its Python version) on stdout: the
launcher's check of the interpreter, and its sign that forks will cost no imports.  Its stdin
then carries one JSON line, ``{"workers": [config, ...]}`` (each config holds the secret), and
commands: ``k I`` ends worker I.  Its stdin ending before any configuration came (the cluster
stopped first) ends it quietly.  Its end (the launcher or its connection is gone) closes
every worker's stdin, their cue to leave, and whatever still runs 2 s later is killed; a worker
also dies with the agent (``PR_SET_PDEATHSIG``).  On stdout, one line per line a worker
printed, ``I o TEXT`` or ``I e TEXT`` (its stdout, its stderr), and ``I x CODE`` when worker I
exited.  The agent leaves once every worker has.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import sys
import time

LEAVE_GRACE = 2.0  # seconds the workers get to leave once the launcher is gone


def _write(text: str) -> None:
    try:
        os.write(1, text.encode("utf-8", "replace"))
    except OSError:
        pass  # nobody reads us any more: the end of stdin follows


def main() -> None:
    from .._launchtrace import mark
    from .._procutil import name_process
    from .local import _import_once, fork_spawn
    mark("agent runs")
    name_process("scoop-agent")
    _import_once("scoop.worker")  # before the first fork, and before the launcher waits on us
    mark("agent imported")
    _write("ready %d.%d\n" % sys.version_info[:2])
    data = b""
    while b"\n" not in data:  # unbuffered: what follows the line is commands, read below
        more = os.read(0, 65536)
        if not more:
            sys.exit(0)  # the cluster stopped before it started workers here
        data += more
    line, command = data.split(b"\n", 1)
    configs = json.loads(line)["workers"]
    env = dict(os.environ)
    procs = [fork_spawn("scoop.worker", (json.dumps(c) + "\n").encode(), env=env, cwd=os.getcwd())
             for c in configs]
    mark("agent forked", str(len(procs)))
    signal.signal(signal.SIGTERM, lambda *_: _end(procs, 0.0))
    sel = selectors.DefaultSelector()
    partial: dict = {}
    for i, p in enumerate(procs):
        sel.register(p.stdout, selectors.EVENT_READ, (i, "o"))
        sel.register(p.stderr, selectors.EVENT_READ, (i, "e"))
    stdin = os.fdopen(0, "rb", buffering=0, closefd=False)
    sel.register(stdin, selectors.EVENT_READ, None)
    exited: set = set()
    while len(exited) < len(procs):
        for key, _ in sel.select(0.2):
            data = os.read(key.fd, 65536)
            if key.data is None:  # the launcher
                if not data:
                    sel.unregister(stdin)
                    _end(procs, LEAVE_GRACE)
                    continue
                command += data
                while b"\n" in command:
                    one, command = command.split(b"\n", 1)
                    if one.startswith(b"k "):
                        procs[int(one[2:])].kill()
                continue
            i, stream = key.data
            text = partial.pop(key.data, b"") + data
            if not data:
                sel.unregister(key.fileobj)
                key.fileobj.close()
                lines = [text] if text else []
            else:
                *lines, rest = text.split(b"\n")
                if rest:
                    partial[key.data] = rest
            if lines:
                _write("".join(f"{i} {stream} {t.decode('utf-8', 'replace')}\n" for t in lines))
        for i, p in enumerate(procs):
            if i not in exited and p.poll() is not None:
                exited.add(i)
                _write(f"{i} x {p.returncode}\n")


def _end(procs, grace: float) -> None:
    """The launcher is gone: every worker's stdin closes (they leave at once), then the rest go."""
    for p in procs:
        try:
            p.stdin.close()
        except OSError:
            pass
    deadline = time.monotonic() + grace
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.02)
    for p in procs:
        if p.poll() is None:
            p.kill()
    if grace == 0.0:
        os._exit(0)


if __name__ == "__main__":
    main()
