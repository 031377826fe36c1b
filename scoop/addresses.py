"""Where a cluster listens and how its processes find it: ports, the broker's bind address,
the address each worker dials, and the broker description a process of the cluster sees.

Ports are chosen here, before the brokers start, so that brokers and workers can start side by
side instead of one after the other; a port taken meanwhile shows as a broker that reports
another port, and the Cluster tries again (:meth:`scoop.brokers.Brokers.start`).
"""
from __future__ import annotations

import socket

__all__ = ["free_port", "broker_ports", "broker_info", "local_address"]


def free_port(host: str) -> int:
    """A TCP port free on ``host`` right now (probed where the broker binds: a port free on
    loopback may be taken on another address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def broker_ports(bind_host: str, brokers: int) -> list[tuple[int, int]]:
    """(task port, meta port) for each broker: the root first, then the sub-brokers."""
    return [(free_port(bind_host), free_port(bind_host)) for _ in range(brokers)]


def local_address(port: int) -> str:
    """The address processes on this machine dial (the origin, the meta stream's readers)."""
    return f"tcp://127.0.0.1:{port}"


def broker_info(external_hostname: str | None, task_port: int | None, info_port: int | None) -> dict:
    """The broker as SCOOP's ``scoop.BROKER`` describes it to every process of the cluster."""
    hostname = external_hostname or socket.gethostname()
    return {"hostname": hostname, "task_port": task_port, "info_port": info_port,
            "externalHostname": external_hostname}
