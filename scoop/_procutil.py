"""Process plumbing shared by broker and workers: nothing outlives the process that started it,
and no neighbour on the host can exhaust a process's descriptors."""
from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
import time

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_LINUX = sys.platform.startswith("linux")

#: what one local worker takes, for the check before starting many: descriptors in the process
#: that starts it (its stdin, stdout and stderr pipes), tasks (processes and threads: its main,
#: control, stdin-watcher and two ZeroMQ threads, and its group guard), and memory (a forked
#: worker's own pages: a spawned one takes more)
WORKER_FDS = 3
WORKER_TASKS = 6
WORKER_MEMORY = 12 << 20


def _prctl(option: int, arg: int) -> bool:
    if not _LINUX:
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0) == 0
    except Exception:
        return False


def name_process(name: str) -> None:
    """Names the process for ps/top (a forked worker still shows its launcher's command line;
    its environment carries SCOOP_ROLE too)."""
    if _LINUX:
        try:
            ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
        except Exception:
            pass


def raise_fd_limit() -> int:
    """Raises the soft limit of open files to the hard one (every scoop process does at start):
    a listening socket holds a descriptor per connection, and libzmq aborts the process when
    it runs out while accepting.  Returns the soft limit now in force."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard
        if hard == resource.RLIM_INFINITY:
            try:
                with open("/proc/sys/fs/nr_open") as f:
                    target = int(f.read())
            except (OSError, ValueError):
                target = 1 << 20
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        return soft
    except (ValueError, OSError):
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Asks Linux to kill us when our parent dies (the launcher, a kernel, an sshd session).

    Checked against SCOOP_PARENT_PID afterwards: the parent may have died before the request.
    Elsewhere the stdin-EOF and heartbeat watchdogs still end us.
    """
    if not _prctl(_PR_SET_PDEATHSIG, sig):
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


# ---- a worker's tasks' children end with it -----------------------------------------------------
def contain_children() -> bool:
    """Makes this process (a worker) the keeper of every process its tasks start:

    * its own process group, so that one signal reaches them all;
    * a child subreaper, so that a task's grandchild whose parent exits (a daemon, ``cmd &``
      in a shell) becomes our child instead of init's, and is found at our exit
      (:func:`kill_descendants`);
    * a small guard process in the group that kills the whole group once we are gone, however
      we end (SIGKILL, the OOM killer, our parent's death): PR_SET_PDEATHSIG is not inherited
      by our children's children, a process group is.

    Returns whether the group is ours (the guard runs only then: it kills the whole group)."""
    global _contained
    if not _LINUX:
        return False
    _contained = True
    try:
        if os.getpgrp() != os.getpid():
            os.setpgid(0, 0)
    except OSError:
        pass
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    if os.getpgrp() != os.getpid():
        return False  # sharing a group with others: killing it would kill them
    _start_group_guard()
    return True


_contained = False


def end_children() -> None:
    """At a worker's exit: its tasks' processes go with it."""
    if _contained:
        kill_descendants()


def _start_group_guard() -> None:
    r, w = os.pipe()  # close-on-exec: a task's exec'd children do not hold it
    pid = os.fork()
    if pid == 0:
        try:
            os.close(w)
            name_process("scoop-guard")
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            while True:
                try:
                    if not os.read(r, 1):
                        break
                except InterruptedError:
                    continue
            os.killpg(0, signal.SIGKILL)  # the worker is gone: everything left in its group goes
        finally:
            os._exit(0)
    os.close(r)
    # a task that forks (multiprocessing) must not keep the guard waiting
    os.register_at_fork(after_in_child=lambda: _close(w))


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
    except (OSError, ValueError):
        pass
    return out


def _alive(pid: int) -> bool:
    """Not gone and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def descendants(pid: int | None = None) -> list[int]:
    pid = os.getpid() if pid is None else pid
    found, stack = [], [pid]
    while stack:
        for c in _children(stack.pop()):
            found.append(c)
            stack.append(c)
    return found


def kill_descendants(timeout: float = 1.0) -> int:
    """SIGKILLs every live descendant of this process (a subreaper inherits the orphans of the
    ones killed first, so it looks again until none is left); returns how many it killed."""
    if not _LINUX:
        return 0
    killed = 0
    deadline = time.monotonic() + timeout
    while True:
        live = [p for p in descendants() if _alive(p)]
        if not live:
            return killed
        for p in live:
            try:
                os.kill(p, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        for p in _children(os.getpid()):
            try:
                os.waitpid(p, os.WNOHANG)  # we are leaving: nobody else will reap them
            except OSError:
                pass
        if time.monotonic() > deadline:
            return killed
        time.sleep(0.005)


# ---- how many local workers this host can take -------------------------------------------------
def _user_tasks() -> int:
    """Processes and threads of this user (what RLIMIT_NPROC counts)."""
    uid = os.getuid()
    n = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid == uid:
                n += len(os.listdir(f"/proc/{entry}/task"))
        except OSError:
            continue
    return n


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def local_worker_limit(n: int) -> str | None:
    """Why ``n`` more local workers cannot start, naming the limit and the number it allows, or
    None.  Asked once before starting any, so that a typo such as ``-n 100000`` fails at once
    instead of after hundreds of processes."""
    soft = raise_fd_limit()
    if soft != resource.RLIM_INFINITY:
        try:
            used = len(os.listdir("/proc/self/fd"))
        except OSError:
            used = 64
        allow = max(0, (soft - used - 64) // WORKER_FDS)
        if n > allow:
            return (f"the limit of open files (RLIMIT_NOFILE, {soft} here, {WORKER_FDS} per worker in the "
                    f"launching process) allows {allow} more local workers")
    if _LINUX and os.geteuid() != 0:
        nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
        if nproc != resource.RLIM_INFINITY:
            allow = max(0, (nproc - _user_tasks()) // WORKER_TASKS)
            if n > allow:
                return (f"the limit of processes (RLIMIT_NPROC, {nproc} processes and threads for this user, "
                        f"{WORKER_TASKS} per worker) allows {allow} more local workers")
    avail = _mem_available()
    if avail is not None:
        allow = avail // WORKER_MEMORY
        if n > allow:
            return (f"the available memory ({avail >> 20} MiB, at least {WORKER_MEMORY >> 20} MiB per "
                    f"worker) allows {allow} more local workers")
    return None
