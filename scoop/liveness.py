"""Liveness, from one setting: the heartbeat timeout.

Heartbeats are ZeroMQ's own (ZMTP PING/PONG), answered by libzmq's I/O threads, which never
take the GIL: a process busy in a long C call, or a notebook kernel running a cell, stays alive.
A connection whose peer answers nothing for ``timeout`` seconds (a frozen process, a cut link,
a lost host) is dropped by ZeroMQ, and a dead process's connection drops at once; that drop is
the only thing that declares a peer lost.  Every other limit derives from the same setting.
"""
from __future__ import annotations

import zmq

DEFAULT_TIMEOUT = 3.0   # seconds of silence after which a connection is dropped (--heartbeat-timeout)
PINGS_PER_TIMEOUT = 4   # heartbeats sent within one timeout
LOAD_INTERVAL = 0.25    # seconds between two load reports (figures for the views, not liveness)


def interval(timeout: float) -> float:
    return max(0.05, timeout / PINGS_PER_TIMEOUT)


def reconnect_grace(timeout: float) -> float:
    """How long a process waits for a dropped connection to the broker to come back before it
    takes the broker for gone."""
    return timeout


def configure_socket(sock, timeout: float) -> None:
    """ZMTP heartbeats on a socket: ping every ``interval``, drop the connection after
    ``timeout`` without traffic, and ask the peer to do the same."""
    ms = int(timeout * 1000)
    sock.setsockopt(zmq.HEARTBEAT_IVL, int(interval(timeout) * 1000))
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ms)
    sock.setsockopt(zmq.HEARTBEAT_TTL, min(ms, 6553500) // 100 * 100)
    bound_handshakes(sock, timeout)


def handshake_seconds(timeout: float) -> float:
    """How long a new connection may take to complete its handshake: a connection that sends
    nothing (a flood of idle connections from anyone on the host or network) holds a descriptor
    only this long.  A real handshake takes milliseconds; a busy host is given a few seconds."""
    return min(10.0, max(2.0, timeout))


def bound_handshakes(sock, timeout: float) -> None:
    sock.setsockopt(zmq.HANDSHAKE_IVL, int(handshake_seconds(timeout) * 1000))
