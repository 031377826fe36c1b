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
* **The bulk lane** (scoop.bulk: sealed payload frames beside a CURVE connection): ZeroMQ's
  PLAIN mechanism with a one-time ticket per connection (:func:`bulk_ticket`: the member's uid
  and the time, MAC'd with a key from the secret), in the ZAP domain ``scoop-bulk`` only.  A
  stranger cannot open one; a ticket seen on the wire is refused if used again or late.
* ``encryption=False`` (``--encryption off``, for a fabric the site trusts): TCP uses PLAIN too.
  Messages stay authenticated (headers MAC'd with the secret, payloads checked against signed
  digests, see scoop._protocol) but travel in the clear, the token included, so anyone who sees
  the traffic reads every payload and can open connections (which carry nothing they can sign).
"""
from __future__ import annotations

import functools
import hmac
import struct
import threading
import time
from collections import OrderedDict

import zmq
from blake3 import blake3 as _blake3
from zmq.utils import z85

from . import _protocol as P

PLAIN_USER = b"scoop"
DOMAIN = "scoop"
_DOMAIN = DOMAIN.encode()
BULK_USER = b"scoop-bulk"
BULK_DOMAIN = "scoop-bulk"
_BULK_DOMAIN = BULK_DOMAIN.encode()
_TICKET = struct.Struct("<8sQ16s")  # member uid, time (ns), MAC
TICKET_SECONDS = 600.0              # how far a ticket's time may be from the broker's (clocks differ)


_TICKET_SIGNED = struct.Struct("<8sQ")


def _ticket_mac(secret: bytes, uid: bytes, t: int) -> bytes:
    return _blake3(_TICKET_SIGNED.pack(uid, t), key=P.derive(secret, "bulk ticket")).digest(16)


def bulk_ticket(secret: bytes, uid: bytes) -> bytes:
    """A PLAIN password for one bulk-lane connection of member ``uid`` (8 bytes), good once."""
    t = time.time_ns()
    return _TICKET.pack(uid, t, _ticket_mac(secret, uid, t)).hex().encode()

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


def bulk_server(sock) -> None:
    """Before ``bind``: a bulk-lane socket admits members with a fresh ticket only."""
    sock.plain_server = True
    sock.zap_domain = _BULK_DOMAIN


def bulk_client(sock, secret: bytes, uid: bytes) -> None:
    """Before ``connect``: a member's bulk-lane socket presents a ticket good for one connection."""
    sock.plain_username = BULK_USER
    sock.plain_password = bulk_ticket(secret, uid)


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


class Once:
    """Names (a peer's uid, a view's hello nonce) that may each be used once in a broker's life.

    With ``--encryption off`` a signed message can be read off the wire and sent again on a
    connection of one's own.  Anything that admits a connection is therefore good once: a hello
    names its own connection's routing id (which libzmq gives one connection at a time) and
    joins once; a view's hello carries a nonce.  A captured hello then admits nobody: its
    connection is either still up (the id is taken) or gone (the name was used).  The oldest
    names are forgotten past ``cap`` (~100 B each), long after any capture could matter."""

    __slots__ = ("_seen", "cap")

    def __init__(self, cap: int = 1 << 21):
        self._seen: OrderedDict = OrderedDict()
        self.cap = cap

    def take(self, name) -> bool:
        """True the first time ``name`` is offered, False ever after."""
        seen = self._seen
        if name in seen:
            return False
        seen[name] = None
        if len(seen) > self.cap:
            seen.popitem(last=False)
        return True


def hello_names(uid: bytes, info) -> str | None:
    """Why a peer's hello on routing id kind+``uid`` is refused (None: it may join): it must be a
    JSON object that names that uid."""
    if not isinstance(info, dict):
        return "a hello must be a JSON object"
    if info.get("uid") != uid.decode("latin-1"):
        return "a hello must name its own connection's uid"
    return None


ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq sends a context's authentication requests


class Gate:
    """Answers ZeroMQ's authentication requests (ZAP) for one context: CURVE with the members'
    key, PLAIN with the token, nothing else.  Whoever polls ``sock`` calls :meth:`answer`: the
    broker does it in its own loop, between messages.  A thread answering them waits for the GIL
    behind a busy main loop at each request (up to the 5 ms switch interval), and thousands of
    workers connecting at once then take minutes to join; in the loop a request costs ~10 µs."""

    def __init__(self, ctx, secret: bytes):
        curve = zmq.has("curve")
        k = keys(secret, curve)
        self.token = k.token
        self._secret = secret
        self._tickets: dict[bytes, float] = {}  # tickets taken (one use each), until they are too old
        self.member = z85.decode(k.client_public) if curve else None
        self.answered = 0
        self.refused = 0
        # where admitting replies for the cluster's own sockets go instead of out at once, if set:
        # a broker filters their connections first (scoop.hangup.Admissions)
        self.admit = None
        self.sock = ctx.socket(zmq.ROUTER)  # one pipe per handshake: routing id, empty, request
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.bind(ZAP_ENDPOINT)  # before any listener of the context binds

    def verdict(self, frames: list) -> bool:
        """A request (RFC 27: version, request id, domain, address, identity, mechanism,
        credentials) admitted?"""
        if len(frames) < 6 or frames[0] != b"1.0":
            return False
        mechanism, creds = frames[5], frames[6:]
        if frames[2] == _BULK_DOMAIN:
            return (mechanism == b"PLAIN" and len(creds) == 2 and creds[0] == BULK_USER
                    and self._ticket(creds[1]))
        if frames[2] != _DOMAIN:
            return False
        if mechanism == b"CURVE":
            return len(creds) == 1 and creds[0] == self.member
        if mechanism == b"PLAIN":
            return len(creds) == 2 and creds[0] == PLAIN_USER and hmac.compare_digest(creds[1], self.token)
        return False

    def _ticket(self, text: bytes) -> bool:
        """A bulk-lane ticket that is genuine, fresh and not used before (taken now)."""
        try:
            uid, t, mac = _TICKET.unpack(bytes.fromhex(text.decode("ascii")))
        except (ValueError, struct.error):
            return False
        now = time.time()
        if abs(now - t / 1e9) > TICKET_SECONDS \
                or not hmac.compare_digest(mac, _ticket_mac(self._secret, uid, t)):
            return False
        tickets = self._tickets
        if text in tickets:
            return False
        if len(tickets) > 1024:  # only members make genuine tickets: few, and each forgotten once too old
            for old in [k for k, when in tickets.items() if now - when > 2 * TICKET_SECONDS]:
                del tickets[old]
        tickets[text] = now
        return True

    def answer(self, most: int = 4096) -> int:
        """Answers the requests waiting (up to ``most``) without blocking; returns how many."""
        sock = self.sock
        n = 0
        while n < most:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            n += 1
            if len(frames) < 4 or frames[1] != b"":
                continue  # not a ZAP request: libzmq sends none such
            if self.verdict(frames[2:]):
                self.answered += 1
                reply = (b"200", b"OK", PLAIN_USER)
                if self.admit is not None and frames[4] == _DOMAIN:
                    self.admit([frames[0], b"", b"1.0", frames[3], *reply, b""])
                    continue
            else:
                self.refused += 1
                reply = (b"400", b"not a member of this cluster", b"")
            sock.send_multipart([frames[0], b"", b"1.0", frames[3], *reply, b""])
        return n

    def close(self):
        self.sock.close(0)


class Authenticator:
    """A :class:`Gate` answered by a thread of its own, for a process whose main loop does not
    poll it (the origin's direct socket, tests and benchmarks)."""

    def __init__(self, ctx, secret: bytes):
        self.gate = Gate(ctx, secret)
        self._wake = ctx.socket(zmq.PAIR)
        self._wake.setsockopt(zmq.LINGER, 0)
        addr = f"inproc://scoop-zap-stop-{id(self):x}"
        self._wake.bind(addr)
        stop = ctx.socket(zmq.PAIR)
        stop.setsockopt(zmq.LINGER, 0)
        stop.connect(addr)
        self._thread = threading.Thread(target=self._run, args=(stop,), name="scoop-zap", daemon=True)
        self._thread.start()

    def _run(self, stop):
        items = [(self.gate.sock, zmq.POLLIN), (stop, zmq.POLLIN)]
        try:
            while True:
                ready = [s for s, _ in zmq.zmq_poll(items, -1)]
                if self.gate.sock in ready:
                    self.gate.answer()
                if stop in ready:
                    break
        except zmq.ZMQError:
            pass  # the context ended under us
        finally:
            stop.close(0)
            self.gate.close()

    def stop(self):
        if self._thread.is_alive():
            try:
                self._wake.send(b"", zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            self._thread.join(5)
        self._wake.close(0)
