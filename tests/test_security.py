"""An intruder on the machine, without the cluster's secret, cannot make any process unpickle
anything, stall or grow the broker, or change which workers are considered alive (real
processes), with encryption on (CurveZMQ) and off (PLAIN with a token that travels in the clear)."""
from __future__ import annotations

import json
import os
import pickle
import random
import socket
import statistics
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest
import zmq

from scoop import _protocol as P
from scoop import futures
from scoop.meta import VIEWS_MAX, open_view
from scoop.meta import hello as meta_hello
from scoop.security import secure_client

import tasklib as T
from conftest import PROGRAMS, origin_cluster, wait_idle


@pytest.fixture(scope="module", params=[True, False], ids=["encrypted", "plain"])
def cluster(request):
    yield from origin_cluster(2, encryption=request.param)


def _main_addr(cluster):
    return f"tcp://127.0.0.1:{cluster.main_port}"


class _Trap:
    """Unpickling this creates a file: proof that a process decoded hostile bytes."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _timed_map(n=400, ms=5):
    t0 = time.monotonic()
    assert list(futures.map(T.work_ms, [ms] * n, range(n))) == list(range(n))
    return time.monotonic() - t0


def _quiet(cluster):
    """Nothing the broker or a worker printed (the relay keeps their stderr)."""
    cluster.relay.flush(0.3)
    return {label: tail for label, tail in cluster.relay.tails.items() if tail}


def _in_background(fn):
    stop = threading.Event()
    t = threading.Thread(target=fn, args=(stop,), daemon=True)
    t.start()
    return stop, t


def test_strangers_cannot_even_connect(cluster, tmp_path):
    """No handshake token: big frames, garbage and the raw trap never reach the broker's code."""
    wait_idle(cluster)
    base = _timed_map()
    lost = cluster.status()["totals"]["lost_workers"]
    dropped = cluster.status()["totals"]["dropped_messages"]
    trap_file = tmp_path / "pwned"
    trap = pickle.dumps(_Trap(str(trap_file)))
    big = b"\0" * (100 << 20)

    def attack(stop):
        ctx = zmq.Context()
        socks = []
        for port in (cluster.main_port, cluster.meta_port):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 4)
            s.connect(f"tcp://127.0.0.1:{port}")
            socks.append(s)
        k = 0
        while not stop.is_set() and k < 30:
            for s in socks:
                try:
                    s.send_multipart([b"\0" * 16, big], zmq.NOBLOCK)
                    s.send_multipart([trap, trap], zmq.NOBLOCK)
                except zmq.Again:
                    pass
            k += 1
            time.sleep(0.05)
        for s in socks:
            s.close(0)
        ctx.term()

    stop, t = _in_background(attack)
    try:
        under_attack = _timed_map()
    finally:
        stop.set()
        t.join(30)
    snap = cluster.status()
    assert snap["totals"]["lost_workers"] == lost
    assert snap["totals"]["dropped_messages"] == dropped, "a stranger's message reached the broker"
    assert not trap_file.exists()
    assert not _quiet(cluster)
    print(f"map under attack {under_attack:.2f} s vs {base:.2f} s")
    assert under_attack < 3 * base + 3


def test_connection_churn_changes_no_liveness_decision(cluster):
    wait_idle(cluster)
    base = _timed_map(200, 20)
    lost = cluster.status()["totals"]["lost_workers"]

    def churn(stop):
        rnd = random.Random(7)
        while not stop.is_set():
            for port in (cluster.main_port, cluster.meta_port):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                        if rnd.random() < 0.5:
                            s.sendall(os.urandom(rnd.randint(1, 4096)))
                except OSError:
                    pass

    stop, t = _in_background(churn)
    try:
        under_churn = _timed_map(200, 20)
        under_churn += _timed_map(200, 20)
    finally:
        stop.set()
        t.join(10)
    assert cluster.status()["totals"]["lost_workers"] == lost, "churn got healthy workers declared lost"
    assert len(cluster.status()["workers"]) == 2
    print(f"two maps under churn {under_churn:.2f} s vs one {base:.2f} s")
    assert under_churn < 3 * 2 * base + 3
    assert not _quiet(cluster)


def test_meta_stream_is_closed_to_strangers(cluster):
    """No handshake, no view: even a genuine hello (replayed) gets nothing."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(f"tcp://127.0.0.1:{cluster.meta_port}")
    s.send(meta_hello(P.Signer(cluster.secret)))
    try:
        assert not s.poll(1500), "a view without the handshake received the meta stream"
    finally:
        s.close(0)
        ctx.term()


def test_with_a_valid_handshake_but_not_the_secret_nothing_is_unpickled(cluster, tmp_path):
    """A peer that passes the handshake (a stolen CURVE key, or the PLAIN token sniffed off an
    unencrypted network) but lacks the secret gets its messages dropped: headers are MAC'd with
    the secret, per channel and direction, and payload frames are checked against signed
    digests.  A message that fails the check also cuts its connection (unless its number was
    closed lately: it may name a newcomer now).  Replayed meta
    messages, forged multi-frame messages, spliced frames: nothing is unpickled, nothing
    printed, nobody declared lost."""
    wait_idle(cluster)
    trap_file = tmp_path / "pwned"
    trap = pickle.dumps(_Trap(str(trap_file)))
    secret = cluster.secret
    mode = cluster.options.encryption
    wrong = P.Signer(os.urandom(32))
    right = P.Signer(secret)  # only to build a genuine header whose frames are then spliced
    ctx = zmq.Context()
    meta = open_view(ctx, secret, f"tcp://127.0.0.1:{cluster.meta_port}", mode)
    socks = []
    try:
        _attack_with_replays_and_forgeries(cluster, ctx, meta, socks, trap, trap_file, wrong, right)
    finally:  # a context whose sockets stay open would hang pytest's exit
        for s in socks + [meta]:
            s.close(0)
        ctx.term()


def _attack_with_replays_and_forgeries(cluster, ctx, meta, socks, trap, trap_file, wrong, right):
    secret = cluster.secret
    mode = cluster.options.encryption
    captured = []
    # snapshots come every ~0.5 s; a view says hello again while it hears nothing, as real views
    # do (meta.HELLO_AGAIN): its first hello is dropped if the connection was not up yet
    t0 = time.monotonic()
    deadline = t0 + 20
    again = t0 + 1.0
    while len(captured) < 5 and time.monotonic() < deadline:
        if meta.poll(200):
            captured.append(meta.recv_multipart())
        elif not captured and time.monotonic() > again:
            again = time.monotonic() + 1.0
            try:
                meta.send(meta_hello(P.Signer(secret)), zmq.NOBLOCK)
            except zmq.Again:
                pass
    assert captured, (f"no meta message to replay within {time.monotonic() - t0:.0f} s "
                      f"(broker totals: {cluster.status()['totals']})")
    for i in range(4):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RECONNECT_IVL, 10)
        s.setsockopt(zmq.IDENTITY, (b"t" if i % 2 else b"c") + os.urandom(8).hex().encode())
        secure_client(s, secret, _main_addr(cluster), mode)
        s.connect(_main_addr(cluster))
        socks.append(s)
    # a genuine task header naming one frame, whose frame is then swapped for the trap
    d = P.digest(trap)
    genuine = P.Outbox()
    genuine.add(P.TASK_HEADER.pack(P.TASK, 1 << 40 | 7, 0, d, 0, 0), packed=P.pack(b"x" * (1 << 17)))
    gdata, _ = genuine.take()
    spliced = [right.mac(P.TO_BROKER, gdata) + gdata, trap]
    box = P.Outbox()
    box.add(P.BLOB_HEADER.pack(P.BLOB, d), packed=P.packed_bytes(trap * 2000))
    box.add(P.TASK_HEADER.pack(P.TASK, 1 << 40 | 1, 0, d, 0, 0), trap)
    fdata, fframes = box.take()
    rnd = random.Random(99)
    running = futures.map(T.work_ms, [2] * 400, range(400))
    before = cluster.status()["totals"]
    sent = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        s = socks[sent % len(socks)]
        kind = sent % 7
        if kind == 0:
            msg = captured[sent % len(captured)]                # meta replayed to the task port
        elif kind == 1:
            msg = [wrong.mac(P.TO_BROKER, fdata) + fdata, *fframes]  # wrong key, multi-frame
        elif kind == 2:
            msg = [b"\0" * 16 + fdata, *fframes]                   # unsigned
        elif kind == 3:
            msg = spliced                                          # genuine header, foreign frame
        elif kind == 4:
            msg = [os.urandom(rnd.randint(0, 64)) for _ in range(rnd.randint(1, 6))]
        elif kind == 5:
            m = wrong.mac(P.TO_BROKER, fdata) + fdata
            msg = [m[: rnd.randint(0, len(m))]]                    # truncated
        else:
            msg = [trap] * rnd.randint(1, 5)
        try:
            s.send_multipart([bytes(m) if isinstance(m, memoryview) else m for m in msg], zmq.NOBLOCK)
            sent += 1
        except zmq.Again:
            time.sleep(0.001)
    assert list(running) == list(range(400))
    time.sleep(0.5)
    assert not trap_file.exists(), "a process unpickled hostile bytes"
    snap = cluster.status()
    dropped = snap["totals"]["dropped_messages"] - before["dropped_messages"]
    cut = snap["totals"]["cut_connections"] - before["cut_connections"]
    print(f"{sent} hostile messages queued, {dropped} reached the broker and were dropped, "
          f"{cut} connections cut")
    # a few dozen at least; fewer right after the churn test, whose reset connections the broker
    # no longer drops at once (scoop.hangup: resets are filtered) and whose ports then collide.
    # Cuts are fewer than drops: a connection on a number closed lately is not cut by number
    # (scoop.hangup.Reused), and a cut one comes back
    assert dropped >= 5
    assert snap["totals"]["lost_workers"] == before["lost_workers"]
    assert len(snap["workers"]) == 2
    assert not _quiet(cluster), "hostile input made a process print"
    assert list(futures.map(T.square, range(10))) == [x * x for x in range(10)]


def _signed(signer, channel, hdr, body) -> bytes:
    """One record as its sender puts it on the wire: what a sniffer copies, byte for byte."""
    box = P.Outbox()
    box.add(hdr, body)
    data, _ = box.take()
    return bytes(signer.mac(channel, data) + data)


def _answer(s, signer, wait_ms=5000):
    """The first record the broker sends ``s`` as (type, body), cluster sizes skipped, or None
    if it sends nothing else."""
    deadline = time.monotonic() + wait_ms / 1000
    while s.poll(max(0, int((deadline - time.monotonic()) * 1000))):
        for rec in P.recv_verified(s, signer, P.FROM_BROKER) or ():
            if rec.hdr[:1] != P.SIZE:
                return rec.hdr[:1], bytes(rec.body)
    return None


def test_a_hello_copied_off_the_wire_admits_nobody(cluster):
    """Without encryption a sniffer can copy every message and send it again on a connection of
    its own.  A member's hello is good once, for the connection it names: sent again under
    another id, under the member's id while it is connected, or after it left, it admits
    nobody, so no phantom worker or origin joins.  A view's hello is taken once too."""
    signer = P.Signer(cluster.secret)
    mode = cluster.options.encryption
    addr = _main_addr(cluster)
    ctx = zmq.Context()
    socks = []

    def dealer(ident, address=addr):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        if ident:
            s.setsockopt(zmq.IDENTITY, ident)
        secure_client(s, cluster.secret, address, mode)
        s.connect(address)
        socks.append(s)
        return s

    try:
        before = cluster.status()["totals"]
        uid = os.urandom(8).hex()
        hello = _signed(signer, P.TO_BROKER, P.HELLO, json.dumps(
            {"uid": uid, "control": os.urandom(8).hex(), "role": "client", "name": "member", "host": "h",
             "host_key": 1, "pid": os.getpid()}).encode())
        member = dealer(b"t" + uid.encode())
        member.send(hello)
        assert _answer(member, signer, 20_000)[0] == P.WELCOME, "the genuine hello was not welcomed"
        # the same bytes from a connection of the sniffer's own
        other = dealer(b"t" + os.urandom(8).hex().encode())
        other.send(hello)
        assert _answer(other, signer) == (P.SHUTDOWN, b"refused: a hello must name its own connection's uid")
        # under the member's id while it is connected: libzmq keeps the id for one connection
        twin = dealer(b"t" + uid.encode())
        twin.send(hello)
        assert _answer(twin, signer, 1500) is None
        # after the member left
        member.send(_signed(signer, P.TO_BROKER, P.BYE, b""))
        time.sleep(1.0)  # a client's goodbye is not answered
        member.close(0)
        late = dealer(b"t" + uid.encode())
        late.send(hello)
        assert _answer(late, signer) == (P.SHUTDOWN,
                                         b"refused: this uid has joined before: a hello is good once")
        deadline = time.monotonic() + 10
        while True:  # the status the broker publishes next
            after = cluster.status()["totals"]
            if after["refused_hellos"] - before["refused_hellos"] >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert after["refused_hellos"] - before["refused_hellos"] == 2
        assert after["workers"] == before["workers"] and after["lost_workers"] == before["lost_workers"]

        # a view's hello, copied: the first connection gets the stream, the copy nothing
        meta_addr = f"tcp://127.0.0.1:{cluster.meta_port}"
        greeting = meta_hello(signer)
        view = dealer(None, meta_addr)
        copy = dealer(None, meta_addr)
        view.send(greeting)
        assert view.poll(20_000), "a genuine view got no snapshot"
        time.sleep(0.3)
        copy.send(greeting)
        assert not copy.poll(2000), "a copied view hello registered a second view"
        assert list(futures.map(T.square, range(10))) == [x * x for x in range(10)]
    finally:
        for s in socks:
            s.close(0)
        ctx.term()


def test_a_copied_control_message_changes_no_liveness(cluster):
    """A member's control connection has a random id of its own, named in its hello.  A copy
    of any control message sent under a made-up id (the member's uid with another kind, or as
    a control id) is cut or fenced, and dropping that connection declares nobody lost; after
    the member's own control connection drops, whoever takes its id is fenced too."""
    signer = P.Signer(cluster.secret)
    mode = cluster.options.encryption
    addr = _main_addr(cluster)
    ctx = zmq.Context()
    socks = []

    def dealer(ident):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IDENTITY, ident)
        secure_client(s, cluster.secret, addr, mode)
        s.connect(addr)
        socks.append(s)
        return s

    def totals():
        time.sleep(1.5)  # the drop's grace, then the next snapshot
        return cluster.status()["totals"]

    def join(role):
        uid, control = os.urandom(8).hex(), os.urandom(8).hex()
        ctl = dealer(b"c" + control.encode())
        time.sleep(0.3)
        member = dealer(b"t" + uid.encode())
        member.send(_signed(signer, P.TO_BROKER, P.HELLO, json.dumps(
            {"uid": uid, "control": control, "role": role, "name": "member", "host": "h",
             "host_key": 1, "pid": os.getpid()}).encode()))
        assert _answer(member, signer, 20_000)[0] == P.WELCOME, "the genuine hello was not welcomed"
        ctl.send(load)
        return uid, control, member, ctl

    load = _signed(signer, P.CONTROL_TO_BROKER, P.LOAD, b'{"cpu": 1}')
    try:
        uid, _, member, _ = join("worker")
        before = totals()
        for ident in (b"X" + uid.encode(), b"c" + uid.encode()):
            s = dealer(ident)
            s.send(load)
            time.sleep(0.3)
            s.close(0)
        after = totals()
        assert after["workers"] == before["workers"] and after["lost_workers"] == before["lost_workers"], \
            "a copied control message under a made-up id changed which workers are alive"
        member.send(_signed(signer, P.TO_BROKER, P.BYE, b""))  # leaves as it came, nothing printed
        assert _answer(member, signer) == (P.SHUTDOWN, b"goodbye")
        _, control, _, ctl = join("client")
        ctl.close(0)  # the member's control connection drops: its id is dead
        time.sleep(0.2)
        squat = dealer(b"c" + control.encode())
        squat.send(load)
        assert squat.poll(5000), "no answer to a message on a dead control id"
        recs = P.recv_verified(squat, signer, P.CONTROL_FROM_BROKER)
        assert recs and recs[0].hdr[:1] == P.SHUTDOWN, recs
        assert list(futures.map(T.square, range(10))) == [x * x for x in range(10)]
    finally:
        for s in socks:
            s.close(0)
        ctx.term()


_FLOOD = """
import json, os, sys, time
import zmq
from scoop.security import secure_client
cfg = json.loads(sys.stdin.readline())
os.nice(19)  # the broker is on trial, not the machine's CPU
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.setsockopt(zmq.LINGER, 0)
s.setsockopt(zmq.SNDHWM, 2)
s.setsockopt(zmq.RECONNECT_IVL, 20)
s.setsockopt(zmq.IDENTITY, b"t" + os.urandom(8).hex().encode())
secure_client(s, bytes.fromhex(cfg["secret"]), cfg["addr"], cfg["encryption"])
s.connect(cfg["addr"])
big = bytearray(cfg["size"])
sent = 0
deadline = time.monotonic() + cfg["seconds"]
while time.monotonic() < deadline:
    try:
        s.send(big, zmq.NOBLOCK, copy=False)
        sent += 1
    except zmq.Again:
        time.sleep(0.005)
print(sent, flush=True)
s.close(0)
ctx.term()
"""


def _median_map(runs=5, n=400, ms=2):
    """The median time of several maps: one map is noisy on a shared machine."""
    return sorted(_timed_map(n, ms) for _ in range(runs))[runs // 2]


def test_a_peer_with_the_handshake_flooding_huge_headers_is_bounded(cluster):
    """200 MiB header frames from a peer that passed the handshake (no secret): the broker reads
    none of them (no frame over ``P.FRAME_MAX_IN`` is accepted), grows by less than 64 MB and
    the cluster keeps at least half its throughput (the median of five maps, against five
    without the flood).  What the flood costs is the attacker's own CPU (CURVE encrypts each
    200 MiB frame before sending it) on a machine it shares with the cluster here."""
    wait_idle(cluster)
    broker = psutil.Process(cluster.broker_proc.pid)
    _timed_map(400, 2)
    base = _median_map()
    rss0 = broker.memory_info().rss
    peak = [rss0]

    def watch(stop):
        while not stop.is_set():
            peak[0] = max(peak[0], broker.memory_info().rss)
            time.sleep(0.01)

    stop, t = _in_background(watch)
    cfg = {"secret": cluster.secret.hex(), "addr": _main_addr(cluster), "size": 200 << 20,
           "encryption": cluster.options.encryption, "seconds": 8}
    attacker = subprocess.Popen([sys.executable, "-c", _FLOOD], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
    try:
        attacker.stdin.write(json.dumps(cfg) + "\n")
        attacker.stdin.flush()
        time.sleep(1.5)  # the flood is under way
        attacked = _median_map()
        out, _ = attacker.communicate(timeout=30)
    finally:
        if attacker.poll() is None:
            attacker.kill()
            attacker.wait()
        stop.set()
        t.join(5)
    growth = (peak[0] - rss0) / 1e6
    print(f"encryption {cluster.options.encryption}: {out.strip()} 200 MiB headers sent; broker growth "
          f"{growth:.1f} MB; a map {attacked:.2f} s under the flood vs {base:.2f} s without (medians of 5)")
    assert growth < 64, f"the broker grew by {growth:.0f} MB"
    assert attacked < 2 * base, f"a map took {attacked:.2f} s under the flood, {base:.2f} s without"
    assert len(cluster.status()["workers"]) == 2
    assert not _quiet(cluster)


_RESETTERS = """
import json, os, sys, time
import zmq
from scoop.security import secure_client
cfg = json.loads(sys.stdin.readline())
os.nice(19)
ctx = zmq.Context(io_threads=2)
socks = []
for i in range(cfg["n"]):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 1000)
    s.setsockopt(zmq.RECONNECT_IVL, 10)
    s.setsockopt(zmq.IDENTITY, b"t" + os.urandom(8).hex().encode())
    secure_client(s, bytes.fromhex(cfg["secret"]), cfg["addr"], cfg["encryption"])
    s.connect(cfg["addr"])
    socks.append(s)
junk = b"\\0" * 2000
deadline = time.monotonic() + cfg["seconds"]
while time.monotonic() < deadline:
    for s in socks:
        try:
            for _ in range(50):
                s.send(junk, zmq.NOBLOCK)
        except zmq.Again:
            pass
os._exit(0)  # every connection ends at once, its broker-side queue full
"""


def test_peers_that_fill_their_queues_then_vanish_cannot_abort_the_broker(cluster):
    """300 connections past the handshake (the token, read off an unencrypted network) flood
    junk until the broker stops reading them, then their process exits, in rounds.  libzmq
    4.3.5 aborts on a hang-up or reset of a connection it stopped reading (scoop.hangup): the
    broker must live through every round, and serve."""
    if cluster.options.encryption:
        pytest.skip("without the members' key no connection passes the handshake")
    wait_idle(cluster)
    cfg = {"secret": cluster.secret.hex(), "addr": _main_addr(cluster), "encryption": False, "n": 300,
           "seconds": 1.5}
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _RESETTERS], stdin=subprocess.PIPE, text=True)
        try:
            proc.communicate(json.dumps(cfg) + "\n", timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        time.sleep(1.0)  # the heartbeats that would abort libzmq are due meanwhile
        assert cluster.broker_proc.poll() is None, "the broker died"
    assert list(futures.map(T.square, range(10))) == [x * x for x in range(10)]
    assert len(cluster.status()["workers"]) == 2


_MEMBER = """
import json, os, sys, time
import zmq
from scoop import _protocol as P
from scoop.security import secure_client
cfg = json.loads(sys.stdin.readline())
secret = bytes.fromhex(cfg["secret"])
signer = P.Signer(secret)
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.setsockopt(zmq.LINGER, 0)
s.setsockopt(zmq.SNDHWM, 100)
s.setsockopt(zmq.RCVHWM, 100)  # and it never reads: libzmq stops reading its connection
s.setsockopt(zmq.RECONNECT_IVL, 50)
uid = os.urandom(8).hex()
s.setsockopt(zmq.IDENTITY, b"t" + uid.encode())
secure_client(s, secret, cfg["addr"], True)
s.connect(cfg["addr"])
box = P.Outbox()
box.add(P.HELLO, json.dumps({"uid": uid, "role": cfg["role"], "pid": os.getpid(), "name": "member",
                             "host": "member", "host_key": 1}).encode())
if cfg["credit"]:
    box.add(P.COUNT.pack(P.CREDIT, cfg["credit"]))
P.send(s, signer, P.TO_BROKER, box)
held = 0
deadline = time.monotonic() + 30
while cfg["credit"] and held < cfg["hold"] and time.monotonic() < deadline:
    if s.poll(100):
        recs = P.recv_verified(s, signer, P.FROM_BROKER) or []
        held += sum(1 for r in recs if r.type in (P.TASK, P.CHUNK))
print(json.dumps({"held": held}), flush=True)
sys.stdin.readline()  # go
# the broker is on trial, not the machine's CPU (not before: a niced member may take many seconds
# to join on a loaded machine, and its tasks go elsewhere meanwhile)
os.nice(19)
asks = P.Outbox()
kind = P.ASK if cfg["kind"] == "ASK" else P.CANCEL
for i in range(1000):
    asks.add(P.TID.pack(kind, 1 << 40 | i))
data, _ = asks.take()
header = signer.mac(P.TO_BROKER, data) + data
sent = answers = 0
fenced = False
deadline = time.monotonic() + cfg["seconds"]
while time.monotonic() < deadline:
    while cfg["reads"] and s.poll(0):
        for r in P.recv_verified(s, signer, P.FROM_BROKER) or []:
            answers += r.type == kind
            fenced = fenced or (r.type == P.SHUTDOWN and b"declared lost" in bytes(r.body))
    try:
        s.send(header, zmq.NOBLOCK)
        sent += 1
    except zmq.Again:
        time.sleep(0.001)
if cfg["reads"]:
    print(json.dumps({"sent": sent, "answers": answers, "fenced": fenced}), flush=True)
    sys.exit(0)
# now it reads, and comes back as a member would (its heartbeat, here one ASK every 0.5 s: its
# connection may have ended after its flood did): what it finds is the broker's word that it
# was dropped
one = P.Outbox()
one.add(P.TID.pack(P.ASK, 1 << 41))
data, _ = one.take()
knock = signer.mac(P.TO_BROKER, data) + data
fenced = False
deadline = time.monotonic() + 10
next_knock = 0.0
while not fenced and time.monotonic() < deadline:
    if time.monotonic() >= next_knock:
        next_knock = time.monotonic() + 0.5
        try:
            s.send(knock, zmq.NOBLOCK)
        except zmq.Again:
            pass
    if s.poll(100):
        for r in P.recv_verified(s, signer, P.FROM_BROKER) or []:
            fenced = fenced or (r.type == P.SHUTDOWN and b"declared lost" in bytes(r.body))
print(json.dumps({"sent": sent, "fenced": fenced}), flush=True)
s.close(0)
ctx.term()
"""


def _member(cluster, role="client", credit=0, hold=0, seconds=6.0, reads=False, kind="ASK"):
    """A process holding the secret (a member) that floods valid requests (``kind``: ASK or
    CANCEL records), 1,000 a message, and never reads (``reads``: reads its answers as it floods)."""
    proc = subprocess.Popen([sys.executable, "-c", _MEMBER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    cfg = {"secret": cluster.secret.hex(), "addr": _main_addr(cluster), "role": role, "credit": credit,
           "hold": hold, "seconds": seconds, "reads": reads, "kind": kind}
    proc.stdin.write(json.dumps(cfg) + "\n")
    proc.stdin.flush()
    return proc


def _unflooded(cluster):
    """Before a flood (measured on one cluster only: the same broker code either way): the
    median map time without it, and the broker's totals."""
    if not cluster.options.encryption:
        pytest.skip("the same broker code either way: measured once")
    wait_idle(cluster)
    _timed_map(400, 2)
    return statistics.median(_timed_map(400, 2) for _ in range(5)), cluster.status()["totals"]


def _peak_rss(pid):
    """A background watch of a process's peak RSS: (stop event, thread, [peak])."""
    proc = psutil.Process(pid)
    peak = [proc.memory_info().rss]

    def watch(stop):
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    stop, t = _in_background(watch)
    return stop, t, peak


def _maps_under(member, maps=5):
    """``maps`` timed maps, started as soon as ``member`` (joined) begins its flood."""
    member.stdin.write("go\n")
    member.stdin.flush()
    time.sleep(0.2)  # the flood is under way
    return [_timed_map(400, 2) for _ in range(maps)]


@pytest.mark.parametrize("kind", ["ASK", "CANCEL"])
def test_a_member_that_floods_requests_and_never_reads_is_bounded(cluster, kind):
    """A process with the secret (a member: it says HELLO as a client) sends valid requests as
    fast as it can and never reads its socket.  The broker grows by less than 64 MB, the member
    is cut and fenced: what it finds when it reads at last is that it was declared lost.  ASKs
    past ``ASKS_MAX`` a second cut it at once; CANCELs (an abandoned map sends thousands at
    once) when more than ``OUT_MAX`` of answers wait for it.  The cluster keeps serving
    meanwhile, maps within 2x of their time without the flood (medians: the broker reads a
    peer's share of requests a round, scoop.broker.Broker._read_round), before the cut and after."""
    base, before = _unflooded(cluster)
    member = _member(cluster, seconds=6.0, kind=kind)
    try:
        member.stdout.readline()  # joined
        time.sleep(0.3)
        rss0 = psutil.Process(cluster.broker_proc.pid).memory_info().rss
        stop, t, peak = _peak_rss(cluster.broker_proc.pid)
        try:
            attacked = _maps_under(member)
            out = json.loads(member.stdout.readline())
        finally:
            stop.set()
            t.join(5)
    finally:
        if member.poll() is None:
            member.kill()
        member.wait()
    growth = (peak[0] - rss0) / 1e6
    after = cluster.status()["totals"]
    cut = {k: after[k] - before[k] for k in ("stalled_peers", "flooding_peers")}
    print(f"{out['sent']} messages of 1,000 {kind}s each; broker growth {growth:.1f} MB; maps under the "
          f"flood {' '.join(f'{x:.2f}' for x in attacked)} s (median {statistics.median(attacked):.2f}) "
          f"vs {base:.2f} s without; cut: {cut}; load average {os.getloadavg()[0]:.1f}")
    assert growth < 64, f"the broker grew by {growth:.0f} MB"
    assert cut == ({"stalled_peers": 0, "flooding_peers": 1} if kind == "ASK"
                   else {"stalled_peers": 1, "flooding_peers": 0}), cut
    assert out["fenced"], "the cut member was not told it was dropped"
    assert after["lost_workers"] == before["lost_workers"]
    assert len(cluster.status()["workers"]) == 2
    assert statistics.median(attacked) <= 2 * base, (attacked, base)
    assert list(futures.map(T.square, range(10))) == [x * x for x in range(10)]


def test_a_member_that_floods_asks_and_reads_is_cut(cluster, kind="ASK"):
    """The same ASK flood from a member that reads its answers: nothing waits for it, and it is
    cut all the same (past ``ASKS_MAX`` a second), and fenced; what it sends after is dropped
    unread (scoop.broker.FENCED_QUIET).  Maps stay within 2x of their time without it
    (medians) for as long as it floods.  (The same with CANCELs, which are not counted, is not
    cut: it gets its share of each round, and maps took 1.6-1.9x here.)"""
    base, before = _unflooded(cluster)
    member = _member(cluster, seconds=8.0, reads=True, kind=kind)  # longer than the maps on a loaded machine
    try:
        member.stdout.readline()  # joined
        time.sleep(0.3)
        t0 = time.monotonic()
        attacked = _maps_under(member)
        during = time.monotonic() - t0
        out = json.loads(member.stdout.readline())
    finally:
        if member.poll() is None:
            member.kill()
        member.wait()
    after = cluster.status()["totals"]
    cut = {k: after[k] - before[k] for k in ("stalled_peers", "flooding_peers")}
    print(f"{out['sent']} messages of 1,000 {kind}s each, {out['answers']} answers read; maps under the "
          f"flood {' '.join(f'{x:.2f}' for x in attacked)} s (median {statistics.median(attacked):.2f}) "
          f"vs {base:.2f} s without; cut: {cut}; load average {os.getloadavg()[0]:.1f}")
    assert during < 7.8, "the maps outlasted the flood: not all of them were measured under it"
    assert cut == {"stalled_peers": 0, "flooding_peers": 1}, cut
    assert out["fenced"], "the cut member was not told it was dropped"
    assert after["lost_workers"] == before["lost_workers"]
    assert statistics.median(attacked) <= 2 * base, (attacked, base)


def test_a_worker_that_stops_reading_is_cut_and_its_tasks_run_elsewhere(cluster):
    """A member joined as a worker takes tasks, then stops reading and floods: it is cut as a
    lost worker, the tasks it held run on the real workers (every result arrives, once), and it
    is fenced."""
    if not cluster.options.encryption:
        pytest.skip("the same broker code either way: measured once")
    wait_idle(cluster)
    before = cluster.status()["totals"]
    # CANCELs: ASKs at this rate would cut it for flooding before it stalls (see above)
    member = _member(cluster, role="worker", credit=40, hold=5, seconds=4.0, kind="CANCEL")
    try:
        deadline = time.monotonic() + 30
        while len(cluster.status()["workers"]) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(cluster.status()["workers"]) == 3, "the member did not join within 30 s"
        running = futures.map(T.work_ms, [20] * 300, range(300))
        held = json.loads(member.stdout.readline())["held"]
        member.stdin.write("go\n")
        member.stdin.flush()
        assert list(running) == list(range(300))
        out = json.loads(member.stdout.readline())
    finally:
        if member.poll() is None:
            member.kill()
        member.wait()
    after = cluster.status()["totals"]
    print(f"the member held {held} tasks when it stopped reading; cut: "
          f"{after['stalled_peers'] - before['stalled_peers']}, fenced: {out['fenced']}")
    assert held >= 5
    assert after["stalled_peers"] == before["stalled_peers"] + 1
    assert after["lost_workers"] == before["lost_workers"] + 1
    assert out["fenced"]
    assert len(cluster.status()["workers"]) == 2


_META_FLOOD = """
import json, os, sys, time
import zmq
from scoop import _protocol as P
from scoop.meta import hello
from scoop.security import secure_client
cfg = json.loads(sys.stdin.readline())
secret = bytes.fromhex(cfg["secret"])
greeting = hello(P.Signer(secret))
ctx = zmq.Context()

def sock(kind):
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 0)
    s.setsockopt(zmq.RECONNECT_IVL, 20)
    secure_client(s, secret, cfg["addr"], cfg["encryption"])
    s.connect(cfg["addr"])
    return s

subs = sock(zmq.XSUB)      # subscriptions, which a PUB would file in its trie
talker = sock(zmq.DEALER)  # a registered view that keeps talking: cut, it reconnects and goes on
talker.send(greeting)
idle = [sock(zmq.DEALER) for _ in range(cfg["idle_views"])]  # views that never read
for s in idle:
    s.send(greeting)
time.sleep(0.3)
for i in range(cfg["n"]):
    subs.send(b"\\x01" + os.urandom(900))  # under MAXMSGSIZE with CURVE's framing too
    if i % 100 == 0:
        talker.send(greeting)
    talker.send(os.urandom(400))
time.sleep(cfg["linger"])
for s in [subs, talker, *idle]:
    s.close(0)
ctx.term()
"""


def test_a_meta_subscriber_flooding_subscriptions_is_bounded(cluster):
    """A process past the meta socket's handshake (a member; with ``--encryption off``, anyone
    who read the token off the wire) sends distinct 1 KB subscriptions, talks without end as a
    view, and opens more views than the broker allows, none of them reading: the broker must
    grow by less than 64 MB, and views keep getting snapshots."""
    wait_idle(cluster)
    meta_addr = f"tcp://127.0.0.1:{cluster.meta_port}"
    rss0 = psutil.Process(cluster.broker_proc.pid).memory_info().rss
    stop, t, peak = _peak_rss(cluster.broker_proc.pid)
    cfg = {"secret": cluster.secret.hex(), "addr": meta_addr, "encryption": cluster.options.encryption,
           "n": 3_000, "linger": 2.0, "idle_views": VIEWS_MAX + 16}
    proc = subprocess.Popen([sys.executable, "-c", _META_FLOOD], stdin=subprocess.PIPE, text=True)
    views = 0
    try:
        proc.stdin.write(json.dumps(cfg) + "\n")
        proc.stdin.close()
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            views = max(views, cluster.status()["totals"].get("views", 0))
            time.sleep(0.2)
        assert proc.poll() == 0, "the flooding view did not end"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stop.set()
        t.join(5)
    growth = (peak[0] - rss0) / 1e6
    print(f"encryption {cluster.options.encryption}: 3,000 subscriptions of 900 B, 3,000 messages "
          f"from a view, {VIEWS_MAX + 16} views that never read; at most {views} views; "
          f"broker growth {growth:.1f} MB")
    assert growth < 64, f"the broker grew by {growth:.0f} MB"
    assert 1 < views <= VIEWS_MAX
    since = time.time()
    snap = cluster.meta.wait_for(lambda s: s.get("time", 0) > since + 0.3, 10)
    assert snap.get("time", 0) > since + 0.3, "the cluster's view gets no snapshot after the flood"
    assert _timed_map(100, 1) < 30


_SLOW_READER = """
import json, os, sys, time
import zmq
from scoop import _protocol as P
from scoop._seal import Sealer
from scoop.security import secure_client
import tasklib
cfg = json.loads(sys.stdin.readline())
secret = bytes.fromhex(cfg["secret"])
signer = P.Signer(secret)
opener = Sealer(secret, os.urandom(8))  # results from workers with a bulk lane come sealed
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.setsockopt(zmq.LINGER, 0)
s.setsockopt(zmq.RCVHWM, 4)  # libzmq stops reading its connection while this process sleeps
uid = os.urandom(8).hex()
s.setsockopt(zmq.IDENTITY, b"t" + uid.encode())
secure_client(s, secret, cfg["addr"], True)
s.connect(cfg["addr"])
box = P.Outbox()
box.add(P.HELLO, json.dumps({"uid": uid, "role": "client", "pid": os.getpid(), "name": "slow",
                             "host": "slow", "host_key": 1}).encode())
P.send(s, signer, P.TO_BROKER, box)
index = None
while index is None:
    for r in P.recv_verified(s, signer, P.FROM_BROKER) or []:
        if r.type == P.WELCOME:
            index = json.loads(bytes(r.body))["index"]
d, fn = P.pack_callable(tasklib.make_array)
box.add(P.BLOB_HEADER.pack(P.BLOB, d), packed=fn)
n, size = cfg["tasks"], cfg["size"]
for i in range(n):
    box.add(P.TASK_HEADER.pack(P.TASK, index << P.TID_SHIFT | i, 0, d, 1, 0),
            packed=P.pack(((size, "uint8"), {}), "arguments"))
P.send(s, signer, P.TO_BROKER, box)
time.sleep(cfg["sleep"])  # a busy process: results pile up for it meanwhile
got = {}
deadline = time.monotonic() + 60
while len(got) < n and time.monotonic() < deadline:
    if s.poll(200):
        for r in P.recv_verified(s, signer, P.FROM_BROKER) or []:
            if r.type == P.RESULT:
                tid, status = P.RESULT_HEADER.unpack(r.hdr)[1:3]
                a = P.unpack(r, seal=opener)
                got[tid & 0xFFFFFFFF] = status == P.OK and len(a) == size and int(a[-1]) == (size - 1) % 256
            elif r.type == P.SHUTDOWN:
                print(json.dumps({"results": len(got), "shutdown": bytes(r.body).decode()}), flush=True)
                sys.exit(0)
print(json.dumps({"results": len(got), "ok": sum(got.values())}), flush=True)
s.close(0)
ctx.term()
"""


def test_a_slow_reader_with_big_results_in_flight_is_not_cut(cluster):
    """Busy is not dead: a member that sleeps while ~100 MB of results (512 KiB frames, through
    the broker) pile up for it, its connection full, then reads them all, is never cut and
    loses nothing."""
    if not cluster.options.encryption:
        pytest.skip("the same broker code either way: measured once")
    wait_idle(cluster)
    before = cluster.status()["totals"]
    cfg = {"secret": cluster.secret.hex(), "addr": _main_addr(cluster), "tasks": 200, "size": 512 << 10,
           "sleep": 3.0}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([PROGRAMS, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_READER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        out, _ = proc.communicate(json.dumps(cfg) + "\n", timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = json.loads(out)
    after = cluster.status()["totals"]
    print(f"slow reader: {out}")
    assert out == {"results": 200, "ok": 200}
    assert after["stalled_peers"] == before["stalled_peers"]
    assert after["lost_workers"] == before["lost_workers"]


# ---- payload frames sealed end to end (no processes) ----------------------------------------------
def _sealed_message(sealer, obj):
    box = P.Outbox()
    box.add(P.TID.pack(P.CANCEL, 1), packed=P.pack(obj, seal=sealer))
    data, frames = box.take()
    return b"\0" * P.MAC_SIZE + data, [bytes(f) for f in frames]


@pytest.mark.parametrize("size", [70_000, P.FRAME_CHUNK, 3 * P.FRAME_CHUNK + 5])
def test_sealed_payloads_open_for_any_member_and_show_nothing(size):
    """Sealed by one process, opened by another that holds the secret; the frames carry no
    plaintext, and the same bytes sealed twice never look the same (nonces do not repeat)."""
    from scoop._seal import Sealer
    secret = P.new_secret()
    mark = b"SEALME-" + os.urandom(4).hex().encode()
    a = np.frombuffer(bytearray((mark * (size // len(mark) + 1))[:size]), dtype=np.uint8)
    sender, receiver = Sealer(secret, os.urandom(8)), Sealer(secret, os.urandom(8))
    header, frames = _sealed_message(sender, [a, mark * 10_000])
    again = _sealed_message(sender, [a, mark * 10_000])[1]
    assert all(mark not in f for f in frames + again)
    assert not set(frames) & set(again)
    rec = P.parse(header, frames)[0]
    assert all(kind & P.REF_SEALED for kind, _, _ in rec.refs)
    b, text = P.unpack(rec, seal=receiver)
    assert np.array_equal(a, b) and b.flags.writeable and text == mark * 10_000


@pytest.mark.parametrize("how", ["flip", "swap", "replay", "cut", "tag", "other secret", "no key"])
def test_a_tampered_sealed_frame_is_refused_before_unpickling(how, tmp_path):
    from scoop._seal import PREFIX, Sealer, SealError
    secret = P.new_secret()
    trap_file = tmp_path / "pwned"
    sender, receiver = Sealer(secret, os.urandom(8)), Sealer(secret, os.urandom(8))
    payload = [np.frombuffer(os.urandom(3 * P.FRAME_CHUNK), dtype=np.uint8), os.urandom(100_000)]
    earlier = _sealed_message(sender, payload)[1]
    header, frames = _sealed_message(sender, payload)
    if how == "flip":
        at = 7 + PREFIX                                 # in the sealed part, past the prefix
        frames[1] = frames[1][:at] + bytes([frames[1][at] ^ 1]) + frames[1][at + 1:]
    elif how == "swap":
        frames[0], frames[1] = frames[1], frames[0]
    elif how == "replay":
        frames[2] = earlier[2]                          # the same position of an earlier message
    elif how == "cut":
        frames[1] = frames[1][:-1]
    elif how == "tag":
        frames[-1] = frames[-1][:-16] + pickle.dumps(_Trap(str(trap_file)))[:16].ljust(16, b"\0")
    elif how == "other secret":
        receiver = Sealer(P.new_secret(), os.urandom(8))
    else:
        receiver = None
    rec = P.parse(header, frames)[0]
    with pytest.raises(P.IntegrityError if how == "no key" else SealError):
        P.unpack(rec, seal=receiver)
    assert not trap_file.exists()

