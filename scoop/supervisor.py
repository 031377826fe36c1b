"""The supervisor: a thread that keeps a running cluster matching its spec.

Five times a second it restarts a sub-broker that died, asks the cluster for one reconcile
step (:mod:`scoop.reconcile`: replace dead workers, retire extra ones, start missing ones) and
lets each policy that is due edit the spec (:mod:`scoop.adaptive`).  Policies decide; only the
reconcile step acts, so a policy never starts or ends a process itself.

Its lines for the user go through :func:`notice`: one line per event, naming workers by their
one name (``w3``), never by an internal id; a plan carried out (a walltime retirement and its
replacement) is an INFO line, a failure a WARNING or ERROR.
"""
from __future__ import annotations

import threading
import time

__all__ = ["Supervisor", "notice", "PERIOD"]

#: seconds between two looks at the cluster
PERIOD = 0.2


def notice(level: str, text: str) -> None:
    """One line for the user about the cluster (``level``: info, warning or error)."""
    from . import logger
    getattr(logger, level)(text, extra={"worker": "cluster"})


class Supervisor(threading.Thread):
    """Runs ``step()`` every :data:`PERIOD` seconds, then every policy whose time has come
    (``policy.due(now)`` and ``policy.tick(now)``), until :meth:`stop`."""

    def __init__(self, step, lock, period: float = PERIOD):
        super().__init__(name="scoop-supervisor", daemon=True)
        self._step = step
        self._lock = lock
        self.period = period
        self.policies: list = []
        self._halt = threading.Event()

    def add_policy(self, policy) -> None:
        with self._lock:
            self.policies = [p for p in self.policies if type(p) is not type(policy)] + [policy]

    def remove_policy(self, policy) -> None:
        with self._lock:
            self.policies = [p for p in self.policies if p is not policy]

    def stop(self) -> None:
        self._halt.set()

    def run(self):
        while not self._halt.wait(self.period):
            try:
                with self._lock:
                    if self._halt.is_set():
                        return
                    self._step()
            except Exception as exc:
                notice("error", f"could not start replacement workers: {exc}")
            now = time.monotonic()
            for policy in list(self.policies):
                if self._halt.is_set():
                    return
                if policy.due(now):
                    try:
                        policy.tick(now)
                    except Exception as exc:
                        notice("error", f"{policy}: {exc}")
