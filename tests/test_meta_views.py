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
from scoop import readahead as READ_AHEAD
from scoop.security import Authenticator, keys, secure_client

SECRET = os.urandom(32)
ENDLESS_PEER = os.path.join(os.path.dirname(__file__), "endless_peer.py")


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
        views.sock.disable_monitor()
        views.monitor.close(0)
        views.sock.close(0)
        again = M.Views(views.ctx, SECRET, views.address, 3.0, views.encryption)
        views.sock, views.monitor, views.unproven = again.sock, again.monitor, again.unproven
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


def test_a_message_whose_frames_never_end_is_cut(views):
    """A peer past the handshake that speaks ZMTP itself (with the PLAIN token of an unencrypted
    cluster, or a member's CURVE keys) sends one message whose frames never end: libzmq would
    keep them all, and the broker would never see one (scoop.readahead).  The connection is cut
    once libzmq read ``LIMIT`` bytes from it; what the socket's process held stays bounded."""
    me = psutil.Process()
    rss0 = me.memory_info().rss
    port = int(views.address.rsplit(":", 1)[1])
    k = keys(SECRET, views.encryption)
    cfg = {"port": port, "total": 1 << 30, "frame": 255}
    if views.encryption:
        cfg["curve"] = [k.server_public.decode(), k.client_public.decode(), k.client_secret.decode()]
    else:
        cfg["plain"] = k.token.decode()
    p = subprocess.Popen([sys.executable, ENDLESS_PEER, json.dumps(cfg)], stdout=subprocess.PIPE, text=True)
    peak = 0
    try:
        deadline = time.monotonic() + 60
        while p.poll() is None and time.monotonic() < deadline:
            if views.sock.poll(READ_AHEAD.INTERVAL * 1000):
                views.read()
            views.guard()  # the broker's loop does it every INTERVAL s
            peak = max(peak, me.memory_info().rss - rss0)
    finally:
        if p.poll() is None:
            p.kill()
        out = p.communicate()[0]
    sent = json.loads(out)["sent"]
    print(f"1 GB of frames of one message: cut after {sent / 1e6:.1f} MB; the meta socket's process "
          f"grew by {peak / 1e6:.0f} MB")
    assert views.cut == 1 and views.unproven.cut == 1
    assert sent < 64 << 20
    assert peak < 64e6
    assert not views.unproven.fds  # forgotten once cut


def test_a_view_proves_itself_with_its_hello(views):
    """A view's hello ends what is measured of its connection: a member is not bounded here."""
    _view(views)
    assert _pump(views, lambda: len(views.views) == 1)
    views.guard()
    assert not views.unproven.fds and views.cut == 0
