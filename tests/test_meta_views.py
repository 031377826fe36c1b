"""The broker's meta socket (scoop.meta.Views) and its views, in one process with real sockets:
who gets registered, what a view may send, and what the broker keeps for a view that does not
read.  No broker process: the broker's loop is played by ``_pump``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
import pytest
import zmq

from scoop import _protocol as P
from scoop import meta as M
from scoop.security import Authenticator, keys, secure_client

SECRET = os.urandom(32)


@pytest.fixture(params=[True, False], ids=["encrypted", "plain"])
def views(request):
    ctx = zmq.Context()
    auth = Authenticator(ctx, SECRET)
    v = M.Views(ctx, SECRET, "tcp://127.0.0.1:0", 3.0, request.param)
    port = v.sock.bind_to_random_port("tcp://127.0.0.1")
    v.address = f"tcp://127.0.0.1:{port}"
    v.encryption = request.param
    v.ctx = ctx
    socks = []
    v.opened = socks
    try:
        yield v
    finally:
        for s in socks:
            s.close(0)
        v.close()
        auth.stop()
        ctx.term()


def _view(v, secret=SECRET):
    s = M.open_view(v.ctx, secret, v.address, v.encryption)
    v.opened.append(s)
    return s


def _pump(v, until, seconds=10.0):
    """Reads the meta socket until ``until()`` (the broker does it in its loop)."""
    deadline = time.monotonic() + seconds
    while not until() and time.monotonic() < deadline:
        if v.sock.poll(20):
            v.read()
    return until()


def _received(s, signer, n=1, seconds=5.0):
    got = []
    deadline = time.monotonic() + seconds
    while len(got) < n and time.monotonic() < deadline:
        if s.poll(20):
            m = M.read_view(s, signer)
            if m is not None:
                got.append(m)
    return got


def test_a_view_says_hello_once_and_gets_every_message(views):
    signer = P.Signer(SECRET)
    a, b = _view(views), _view(views)
    assert _pump(views, lambda: len(views.views) == 2)
    views.send(P.STATUS, json.dumps({"tick": 1}).encode())
    views.send(P.EVENT, json.dumps({"event": "joined"}).encode())
    for s in (a, b):
        assert _received(s, signer, 2) == [("status", {"tick": 1}), ("event", {"event": "joined"})]


def test_a_hello_without_the_secret_registers_nothing_and_cuts_its_connection(views):
    # the token of an unencrypted cluster (or a member's CURVE key) lets it in, but its hello's
    # MAC is wrong
    s = views.ctx.socket(zmq.DEALER)
    views.opened.append(s)
    s.setsockopt(zmq.LINGER, 0)
    secure_client(s, SECRET, views.address, views.encryption)  # a valid handshake...
    s.connect(views.address)
    s.send(M.hello(P.Signer(os.urandom(32))))                   # ...but not the secret
    assert _pump(views, lambda: views.cut >= 1)
    assert not views.views


def test_no_more_views_than_the_bound(views):
    for _ in range(M.VIEWS_MAX + 5):
        _view(views)
    assert _pump(views, lambda: views.refused >= 5, 30)
    assert len(views.views) == M.VIEWS_MAX


def test_a_view_that_stops_reading_misses_messages_and_costs_a_bounded_queue(views):
    signer = P.Signer(SECRET)
    _idle, live = _view(views), _view(views)  # the first one never reads
    assert _pump(views, lambda: len(views.views) == 2)
    body = json.dumps({"pad": "x" * (256 << 10)}).encode()
    for _ in range(400):  # ~100 MB for the view that never reads
        views.send(P.STATUS, body)
        if live.poll(0):
            while _received(live, signer, 1, 0.01):
                pass
    print(f"missed by the idle view: {views.missed} of 400")
    assert views.missed > 300
    assert len(views.views) == 2  # slow is not gone
    while _received(live, signer, 1, 0.5):  # the live view reads what it was sent
        pass
    views.send(P.STATUS, b'{"tick": 2}')
    assert _received(live, signer, 1) == [("status", {"tick": 2})]


def test_a_view_that_is_gone_is_forgotten(views):
    s = _view(views)
    assert _pump(views, lambda: len(views.views) == 1)
    s.close(0)
    views.opened.remove(s)
    deadline = time.monotonic() + 10
    while views.views and time.monotonic() < deadline:
        views.send(P.STATUS, b"{}")
        time.sleep(0.05)
    assert not views.views


def test_a_view_that_keeps_talking_is_cut(views):
    s = _view(views)
    assert _pump(views, lambda: len(views.views) == 1)
    for _ in range(M.VIEW_SAYS_MAX + 10):
        s.send(os.urandom(200))
    assert _pump(views, lambda: views.cut >= 1)
    assert not views.views


def test_a_subscriber_says_hello_again_on_a_new_connection(views):
    """A view does not know its connection is new (the broker restarted its socket, a network
    blip): it says hello again after ``HELLO_AGAIN`` s of silence, and hears the stream again."""
    sub = M.MetaSubscriber(views.address, SECRET, views.ctx, views.encryption)
    sub.start()
    try:
        assert _pump(views, lambda: len(views.views) == 1)
        views.send(P.STATUS, json.dumps({"tick": 1, "workers": []}).encode())
        assert sub.wait_for(lambda s: s.get("tick") == 1, 5)["tick"] == 1
        port = int(views.address.rsplit(":", 1)[1])
        views.sock.close(0)
        again = M.Views(views.ctx, SECRET, views.address, 3.0, views.encryption)
        views.sock = again.sock
        views.views = again.views
        deadline = time.monotonic() + 10
        while True:  # the old listener closes in libzmq's own thread, soon
            try:
                views.sock.bind(f"tcp://127.0.0.1:{port}")
                break
            except zmq.ZMQError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert _pump(views, lambda: len(views.views) == 1, 4 * M.HELLO_AGAIN)
        views.send(P.STATUS, json.dumps({"tick": 2, "workers": []}).encode())
        snap = sub.wait_for(lambda s: s.get("tick") == 2, 5)
        assert snap["tick"] == 2
    finally:
        sub.stop(wait=True)


_ENDLESS_MESSAGE = r'''
import socket, struct, sys
port, token, total = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port))
# ZMTP 3.0 by hand: greeting, PLAIN HELLO with the token, INITIATE as a DEALER
s.sendall(b"\xff" + b"\0" * 8 + b"\x7f" + bytes([3, 0]) + b"PLAIN".ljust(20, b"\0") + b"\0" * 32)


def recvn(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise SystemExit("the broker closed the connection")
        b += c
    return b


def command(name, data):
    body = bytes([len(name)]) + name + data
    s.sendall(bytes([0x04, len(body)]) + body)


def reply():
    flags = recvn(1)[0]
    return recvn(struct.unpack(">Q", recvn(8))[0] if flags & 2 else recvn(1)[0])


recvn(64)
command(b"HELLO", bytes([5]) + b"scoop" + bytes([len(token)]) + token)
assert reply()[1:8] == b"WELCOME"
command(b"INITIATE", bytes([11]) + b"Socket-Type" + struct.pack(">I", 6) + b"DEALER")
assert reply()[1:6] == b"READY"
chunk = (bytes([0x01, 255]) + b"x" * 255) * 4000   # frames that all say "more follows"
for _ in range(total // len(chunk)):
    s.sendall(chunk)
'''


@pytest.mark.xfail(strict=True, reason="not bounded yet: libzmq counts a connection's receive bound "
                   "(RCVHWM) in whole messages, so the frames of a message that never ends pile up "
                   "in libzmq before the broker can read any of them (on every ZeroMQ socket, the "
                   "task port too); 1 GB sent grew a meta socket by ~2 GB")
def test_a_message_whose_frames_never_end_is_bounded(views):
    """A peer past the handshake that speaks ZMTP itself (here with the PLAIN token of an
    unencrypted cluster; a member could with its CURVE keys) sends one message whose frames
    never end: what the meta socket holds must stay bounded."""
    if views.encryption:
        pytest.skip("the hand-written peer speaks PLAIN only")
    me = psutil.Process()
    rss0 = me.memory_info().rss
    port = views.address.rsplit(":", 1)[1]
    p = subprocess.Popen([sys.executable, "-c", _ENDLESS_MESSAGE, port, keys(SECRET, False).token.decode(),
                          str(150 << 20)])
    peak = 0
    try:
        deadline = time.monotonic() + 60
        while p.poll() is None and time.monotonic() < deadline:
            if views.sock.poll(20):
                views.read()
            peak = max(peak, me.memory_info().rss - rss0)
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
    print(f"150 MB of frames of one message: the meta socket's process grew by {peak / 1e6:.0f} MB")
    assert peak < 64e6
