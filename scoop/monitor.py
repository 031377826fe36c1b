"""Connection events of a ZeroMQ socket's monitor, read without pyzmq's ``zmq.utils.monitor``.

That helper imports ``zmq.asyncio`` and with it asyncio and ssl: about 8 MiB in every worker,
and an import on a fault path (a disconnect) that can itself fail once descriptors run out.
"""
from __future__ import annotations

import struct

import zmq

_EVENT = struct.Struct("=hi")   # 16-bit event id, 32-bit value (a descriptor, an errno...)


def events(monitor: zmq.Socket):
    """Yields ``(event, value)`` for every monitor message waiting on ``monitor``, without blocking."""
    while monitor.poll(0):
        frames = monitor.recv_multipart()
        if len(frames) == 2 and len(frames[0]) == _EVENT.size:
            yield _EVENT.unpack(frames[0])
