"""Keeps the module globals of ``scoop`` (IS_ORIGIN, IS_RUNNING, SHUTDOWN_REQUESTED, worker, SIZE,
BROKER) true."""
from __future__ import annotations

import collections

BrokerInfo = collections.namedtuple("BrokerInfo", ["hostname", "task_port", "info_port", "externalHostname"])

_runtime = None


def current():
    return _runtime


def activate(rt, *, is_origin: bool, broker: dict | None = None):
    global _runtime
    import scoop
    _runtime = rt
    scoop.IS_ORIGIN = is_origin
    scoop.IS_RUNNING = True
    scoop.SHUTDOWN_REQUESTED = False
    scoop.worker = f"{rt.index}:{rt.uid}"
    scoop.SIZE = rt.size
    if broker:
        scoop.BROKER = BrokerInfo(broker.get("hostname"), broker.get("task_port"),
                                  broker.get("info_port"),
                                  broker.get("externalHostname") or broker.get("hostname"))


def deactivate():
    global _runtime
    import scoop
    _runtime = None
    scoop.IS_RUNNING = False
    scoop.SHUTDOWN_REQUESTED = True
