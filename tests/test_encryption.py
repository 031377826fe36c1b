"""Encrypted transport: keys derived from the secret, CURVE handshakes, split payload frames, and a
sniffer on the test hosts' link that sees nothing of a running cluster (real sshd hosts in
network namespaces, tests/netns.py)."""
from __future__ import annotations

import os
import secrets
import socket
import threading
import time

import numpy as np
import psutil
import pytest
import zmq

from scoop import _protocol as P
from scoop import futures, security
from scoop.options import ClusterOptions, OptionError

import tasklib as T
from conftest import PROGRAMS, origin_cluster, wait_idle
from netns import netns_hosts_fixture

# ---- keys and handshakes (no processes) --------------------------------------------------------


def test_the_bulk_lane_is_on_with_encryption_unless_switched_off(monkeypatch):
    from scoop import bulk
    monkeypatch.delenv(bulk.SWITCH, raising=False)
    assert bulk.enabled()
    for off in ("off", "OFF", "0", "no"):
        monkeypatch.setenv(bulk.SWITCH, off)
        assert not bulk.enabled()
    monkeypatch.setenv(bulk.SWITCH, "on")
    assert bulk.enabled()


def test_keys_are_derived_from_the_secret_and_differ_by_role():
    a, b = P.new_secret(), P.new_secret()
    ka, ka2, kb = security.Keys(a), security.Keys(a), security.Keys(b)
    assert (ka.server_public, ka.client_secret) == (ka2.server_public, ka2.client_secret)
    assert ka.server_public != kb.server_public and ka.client_public != kb.client_public
    assert ka.server_public != ka.client_public
    assert zmq.curve_public(ka.server_secret) == ka.server_public
    assert zmq.curve_public(ka.client_secret) == ka.client_public
    for key in (ka.server_secret, ka.client_secret, ka.token):
        assert a.hex().encode() not in key and a not in key


def test_only_tcp_is_the_network():
    assert security.is_network("tcp://127.0.0.1:5555") and security.is_network("tcp://10.0.0.1:1")
    assert not security.is_network("ipc://@scoop-abc") and not security.is_network("inproc://x")
    k = security.keys(P.new_secret(), True)
    assert k.curve("tcp://127.0.0.1:1") and not k.curve("ipc:///tmp/x")
    assert not security.keys(P.new_secret(), False).curve("tcp://127.0.0.1:1")


def test_encryption_option():
    assert ClusterOptions().encryption is True
    assert ClusterOptions(encryption="off").encryption is False
    assert ClusterOptions(encryption="ON").encryption is True
    assert ClusterOptions(encryption=False).encryption is False
    with pytest.raises(OptionError, match="encryption.*expected on or off, got 'maybe'"):
        ClusterOptions(encryption="maybe")


def _pair(server_secret, client_secret, server_enc=True, client_enc=True):
    """A CURVE/PLAIN server and a client in this process; True if a message gets through."""
    ctx = zmq.Context()
    auth = security.Authenticator(ctx, server_secret)
    try:
        srv = ctx.socket(zmq.ROUTER)
        srv.setsockopt(zmq.LINGER, 0)
        security.secure_server(srv, server_secret, "tcp://127.0.0.1", server_enc)
        port = srv.bind_to_random_port("tcp://127.0.0.1")
        addr = f"tcp://127.0.0.1:{port}"
        cli = ctx.socket(zmq.DEALER)
        cli.setsockopt(zmq.LINGER, 0)
        security.secure_client(cli, client_secret, addr, client_enc)
        cli.connect(addr)
        cli.send(b"hello")
        return bool(srv.poll(1000))
    finally:
        auth.stop()
        ctx.destroy(0)


def test_only_the_secret_completes_a_curve_handshake():
    s = P.new_secret()
    assert _pair(s, s)
    assert _pair(s, s, False, False)
    assert not _pair(s, P.new_secret())                 # another cluster's keys
    assert not _pair(s, s, True, False)                 # the PLAIN token where CURVE is demanded
    assert not _pair(s, s, False, True)


def test_a_curve_client_key_that_is_not_the_members_is_refused():
    """Knowing the broker's public key is not enough (Ironhouse): ZAP admits the members' key only."""
    s = P.new_secret()
    ctx = zmq.Context()
    auth = security.Authenticator(ctx, s)
    try:
        srv = ctx.socket(zmq.ROUTER)
        srv.setsockopt(zmq.LINGER, 0)
        security.secure_server(srv, s, "tcp://127.0.0.1")
        port = srv.bind_to_random_port("tcp://127.0.0.1")
        cli = ctx.socket(zmq.DEALER)
        cli.setsockopt(zmq.LINGER, 0)
        pub, sec = zmq.curve_keypair()
        cli.curve_serverkey = security.keys(s).server_public
        cli.curve_publickey, cli.curve_secretkey = pub, sec
        cli.connect(f"tcp://127.0.0.1:{port}")
        cli.send(b"hello")
        assert not srv.poll(1000)
    finally:
        auth.stop()
        ctx.destroy(0)


# ---- payload buffers larger than a frame ------------------------------------------------------------


@pytest.mark.parametrize("size", [P.FRAME_CHUNK + 1, 3 * P.FRAME_CHUNK, 5 * P.FRAME_CHUNK + 12345])
def test_large_buffers_travel_as_bounded_frames(size):
    a = np.frombuffer(bytearray(os.urandom(size)), dtype=np.uint8)
    box = P.Outbox()
    box.add(P.TID.pack(P.CANCEL, 1), packed=P.pack(a))
    data, frames = box.take()
    assert len(frames) == -(-size // P.FRAME_CHUNK)
    assert all(len(memoryview(f)) <= P.FRAME_CHUNK for f in frames)
    rec = P.parse(b"\0" * P.MAC_SIZE + data, [bytes(f) for f in frames])[0]
    assert rec.refs[0][0] & P.REF_SPLIT
    b = P.unpack(rec)
    assert np.array_equal(a, b) and b.flags.writeable


def test_a_large_pickle_stream_is_split_too():
    data = os.urandom(3 * P.FRAME_CHUNK)
    packed = P.packed_bytes(data)
    assert len(packed.frames) == 3 and packed.refs[0][0] & P.REF_SPLIT and packed.refs[0][0] & P.REF_BODY
    box = P.Outbox()
    box.add(P.TID.pack(P.CANCEL, 1), packed=packed)
    hdr, frames = box.take()
    rec = P.parse(b"\0" * P.MAC_SIZE + hdr, [bytes(f) for f in frames])[0]
    assert bytes(P.body_bytes(rec)) == data


@pytest.mark.parametrize("how", ["flip", "short", "swap", "missing", "extra"])
def test_a_tampered_split_buffer_is_refused(how):
    a = np.frombuffer(os.urandom(3 * P.FRAME_CHUNK), dtype=np.uint8)
    box = P.Outbox()
    box.add(P.TID.pack(P.CANCEL, 1), packed=P.pack(a))
    data, frames = box.take()
    frames = [bytearray(f) for f in frames]
    header = b"\0" * P.MAC_SIZE + data
    if how == "flip":
        frames[1][7] ^= 1
    elif how == "short":
        frames[1] = frames[1][:-1]
    elif how == "swap":
        frames[0], frames[1] = frames[1], frames[0]
    elif how == "missing":
        assert P.parse(header, frames[:-1]) is None
        return
    else:
        assert P.parse(header, frames + [b"x"]) is None
        return
    rec = P.parse(header, frames)[0]
    with pytest.raises(P.IntegrityError):
        P.unpack(rec)


# ---- a sniffer on the link -----------------------------------------------------------------------

hosts = netns_hosts_fixture(1)


class Sniffer:
    """Every frame that crosses the given interfaces (a raw AF_PACKET socket, root only), searched
    for needles as it arrives (with the end of the previous frame, for needles cut in two)."""

    def __init__(self, interfaces, needles: dict[str, bytes]):
        self.needles = needles
        self.found: dict[str, int] = {}
        self.bytes = 0
        self._stop = threading.Event()
        self._socks = []
        for name in interfaces:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
            s.bind((name, 0))
            s.settimeout(0.1)
            self._socks.append(s)
        self._threads = [threading.Thread(target=self._run, args=(s,), daemon=True) for s in self._socks]
        for t in self._threads:
            t.start()

    def _run(self, s):
        keep = max(len(n) for n in self.needles.values())
        tail = b""
        while not self._stop.is_set():
            try:
                pkt = s.recv(1 << 17)
            except (socket.timeout, OSError):
                continue
            self.bytes += len(pkt)
            hay = tail + pkt
            for label, needle in self.needles.items():
                if needle in hay:
                    self.found[label] = self.found.get(label, 0) + 1
            tail = pkt[-keep:]

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(2)
        for s in self._socks:
            s.close()


def _run_sniffed(hosts, encryption: bool):
    """A cluster whose one worker is on h1 runs a map with recognizable payloads (inline, a pickle
    stream frame, an out-of-band array frame, an array of several frames) while both links are
    sniffed.  Encrypted, the frames travel sealed on the bulk lanes (scoop.bulk) of the origin
    and the worker, the rest on CURVE."""
    from scoop import futures
    from scoop.cluster import Cluster

    import tasklib as T
    mark = b"SNIFFME-" + secrets.token_hex(8).encode()
    inline = mark * 10                                              # in the header's inline body
    stream = mark * (200_000 // len(mark))                          # a pickle stream frame (> 64 KiB)
    array = np.frombuffer(mark * (600_000 // len(mark)), dtype=np.uint8)  # an out-of-band frame (< 1 MiB)
    big = np.frombuffer(mark * (3_300_000 // len(mark)), dtype=np.uint8)  # split in frames of 1 MiB
    c = Cluster(hosts=["h1"], pythonpath=[PROGRAMS], connect_timeout=5, encryption=encryption)
    k = security.keys(c.secret, encryption)
    # listening from before the start: the token crosses the wire only in the handshakes
    needles = {"payload": mark, "secret": c.secret, "secret hex": c.secret.hex().encode(),
               "token": k.token, "server key": k.server_secret, "client key": k.client_secret,
               "meta stream": secrets.token_bytes(32)}   # this cluster's ports, once they are known
    sniffer = Sniffer([hosts.bridge, "lo"], needles)
    try:
        c.start()
        # this cluster's snapshots (others' clusters on this machine may publish in the clear)
        needles["meta stream"] = f'"main_port": {c.main_port}, "meta_port": {c.meta_port}'.encode()
        time.sleep(0.3)
        for _ in range(3):
            out = list(futures.map(T.ident, [inline, stream, array, big]))
            assert out[:2] == [inline, stream]
            assert np.array_equal(out[2], array) and np.array_equal(out[3], big)
        status = c.status()
        assert any(w["host"] == "h1" for w in status["workers"])  # the meta stream, over loopback
        t0 = time.time()
        status = c.meta.wait_for(lambda snap: snap.get("time", 0) > t0, 5)  # a snapshot from after the maps
        sniffer.lane_frames = status["totals"].get("bulk_frames", 0)
        time.sleep(0.5)
    finally:
        sniffer.stop()
        c.stop()
    return sniffer


def test_a_sniffer_on_the_link_sees_no_payload_token_or_secret(hosts, monkeypatch, no_leak):
    from scoop import bulk
    monkeypatch.setenv("HOME", hosts.home)
    monkeypatch.setenv(bulk.SWITCH, "on")
    plain = _run_sniffed(hosts, encryption=False)
    # the sniffer works: unencrypted, the payloads, the token and the meta stream are in plain view
    assert {"payload", "token", "meta stream"} <= set(plain.found), plain.found
    sniffed = _run_sniffed(hosts, encryption=True)
    print(f"sniffed {plain.bytes / 1e6:.1f} MB unencrypted (found {sorted(plain.found)}), "
          f"{sniffed.bytes / 1e6:.1f} MB encrypted (found {sorted(sniffed.found)})")
    assert sniffed.bytes > 1e6
    assert not sniffed.found, f"seen on the wire with encryption on: {sorted(sniffed.found)}"
    # the arguments' frames reached the broker sealed on a lane: 3 runs x (array, pickle stream)
    # (the namespaces share this machine: the 3.3 MB array goes through shared memory, and results
    # may go straight to the origin's same-host socket)
    assert plain.lane_frames == 0 and sniffed.lane_frames >= 3 * 2, sniffed.lane_frames


# ---- the bulk lane's pairing (no sockets) ------------------------------------------------------------


def _lane_message(sealer, obj, tid=1):
    """A signed-looking header and the bulk frames of one task whose payload is sealed for the lane."""
    box = P.Outbox()
    box.lane_ok = True
    box.add(P.TID.pack(P.CANCEL, tid), packed=P.pack(obj, seal=sealer))
    ((data, frames),) = box.take_messages()
    frames, lane = P.split_lane(frames)
    return b"\0" * P.MAC_SIZE + data, frames, lane


def _lane_setup(**bounds):
    from scoop._seal import Sealer
    from scoop.bulk import Pairing
    secret = P.new_secret()
    uid = os.urandom(8)
    pairing = Pairing(secret, **bounds)
    pairing.join(uid, 0.0)
    return secret, uid, Sealer(secret, uid), pairing


@pytest.mark.parametrize("order", ["header first", "frames first", "interleaved"])
def test_bulk_frames_pair_with_their_header_in_any_order(order):
    from scoop import bulk
    from scoop._seal import Sealer
    secret, uid, sealer, pairing = _lane_setup()
    a = np.frombuffer(os.urandom(3 * P.FRAME_CHUNK + 7), dtype=np.uint8)
    header, frames, lane = _lane_message(sealer, a)
    assert not frames and len(lane) == 4
    later, _, later_lane = _lane_message(sealer, "a small one after it")
    assert not later_lane
    out = []
    if order == "frames first":
        for fr in lane:
            assert pairing.frame(uid, fr, 1.0) == (bulk.OK, ())
        out.append(pairing.message(uid, "first", header, []))
        out.append(pairing.message(uid, "second", later, []))
    else:
        split = 0 if order == "header first" else 2
        for fr in lane[:split]:
            assert pairing.frame(uid, fr, 1.0)[0] is bulk.OK
        assert pairing.message(uid, "first", header, []) is None       # waits for its frames
        assert pairing.message(uid, "second", later, []) is None       # and what came after it waits too
        for fr in lane[split:-1]:
            assert pairing.frame(uid, fr, 1.0) == (bulk.OK, ())
        verdict, ready = pairing.frame(uid, lane[-1], 1.0)
        assert verdict is bulk.OK and [item for item, _ in ready] == ["first", "second"]
        out = [recs for _, recs in ready]
    rec = out[0][0]
    assert rec.lane and not rec.frames and rec.refs[0][0] & P.REF_LANE
    b = P.unpack(rec, seal=Sealer(secret, os.urandom(8)))
    assert np.array_equal(a, b)
    assert P.unpack(out[1][0]) == "a small one after it"
    assert pairing.held_bytes() == 0 and not pairing.senders[uid].frames


def test_a_record_from_the_lane_is_forwarded_in_the_message_to_a_receiver_without_one():
    from scoop._seal import Sealer
    secret, uid, sealer, pairing = _lane_setup()
    a = np.frombuffer(os.urandom(2 * P.FRAME_CHUNK), dtype=np.uint8)
    small = np.frombuffer(os.urandom(1000), dtype=np.uint8)  # stays in the pickle stream
    header, _, lane = _lane_message(sealer, (small, a, b"x" * 100_000))
    for fr in lane:
        pairing.frame(uid, fr, 1.0)
    (rec,) = pairing.message(uid, None, header, [])
    same_host, remote = P.Outbox(), P.Outbox()
    remote.lane_ok = True
    same_host.add_record(rec)
    remote.add_record(rec)
    (data, frames), = same_host.take_messages()
    assert [id(f) for f in frames] == [id(f) for f in lane]  # the same frame objects, in the message
    (fwd,) = P.parse(b"\0" * P.MAC_SIZE + data, frames)
    assert not any(kind & P.REF_LANE for kind, _, _ in fwd.refs)
    got = P.unpack(fwd, seal=Sealer(secret, os.urandom(8)))
    assert np.array_equal(got[0], small) and np.array_equal(got[1], a) and got[2] == b"x" * 100_000
    (data, frames), = remote.take_messages()
    frames, onlane = P.split_lane(frames)
    assert not frames and [id(f) for f in onlane] == [id(f) for f in lane]


def test_forged_replayed_or_foreign_bulk_frames_are_refused_unkept():
    from scoop import bulk
    from scoop._seal import PREFIX, Sealer
    secret, uid, sealer, pairing = _lane_setup()
    _, _, lane = _lane_message(sealer, np.zeros(P.FRAME_CHUNK // 4))
    stranger = Sealer(P.new_secret(), uid)                          # the right uid, not the secret
    _, _, forged = _lane_message(stranger, np.zeros(P.FRAME_CHUNK // 4))
    other = os.urandom(8)
    _, _, not_member = _lane_message(Sealer(secret, other), np.zeros(1000 * 100))
    tampered = bytearray(lane[0])
    tampered[20] ^= 1                                               # the counter, under the MAC
    grown = bytes(lane[0]) + b"x"
    for fr in (forged[0], tampered, grown, not_member[0], b"short", b"\0" * PREFIX):
        assert pairing.frame(uid, fr, 1.0) == (bulk.BAD, ())
    assert pairing.frame(other, not_member[0], 1.0) == (bulk.BAD, ())  # not a member here
    assert pairing.frame(uid, lane[0], 1.0)[0] is bulk.OK
    assert pairing.frame(uid, lane[0], 1.0) == (bulk.BAD, ())       # replayed
    assert pairing.held_bytes() == len(lane[0])
    assert pairing.frame(uid, sealer.hello(), 1.0)[0] is bulk.HELLO


def test_what_waits_in_the_pairing_is_bounded_and_a_lost_member_leaves_nothing():
    from scoop import bulk
    secret, uid, sealer, pairing = _lane_setup(max_unpaired=3 * P.FRAME_CHUNK, max_waiting=4096, max_wait=5.0)
    a = np.zeros(8 * P.FRAME_CHUNK // 8)
    header, _, lane = _lane_message(sealer, a)
    # frames nobody asked for: bounded in bytes (the sender's are all dropped, its connection cut)
    verdicts = [pairing.frame(uid, fr, 1.0)[0] for fr in lane[:4]]
    assert verdicts == [bulk.OK, bulk.OK, bulk.BAD, bulk.OK] and pairing.held_bytes() == len(lane[3])
    # frames a waiting header names are bounded by that header's signed sizes, not counted as unpaired
    header, _, lane = _lane_message(sealer, a)
    assert pairing.message(uid, "big", header, []) is None
    for fr in lane[:-1]:
        assert pairing.frame(uid, fr, 2.0)[0] is bulk.OK
    # messages waiting behind it: bounded in header bytes
    small, _, _ = _lane_message(sealer, "x" * 3000)
    assert pairing.message(uid, "small", small, []) is None
    assert pairing.message(uid, "small", small, []) is None         # over max_waiting: all dropped
    assert pairing.held_bytes() == 0
    # and in time: no frame for max_wait seconds
    header, _, lane = _lane_message(sealer, a)
    assert pairing.message(uid, "late", header, []) is None
    pairing.frame(uid, lane[0], 10.0)
    assert pairing.expire(14.0) == [] and pairing.expire(16.0) == [uid]
    assert pairing.held_bytes() == 0
    # a member that sent no frame for longer than max_wait: its next header's frames come on
    # another connection, maybe later than the header; the wait counts from the header
    header, _, lane = _lane_message(sealer, a)
    assert pairing.message(uid, "after a quiet spell", header, [], now=60.0) is None
    assert pairing.expire(60.1) == [] and pairing.held_bytes() > 0
    for fr in lane[:-1]:
        assert pairing.frame(uid, fr, 60.2) == (bulk.OK, ())
    (item, _), = pairing.frame(uid, lane[-1], 60.3)[1]
    assert item == "after a quiet spell" and pairing.held_bytes() == 0
    # a member lost mid-transfer: everything of it goes
    header, _, lane = _lane_message(sealer, a)
    assert pairing.message(uid, "cut short", header, []) is None
    pairing.frame(uid, lane[0], 20.0)
    pairing.forget(uid)
    assert pairing.held_bytes() == 0 and uid not in pairing.senders
    assert pairing.frame(uid, lane[1], 20.0) == (bulk.BAD, ())


def test_the_receiver_takes_bulk_frames_in_any_order_and_gives_up_in_time():
    from scoop._seal import Sealer
    from scoop.bulk import Inbox
    secret, uid, sealer, _ = _lane_setup()
    a = np.frombuffer(os.urandom(2 * P.FRAME_CHUNK), dtype=np.uint8)
    h1, _, l1 = _lane_message(sealer, a)
    h2, _, l2 = _lane_message(sealer, a[::-1].copy())
    arriving = list(l2) + list(l1)                                   # the second message's frames first
    inbox = Inbox(lambda timeout: arriving.pop(0) if arriving else None, wait=0.0)
    opener = Sealer(secret, os.urandom(8))
    (r1,) = P.parse(h1, [], lane=inbox)
    inbox.claim([r1])
    assert np.array_equal(P.unpack(r1, seal=opener), a) and len(inbox.store) == 2
    (r2,) = P.parse(h2, [], lane=inbox)
    inbox.claim([r2])
    assert np.array_equal(P.unpack(r2, seal=opener), a[::-1]) and not inbox.store
    assert P.parse(h1, [], lane=inbox) is P.MISSING                  # never comes: given up
    assert P.parse(h1, []) is None                                   # no lane at all: malformed


def _lane_pair(router_opts=(), dealer_opts=()):
    """A ROUTER bound on loopback and a DEALER connected to it, up: (ctx, router, dealer, monitor
    of the dealer)."""
    ctx = zmq.Context()
    r = ctx.socket(zmq.ROUTER)
    d = ctx.socket(zmq.DEALER)
    for sock, opts in ((r, router_opts), (d, dealer_opts)):
        sock.setsockopt(zmq.LINGER, 0)
        for opt, val in opts:
            sock.setsockopt(opt, val)
    r.setsockopt(zmq.ROUTER_MANDATORY, 1)
    d.setsockopt(zmq.IDENTITY, b"bmember")
    d.setsockopt(zmq.RECONNECT_IVL, -1)
    port = r.bind_to_random_port("tcp://127.0.0.1")
    mon = d.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED)
    d.connect(f"tcp://127.0.0.1:{port}")
    d.send(b"hello")
    assert r.recv_multipart() == [b"bmember", b"hello"]
    return ctx, r, d, mon


def test_a_lane_outlives_a_broker_that_stops_reading_it_for_longer_than_the_heartbeat_timeout():
    """A busy broker is not a lost lane.  libzmq stops reading a connection whose queue is full;
    with heartbeats it then drops it once a timeout passes without a message decoded, discarding
    what it had read ahead (and aborts on ``!_io_error`` when that peer hangs up meanwhile).  A
    lane, set up as the broker and members set theirs, keeps every frame through a pause of four
    timeouts."""
    from scoop import bulk
    from scoop.monitor import events
    timeout = 0.5
    ctx = zmq.Context()
    r = ctx.socket(zmq.ROUTER)
    d = ctx.socket(zmq.DEALER)
    bulk.tune(r, "broker", timeout)
    bulk.tune(d, "member", timeout)
    r.setsockopt(zmq.MAXMSGSIZE, -1)
    r.setsockopt(zmq.LINGER, 0)
    d.setsockopt(zmq.LINGER, 0)
    dropped = r.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        port = r.bind_to_random_port("tcp://127.0.0.1")
        d.connect(f"tcp://127.0.0.1:{port}")
        frames = [os.urandom(64 << 10) for _ in range(bulk.QUEUE + 4 * bulk.READ_AHEAD)]
        outlet_mon = d.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        sender = threading.Thread(target=bulk.Outlet(d, outlet_mon).send, args=(frames,))
        sender.start()
        time.sleep(4 * timeout)  # the broker busy elsewhere: its queue from this lane is full
        got = []
        while len(got) < len(frames) and r.poll(10_000):
            got.append(r.recv_multipart()[1])
        sender.join(10)
        assert got == frames and not list(events(dropped))
        outlet_mon.close(0)
    finally:
        dropped.close(0)
        ctx.destroy(0)


def test_a_member_waits_while_its_lane_is_full_and_stops_once_it_is_gone():
    """Back-pressure, not drops: a broker that does not read makes the member's sends wait (its
    queue holds ``QUEUE`` frames); a lane that drops ends the wait, and nothing more is sent."""
    from scoop import bulk
    ctx, r, d, mon = _lane_pair(router_opts=[(zmq.RCVHWM, 1)], dealer_opts=[(zmq.SNDHWM, bulk.QUEUE)])
    waited = []
    guard = time.monotonic() + 60  # a guard against a hang, not a timing assertion

    def stop():
        waited.append(1)
        return len(waited) > 20 or time.monotonic() > guard

    try:
        frame = np.zeros(P.FRAME_CHUNK, dtype=np.uint8)
        outlet = bulk.Outlet(d, mon, stop)
        assert not outlet.send([frame] * 4096)  # 4 GiB: far more than the queues and the kernel hold
        assert len(waited) > 20 and outlet.alive()  # it waited, for a lane that is still there
        r.close(0)                                   # the broker's end goes
        waited.clear()
        guard = time.monotonic() + 60
        outlet.stop = lambda: time.monotonic() > guard
        assert not outlet.send([frame] * 4096)
        assert not outlet.alive() and time.monotonic() < guard  # it saw the lane go
    finally:
        mon.close(0)
        ctx.destroy(0)


def test_the_broker_queues_a_bounded_number_of_frames_on_a_lane_and_keeps_the_rest():
    """The broker's end of a lane takes ``SNDHWM`` frames; a message whose frames do not all fit
    keeps the rest (and its own frames, in order) to send next time, and its header waits for
    them.  A lane that is gone names its receiver."""
    from scoop.broker import _send_lane
    ctx, r, d, mon = _lane_pair(router_opts=[(zmq.SNDHWM, 2)], dealer_opts=[(zmq.RCVHWM, 1)])
    try:
        own = [b"own-%d" % i for i in range(2)]
        lane_frames = [P.LaneFrame(os.urandom(256 << 10)) for _ in range(64)]
        frames = [own[0], *lane_frames, own[1]]
        gone = []
        assert not _send_lane((r, b"bmember", gone), frames)   # 16 MiB: more than the queues hold
        sent = 64 - sum(type(f) is P.LaneFrame for f in frames)
        assert 0 < sent < 64 and frames[0] == own[0] and frames[-1] == own[1]
        got = []
        while True:
            while d.poll(100):
                got.append(d.recv())
            if _send_lane((r, b"bmember", gone), frames):
                break
        while d.poll(500):
            got.append(d.recv())
        assert got == [bytes(f.frame) for f in lane_frames] and frames == own and not gone
        frames = [P.LaneFrame(b"x" * 100), own[0]]
        assert _send_lane((r, b"bnobody", gone), frames) and frames == [own[0]] and gone == [b"nobody"]
    finally:
        mon.close(0)
        ctx.destroy(0)


# ---- the bulk lane with real processes -----------------------------------------------------------------

_REMOTE_ORIGIN = r"""
import json, os, sys, time
import numpy as np
from scoop import _runtime, _shm
# this origin poses as another host: no shared memory and no same-host socket to the workers
_runtime.host_key = lambda: 0x5C00B
_shm.available = lambda: False
_runtime.direct_available = lambda: False
from scoop import futures, shared
from scoop.cluster import Cluster
import tasklib as T
sizes = [70_000, 1 << 20, (5 << 20) + 123]
rng = np.random.default_rng(7)
arrays = [rng.integers(0, 255, n, dtype=np.uint8) for n in sizes] + [rng.random(3 << 17)]
with Cluster(2, pythonpath=[sys.argv[1]], encryption=sys.argv[2] == "on") as c:
    shared.setConst(table=arrays[-1])
    for _ in range(2):
        out = list(futures.map(T.ident, arrays))
        assert all(np.array_equal(a, b) for a, b in zip(arrays, out)), "a payload changed on the way"
    assert np.array_equal(shared.getConst("table"), arrays[-1])
    t0 = time.time()
    print(json.dumps(c.meta.wait_for(lambda snap: snap.get("time", 0) > t0 + 0.3, 5)["totals"]))
"""


@pytest.mark.parametrize("encryption", ["on", "off"])
def test_a_member_on_another_host_sends_and_receives_large_arrays_on_the_bulk_lane(encryption, no_leak):
    """An origin posing as another host (no shared memory, no same-host socket: every payload
    crosses TCP, through the broker, to the workers and back): numpy arrays of one frame, of
    exactly one chunk and of several chunks arrive intact both ways.  Encrypted, they travel
    sealed on the bulk lanes (the broker counts the frames); off, there is no lane."""
    import json
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([PROGRAMS, os.environ.get("PYTHONPATH", "")]),
               SCOOP_BULK_LANE="on")
    r = subprocess.run([sys.executable, "-c", _REMOTE_ORIGIN, PROGRAMS, encryption], env=env,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    totals = json.loads(r.stdout.strip().splitlines()[-1])
    frames = totals.get("bulk_frames", 0)
    # 2 maps x (1 + 1 + 6 + 3 frames) each way, and the constant, through the lanes
    assert frames >= 2 * 11 * 2 if encryption == "on" else frames == 0, totals
    assert totals.get("bulk_held", 0) == 0


# ---- the bulk lane (scoop.bulk) on a cluster of its own: members only, checked before kept, bounded ----
@pytest.fixture(scope="module", params=[True, False], ids=["encrypted", "plain"])
def lane_cluster(request):
    """A 2-worker cluster whose origin is this process, its broker offering the bulk lane."""
    from scoop import bulk
    old = os.environ.get(bulk.SWITCH)
    os.environ[bulk.SWITCH] = "on"  # read by the broker the cluster starts
    try:
        gen = origin_cluster(2, encryption=request.param)
        c = next(gen)
    finally:
        if old is None:
            del os.environ[bulk.SWITCH]
        else:
            os.environ[bulk.SWITCH] = old
    yield c
    next(gen, None)


def _main_addr(cluster):
    return f"tcp://127.0.0.1:{cluster.main_port}"


def _quiet(cluster):
    cluster.relay.flush(0.3)
    return {label: tail for label, tail in cluster.relay.tails.items() if tail}

def _bulk_addr(cluster):
    port = cluster.status()["broker"].get("bulk_port", 0)
    return f"tcp://127.0.0.1:{port}" if port else None


def _wait_totals(cluster, pred, timeout=10.0):
    snap = cluster.meta.wait_for(lambda s: pred(s["totals"]), timeout)
    return snap["totals"]


def _bulk_socket(ctx, addr, setup):
    """A DEALER to the bulk port set up by ``setup``; (socket, monitor) with its handshake's fate."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 4)
    s.setsockopt(zmq.RECONNECT_IVL, 20)
    s.setsockopt(zmq.IDENTITY, b"b" + os.urandom(8).hex().encode())
    setup(s)
    mon = s.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                               | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    s.connect(addr)
    return s, mon


def _admitted(mon, timeout=3.0) -> bool:
    from scoop.monitor import events
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if mon.poll(100):
            for event, _ in events(mon):
                return event == zmq.EVENT_HANDSHAKE_SUCCEEDED
    return False


def test_the_bulk_lane_admits_members_only_and_drops_what_it_cannot_check(lane_cluster):
    """The bulk port has no CURVE (its frames are sealed end to end), so it is guarded otherwise:
    a connection with no credentials, with the PLAIN token, or with a member's ticket used a
    second time (one seen on the wire) fails its handshake; a ticketed connection whose frames'
    prefixes do not check is cut at its first frame.  Meanwhile 1 MiB frames and multi-part
    messages pour in: the broker grows by less than 64 MB and maps stay correct."""
    from scoop.security import PLAIN_USER, bulk_ticket, keys
    cluster = lane_cluster
    wait_idle(cluster)
    addr = _bulk_addr(cluster)
    if not cluster.options.encryption:
        assert addr is None  # --encryption off: today's path, no lane
        return
    broker = psutil.Process(cluster.broker_proc.pid)
    rss0 = broker.memory_info().rss
    before = cluster.status()["totals"]
    ctx = zmq.Context()
    secret = cluster.secret
    ticket = bulk_ticket(secret, os.urandom(8))

    def token(s):
        s.plain_username, s.plain_password = PLAIN_USER, keys(secret).token

    def with_ticket(s):
        s.plain_username, s.plain_password = b"scoop-bulk", ticket

    try:
        tries = {"no credentials": _bulk_socket(ctx, addr, lambda s: None),
                 "the handshake token": _bulk_socket(ctx, addr, token),
                 "a fresh ticket": _bulk_socket(ctx, addr, with_ticket)}
        assert _admitted(tries["a fresh ticket"][1])
        tries["the same ticket again"] = _bulk_socket(ctx, addr, with_ticket)
        fates = {label: _admitted(mon) for label, (_, mon) in tries.items() if label != "a fresh ticket"}
        assert not any(fates.values()), fates
        junk = [os.urandom(1 << 20)]
        running = futures.map(T.work_ms, [2] * 300, range(300))
        peak = rss0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            for label, (s, _) in tries.items():
                try:
                    if label == "a fresh ticket":
                        s.send(junk[0], zmq.NOBLOCK)         # a frame whose prefix is no member's
                    else:
                        s.send_multipart(junk * 8, zmq.NOBLOCK)
                except zmq.Again:
                    pass
            peak = max(peak, broker.memory_info().rss)
            time.sleep(0.002)
        assert list(running) == list(range(300))
        totals = cluster.status()["totals"]
    finally:
        ctx.destroy(0)
    growth = (peak - rss0) / 1e6
    print(f"bulk lane: handshakes {fates}; broker growth {growth:.1f} MB; "
          f"{totals['cut_connections'] - before['cut_connections']} connections cut")
    assert growth < 64, f"the broker grew by {growth:.0f} MB"
    assert totals["cut_connections"] > before["cut_connections"]
    assert totals["bulk_held"] == 0
    assert totals["lost_workers"] == before["lost_workers"] and len(cluster.status()["workers"]) == 2
    assert not _quiet(cluster)


def test_a_member_lost_mid_transfer_leaves_nothing_in_the_broker(lane_cluster):
    """A member (a real connection with the secret, over TCP) sends the header of an 8 MiB payload
    and half its sealed frames, then dies: the broker held the half (bounded by the header's
    signed size) and holds nothing once the member is lost.  Frames sent before their header
    wait too, and go the same way."""
    from scoop._runtime import Runtime
    cluster = lane_cluster
    if not cluster.options.encryption:
        pytest.skip("no bulk lane with --encryption off")
    wait_idle(cluster)
    ctx = zmq.Context()
    rt = Runtime(_main_addr(cluster), cluster.secret, "observer", context=ctx)
    try:
        rt.connect(10)
        assert rt.lane_sock is not None, "the member opened no bulk lane"
        a = np.zeros(1 << 20)  # 8 MiB: 8 sealed frames
        box = P.Outbox()
        box.lane_ok = True
        box.add(P.TID.pack(P.ASK, 0), packed=P.pack(a, seal=rt.sealer))
        ((data, frames),) = box.take_messages()
        frames, lane = P.split_lane(frames)
        assert not frames and len(lane) == 8
        with rt.lock:
            rt.sock.send(rt.signer.mac(P.TO_BROKER, data) + data)
            for fr in lane[:4]:
                rt.lane_sock.send(fr, copy=False)
            box.add(P.TID.pack(P.ASK, 0), packed=P.pack(a, seal=rt.sealer))  # only frames, no header
            for fr in P.split_lane(box.take_messages()[0][1])[1][:2]:
                rt.lane_sock.send(fr, copy=False)
        held = _wait_totals(cluster, lambda t: t.get("bulk_held", 0) >= 2 << 20)["bulk_held"]
        assert held >= 2 << 20
    finally:
        if rt.control is not None:
            rt.control.stop()
        for s in (rt.sock, rt.lane_sock):
            if s is not None:
                s.close(0)
        ctx.destroy(0)
    totals = _wait_totals(cluster, lambda t: t.get("bulk_held", 1) == 0)
    print(f"held {held / 2**20:.1f} MiB of a member's half-sent payloads; after its loss "
          f"{totals['bulk_held']}")
    assert totals["bulk_held"] == 0
    assert list(futures.map(T.square, range(10))) == [x * x for x in range(10)]


def cut_own_lane(mark):
    """In a worker: ends its own bulk-lane connection, as a drop on the network would (its
    CURVE connection stays up, and its lane is not reopened).  Once: the task runs again
    elsewhere when its worker is lost before the broker heard it was done."""
    import socket

    from scoop import _globals
    rt = _globals.current()
    if rt is None or rt.lane_sock is None:
        return None
    try:
        os.close(os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return -1
    port = int(rt.lane_sock.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1])
    cut = 0
    for c in psutil.Process().net_connections(kind="tcp"):
        if c.raddr and c.raddr.port == port and c.fd >= 0:
            s = socket.socket(fileno=os.dup(c.fd))
            try:
                s.shutdown(socket.SHUT_RDWR)
            finally:
                s.close()
            cut += 1
    return os.getpid() if cut else None


def array_total(a):
    return float(a.sum())


def nested_total(i):
    """In a worker: sub-tasks whose 1.6 MB arguments go through the broker, on the lanes."""
    return sum(futures.map(array_total, [np.full(200_000, i, dtype=np.float64) for _ in range(4)]))


def test_a_member_whose_lane_drops_is_lost_and_nothing_it_held_is_lost(lane_cluster, tmp_path):
    """A worker's bulk lane drops while its CURVE connection stays up: frames sent to or by it on
    the lane are gone, so their headers can never complete.  The broker declares the worker lost
    through the normal path (its tasks run elsewhere, it is fenced), so every task with sealed
    arguments on the lane still gives its result, once; nothing waits 20 s to be dropped."""
    cluster = lane_cluster
    if not cluster.options.encryption:
        pytest.skip("no bulk lane with --encryption off")
    wait_idle(cluster)
    before = cluster.status()["totals"]
    cutter = futures.submit(cut_own_lane, str(tmp_path / "cut")).result(timeout=30)
    assert cutter is not None, "the worker had no bulk lane to cut"
    fs = [futures.submit(nested_total, i) for i in range(20)]
    done, not_done = futures.wait(fs, timeout=60)
    assert not not_done, f"{len(not_done)} of {len(fs)} tasks never gave a result"
    assert [f.result() for f in fs] == [800_000.0 * i for i in range(20)]
    after = _wait_totals(cluster, lambda t: t["lost_workers"] > before["lost_workers"])
    assert after["lost_workers"] == before["lost_workers"] + 1
    assert after.get("bulk_held", 0) == 0 or _wait_totals(cluster, lambda t: t.get("bulk_held", 1) == 0)
