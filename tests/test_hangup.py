"""A cut ends the connection it was meant for, never a later one given the same descriptor
number (scoop.hangup.identity): over real sockets, a real ZeroMQ ROUTER whose numbers the kernel
reuses, and the broker's own cut paths.  No processes: the abort the cut avoids is shown in
tests/test_peer_bounds.py, floods in tests/test_security.py."""
from __future__ import annotations

import os
import socket
import time

import pytest
import zmq

from scoop import _protocol as P
from scoop.hangup import end_connection, identity, same_connection
from scoop.peers import Peer


def _pair():
    """A connected TCP pair on loopback: (the broker's end, the peer's end)."""
    with socket.create_server(("127.0.0.1", 0)) as lst:
        peer = socket.create_connection(lst.getsockname())
        mine, _ = lst.accept()
    return mine, peer


def _alive(mine, peer):
    """Both directions of the pair still carry bytes."""
    peer.sendall(b"ping")
    mine.settimeout(5)
    assert mine.recv(4) == b"ping"
    mine.sendall(b"pong")
    peer.settimeout(5)
    assert peer.recv(4) == b"pong"


def _reuse(number):
    """A new connection whose broker end has descriptor ``number`` (the old one is closed)."""
    mine, peer = _pair()
    if mine.fileno() == number:  # the kernel gave it the lowest free number
        return mine, peer
    os.dup2(mine.fileno(), number)
    mine.close()
    return socket.socket(fileno=number), peer


def test_identity_names_the_socket_and_its_peer():
    mine, peer = _pair()
    with mine, peer:
        known = identity(mine.fileno())
        st = os.fstat(mine.fileno())
        assert known == (st.st_dev, st.st_ino, peer.getsockname())
        assert same_connection(mine.fileno(), known)
        assert identity(peer.fileno()) != known


def test_identity_of_what_is_no_socket_or_closed_is_none():
    r, w = os.pipe()
    os.close(w)
    assert identity(r) is None
    os.close(r)
    assert identity(r) is None
    assert not same_connection(r, None)
    assert not end_connection(r)


def test_a_cut_spares_a_later_connection_given_the_same_number():
    old, old_peer = _pair()
    number = old.fileno()
    known = identity(number)
    old.detach()
    os.close(number)
    old_peer.close()
    new, new_peer = _reuse(number)
    with new, new_peer:
        assert new.fileno() == number
        assert not same_connection(number, known)
        assert not end_connection(number, known)
        _alive(new, new_peer)  # untouched: both ways still open
        assert end_connection(number, identity(number))  # its own identity: cut
        new_peer.settimeout(5)
        new.settimeout(5)
        assert new.recv(10) == b""  # its input ended (SHUT_RD), and what it held was discarded


def test_a_cut_by_the_right_identity_ends_the_connection():
    mine, peer = _pair()
    with mine, peer:
        peer.sendall(b"x" * 100_000)
        assert end_connection(mine.fileno(), identity(mine.fileno()))
        mine.settimeout(5)
        assert mine.recv(10) == b""


def test_a_reset_connection_keeps_its_identity():
    """A peer that reset its connection: the socket has no peer address any more, and is still
    the same connection (the inode decides)."""
    mine, peer = _pair()
    with mine:
        known = identity(mine.fileno())
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        peer.close()  # a reset
        deadline = time.monotonic() + 5
        while identity(mine.fileno())[2] is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert identity(mine.fileno())[2] is None
        assert same_connection(mine.fileno(), known)


def _dropped(mon, fd, timeout):
    """Whether the monitor reports connection ``fd`` dropped within ``timeout`` seconds."""
    from zmq.utils.monitor import recv_monitor_message
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if mon.poll(50) and recv_monitor_message(mon)["value"] == fd:
            return True
    return False


def test_a_zmq_connection_that_took_a_cut_peers_number_survives_the_cut():
    """A ROUTER learns a peer's descriptor from its first message, the peer goes, and the kernel
    gives the number to the next connection (the lowest free number): a cut of the first peer
    by its number must leave the newcomer connected and talking."""
    ctx = zmq.Context()
    r = ctx.socket(zmq.ROUTER)
    r.setsockopt(zmq.LINGER, 0)
    r.setsockopt(zmq.ROUTER_MANDATORY, 1)
    port = r.bind_to_random_port("tcp://127.0.0.1")
    mon = r.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    socks = []

    def dealer(name):
        d = ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        d.setsockopt(zmq.IDENTITY, name)
        d.connect(f"tcp://127.0.0.1:{port}")
        socks.append(d)
        d.send(b"hello")
        assert r.poll(5000)
        ident = r.recv()
        assert ident == name
        return d, r.recv(copy=False).get(zmq.SRCFD)

    try:
        first, number = dealer(b"first")
        known = identity(number)
        first.close(0)
        assert _dropped(mon, number, 5.0)
        # new connections until one is given the number again (the first, nearly always)
        for i in range(50):
            d, fd = dealer(b"new%d" % i)
            if fd == number:
                break
        else:
            pytest.skip("the kernel gave the number to no new connection")
        newcomer = b"new%d" % i
        assert not end_connection(number, known)
        # the newcomer still talks both ways, and its connection did not drop
        r.send_multipart([newcomer, b"still there?"])
        assert d.poll(5000) and d.recv() == b"still there?"
        d.send(b"yes")
        assert r.poll(5000) and r.recv_multipart() == [newcomer, b"yes"]
        assert not _dropped(mon, number, 0.3)
        # and a cut with its own identity ends it
        assert end_connection(number, identity(number))
        assert _dropped(mon, number, 5.0)
    finally:
        r.disable_monitor()
        mon.close(0)
        for s in socks:
            s.close(0)
        r.close(0)
        ctx.term()


@pytest.fixture
def broker():
    """A broker that does not serve: its cut paths are called directly, on real sockets."""
    from scoop.broker import Broker
    ctx = zmq.Context()
    b = Broker(P.new_secret(), "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", context=ctx, log=lambda m: None)
    try:
        yield b
    finally:
        b.main.disable_monitor()
        b.monitor.close(0)
        b.main.close(0)
        b.meta.close()
        if b.bulk is not None:
            b.bulk.disable_monitor()
            b.bulk_monitor.close(0)
            b.bulk.close(0)
        b.gate.close()
        ctx.term()


def _peer(b, name):
    uid = os.urandom(8).hex().encode()
    return Peer(uid, 1, {"name": name}, b.core.dirty)


def test_the_broker_does_not_cut_a_newcomer_on_a_lost_peers_number(broker):
    b = broker
    old, old_peer = _pair()
    number = old.fileno()
    p = _peer(b, "w1")
    b._watch(b"t" + p.uid, number, p)
    old.detach()
    os.close(number)
    old_peer.close()
    new, new_peer = _reuse(number)  # its drop not read yet: the number is still filed as the peer's
    with new, new_peer:
        b._cut(b"t" + p.uid, None)  # its message failed the check
        assert b.cut == 0
        _alive(new, new_peer)


def test_the_broker_cuts_its_peers_own_connection(broker):
    b = broker
    mine, peer = _pair()
    with mine, peer:
        p = _peer(b, "w1")
        b._watch(b"t" + p.uid, mine.fileno(), p)
        b._cut(b"t" + p.uid, None)
        assert b.cut == 1
        mine.settimeout(5)
        assert mine.recv(10) == b""


def test_a_stale_message_on_another_peers_number_cuts_nothing(broker):
    """A message read after its connection ended carries a number given since to a peer the
    broker knows: failing the check, it must not cut that peer."""
    b = broker
    mine, peer = _pair()
    with mine, peer:
        p = _peer(b, "w1")
        b._watch(b"t" + p.uid, mine.fileno(), p)
        b._cut(b"tstranger", mine.fileno())
        assert b.cut == 0
        _alive(mine, peer)
        b._cut(b"t" + p.uid, mine.fileno())  # from the peer itself: cut
        assert b.cut == 1


def test_a_strangers_fresh_connection_is_cut(broker):
    b = broker
    mine, peer = _pair()
    with mine, peer:
        b._cut(b"tstranger", mine.fileno())
        assert b.cut == 1
        mine.settimeout(5)
        assert mine.recv(10) == b""


def test_a_lost_members_lane_spares_a_newcomer_on_its_number(broker):
    b = broker
    if b.pairing is None:
        pytest.skip("no bulk lane here")
    old, old_peer = _pair()
    number = old.fileno()
    p = _peer(b, "w1")
    b.bulk_fds[b"b" + p.uid] = (number, identity(number))
    old.detach()
    os.close(number)
    old_peer.close()
    new, new_peer = _reuse(number)
    with new, new_peer:
        b._forget_lane(p)
        assert b.cut == 0
        _alive(new, new_peer)


# ---- the reset filter, put on just before a handshake is admitted (scoop.hangup.Admissions) --------
def _filtered(sock) -> bool:
    return len(sock.getsockopt(socket.SOL_SOCKET, 26, 256)) > 0  # SO_GET_FILTER


def test_an_admission_waits_until_every_connection_accepted_before_it_is_filtered():
    """A reply waits for the probe's accept; by then the connection accepted earlier (whose
    handshake it admits) is filtered, and the reply goes."""
    from scoop.hangup import Admissions
    with socket.create_server(("127.0.0.1", 0)) as lst:
        port = lst.getsockname()[1]
        sent = []
        adm = Admissions(f"tcp://0.0.0.0:{port}", sent.append)
        peer = socket.create_connection(("127.0.0.1", port))
        mine, _ = lst.accept()
        with mine, peer:
            adm.accepted(mine.fileno())
            assert not _filtered(mine)
            adm.hold(["reply 1"])
            adm.hold(["reply 2"])
            assert sent == [] and adm.barriers == 1
            probe, _ = lst.accept()  # the barrier: this process's own connection
            with probe:
                adm.accepted(probe.fileno())
            assert _filtered(mine)
            assert sent == [["reply 1"]]  # the second came after the probe: a probe of its own
            assert adm.barriers == 2
            probe, _ = lst.accept()
            with probe:
                adm.accepted(probe.fileno())
            assert sent == [["reply 1"], ["reply 2"]] and adm.scans == 0
            later = socket.create_connection(("127.0.0.1", port))
            theirs, _ = lst.accept()
            with later, theirs:
                adm.accepted(theirs.fileno())
                assert not _filtered(theirs)  # no handshake admitted since: resets still pass


def test_an_admission_whose_probe_is_not_accepted_filters_every_connection_on_the_port():
    from scoop.hangup import Admissions
    with socket.create_server(("127.0.0.1", 0)) as lst:
        port = lst.getsockname()[1]
        sent = []
        adm = Admissions(f"tcp://127.0.0.1:{port}", sent.append, timeout=0.0)
        peer = socket.create_connection(("127.0.0.1", port))
        mine, _ = lst.accept()  # accepted, but never told (its accept event is late)
        with mine, peer:
            adm.hold(["reply"])
            assert sent == []
            adm.tick(time.monotonic() + 1)  # the probe was not told in time
            assert _filtered(mine) and sent == [["reply"]] and adm.scans == 1
            adm.close()


def test_a_dropped_connection_is_not_filtered_later():
    from scoop.hangup import Admissions
    adm = Admissions("tcp://127.0.0.1:1", lambda reply: None)
    adm.accepted(12345)
    adm.dropped(12345)
    assert not adm.unfiltered


def _broker_side(port) -> dict:
    """The broker's TCP sockets on ``port`` (listener aside), by state, from /proc/net/tcp."""
    states = {"01": "ESTABLISHED", "04": "FIN_WAIT1", "08": "CLOSE_WAIT", "09": "LAST_ACK"}
    got: dict = {}
    with open("/proc/net/tcp") as f:
        for line in list(f)[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] != "0A":
                st = states.get(fields[3], fields[3])
                got[st] = got.get(st, 0) + 1
    return got


@pytest.fixture
def serving():
    """A broker serving in a thread (CURVE on loopback, as across hosts)."""
    import threading

    from scoop.broker import Broker
    ctx = zmq.Context()
    secret = P.new_secret()
    b = Broker(secret, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", context=ctx, log=lambda m: None,
               heartbeat_timeout=10.0)
    thread = threading.Thread(target=b.serve, daemon=True)
    thread.start()
    socks = []
    try:
        yield b, secret, socks
    finally:
        b.stop_event.set()
        thread.join(10)
        for s in socks:
            s.close(0)
        ctx.term()


def test_strangers_that_reset_are_closed_at_once_and_members_drop_resets(serving):
    """200 connections that reset before any handshake: none stays open until the handshake
    bound (10 s here), none stays closing (FIN_WAIT1, for minutes when resets are dropped).
    A member's connections, admitted, carry the filter."""
    import struct
    b, secret, socks = serving
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", b.main_port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.sendall(b"\xff" + b"\0" * 8 + b"\x7f")  # the start of a greeting, then a reset
        s.close()
    deadline = time.monotonic() + 5
    while _broker_side(b.main_port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _broker_side(b.main_port) == {}
    from scoop.security import secure_client
    d = zmq.Context.instance().socket(zmq.DEALER)
    socks.append(d)
    d.setsockopt(zmq.LINGER, 0)
    uid = os.urandom(8).hex().encode()
    d.setsockopt(zmq.IDENTITY, b"t" + uid)
    secure_client(d, secret, f"tcp://127.0.0.1:{b.main_port}")
    d.connect(f"tcp://127.0.0.1:{b.main_port}")
    hello = {"uid": uid.decode(), "role": "worker", "name": "w", "host": "h", "host_key": 1,
             "pid": os.getpid()}
    import json
    P.send_records(d, P.Signer(secret), P.TO_BROKER, [(P.HELLO, json.dumps(hello).encode())])
    assert d.poll(10000), "no welcome"
    deadline = time.monotonic() + 5
    while not b.fds_of.get(uid) and time.monotonic() < deadline:
        time.sleep(0.01)
    (fd,) = b.fds_of[uid]
    s = socket.socket(fileno=fd)
    try:
        assert _filtered(s)
    finally:
        s.detach()
    assert b.admissions.barriers >= 1 and b.admissions.scans == 0


def test_the_meta_streams_connections_drop_resets(serving):
    """The meta stream has no heartbeats, but a view's PING read before its reset aborts
    libzmq the same way: its connections carry the filter from accept."""
    b, _, _ = serving
    with socket.create_connection(("127.0.0.1", b.meta_port)) as c:
        deadline = time.monotonic() + 5
        found = []
        while not found and time.monotonic() < deadline:
            for name in os.listdir("/proc/self/fd"):
                try:
                    s = socket.socket(fileno=int(name))
                except (OSError, ValueError):
                    continue
                try:
                    if (s.family == socket.AF_INET and s.type == socket.SOCK_STREAM
                            and not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                            and s.getsockname()[1] == b.meta_port and s.getpeername() == c.getsockname()):
                        found.append(_filtered(s))
                except OSError:
                    pass
                finally:
                    s.detach()
        assert found == [True]


def test_numbers_closed_lately_are_told_apart():
    from scoop.hangup import Reused
    r = Reused()
    r.closed(5)
    assert r.lately(5) and not r.lately(6)
