"""Shared constants: values set once (by any process) and readable on every worker.

The broker keeps them as opaque bytes and sends them to every worker, including workers that
join later, ahead of any task submitted after the ``setConst`` call, so a task never waits for
a constant its submitter set before submitting it.
"""
from __future__ import annotations

from . import _globals

_local: dict = {}


def setConst(**kwargs):
    """Defines shared constants; each name may be set once (redefining raises TypeError).
    Values may be anything picklable, functions and lambdas included."""
    rt = _globals.current()
    for name, value in kwargs.items():
        if rt is None:
            if name in _local:
                raise TypeError(f"shared constant {name!r} is already defined; constants are set once")
            _local[name] = value
        else:
            rt.set_const(name, value)


def getConst(name: str, timeout: float = 0.1):
    """Returns the constant ``name``, waiting up to ``timeout`` seconds (None: forever) for it to
    arrive; returns None if it has not arrived by then (as SCOOP 0.7 did)."""
    rt = _globals.current()
    if rt is None:
        return _local.get(name)
    return rt.get_const(name, timeout)
