"""The broker: sockets around the scheduling core, and the meta stream.

It authenticates message headers and routes records; payload frames pass through as the same
frame objects, never hashed, copied or unpickled (see scoop._protocol).  No peer without the
cluster's secret gets a byte to it: both sockets demand a handshake with keys derived from the
secret (scoop.security: CurveZMQ over TCP), so an intruder's connection is refused before any
message exists, and signed headers bind every message to its channel and direction.  A peer
that passed the handshake is still bounded: no frame over ``P.FRAME_MAX_IN`` bytes is even read
(ZeroMQ drops the connection at its size), and the first message that fails the header check
cuts its connection.

Liveness needs no Python: ZeroMQ answers its own heartbeats (ZMTP PING/PONG) in its I/O
threads, so a worker deep in a C call that holds the GIL stays connected, while a dead process
or host drops its connection at once or after the heartbeat timeout.  A peer is lost when the
connection it authenticated on drops -- and only then: connections of strangers change nothing.

Run as ``python -m scoop.broker``; the configuration (including the secret) arrives as one
JSON line on stdin, and stdin's end means the launcher is gone, so the broker ends too.
"""
from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading
import time
from collections import deque

import zmq

from . import _protocol as P
from . import _shm
from . import bulk as _bulk
from .census import Census, status_interval
from .hangup import Admissions, Reused, end_connection, identity, ignore_resets
from .liveness import DEFAULT_TIMEOUT, configure_socket
from .meta import Views
from .monitor import events
from .peers import ASKS_MAX, OUT_MAX, ROUND_REQUESTS, SEND_QUEUE, asks_over
from .peers import stalled as stalled_bytes
from .readahead import INTERVAL as READ_AHEAD_CHECK
from .readahead import Unproven
from .scheduling import Peer, Scheduler
from .security import Gate, Once, bulk_server, hello_names, is_network, secure_server

IO_THREADS = 4
RECV_QUEUE = 64  # messages libzmq reads ahead from one connection (the ROUTER's RCVHWM)
ROUND_MESSAGES = 256  # messages read per round of the loop at most: dispatch and flushing run between
FENCED_QUIET = 0.2   # seconds a peer told "declared lost" is not answered again (its messages dropped unread)
FENCED_MAX = 64      # messages it sends meanwhile that end its connection (it floods)
LOAD_MAX = 64 << 10          # bytes of a worker's load figures (a few hundred in practice)
LOAD_MAX_BROKER = 4 << 20    # a sub-broker's: its summary, hosts and a page of its workers
CONTROL_GRACE = 1.0  # seconds a peer whose control connection dropped has to show its task one did too


class Broker:
    def __init__(self, secret: bytes, main_addr: str, meta_addr: str, *,
                 heartbeat_timeout: float = DEFAULT_TIMEOUT, status_interval: float = 0.2,
                 context: zmq.Context | None = None, log=None, upstream: Peer | None = None,
                 encryption: bool = True):
        self.signer = P.Signer(secret)
        self.secret = secret
        self.encryption = encryption
        # I/O threads: one accepts connections while the others run handshakes (CURVE's key
        # exchanges cost ~0.2 ms each); with one, 10,000 workers connecting at once overflow the
        # accept queue, and each dropped connection waits seconds for TCP to retry
        self.ctx = context or zmq.Context.instance(io_threads=IO_THREADS)
        self.heartbeat_timeout = heartbeat_timeout
        self.status_interval = status_interval
        self.log = log or (lambda msg: sys.stderr.write(f"scoop broker: {msg}\n"))
        # handshakes are answered in serve()'s loop, between messages (see Gate)
        self.gate = Gate(self.ctx, secret)
        self.main = self.ctx.socket(zmq.ROUTER)
        # BACKLOG: thousands of workers connect at once; a full accept queue drops SYNs, retried only
        # after 1, 3, 7... s
        # SNDHWM, RCVHWM: what libzmq queues per connection is bounded both ways (see scoop.peers:
        # a full send queue refuses a message whole, with ROUTER_MANDATORY, and it waits in the
        # peer's outbox; a full receive queue stops reading that connection until the loop
        # catches up, so a peer sending faster than the broker reads is slowed, not stored)
        for opt, val in ((zmq.SNDHWM, SEND_QUEUE), (zmq.RCVHWM, RECV_QUEUE), (zmq.LINGER, 1000),
                         (zmq.ROUTER_MANDATORY, 1), (zmq.MAXMSGSIZE, P.FRAME_MAX_IN), (zmq.BACKLOG, 4096)):
            self.main.setsockopt(opt, val)
        configure_socket(self.main, heartbeat_timeout)
        secure_server(self.main, secret, main_addr, encryption)
        # before the bind: every connection is seen, and one no message checked on yet may make
        # libzmq read ahead a bounded number of bytes (a message that never ends: scoop.readahead)
        self.monitor = self.main.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self.unproven = Unproven()
        # the meta stream: views say hello once and get each message, nothing is filed per
        # message a view sends (scoop.meta.Views: a PUB's subscriptions would be)
        self.meta = Views(self.ctx, secret, meta_addr, heartbeat_timeout, encryption)
        self.main_port = _bind(self.main, main_addr)
        self.meta_port = _bind(self.meta.sock, meta_addr)
        if is_network(meta_addr):
            # no heartbeats there, but a view's PING read before a reset aborts libzmq as well
            ignore_resets(self.meta_port)
        self.admissions = None
        if is_network(main_addr):
            # a peer's reset must not abort libzmq: its connection drops resets from just before
            # its handshake is admitted (scoop.hangup)
            self.admissions = Admissions(self.main.getsockopt(zmq.LAST_ENDPOINT).decode(),
                                         self.gate.sock.send_multipart)
            self.gate.admit = self.admissions.hold
        self.bulk = self.pairing = None
        self.bulk_port = 0
        self.bulk_frames = 0  # taken from the bulk lane (scoop.bulk)
        self._lane_gone: list = []  # uids of receivers whose lane refused frames in a flush
        if encryption and is_network(main_addr) and _bulk.enabled():
            self._open_bulk(main_addr, heartbeat_timeout)
        self.shm = _shm.Segments(P.derive(secret, "shared memory")) if _shm.available() else None
        self.core = Scheduler(upstream, log=self.log,
                              unlink=self.shm.unlink if self.shm is not None else (lambda seg: None))
        self.core.on_event = self._event
        self.census = Census(self.core)
        # connection (fd) -> (identity, the peer that authenticated on it, the socket's identity:
        # scoop.hangup, so that a cut never ends a later connection given the same number)
        self.fds: dict[int, tuple] = {}
        self.fds_of: dict[bytes, set] = {}  # peer uid -> its connections (fds)
        self.connected: set[bytes] = set()  # identities whose connection is watched
        self._fenced: dict[bytes, list] = {}  # identity told "declared lost" -> [quiet until, messages since]
        self.joined = Once()  # uids welcomed: a hello read off the wire and sent again joins nobody
        # a member's control connection has a routing id of its own, named in its hello (so that
        # nobody who reads the hello's uid off the wire can take that id first): id <-> uid
        self.control_uid: dict[bytes, bytes] = {}
        self.control_of: dict[bytes, bytes] = {}
        # identity -> (fd, socket identity) of the connection it joined on: a message under that
        # identity from any other connection (one who took the id after a drop) is refused
        self.bound: dict[bytes, tuple] = {}
        self.reused = Reused()  # numbers of connections closed lately: never cut by number
        self.replayed = 0     # hellos refused: used before, or not naming their own connection
        self._dropped: list = []            # (when, peer): peers whose connection dropped
        self._last_status = 0.0
        self.running = True
        self.reason = ""
        self.routed = 0       # messages routed (in and out), for capacity figures
        self._rate_mark = (time.monotonic(), 0)
        self.rate = 0.0
        self.dropped = 0
        self.requests = 0     # records answered to their sender alone (ASK, CANCEL): see _read_round
        self.cut = 0          # connections ended for a message that failed the check
        self.stalled = 0      # peers cut because they stopped reading (scoop.peers.stalled)
        self.flooding = 0     # peers cut because they sent more ASKs than any process of the cluster does
        self.blocked: dict = {}  # (uid, 0 or 1) of outboxes whose connection's queue was full
        self.stop_event = threading.Event()
        self._last_steal_check = 0.0
        self._status_due = False  # a join or leave: publish a snapshot now, not at the next tick
        self._on_task = {
            P.TASK: self._r_task, P.CHUNK: self._r_task, P.RESULT: self._r_result, P.FAIL: self._r_result,
            P.CREDIT: self._r_credit, P.RETIRE: self._r_retire, P.BLOB: self._r_blob,
            P.CANCEL: self._r_cancel, P.ASK: self._r_ask, P.CONST: self._r_const,
            P.INTERRUPT: self._r_interrupt, P.RELEASE: self._r_release, P.BYE: self._r_bye,
            P.SHUTDOWN: self._r_shutdown, P.OUTPUT: self._r_output, P.DONE: self._r_done,
            P.LEASE: self._r_lease,
        }
        self._on_control = {
            P.LOAD: self._c_load, P.RELEASE: self._r_release, P.TASK: self._r_task, P.CHUNK: self._r_task,
            P.CANCEL: self._c_cancel_answer, P.LEASE: self._r_lease,
        }

    @property
    def peers(self):
        return self.core.peers

    # ---- the bulk lane (scoop.bulk) -------------------------------------------------------------
    def _open_bulk(self, main_addr, heartbeat_timeout):
        """A socket beside the task port for sealed payload frames: members only (a ticket per
        connection), one frame per message, bounded queues each way (scoop.bulk.tune: what a
        lane's queue does not take waits in its member's outbox), no heartbeats (a member's
        CURVE connection says whether it is alive)."""
        b = self.bulk = self.ctx.socket(zmq.ROUTER)
        _bulk.tune(b, "broker", heartbeat_timeout)
        bulk_server(b)
        self.bulk_port = b.bind_to_random_port(main_addr.rsplit(":", 1)[0])
        ignore_resets(self.bulk_port)
        self.pairing = _bulk.Pairing(self.secret)
        self.bulk_fds: dict[bytes, tuple] = {}  # bulk identity -> its connection (fd, socket's identity)
        self._bulk_sweep = 0.0
        # a member's lane that drops takes with it frames the member sent or was sent: the member
        # is lost (its tasks run elsewhere; fenced, it rejoins), never left with headers that wait
        self.bulk_monitor = b.get_monitor_socket(zmq.EVENT_DISCONNECTED)

    def _on_lane_drops(self):
        """Lanes that dropped (read before the lane's frames, so a reused fd is never blamed):
        their members are lost through the normal path."""
        gone = [fd for _, fd in events(self.bulk_monitor)]
        if not gone:
            return
        owners = {fd: ident for ident, (fd, _) in self.bulk_fds.items() if fd in gone}
        for fd in gone:
            ident = owners.get(fd)
            if ident is None:
                continue
            del self.bulk_fds[ident]
            peer = self.core.peers.get(ident[1:])
            if peer is not None and self.running:
                self._lose(peer, "lost (its bulk lane dropped)")

    def _lose_laneless(self):
        """Receivers whose lane refused frames (gone): the headers sent them cannot complete."""
        gone, self._lane_gone = self._lane_gone, []
        for uid in gone:
            peer = self.core.peers.get(uid)
            if peer is not None and self.running:
                self._lose(peer, "lost (its bulk lane is gone)")

    def _recv_bulk(self, now):
        """Frames from the bulk lane, each checked by its prefix before anything is kept."""
        bulk, pairing, peers = self.bulk, self.pairing, self.core.peers
        for _ in range(256):
            try:
                ident = bulk.recv(P.NOBLOCK)
            except zmq.Again:
                return
            frame = bulk.recv(copy=False) if bulk.getsockopt(P.RCVMORE) else None
            known = self.bulk_fds.get(ident)
            fd = known[0] if known is not None else frame.get(zmq.SRCFD) if frame is not None else None
            many = False
            while bulk.getsockopt(P.RCVMORE):
                bulk.recv(copy=False)
                many = True
            uid = _uid8(ident[1:])
            if frame is None or many or uid is None or ident[:1] != b"b":
                verdict, ready = _bulk.BAD, ()
            else:
                verdict, ready = pairing.frame(uid, frame, now)
            if verdict is _bulk.BAD:
                self.dropped += 1
                self.bulk_fds.pop(ident, None)
                # only members (a one-time ticket from the secret) reach this socket: no stranger
                # can time a closed connection's number against a newcomer here
                self._cut_fd(fd, known[1] if known is not None else
                             identity(fd) if fd is not None and fd >= 0 else None)
                peer = peers.get(ident[1:])
                if peer is not None and self.running:
                    # a member's own lane: what it sent there is gone with it, so the headers
                    # that name those frames cannot complete: it is lost now, not in MAX_WAIT
                    self._lose(peer, "lost (its bulk lane sent what does not check)")
                continue
            if known is None:
                self.bulk_fds[ident] = (fd, identity(fd) if fd is not None else None)
            self.bulk_frames += 1
            if verdict is _bulk.HELLO:
                peer = peers.get(ident[1:])
                if peer is not None:
                    peer.out.lane_ok = True  # sealed frames for it go on its lane from now on
            for (tident, tfd), recs in ready:
                self._apply(tident, tfd, recs)

    def _bulk_tick(self, now):
        """Half-pairs nobody completes in time, and those of members gone, are dropped."""
        pairing = self.pairing
        for uid in pairing.expire(now):
            # its lane lost what it sent: the member is lost, so what it held runs elsewhere
            peer = self.core.peers.get(uid.hex().encode())
            self.log(f"dropped payload frames or messages of {uid.hex()} that waited over "
                     f"{pairing.max_wait:.0f} s for their other half"
                     + ("; the member is declared lost" if peer is not None else ""))
            if peer is not None and self.running:
                self._lose(peer, "lost (its payload frames never came)")
        if now - self._bulk_sweep > 1.0:
            self._bulk_sweep = now
            peers = self.core.peers
            for uid in [u for u in pairing.senders if u.hex().encode() not in peers]:
                pairing.forget(uid)

    # ---- main loop ---------------------------------------------------------------------------
    def serve(self):
        main = self.main
        core = self.core
        stop_event = self.stop_event
        monitor = self.monitor
        extras = list(self._extra_sockets())
        # zmq_poll on a fixed list: pyzmq's Poller rebuilds it and a dict at every call, which
        # costs microseconds on each message's path
        gate = self.gate.sock
        bulk = self.bulk
        views = self.meta.sock
        views_monitor = self.meta.monitor
        items = ([(s, P.POLLIN) for s in (gate, main, monitor, views, views_monitor, *extras)]
                 + ([(bulk, P.POLLIN)] if bulk else []))
        poll = zmq.zmq_poll
        read_round = self._read_round
        next_check = next_status = next_due = next_size = next_guard = time.monotonic()
        try:
            while self.running:
                if stop_event.is_set():
                    self.shutdown(self.reason or "stopped")
                    break
                # a peer whose queue was full is offered its backlog again soon
                watch = self.unproven or self.meta.unproven  # checked every READ_AHEAD_CHECK s
                ready = [sock for sock, _ in poll(items, 10 if self.blocked or watch else 100)]
                if gate in ready:
                    self.gate.answer()  # first: a handshake waits on it, and it costs ~10 µs
                # connection losses first: a reused fd must not be blamed on the peer after it
                if monitor in ready:
                    self._on_disconnects(monitor)
                if views in ready:
                    self.meta.read()
                more = main in ready or bool(self._dropped)
                if more:
                    more = read_round()
                now = time.monotonic()
                if views_monitor in ready or (watch and now >= next_guard):
                    next_guard = now + READ_AHEAD_CHECK
                    self._guard()
                if bulk is not None:
                    self._on_lane_drops()
                    if bulk in ready or bulk.getsockopt(P.EVENTS) & P.POLLIN:
                        self._recv_bulk(now)
                if self._dropped:
                    self._apply_drops(now, more)
                if extras and len(ready) > ((main in ready) + (monitor in ready) + (gate in ready)
                                            + (views in ready) + (views_monitor in ready) + (bulk in ready)):
                    self._on_extra(dict.fromkeys(ready, P.POLLIN))
                if core.queue or core.pinned:
                    core.dispatch()
                if not core.queue and core.tasks and now - self._last_steal_check > 0.005:
                    self._last_steal_check = now
                    core.steal(now)
                if core.dirty or self.blocked:
                    self._flush()
                if now >= next_check:
                    if self.admissions is not None:
                        self.admissions.tick(now)
                    self._periodic(now)
                    if bulk is not None:
                        self._bulk_tick(now)
                    if core.size_due and now >= next_size:
                        # a broadcast, a message to every peer: at most ~5 % of the broker's time
                        # (while 10,000 join, a broadcast a second would be most of it)
                        t0 = time.monotonic()
                        core.send_size()
                        self._flush()
                        next_size = now + max(0.1, len(core.peers) / 10000, 20 * (time.monotonic() - t0))
                    next_check = now + 0.1
                if now >= next_status or (self._status_due and now >= next_due):
                    self._status_due = False
                    t0 = time.monotonic()
                    self._publish_status(now)
                    # a snapshot walks the workers: at most ~5 % of the broker's time, also
                    # while thousands join (each join makes one due)
                    spent = 20 * (time.monotonic() - t0)
                    interval = status_interval(self.census.total, self.status_interval)
                    next_status = now + max(interval, spent)
                    next_due = now + max(interval / 4, spent)
        finally:
            self._flush()
            self._publish_status(time.monotonic())
            main.disable_monitor()
            monitor.close(0)
            self.main.close(linger=500)
            self.meta.close()
            if bulk is not None:
                bulk.disable_monitor()
                self.bulk_monitor.close(0)
                bulk.close(linger=500)
            self.gate.close()
            if self.admissions is not None:
                self.admissions.close()

    def _on_disconnects(self, monitor):
        """Connections that dropped: their peers are lost -- after every message that arrived
        before is read (a result, a goodbye or the cluster's end may be among them, and a peer
        that left was not lost).  Read before those messages, so a reused socket is never
        blamed.  A control connection that drops alone gives its peer ``CONTROL_GRACE``: a
        process that leaves closes it first, and its goodbye comes on the other one."""
        now = time.monotonic()
        admissions = self.admissions
        unproven = self.unproven
        for event, fd in events(monitor):
            if event == _ACCEPTED:
                unproven.opened(fd)
                if admissions is not None:
                    admissions.accepted(fd)
                continue
            unproven.closed(fd)
            self.reused.closed(fd)
            if admissions is not None:
                admissions.dropped(fd)
            ident, peer, _ = self.fds.pop(fd, (None, None, None))
            if ident is not None:
                self.connected.discard(ident)
            if peer is not None:
                fds = self.fds_of.get(peer.uid)
                if fds is not None:
                    fds.discard(fd)
                control = ident[:1] == b"c"
                if control:
                    # its id is dead: whoever takes it next is fenced, not read as this peer
                    self.control_uid.pop(ident, None)
                self._dropped.append((now + (CONTROL_GRACE if control else 0.0), peer))

    def _apply_drops(self, now, more: bool):
        """Peers whose connection dropped are lost once every message before the drop is read
        (``more``: some may be left; a flood gets a second at most)."""
        keep = []
        for when, peer in self._dropped:
            if when > now or (more and now - when < 1.0):
                keep.append((when, peer))
            elif self.running and peer.uid in self.core.peers:
                self._lose(peer, "lost (its connection dropped)")
        self._dropped = keep

    def _lose(self, peer: Peer, why: str):
        self._forget_fds(peer)
        self._forget_lane(peer)
        self.core.leave(peer, "retired" if peer.retiring else why)
        if peer is self.core.origin:
            self.shutdown(f"the origin {why}")

    def _forget_lane(self, peer):
        if self.pairing is not None:
            uid = _uid8(peer.uid)
            if uid is not None:
                self.pairing.forget(uid)
            lane = self.bulk_fds.pop(b"b" + peer.uid, None)
            if lane is not None:
                self._cut_fd(*lane)  # a lost member's lane ends with it

    def _forget_fds(self, peer):
        self.bound.pop(b"t" + peer.uid, None)
        control = self.control_of.pop(peer.uid, None)
        if control is not None and self.control_uid.get(control) == peer.uid:
            self.control_uid.pop(control, None)
            self.bound.pop(control, None)
        for fd in self.fds_of.pop(peer.uid, ()):
            entry = self.fds.get(fd)
            if entry is not None and entry[1] is peer:
                del self.fds[fd]
                self.connected.discard(entry[0])

    def _read_round(self) -> bool:
        """Messages from the ROUTER for one round of the loop (dispatch and flushing run
        between rounds); True if more may wait.  ZeroMQ fair-queues messages, not what they
        cost, and one message may carry thousands of requests that only ask the broker
        something (ASK, CANCEL): a round also ends once one peer's requests in it pass
        ``ROUND_REQUESTS``, and the next one starts with the other peers' messages (the fair
        queue goes on from the next connection).  A peer that floods requests gets that share
        of each round and no more; what it sends beyond waits in its own connection's receive
        queue, bounded by libzmq (RCVHWM): nothing is held back here or dropped.  Records that
        are the cluster's work (tasks, results) never end a round early: at 10,000 workers a
        shorter round sends fewer records per message, and the cluster's rate falls with it."""
        main, recv = self.main, self._recv
        asked = None
        for _ in range(ROUND_MESSAGES):
            if not main.getsockopt(P.EVENTS) & P.POLLIN:
                return False
            n0 = self.requests
            ident = recv()
            n = self.requests - n0
            if n:
                if asked is None:
                    asked = {}
                n += asked.get(ident, 0)
                if n > ROUND_REQUESTS:
                    return True
                asked[ident] = n
        return True

    def _recv(self):
        """One message from the ROUTER: identity, signed header, payload frames.  The first
        message of each connection is read as a frame to learn its socket (SRCFD): that
        connection's drop is how this peer's loss will be known.  Returns the identity."""
        main = self.main
        ident = main.recv(P.NOBLOCK)
        self.routed += 1
        if not main.getsockopt(P.RCVMORE):
            self.dropped += 1
            return ident
        fd = None
        if ident in self.connected:
            parts = P.recv_parts(main)
        else:
            head = main.recv(copy=False)
            fd = head.get(zmq.SRCFD)
            parts = [head.bytes] + (P.recv_parts(main) if main.getsockopt(P.RCVMORE) else [])
        kind = ident[:1]
        if kind != b"t" and kind != b"c":  # no member has any other
            self.dropped += 1
            self._cut(ident, fd)
            return ident
        uid = ident[1:] if kind == b"t" else self.control_uid.get(ident, b"")
        quiet = self._fenced.get(ident)
        if quiet is not None and time.monotonic() < quiet[0] and uid not in self.core.peers:
            # told "declared lost" moments ago: what it sends meanwhile is dropped unread, and a
            # connection that keeps sending is ended (a lost process that comes back sends a few)
            quiet[1] += 1
            if quiet[1] % FENCED_MAX == 0:
                self._cut(ident, fd)
            return ident
        channel = P.TO_BROKER if kind == b"t" else P.CONTROL_TO_BROKER
        if not self.signer.check(channel, parts[0]):
            self.dropped += 1  # dropped before any byte of it is interpreted
            self._cut(ident, fd)
            return ident
        if fd is not None:
            self.unproven.proven(fd)  # its peer holds the secret (scoop.readahead)
        peer = self.core.peers.get(uid)
        if peer is None and (kind != b"t" or parts[0][_FIRST_TYPE:_FIRST_TYPE + 1] != P.HELLO):
            # lost, cut or never welcomed, and not saying HELLO first: answered before the rest
            # is parsed, then not again for FENCED_QUIET (above)
            self._fence(ident, b"declared lost by the broker")
            return ident
        if fd is not None and peer is not None and not self._joined_on(ident, fd):
            self._fence(ident, b"declared lost by the broker")  # another connection under its id
            return ident
        if self.pairing is not None and kind == b"t":
            # its sealed frames may be on the bulk lane: it waits for them (and so do the
            # messages after it), and comes back through _recv_bulk
            uid8 = _uid8(uid)
            recs = self.pairing.message(uid8, (ident, fd), parts[0], parts[1:]) if uid8 else None
            if recs is None:
                return ident
        else:
            recs = P.parse(parts[0], parts[1:])
        if recs is None:
            self.dropped += 1
            return ident
        self._apply(ident, fd, recs)
        return ident

    def _joined_on(self, ident, fd) -> bool:
        """Whether a message read from connection ``fd`` under a member's ``ident`` came on the
        connection that identity joined on (or on none yet): a copy of its messages sent by
        whoever took the id after that connection dropped is not.  What the dropped connection
        had sent still counts, unless its number was given to another socket meanwhile."""
        b = self.bound.get(ident)
        if b is None or fd < 0:
            return True
        if fd != b[0]:
            return False
        now = identity(fd)
        return now is None or now == b[1]

    def _uid_of(self, ident) -> bytes:
        return ident[1:] if ident[:1] == b"t" else self.control_uid.get(ident, b"")

    def _apply(self, ident, fd, recs):
        """The records of a verified message from ``ident``."""
        kind = ident[:1]
        uid = self._uid_of(ident)
        peer = self.core.peers.get(uid)
        try:
            if kind == b"t":
                for rec in recs:
                    t = rec.hdr[:1]
                    if t == P.HELLO:
                        peer = self._hello(uid, rec)
                        if peer is None:
                            return
                        if fd is not None:
                            self._watch(ident, fd, peer)
                        continue
                    if peer is None:
                        # lost (its tasks already run elsewhere) or never welcomed: it must not come
                        # back half-alive
                        self._send_now(ident, P.FROM_BROKER, P.SHUTDOWN, b"declared lost by the broker")
                        return
                    handler = self._on_task.get(t)
                    if handler is not None:
                        handler(peer, rec)
                        if peer.uid not in self.core.peers:
                            return
            else:
                if peer is None:
                    self._send_now(ident, P.CONTROL_FROM_BROKER, P.SHUTDOWN, b"declared lost by the broker")
                    return
                if fd is not None:
                    self._watch(ident, fd, peer)
                for rec in recs:
                    handler = self._on_control.get(rec.hdr[:1])
                    if handler is not None:
                        handler(peer, rec)
        except Exception as exc:  # malformed but signed input must not kill the broker
            self.log(f"dropped a malformed message from {uid!r}: {type(exc).__name__}: {exc}")
        if peer is not None and (peer.out.held > OUT_MAX or peer.cout.held > OUT_MAX):
            self._flush()  # what waits for a peer is bounded as it grows, not only between reads

    def _guard(self):
        """Connections no message checked on yet that made libzmq read more than
        ``scoop.readahead.LIMIT`` bytes (frames of a message that never ends) are cut, on the
        task port and the meta socket."""
        for fd, _ in self.unproven.over():
            if end_connection(fd):  # just measured: the number still names that connection
                self.cut += 1
        self.meta.guard()

    def _cut(self, ident, fd):
        """Ends the connection a message that failed the check came on: its peer passed the
        handshake without the secret, and gets one message per handshake (a valid one cannot
        fail)."""
        if fd is None:
            mine = self.fds_of.get(self._uid_of(ident), ())
            fd = next((f for f in mine if self.fds.get(f, (None,))[0] == ident), None)
            self._cut_fd(fd, self.fds[fd][2] if fd is not None else None)
        else:
            self._cut_fd(fd, self._unowned(fd, ident))

    def _unowned(self, fd, ident):
        """The socket's identity on ``fd``, just learned from a message of ``ident``; None (nothing
        is cut) if the number is another peer's connection: the message came on a connection
        that ended before it was read, and its number was given to that one."""
        owner = self.fds.get(fd)
        if owner is not None:
            return owner[2] if owner[0] == ident else None
        if fd is None or fd < 0 or self.reused.lately(fd):
            return None  # it may name a newcomer now (scoop.hangup.Reused)
        return identity(fd)

    def _cut_fd(self, fd, known):
        """Ends connection ``fd`` if it still is the socket ``known`` (scoop.hangup.identity)."""
        if fd is not None and fd >= 0 and known is not None and end_connection(fd, known):
            self.cut += 1

    def _watch(self, ident, fd, peer):
        known = identity(fd)
        self.bound.setdefault(ident, (fd, known))
        owner = self.fds.get(fd)
        if fd >= 0 and (known is None or (owner is not None and owner[1] is not peer)):
            # its connection closed before this message was read (its drop passed unattributed;
            # its number may be another's now): lost once what it sent before is read
            self._dropped.append((time.monotonic() + (CONTROL_GRACE if ident[:1] == b"c" else 0.0), peer))
            return
        self.fds[fd] = (ident, peer, known)
        self.fds_of.setdefault(peer.uid, set()).add(fd)
        self.connected.add(ident)

    def _fence(self, ident, why: bytes):
        """Tells ``ident`` it is not (or no longer) a member, once: what it sends within
        ``FENCED_QUIET`` is dropped unread (see _recv)."""
        self._send_now(ident, P.FROM_BROKER if ident[:1] == b"t" else P.CONTROL_FROM_BROKER, P.SHUTDOWN, why)
        fenced = self._fenced
        if len(fenced) > 4096:
            now = time.monotonic()
            for k in [k for k, q in fenced.items() if q[0] <= now]:
                del fenced[k]
        fenced[ident] = [time.monotonic() + FENCED_QUIET, 0]

    def _send_now(self, ident, channel, hdr, body=P.EMPTY):
        box = P.Outbox()
        box.add(hdr, body)
        try:
            P.send(self.main, self.signer, channel, box, ident, P.NOBLOCK)
        except zmq.ZMQError:
            pass

    # ---- records ------------------------------------------------------------------------------
    def _hello(self, uid, rec):
        """The peer a hello admits, or None (it was told why, and fenced).  A hello is good once,
        for the connection it names (scoop.security.Once): one read off an unencrypted wire and
        sent again admits nobody."""
        peer = self.core.peers.get(uid)
        if peer is not None:
            return peer  # said again on its own connection: nothing new
        info = json.loads(bytes(rec.body))
        why = hello_names(uid, info)
        # its control connection's id, if it has one (a process that only submits need not)
        control = b"c" + str(info["control"]).encode() if why is None and "control" in info else None
        if control is not None and (not 9 <= len(control) <= 65 or control in self.control_uid):
            why = "a hello's control id must be 8 to 64 bytes and its own"
        if why is None and not self.joined.take(uid):
            why = "this uid has joined before: a hello is good once"
        if why is not None:
            self.replayed += 1
            self._fence(b"t" + uid, f"refused: {why}".encode())
            return None
        peer = self.core.join(uid, info)
        if peer is not None and control is not None:
            self.control_uid[control] = uid
            self.control_of[uid] = control
        if peer is not None and self.pairing is not None and _uid8(uid) is not None:
            self.pairing.join(_uid8(uid))
            peer.out.add(P.BULK_HEADER.pack(P.BULK, self.bulk_port))  # where its bulk lane goes
        return peer or self.core.peers.get(uid)

    def _r_task(self, peer, rec):
        self.core.submit(peer, rec)

    def _r_lease(self, peer, rec):
        self.core.lease(peer, rec)

    def _r_result(self, peer, rec):
        self.core.result(rec)

    def _r_done(self, peer, rec):
        self.core.done(rec)

    def _r_credit(self, peer, rec):
        self.core.credit(peer, P.COUNT.unpack(rec.hdr)[1])

    def _r_retire(self, peer, rec):
        index = P.INDEX.unpack(rec.hdr)[1]
        if peer.role == "origin" or index == peer.index:  # the origin scales down, or a walltime
            self.core.retire(index)

    def _r_blob(self, peer, rec):
        self.core.blob(peer, rec)

    def _r_cancel(self, peer, rec):
        self.requests += 1
        self.core.cancel(peer, bytes(rec.hdr))

    def _r_ask(self, peer, rec):
        self.requests += 1
        if asks_over(peer):
            self.flooding += 1
            self._cut_peer(peer, f"it sent over {ASKS_MAX:,} ASKs within a second", "cut (it flooded)")
            return
        self.core.ask(peer, bytes(rec.hdr))

    def _r_const(self, peer, rec):
        self.core.const(peer, rec)

    def _r_interrupt(self, peer, rec):
        group = P.GROUP.unpack(rec.hdr)[1]
        if self.core.upstream is not None:
            self.core.upstream.out.add(bytes(rec.hdr))
        else:
            self.core.interrupt(group)

    def _r_release(self, peer, rec):
        self.core.release(peer, P.task_id(rec.hdr))

    def _r_bye(self, peer, rec):
        """A goodbye: everything the peer sent before is read, so nothing it finished runs again.
        A worker waits for this answer before it exits (what it sent might be lost otherwise)."""
        self._forget_fds(peer)
        self._forget_lane(peer)
        self.core.leave(peer, "retired" if peer.retiring else "left")
        if peer.role == "worker":
            self._send_now(b"t" + peer.uid, P.FROM_BROKER, P.SHUTDOWN, b"goodbye")

    def _r_shutdown(self, peer, rec):
        if peer.role == "origin":
            self.shutdown(bytes(rec.body).decode("utf-8", "replace") or "stopped by the origin")

    def _r_output(self, peer, rec):
        self.core.output(rec)

    def _c_load(self, peer, rec):
        if len(rec.body) > (LOAD_MAX_BROKER if peer.role == "broker" else LOAD_MAX):
            self.dropped += 1  # checked before it is parsed or kept: figures are small
            return
        try:
            self.core.set_load(peer, json.loads(bytes(rec.body)))
            if peer.role == "broker":
                self.census.note_load(peer)
        except ValueError:
            pass

    def _c_cancel_answer(self, peer, rec):
        self.core.cancel_answer(peer, bytes(rec.hdr))

    # ---- hooks a sub-broker (scoop.federation) fills in ------------------------------------------
    def _extra_sockets(self):
        return ()

    def _on_extra(self, events):
        pass

    def _periodic(self, now):
        pass

    def _snapshot(self) -> dict:
        return self.census.snapshot()

    # ---- output --------------------------------------------------------------------------------
    def _flush(self):
        """Each outbox with something to send, as messages of at most ``SEND_SPLIT`` header
        bytes.  libzmq queues at most ``SEND_QUEUE`` of them per connection; what it refuses
        waits in the outbox (nothing is dropped) and is offered again at every flush, and a peer
        for which more than ``OUT_MAX`` bytes wait is cut (:meth:`_cut_stalled`)."""
        mac, main, take = self.signer.mac, self.main, P.Outbox.take_messages
        peers = self.core.peers
        dirty = self.core.dirty
        blocked = self.blocked
        if blocked:
            dirty.update(blocked)
        stalled = None
        while dirty:
            key = dirty.pop()
            uid, which = key
            p = peers.get(uid)
            if p is None:
                blocked.pop(key, None)
                continue
            box = p.cout if which else p.out
            channel = P.CONTROL_FROM_BROKER if which else P.FROM_BROKER
            ident = (self.control_of.get(uid, b"") if which else b"t" + uid)
            if box.backlog is None:
                if not box.parts:
                    continue
                msgs = take(box)
                box.held = 0
                if len(msgs) == 1 and not (box.lane_ok and msgs[0][1]):
                    # the common case, kept short: one message, queue not full, no bulk-lane frames
                    data, frames = msgs[0]
                    try:
                        main.send(ident, _MORE)
                    except zmq.Again:
                        msgs = [(mac(channel, data) + data, frames)]
                    except zmq.ZMQError:
                        continue  # peer not connected (yet/any more); its connection's loss handles it
                    else:
                        _send_rest(main, mac(channel, data) + data, frames)
                        self.routed += 1
                        continue
                else:
                    msgs = [(mac(channel, data) + data, frames) for data, frames in msgs]
            else:
                msgs = box.pending(lambda data, channel=channel: mac(channel, data) + data)
            lane = (self.bulk, b"b" + uid, self._lane_gone) if box.lane_ok else None
            sent = _send_all(main, ident, msgs, lane)
            self.routed += sent
            if sent == len(msgs):
                if key in blocked:
                    del blocked[key]
                    box.keep(None)
                continue
            if isinstance(msgs, list):
                msgs = deque(msgs[sent:])
            else:
                for _ in range(sent):
                    msgs.popleft()
            box.keep(msgs)
            blocked[key] = None
            if stalled_bytes(p):
                stalled = stalled or []
                stalled.append(p)
        if stalled:
            for p in stalled:
                self._cut_stalled(p)
        if self._lane_gone:
            self._lose_laneless()

    def _cut_stalled(self, p):
        """A peer that stopped reading: more than ``OUT_MAX`` bytes wait for it while its
        connection takes nothing more.  It is lost as if its connection had dropped (its tasks
        run elsewhere, and it is fenced: its next message is answered "declared lost"), and its
        connections are ended, which frees what libzmq queued for them."""
        held = stalled_bytes(p)
        if not held or p.uid not in self.core.peers:
            return
        self.stalled += 1
        self._cut_peer(p, f"it stopped reading its connection ({held / 1e6:.1f} MB waited for it)",
                       "cut (it stopped reading its connection)")

    def _cut_peer(self, p, why: str, event: str):
        """A member that misbehaves is lost as if its connection had dropped (its tasks run
        elsewhere, and it is fenced: its next message is answered "declared lost"), and its
        connections are ended, which frees what libzmq queued for them."""
        fds = [(fd, self.fds[fd][2]) for fd in self.fds_of.get(p.uid, ()) if fd in self.fds]
        for which in (0, 1):
            self.blocked.pop((p.uid, which), None)
        self.log(f"cut {p.role} {p.name} ({p.host}, pid {p.pid}): {why}")
        self._lose(p, event)
        for fd, known in fds:
            end_connection(fd, known)

    def shutdown(self, reason: str):
        if not self.running:
            return
        self.running = False
        self.reason = reason
        core = self.core
        for p in core.peers.values():
            if p is not core.origin or not reason.startswith("the origin"):
                p.out.add(P.SHUTDOWN, reason.encode())
                p.cout.add(P.SHUTDOWN, reason.encode())
        self._event("shutdown", reason=reason)
        if self.shm is not None and core.upstream is None:
            self.shm.cleanup()

    # ---- meta stream ---------------------------------------------------------------------------
    def _event(self, kind, **data):
        self._status_due = True
        if "worker" in data:
            peer = data["worker"]
            data["worker"] = self.core.peer_info(peer)
            if kind == "left":
                self.census.note_left(data["worker"]["id"])
                if peer.role == "broker":
                    self.census.note_gone(peer)
        data["event"] = kind
        data["time"] = time.time()
        self._publish(P.EVENT, data)

    def _publish(self, kind, data):
        self.meta.send(kind, json.dumps(data).encode())

    def _publish_status(self, now):
        """A snapshot of a size that does not grow with the workers (scoop.census)."""
        core = self.core
        self._last_status = now
        t0, d0 = self._rate_mark
        if now - t0 >= 1.0:
            self.rate = (core.done_total - d0) / (now - t0)
            self._rate_mark = (now, core.done_total)
        snap = self._snapshot()
        origin = core.origin
        snap.update(state="running" if self.running else "stopped", time=time.time(),
                    origin=core.peer_info(origin) if origin and origin.uid in core.peers else None,
                    broker={"main_port": self.main_port, "meta_port": self.meta_port,
                            "bulk_port": self.bulk_port})
        snap["totals"].update(rate=round(self.rate, 1), dropped_messages=self.dropped,
                              routed_messages=self.routed, cut_connections=self.cut,
                              stalled_peers=self.stalled, flooding_peers=self.flooding,
                              refused_hellos=self.replayed,
                              bulk_frames=self.bulk_frames,
                              views=len(self.meta.views), views_refused=self.meta.refused,
                              views_cut=self.meta.cut, views_replayed=self.meta.replayed,
                              bulk_held=self.pairing.held_bytes() if self.pairing is not None else 0)
        self._publish(P.STATUS, snap)


def _send_all(sock, ident, msgs, lane=None) -> int:
    """Sends ``msgs`` ((signed header, frames), in order) to ``ident`` until its queue is full;
    returns how many went.  With ROUTER_MANDATORY a full queue refuses the identity frame, so a
    message goes whole or not at all; one for a peer not connected is dropped, as ZeroMQ would
    (its connection's loss handles the peer).  ``lane``: (bulk socket, identity, list of uids
    whose lane is gone) where a message's bulk-lane frames go first (scoop.bulk); a lane whose
    queue is full stops the sending too."""
    n = 0
    for header, frames in msgs:
        if lane is not None and frames and not _send_lane(lane, frames):
            return n
        try:
            sock.send(ident, _MORE)
        except zmq.Again:
            return n
        except zmq.ZMQError:
            n += 1
            continue
        _send_rest(sock, header, frames)
        n += 1
    return n


def _send_lane(lane, frames) -> bool:
    """A message's bulk-lane frames still in ``frames`` go to the receiver's lane, before its
    header, leaving its own frames there.  False if the lane's queue filled first: the frames
    not sent stay in ``frames`` (in place: the message waits in the backlog with them) and go
    next time.  A lane that is gone takes none: its receiver is lost after this flush, and
    what it held runs elsewhere."""
    if not any(type(fr) is P.LaneFrame for fr in frames):
        return True
    bulk, lident, gone = lane
    own = []
    for i, fr in enumerate(frames):
        if type(fr) is not P.LaneFrame:
            own.append(fr)
            continue
        try:
            bulk.send(lident, _MORE)
        except zmq.Again:
            frames[:] = own + frames[i:]
            return False
        except zmq.ZMQError:
            if not gone or gone[-1] != lident[1:]:
                gone.append(lident[1:])
            frames[:] = own + [f for f in frames[i:] if type(f) is not P.LaneFrame]
            return True
        bulk.send(fr.frame, P.NOBLOCK, copy=False)
    frames[:] = own
    return True


def _send_rest(sock, header, frames):
    """A message after its identity frame went: nothing refuses the rest."""
    if not frames:
        sock.send(header, P.NOBLOCK)
        return
    sock.send(header, _MORE)
    last = len(frames) - 1
    for k, fr in enumerate(frames):
        sock.send(fr, _MORE if k < last else P.NOBLOCK, copy=False)


_MORE = P.NOBLOCK | P.SNDMORE
_ACCEPTED = int(zmq.EVENT_ACCEPTED)
_FIRST_TYPE = P.MAC_SIZE + P.REC.size  # where a header's first record's type byte is


def _uid8(hexuid) -> bytes | None:
    """A member's uid as the 8 bytes its sealed frames name (identities carry it in hex)."""
    try:
        uid = bytes.fromhex(hexuid.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
    return uid if len(uid) == 8 else None


def _bind(sock, addr: str) -> int:
    if addr.endswith(":0"):
        return sock.bind_to_random_port(addr[:-2])
    sock.bind(addr)
    return int(addr.rsplit(":", 1)[1])


def _watch_stdin(broker: Broker):
    """The launcher holds our stdin open: its end means the launcher is gone."""
    try:
        while sys.stdin.buffer.read(65536):
            pass
    except Exception:
        pass
    broker.reason = "the launcher ended"
    broker.stop_event.set()


def main(broker_class=None):
    """``python -m scoop.broker`` (and, with :class:`~scoop.federation.SubBroker`, ``python -m
    scoop.federation``): serves until the cluster ends."""
    from ._procutil import die_with_parent, ignore_interrupts, name_process, raise_fd_limit
    from .direct import remove as remove_origin_socket
    name_process("scoop-broker")
    raise_fd_limit()
    # SIGTERM, not SIGKILL, when the launcher dies: the broker frees the cluster's shared memory
    die_with_parent(signal.SIGTERM)
    ignore_interrupts()
    line = sys.stdin.buffer.readline()
    if not line:
        sys.stderr.write("scoop broker: expected its configuration on stdin\n")
        sys.exit(2)
    cfg = json.loads(line)
    secret = bytes.fromhex(cfg.pop("secret"))
    try:
        upstream = (cfg["upstream"],) if cfg.get("upstream") else ()
        broker = (broker_class or Broker)(secret, cfg["main"], cfg["meta"], *upstream,
                                          heartbeat_timeout=cfg.get("heartbeat_timeout", DEFAULT_TIMEOUT),
                                          encryption=cfg.get("encryption", True))
    except zmq.ZMQError as exc:
        sys.stderr.write(f"scoop broker: cannot listen on {cfg['main']} / {cfg['meta']}: {exc}\n")
        sys.exit(2)
    sys.stdout.write(json.dumps({"main_port": broker.main_port, "meta_port": broker.meta_port}) + "\n")
    sys.stdout.flush()
    threading.Thread(target=_watch_stdin, args=(broker,), daemon=True).start()

    def on_term(signum, frame):
        # the launcher died (or we were told to end): its workers die with it, so free the
        # cluster's shared memory and leave now rather than after a last round of messages.
        # No locks here (not even Event.set): a signal landing inside one deadlocks the broker
        if broker.core.upstream is None:
            remove_origin_socket(secret)  # left by an origin killed with SIGKILL
            if broker.shm is not None:
                broker.shm.cleanup()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    # every task in flight is a few tracked objects: the collector's passes over them were a
    # sixth of a busy broker's time; what start-up built is never garbage, and routing makes
    # almost no cycles, so young objects are examined 100 times less often
    gc.freeze()
    gc.set_threshold(70000, 20, 20)
    try:
        broker.serve()
    finally:
        if broker.core.upstream is None:
            remove_origin_socket(secret)  # left by an origin killed with SIGKILL
            if broker.shm is not None:
                broker.shm.cleanup()
    os._exit(0)


if __name__ == "__main__":
    main()
