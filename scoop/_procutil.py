"""Process plumbing shared by broker and workers: nothing outlives the process that started it."""
from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def name_process(name: str) -> None:
    """Names the process for ps/top (a forked worker still shows its launcher's command line;
    its environment carries SCOOP_ROLE too)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
        except Exception:
            pass


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Asks Linux to kill us when our parent dies (the launcher, a kernel, an sshd session).

    Checked against SCOOP_PARENT_PID afterwards: the parent may have died before the request.
    Elsewhere the stdin-EOF and heartbeat watchdogs still end us.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except Exception:
        return
    expected = os.environ.get("SCOOP_PARENT_PID")
    if expected and expected.isdigit() and os.getppid() != int(expected):
        os._exit(1)


def ignore_interrupts() -> None:
    """Ctrl-C in a terminal and Kernel > Interrupt in Jupyter signal the whole process group,
    brokers and workers included; interrupting tasks is the origin's job (it tells the broker),
    so a SIGINT must not kill the cluster under it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
