"""Joining: the broker answers handshakes (ZAP) in its own loop, and hundreds of workers that
connect at once all join, with encryption on (CURVE) and off (PLAIN)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import zmq
from zmq.utils import z85

from scoop import _protocol as P
from scoop.security import PLAIN_USER, Gate, keys, secure_client

from conftest import end_stdin_process


def _request(mechanism: bytes, *creds, domain=b"scoop", version=b"1.0"):
    return [version, b"1", domain, b"127.0.0.1", b"", mechanism, *creds]


def test_the_gate_admits_members_only():
    secret = P.new_secret()
    k = keys(secret)
    stranger = keys(P.new_secret())
    ctx = zmq.Context()
    gate = Gate(ctx, secret)
    try:
        assert gate.verdict(_request(b"CURVE", z85.decode(k.client_public)))
        assert gate.verdict(_request(b"PLAIN", PLAIN_USER, k.token))
        refused = [
            _request(b"CURVE", z85.decode(stranger.client_public)),
            _request(b"CURVE", z85.decode(k.server_public)),  # the broker's key is no member's
            _request(b"PLAIN", PLAIN_USER, stranger.token),
            _request(b"PLAIN", b"someone", k.token),
            _request(b"PLAIN", PLAIN_USER),
            _request(b"NULL"),
            _request(b"CURVE", z85.decode(k.client_public), domain=b"other"),
            _request(b"CURVE", z85.decode(k.client_public), version=b"2.0"),
            [b"1.0"],
        ]
        assert not any(gate.verdict(r) for r in refused)
    finally:
        gate.close()
        ctx.term()


def _start_broker(secret, encryption):
    cfg = {"secret": secret.hex(), "main": "tcp://127.0.0.1:0", "meta": "tcp://127.0.0.1:0",
           "heartbeat_timeout": 30, "encryption": encryption}
    proc = subprocess.Popen([sys.executable, "-m", "scoop.broker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    proc.stdin.write((json.dumps(cfg) + "\n").encode())
    proc.stdin.flush()
    return proc, json.loads(proc.stdout.readline())["main_port"]


@pytest.mark.parametrize("encryption", [True, False], ids=["curve", "plain"])
def test_hundreds_of_workers_connecting_at_once_all_join(encryption):
    n = 400
    secret = P.new_secret()
    signer = P.Signer(secret)
    proc, port = _start_broker(secret, encryption)
    ctx = zmq.Context()
    ctx.max_sockets = n + 50
    socks = []
    try:
        addr = f"tcp://127.0.0.1:{port}"
        for _ in range(n):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.IDENTITY, b"t" + os.urandom(8).hex().encode())
            secure_client(s, secret, addr, encryption)
            s.connect(addr)
            socks.append(s)
        for k, s in enumerate(socks):
            hello = {"uid": s.getsockopt(zmq.IDENTITY)[1:].decode(), "role": "worker", "name": f"w{k}",
                     "host": "here", "pid": os.getpid()}
            P.send_records(s, signer, P.TO_BROKER, [(P.HELLO, json.dumps(hello).encode())])
        indexes = set()
        for s in socks:
            assert s.poll(60_000), "a worker got no welcome"
            recs = P.recv_verified(s, signer, P.FROM_BROKER)
            assert recs and recs[0].hdr[:1] == P.WELCOME
            indexes.add(json.loads(bytes(recs[0].body))["index"])
        assert len(indexes) == n
        assert proc.poll() is None
    finally:
        for s in socks:
            s.close(0)
        ctx.term()
        end_stdin_process(proc)
