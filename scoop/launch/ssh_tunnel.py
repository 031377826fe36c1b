"""Tunnels over an SSH connection: like ``ssh -R``, a port on the remote host's loopback that
reaches a port here, for hosts that cannot open a connection back to the broker (``--tunnel``).

paramiko keeps one forwarding handler per transport, so one dispatcher per connection routes
each incoming channel by the remote port it came in on.
"""

from __future__ import annotations

import socket
import threading

from .ssh_connection import SSHError, log

__all__ = ["Tunnels"]


class Tunnels:
    """The remote port forwards of one :class:`~.ssh_connection.SSHConnection`."""

    def __init__(self, conn):
        self.conn = conn
        self._forwards: dict[int, tuple[str, int]] = {}
        self._lock = threading.Lock()

    def forward(self, local_host: str, local_port: int) -> int:
        """Like ``ssh -R``: the host's 127.0.0.1:<returned port> reaches us.

        paramiko keeps one forwarding handler per transport, so a single
        dispatcher routes each incoming channel by the remote port it came
        in on.
        """
        transport = self.conn.transport()
        with self.conn.global_lock, self._lock:
            try:
                port = transport.request_port_forward("127.0.0.1", 0, handler=self._on_forward)
            except Exception as e:
                raise SSHError(self.conn.name, f"remote port forwarding refused: {e}") from e
            self._forwards[port] = (local_host, int(local_port))
        return port

    def _on_forward(self, chan, origin, server) -> None:
        # Called on paramiko's transport thread: never block it.
        threading.Thread(target=self._serve_forward, args=(chan, server[1]),
                         daemon=True, name=f"ssh-fwd-{self.conn.name}").start()

    def _serve_forward(self, chan, remote_port: int) -> None:
        with self._lock:
            target = self._forwards.get(remote_port)
        if target is None:
            chan.close()
            return
        try:
            sock = socket.create_connection(target, timeout=self.conn.connect_timeout)
        except OSError as e:
            log.warning("host %r: forwarded connection to %s:%s failed: %s",
                        self.conn.name, target[0], target[1], e)
            chan.close()
            return
        sock.settimeout(None)
        _splice(sock, chan)

    def clear(self) -> None:
        with self._lock:
            self._forwards.clear()


def _splice(sock: socket.socket, chan) -> None:
    """Copy both ways between a socket and a channel, passing half-closes."""

    def pump(recv, send, done):
        try:
            while True:
                data = recv(65536)
                if not data:
                    break
                send(data)
        except Exception:
            pass
        try:
            done()
        except Exception:
            pass

    def sock_eof():
        chan.shutdown_write()

    def chan_eof():
        sock.shutdown(socket.SHUT_WR)

    back = threading.Thread(target=pump, args=(chan.recv, sock.sendall, chan_eof), daemon=True)
    back.start()
    pump(sock.recv, chan.sendall, sock_eof)
    back.join()
    chan.close()
    sock.close()
