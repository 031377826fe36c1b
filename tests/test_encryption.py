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
import pytest
import zmq

from scoop import _protocol as P
from scoop import security
from scoop.options import ClusterOptions, OptionError

from conftest import PROGRAMS
from netns import netns_hosts_fixture

# ---- keys and handshakes (no processes) --------------------------------------------------------


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
    stream frame, an out-of-band array frame) while both links are sniffed."""
    from scoop import futures
    from scoop.cluster import Cluster

    import tasklib as T
    mark = b"SNIFFME-" + secrets.token_hex(8).encode()
    inline = mark * 10                                              # in the header's inline body
    stream = mark * (200_000 // len(mark))                          # a pickle stream frame (> 64 KiB)
    array = np.frombuffer(mark * (600_000 // len(mark)), dtype=np.uint8)  # an out-of-band frame (< 1 MiB)
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
            out = list(futures.map(T.ident, [inline, stream, array]))
            assert out[:2] == [inline, stream] and np.array_equal(out[2], array)
        assert any(w["host"] == "h1" for w in c.status()["workers"])  # the meta stream, over loopback
        time.sleep(0.5)
    finally:
        sniffer.stop()
        c.stop()
    return sniffer


def test_a_sniffer_on_the_link_sees_no_payload_token_or_secret(hosts, monkeypatch, no_leak):
    monkeypatch.setenv("HOME", hosts.home)
    plain = _run_sniffed(hosts, encryption=False)
    # the sniffer works: unencrypted, the payloads, the token and the meta stream are in plain view
    assert {"payload", "token", "meta stream"} <= set(plain.found), plain.found
    sniffed = _run_sniffed(hosts, encryption=True)
    print(f"sniffed {plain.bytes / 1e6:.1f} MB unencrypted (found {sorted(plain.found)}), "
          f"{sniffed.bytes / 1e6:.1f} MB encrypted (found {sorted(sniffed.found)})")
    assert sniffed.bytes > 1e6
    assert not sniffed.found, f"seen on the wire with encryption on: {sorted(sniffed.found)}"
