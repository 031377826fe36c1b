"""Process plumbing shared by broker and workers: nothing outlives the process that started it."""
from __future__ import annotations

import ctypes
import os
import resource
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


class SelfLoad:
    """This process's CPU percent since the last call and its resident memory, as psutil's
    ``cpu_percent(None)`` and ``memory_info().rss`` give them, read from ``os.times()`` and
    ``/proc/self/statm``: psutil would add ~2 MiB to every worker for two numbers."""

    _PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def __init__(self):
        self._last = self._clock()

    @staticmethod
    def _clock() -> tuple[float, float]:
        t = os.times()
        return t.elapsed, t.user + t.system

    def cpu_percent(self) -> float:
        (wall0, cpu0), (wall1, cpu1) = self._last, self._clock()
        self._last = (wall1, cpu1)
        return 100.0 * (cpu1 - cpu0) / (wall1 - wall0) if wall1 > wall0 else 0.0

    def rss(self) -> int:
        try:
            with open("/proc/self/statm", "rb") as f:
                return int(f.read().split()[1]) * self._PAGE
        except OSError:
            # elsewhere: the peak, the best figure without psutil
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return peak if sys.platform == "darwin" else peak * 1024
