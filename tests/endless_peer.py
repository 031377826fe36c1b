"""A peer past the handshake that speaks ZMTP 3.0 by hand and sends one message whose frames never
end (the MORE flag on every frame): what no ZeroMQ socket would send, since libzmq transmits a
message only once it is complete.

    python tests/endless_peer.py '{"port": P, "total": BYTES, "frame": N, "plain": TOKEN}'
    python tests/endless_peer.py '{"port": P, "total": BYTES, "frame": N,
                                   "curve": [SERVER_PUBLIC, CLIENT_PUBLIC, CLIENT_SECRET]}'  (Z85)

PLAIN presents the token of an unencrypted cluster; CURVE (CurveZMQ, RFC 26, with libsodium as
pyzmq's wheel carries it) presents a member's keys, each frame a MESSAGE command.  Prints one JSON
line: the bytes of frames it sent, and why it stopped.
"""
from __future__ import annotations

import ctypes
import glob
import json
import os
import socket
import struct
import sys


def _sodium():
    import zmq
    libs = os.path.join(os.path.dirname(zmq.__file__), os.pardir, "pyzmq.libs")
    for path in glob.glob(os.path.join(libs, "libsodium*")) + glob.glob(os.path.join(libs, "libzmq*")):
        lib = ctypes.CDLL(path)
        if hasattr(lib, "crypto_box_easy_afternm"):
            return lib
    from ctypes.util import find_library
    return ctypes.CDLL(find_library("sodium"))


class Peer:
    def __init__(self, port: int):
        self.s = socket.create_connection(("127.0.0.1", port))

    def recvn(self, n: int) -> bytes:
        b = b""
        while len(b) < n:
            c = self.s.recv(n - len(b))
            if not c:
                raise ConnectionError("the server closed the connection in the handshake")
            b += c
        return b

    def frame(self, body: bytes, flags: int) -> bytes:
        if len(body) > 255:
            return bytes([flags | 0x02]) + struct.pack(">Q", len(body)) + body
        return bytes([flags, len(body)]) + body

    def command(self, name: bytes, data: bytes) -> None:
        self.s.sendall(self.frame(bytes([len(name)]) + name + data, 0x04))

    def reply(self) -> bytes:
        flags = self.recvn(1)[0]
        return self.recvn(struct.unpack(">Q", self.recvn(8))[0] if flags & 2 else self.recvn(1)[0])

    def greet(self, mechanism: bytes) -> None:
        signature, version = b"\xff" + b"\0" * 8 + b"\x7f", bytes([3, 0])
        self.s.sendall(signature + version + mechanism.ljust(20, b"\0") + b"\0" * 32)
        self.recvn(64)


_DEALER = bytes([11]) + b"Socket-Type" + struct.pack(">I", 6) + b"DEALER"


def plain(port: int, token: bytes):
    p = Peer(port)
    p.greet(b"PLAIN")
    p.command(b"HELLO", bytes([5]) + b"scoop" + bytes([len(token)]) + token)
    assert p.reply()[1:8] == b"WELCOME"
    p.command(b"INITIATE", _DEALER)
    assert p.reply()[1:6] == b"READY"
    return p, lambda payload: p.frame(payload, 0x01)


def curve(port: int, server_public: bytes, client_public: bytes, client_secret: bytes):
    from zmq.utils import z85
    na = _sodium()
    S, C, c = z85.decode(server_public), z85.decode(client_public), z85.decode(client_secret)

    def keypair():
        pk, sk = ctypes.create_string_buffer(32), ctypes.create_string_buffer(32)
        na.crypto_box_keypair(pk, sk)
        return pk.raw, sk.raw

    def box(msg, nonce, pk, sk):
        out = ctypes.create_string_buffer(len(msg) + 16)
        assert na.crypto_box_easy(out, msg, ctypes.c_ulonglong(len(msg)), nonce, pk, sk) == 0
        return out.raw

    def unbox(data, nonce, pk, sk):
        out = ctypes.create_string_buffer(len(data) - 16)
        assert na.crypto_box_open_easy(out, data, ctypes.c_ulonglong(len(data)), nonce, pk, sk) == 0, "box"
        return out.raw

    p = Peer(port)
    p.greet(b"CURVE")
    Cs, cs = keypair()  # short-term
    n = [1]

    def short():
        v = struct.pack(">Q", n[0])
        n[0] += 1
        return v

    nh = short()
    p.command(b"HELLO", b"\x01\x00" + b"\0" * 72 + Cs + nh + box(b"\0" * 64, b"CurveZMQHELLO---" + nh, S, cs))
    w = p.reply()
    assert w[1:8] == b"WELCOME", w[:8]
    opened = unbox(w[24:], b"WELCOME-" + w[8:24], S, cs)
    Ss, cookie = opened[:32], opened[32:]
    vn = os.urandom(16)
    vouch = vn + box(Cs + S, b"VOUCH---" + vn, Ss, c)
    ni = short()
    p.command(b"INITIATE", cookie + ni + box(C + vouch + _DEALER, b"CurveZMQINITIATE" + ni, Ss, cs))
    r = p.reply()
    assert r[1:6] == b"READY", r[:8]
    k = ctypes.create_string_buffer(32)
    na.crypto_box_beforenm(k, Ss, cs)

    def message(payload):
        nm = short()
        m = b"\x01" + payload  # flags: more
        out = ctypes.create_string_buffer(len(m) + 16)
        na.crypto_box_easy_afternm(out, m, ctypes.c_ulonglong(len(m)), b"CurveZMQMESSAGEC" + nm, k)
        return p.frame(b"\x07MESSAGE" + nm + out.raw, 0x00)
    return p, message


def main():
    cfg = json.loads(sys.argv[1])
    if "curve" in cfg:
        p, frame = curve(cfg["port"], *(k.encode() for k in cfg["curve"]))
    else:
        p, frame = plain(cfg["port"], cfg["plain"].encode())
    payload = b"x" * cfg["frame"]
    sent, why = 0, "sent everything"
    try:
        while sent < cfg["total"]:
            chunk = b"".join(frame(payload) for _ in range(max(1, (256 << 10) // (cfg["frame"] + 64))))
            p.s.sendall(chunk)
            sent += len(chunk)
    except OSError as exc:
        why = f"{type(exc).__name__}: {exc}"
    print(json.dumps({"sent": sent, "why": why}), flush=True)


if __name__ == "__main__":
    main()
