"""Who may open a connection, and what the network sees of it: the handshake of every socket.

* **TCP** (every link between hosts, and loopback too): ZeroMQ's CURVE mechanism (CurveZMQ, the
  zguide's "Ironhouse" pattern).  The broker's long-term key pair and the one every member of
  the cluster presents are both derived from the cluster secret; the broker's ZAP handler admits
  only the members' public key.  Each connection then encrypts and authenticates every message
  with short-term keys (forward secrecy), so nothing on the wire lets a listener in or shows a
  byte of a message, and a stranger's connection fails in the handshake, before any message
  exists.  Loopback is treated as the network: every local user can connect to it.
* **Unix sockets** (same-host links): ZeroMQ's PLAIN mechanism with a token derived from the
  secret.  The token never crosses a network, and only root can read a Unix socket's traffic.
* ``encryption=False`` (``--encryption off``, for a fabric the site trusts): TCP uses PLAIN too.
  Messages stay authenticated (headers MAC'd with the secret, payloads checked against signed
  digests, see scoop._protocol) but travel in the clear, the token included, so anyone who sees
  the traffic reads every payload and can open connections (which carry nothing they can sign).
"""
from __future__ import annotations

import functools
import logging

import zmq
from zmq.utils import z85

from . import _protocol as P

PLAIN_USER = b"scoop"
DOMAIN = "scoop"

def is_network(address: str) -> bool:
    """True for an address another user or host may reach (TCP, loopback included)."""
    return not address.startswith(("ipc://", "inproc://"))


class Keys:
    """Everything a handshake needs, derived once from the secret (nothing here reveals it)."""

    __slots__ = ("token", "server_public", "server_secret", "client_public", "client_secret", "encryption")

    def __init__(self, secret: bytes, encryption: bool = True):
        self.encryption = encryption
        self.token = P.derive(secret, "handshake").hex().encode()
        self.server_public, self.server_secret = _keypair(secret, "curve server key")
        self.client_public, self.client_secret = _keypair(secret, "curve client key")

    def curve(self, address: str) -> bool:
        return self.encryption and is_network(address)


def _keypair(secret: bytes, purpose: str) -> tuple[bytes, bytes]:
    """A Curve25519 key pair (Z85) from the secret: any 32 bytes are a secret key (clamped by
    the library), and the public key follows from it."""
    sk = z85.encode(P.derive(secret, purpose))
    return zmq.curve_public(sk), sk


@functools.lru_cache(maxsize=8)
def keys(secret: bytes, encryption: bool = True) -> Keys:
    if not zmq.has("curve") and encryption:
        raise RuntimeError("this libzmq has no CURVE support: encryption is impossible; use a pyzmq "
                           "wheel (which carries it), or --encryption off on a trusted network")
    return Keys(secret, encryption)


def secure_server(sock, secret: bytes, address: str, encryption: bool = True) -> None:
    """Before ``bind``: the handshake this socket demands of every connection."""
    k = keys(secret, encryption)
    if k.curve(address):
        sock.curve_server = True
        sock.curve_publickey = k.server_public
        sock.curve_secretkey = k.server_secret
    else:
        sock.plain_server = True
    sock.zap_domain = DOMAIN.encode()


def secure_client(sock, secret: bytes, address: str, encryption: bool = True) -> None:
    """Before ``connect``: the credentials this socket presents to ``address``."""
    k = keys(secret, encryption)
    if k.curve(address):
        sock.curve_serverkey = k.server_public
        sock.curve_publickey = k.client_public
        sock.curve_secretkey = k.client_secret
    else:
        sock.plain_username = PLAIN_USER
        sock.plain_password = k.token


class _Members:
    """ZAP's CURVE check: the one public key of the cluster's members."""

    def __init__(self, public: bytes):
        self.public = public

    def callback(self, domain, key) -> bool:
        return key == self.public


class Authenticator:
    """Answers ZeroMQ's authentication requests (ZAP) for one context: CURVE with the members'
    key, PLAIN with the token (whichever mechanism a socket of the context uses)."""

    def __init__(self, ctx, secret: bytes):
        # only listeners authenticate: workers, which only connect, never pay for this import
        # (it brings asyncio: ~20 ms and ~6 MiB per process)
        from zmq.auth.thread import ThreadAuthenticator
        k = keys(secret, True) if zmq.has("curve") else keys(secret, False)
        self._auth = ThreadAuthenticator(ctx, log=_quiet_logger())
        self._auth.start()
        self._auth.configure_plain(domain=DOMAIN, passwords={PLAIN_USER.decode(): k.token.decode()})
        if zmq.has("curve"):
            self._auth.configure_curve_callback(domain=DOMAIN, credentials_provider=_Members(k.client_public))

    def stop(self):
        self._auth.stop()


def _quiet_logger():
    log = logging.getLogger("scoop.auth")
    log.propagate = False
    log.addHandler(logging.NullHandler())
    return log

