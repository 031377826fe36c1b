"""One notice per lost worker, in one style, under the worker's one name.

A worker that dies is reported twice by the core, for a terminal: the broker's stderr says it
was lost and its tasks go elsewhere (``scoop broker: worker w2 (host, pid N) lost (...)``), and
the cluster's supervisor logs its exit status and replacement (``[date] WARNING cluster w2 on
host exited with status -9; w3 replaces it``).  In a notebook both landed in the cell, in two
red styles.  Here both go through :class:`LossNotices`, which prints one line per loss:
``SCOOP: worker w2 on localhost was lost (exited with status -9); its task runs again
elsewhere; w3 replaces it``.  The broker's report waits ``WAIT`` seconds for the supervisor's
(which knows the exit status and the replacement) and the two make that line; a later report
of the same loss is dropped.
"""
from __future__ import annotations

import logging
import re
import threading
import time

#: a second report of the same loss within this many seconds is the same loss
SAME_LOSS = 30.0
#: seconds the broker's report of a loss waits for the supervisor's
WAIT = 1.5

_SUPERVISOR = re.compile(r"^(?:worker )?(?P<name>\S+) on (?P<host>\S+) exited with status (?P<code>\S+); "
                         r"(?P<then>.*)$")
_BROKER = re.compile(r"worker (?P<name>\S+) \((?P<host>[^,]*), pid (?P<pid>\d+)\) "
                     r"(?P<why>lost \(.*?\)|[^;]+); re-dispatching (?P<n>\d+) task")


def _tasks(n: int) -> str:
    return "no task was running there" if n == 0 else \
        f"its {'task runs' if n == 1 else f'{n} tasks run'} again elsewhere"


class LossNotices:
    """Turns the core's reports of a lost worker into one notice each; ``write(text)`` shows one."""

    def __init__(self, write, retired=lambda name, pid: False):
        self.write = write
        self.retired = retired  # (name, pid) -> True for a worker this kernel scaled away
        self._seen: dict = {}     # name -> when its notice was shown
        self._waiting: dict = {}  # name -> (timer, what the broker said)
        self._lock = threading.Lock()

    def _claim(self, name: str) -> tuple[bool, str]:
        """(whether this report is the first of its loss, what the broker said if it waits)."""
        now = time.monotonic()
        with self._lock:
            for k in [k for k, t in self._seen.items() if now - t > SAME_LOSS]:
                del self._seen[k]
            if name in self._seen:
                return False, ""
            self._seen[name] = now
            timer, said = self._waiting.pop(name, (None, ""))
        if timer is not None:
            timer.cancel()
        return True, said

    def from_supervisor(self, message: str) -> bool:
        """A supervisor log message; True if it was a loss (shown once, or dropped)."""
        m = _SUPERVISOR.match(message)
        if m is None:
            return False
        first, said = self._claim(m["name"])
        if first:
            tasks = f"; {said}" if said else ""
            self.write(f"SCOOP: worker {m['name']} on {m['host']} was lost (exited with status {m['code']})"
                       f"{tasks}; {m['then']}\n")
        return True

    def from_broker(self, line: str) -> bool:
        """A line of the broker's output; True if it was a loss (shown once, or dropped)."""
        m = _BROKER.search(line)
        if m is None:
            return False
        name = m["name"]
        if self.retired(name, int(m["pid"])):
            return True  # it left as asked
        why = m["why"][len("lost ("):-1] if m["why"].startswith("lost (") else m["why"]
        said = _tasks(int(m["n"]))

        def alone():
            first, _ = self._claim(name)
            if first:
                self.write(f"SCOOP: worker {name} on {m['host']} was lost ({why}); {said}\n")
        with self._lock:
            if name in self._seen or name in self._waiting:
                return True
            timer = threading.Timer(WAIT, alone)
            timer.daemon = True
            self._waiting[name] = (timer, said)
        timer.start()
        return True


class SupervisorFilter(logging.Filter):
    """On the ``scoop`` logger in a kernel: a supervisor's loss report becomes the one notice."""

    def __init__(self, notices: LossNotices):
        super().__init__("scoop")
        self.notices = notices

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return not self.notices.from_supervisor(record.getMessage())
        except Exception:
            return True
