"""The broker: routes tasks to workers that asked for them and results back to submitters.

It reads record headers only; task, result and constant bodies pass through as opaque bytes.
Balancing is credit-based: a worker asks for as many tasks as it can start soon, and the
broker hands queued tasks to the workers with the most unused credit.  It knows which worker
holds which task, so a worker that stops heartbeating has its tasks dispatched again, and the
first result for a task id wins (each future completes exactly once).

Run as ``python -m scoop.broker``; the configuration (including the secret) arrives as one
JSON line on stdin, and stdin's end means the launcher is gone, so the broker ends too.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import deque

import zmq

from . import _protocol as P

MAX_ATTEMPTS = 3  # a task lost with this many dead workers fails with WorkerLostError
SUSPECT_SILENCE = 0.8


class Task:
    """A task in flight; ``raw`` is its record exactly as received (prefix, header, body),
    forwarded to a worker as is."""

    __slots__ = ("id", "raw", "digest", "group", "submitter", "worker", "attempts", "name")

    def __init__(self, tid, raw, digest, group, submitter):
        self.id = tid
        self.raw = raw
        self.digest = digest
        self.group = group
        self.submitter = submitter
        self.worker = None
        self.attempts = 0


class Outbox(list):
    """Records waiting for one socket of one peer, kept encoded (length prefix, header, body
    pieces) so a flush is one join: routed records are never decoded and encoded again.  The
    first records mark the peer for the next flush, so flushing costs O(peers with output),
    not O(peers) -- 1,000 idle workers are free."""

    __slots__ = ("key", "dirty")

    def __init__(self, key, dirty: set):
        super().__init__()
        self.key = key
        self.dirty = dirty

    def __iadd__(self, records):  # [hdr0, body0, hdr1, body1, ...]
        if not self:
            self.dirty.add(self.key)
        pack = P.REC.pack
        for j in range(0, len(records), 2):
            h, b = records[j], records[j + 1]
            self.extend((pack(len(h), len(b)), h, b))
        return self

    def put(self, h, b):
        if not self:
            self.dirty.add(self.key)
        self.extend((P.REC.pack(len(h), len(b)), h, b))

    def put_raw(self, raw):
        """An already encoded record: the hot path (dispatching a task, routing a result)."""
        if not self:
            self.dirty.add(self.key)
        self.append(raw)

    def take(self) -> bytes:
        data = b"".join(self)
        self.clear()
        return data


class Peer:
    """A connected process: a worker, the origin, or an observer that only heartbeats."""

    __slots__ = ("uid", "tident", "cident", "index", "host", "pid", "role", "credit", "assigned",
                 "have", "last_seen", "load", "out", "cout", "joined", "done_routed", "retiring", "last_steal")

    def __init__(self, uid, tident, index, info, now, dirty: set | None = None):
        self.uid = uid
        self.tident = tident
        self.cident = b"c" + uid
        self.index = index
        self.host = info.get("host", "?")
        self.pid = info.get("pid", 0)
        self.role = info.get("role", "worker")
        self.credit = 0
        self.assigned: dict[int, Task] = {}
        self.have: set[bytes] = set()
        self.last_seen = now
        self.load: dict = {}
        dirty = set() if dirty is None else dirty
        self.out = Outbox((uid, 0), dirty)
        self.cout = Outbox((uid, 1), dirty)
        self.joined = time.time()
        self.done_routed = 0
        self.retiring = False
        self.last_steal = 0.0


class Broker:
    def __init__(self, secret: bytes, main_addr: str, meta_addr: str, *,
                 heartbeat_timeout: float = 3.0, status_interval: float = 0.2,
                 context: zmq.Context | None = None, log=None):
        self.signer = P.Signer(secret)
        self.ctx = context or zmq.Context.instance()
        self.heartbeat_timeout = heartbeat_timeout
        self.status_interval = status_interval
        self.log = log or (lambda msg: sys.stderr.write(f"scoop broker: {msg}\n"))
        self.main = self.ctx.socket(zmq.ROUTER)
        for opt, val in ((zmq.SNDHWM, 0), (zmq.RCVHWM, 0), (zmq.LINGER, 1000), (zmq.ROUTER_MANDATORY, 1)):
            self.main.setsockopt(opt, val)
        self.meta = self.ctx.socket(zmq.PUB)
        self.meta.setsockopt(zmq.LINGER, 0)
        self.main_port = _bind(self.main, main_addr)
        self.meta_port = _bind(self.meta, meta_addr)
        self.peers: dict[bytes, Peer] = {}
        self.dirty: set = set()  # (uid, 0 task socket | 1 control socket) with records to send
        self.tasks: dict[int, Task] = {}
        self.queue: deque[Task] = deque()
        self.blobs: dict[bytes, bytes] = {}
        self.waiting_blob: dict[bytes, list] = {}  # tasks that arrived before their function
        self.consts: list = []
        self.const_names: set[str] = set()
        self.interrupted: set[int] = set()
        self.next_index = 1
        self.origin: Peer | None = None
        self.running = True
        self.reason = ""
        self.routed = 0       # messages routed (in and out), for capacity figures
        self.done_total = 0
        self._rate_mark = (time.monotonic(), 0)
        self.rate = 0.0
        self.dropped = 0
        self.lost_workers = 0
        self.stop_event = threading.Event()
        self._suspect_until = 0.0
        self._last_steal_check = 0.0
        self._status_due = False  # a join or leave: publish a snapshot now, not at the next tick
        self._size_due = False

    # ---- main loop ---------------------------------------------------------------------------
    def serve(self):
        main = self.main
        stop_event = self.stop_event
        poller = zmq.Poller()
        poller.register(main, zmq.POLLIN)
        # a dropped connection is the fast hint that a worker crashed; heartbeats confirm it
        monitor = main.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        poller.register(monitor, zmq.POLLIN)
        for sock in self._extra_sockets():
            poller.register(sock, zmq.POLLIN)
        next_check = next_status = time.monotonic()
        try:
            while self.running:
                if stop_event.is_set():
                    self.shutdown(self.reason or "stopped")
                    break
                events = dict(poller.poll(100))
                if monitor in events:
                    while monitor.poll(0):
                        monitor.recv_multipart()
                    self._suspect_until = time.monotonic() + 1.5
                if main in events:
                    recv, on_message = main.recv_multipart, self._on_message
                    for _ in range(256):  # drain, but let dispatch and flushing run in between
                        on_message(recv(zmq.NOBLOCK))
                        if not main.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                            break
                if len(events) > (main in events) + (monitor in events):
                    self._on_extra(events)
                now = time.monotonic()
                if self.queue:
                    self._dispatch()
                if not self.queue and self.tasks and now - self._last_steal_check > 0.005:
                    self._last_steal_check = now
                    self._steal(now)
                self._flush()
                if now >= next_check:
                    self._check_liveness(now)
                    self._periodic(now)
                    if self._size_due:
                        self._send_size()
                    next_check = now + 0.1
                if now >= next_status or self._status_due:
                    self._status_due = False
                    self._publish_status(now)
                    next_status = now + self.status_interval
        finally:
            self._flush()
            self._publish_status(time.monotonic())
            main.disable_monitor()
            monitor.close(0)
            self.main.close(linger=500)
            self.meta.close(linger=0)

    def _on_message(self, msg):
        self.routed += 1
        if len(msg) != 2 or not P.verify_sealed(self.signer, msg[1]):
            self.dropped += 1  # dropped before any byte of it is interpreted
            return
        ident, data = msg
        if len(ident) < 2:
            return
        kind, uid = ident[:1], ident[1:]
        peer = self.peers.get(uid)
        now = time.monotonic()
        if peer is not None:
            peer.last_seen = now
        try:
            if kind == b"t":
                self._on_task_socket(peer, ident, uid, data, now)
            elif kind == b"c":
                frames = P.decode(data, P.SIG_SIZE)
                if frames is not None:
                    self._on_control(peer, uid, frames)
        except Exception as exc:  # malformed but signed input must not kill the broker
            self.log(f"dropped a malformed message from {uid!r}: {type(exc).__name__}: {exc}")

    def _on_task_socket(self, peer, ident, uid, data, now):
        """Walks the records in place: results and tasks, nearly all of the traffic, are read
        by offset and forwarded as slices of the received buffer; the rest take the general
        path."""
        i, n = P.SIG_SIZE, len(data)
        rec_unpack, tasks = P.REC.unpack_from, self.tasks
        while i < n:
            hl, bl = rec_unpack(data, i)
            hs = i + 6
            end = hs + hl + bl
            if end > n or hl < 1:
                raise ValueError("truncated record")
            t = data[hs]
            if t == _RESULT and peer is not None:
                _, tid, _status, inputs = P.RESULT_HEADER.unpack_from(data, hs)
                self._route_result(tid, inputs, data, i, end)
            elif (t == _TASK or t == _CHUNK) and peer is not None:
                _, tid, group, d = P.TASK_HEADER.unpack_from(data, hs)
                if tid not in tasks and group not in self.interrupted:
                    self._accept_task(peer, tid, data[i:end], d, group)
            else:
                peer = self._on_record(peer, ident, uid, data[hs:hs + hl], data[hs + hl:end], now)
                if peer is _GONE:
                    return
            i = end

    def _on_control(self, peer, uid, frames):
        if peer is None:
            # a control socket only starts after its HELLO was welcomed: this peer was declared
            # lost (its tasks already run elsewhere), so it must not come back half-alive
            self._send_now(b"c" + uid, [P.SHUTDOWN, b"declared lost by the broker"])
            return
        for i in range(0, len(frames), 2):
            t = frames[i][:1]
            if t == P.HEARTBEAT:
                try:
                    load = json.loads(frames[i + 1])
                except ValueError:
                    load = peer.load
                if peer.role == "broker" and len(load.get("workers", ())) != len(peer.load.get("workers", ())):
                    peer.load = load
                    self._broadcast_size()
                peer.load = load
                peer.cout += [P.PONG, P.EMPTY]
            elif t == P.RELEASE:
                self._release(peer, P.ID.unpack_from(frames[i], 1)[0])
            elif t == P.TASK:  # a held task its submitter did not wait on, sent by its control thread
                self._on_records(peer, peer.tident, uid, frames[i:i + 2], time.monotonic())
            elif t == P.CANCEL:  # a worker's answer to a forwarded cancel
                tid = P.ID.unpack_from(frames[i], 1)[0]
                task = self.tasks.get(tid)
                ok = frames[i][9:10] == b"\x01" and task is not None and task.worker is peer
                if ok:
                    del self.tasks[tid]
                    peer.assigned.pop(tid, None)
                if task is not None:
                    self._cancel_answer(task, [P.CANCEL + frames[i][1:9] + (b"\x01" if ok else b"\x00"), P.EMPTY])

    def _on_records(self, peer, ident, uid, frames, now):
        """Records as ``[hdr, body, ...]`` pairs (a held task arriving on a control socket)."""
        for i in range(0, len(frames), 2):
            peer = self._on_record(peer, ident, uid, frames[i], frames[i + 1], now)
            if peer is _GONE:
                return

    def _route_result(self, tid, inputs, data, start, end):
        """The first result for a task id goes to its submitter (a slice of the received
        buffer); a duplicate, cancelled or orphaned one is dropped: exactly once."""
        task = self.tasks.pop(tid, None)
        if task is None:
            return
        w = task.worker
        if w is not None:
            w.assigned.pop(tid, None)
            w.done_routed += inputs
        self.done_total += inputs
        sub = task.submitter
        if self._alive(sub):
            sub.out.put_raw(data[start:end])

    def _on_record(self, peer, ident, uid, hdr, body, now):
        """One record from a task socket; returns the sender (a HELLO creates it, a BYE
        removes it), or _GONE when the rest of the message must be ignored."""
        t = hdr[:1]
        if t == P.TASK or t == P.CHUNK:
            if peer is None:
                self._send_now(ident, [P.SHUTDOWN, b"declared lost by the broker"])
                return _GONE
            _, tid, group, d = P.TASK_HEADER.unpack(hdr)
            if tid not in self.tasks and group not in self.interrupted:
                self._accept_task(peer, tid, P.REC.pack(len(hdr), len(body)) + hdr + body, d, group)
        elif t == P.RESULT:
            _, tid, _status, inputs = P.RESULT_HEADER.unpack(hdr)
            raw = P.REC.pack(len(hdr), len(body)) + hdr + body
            self._route_result(tid, inputs, raw, 0, len(raw))
        elif t == P.FAIL:  # a sub-broker gave up on a task: pass the verdict on
            task = self.tasks.pop(P.ID.unpack_from(hdr, 1)[0], None)
            if task is not None:
                if task.worker is not None:
                    task.worker.assigned.pop(task.id, None)
                if self._alive(task.submitter):
                    task.submitter.out += [hdr, body]
        elif t == P.CREDIT:
            if peer is not None and not peer.retiring:
                self._on_credit(peer, P.I32.unpack_from(hdr, 1)[0])
        elif t == P.RETIRE:
            if peer is not None and peer.role == "origin":
                idx = P.U32.unpack_from(hdr, 1)[0]
                for p in self.peers.values():
                    if p.index == idx and p.role == "worker":
                        p.retiring = True
                        p.credit = 0
                        p.out += [P.RETIRE, P.EMPTY]
        elif t == P.BLOB:
            self._on_blob(hdr, body)
        elif t == P.HELLO:
            self._on_hello(ident, uid, body, now)
            peer = self.peers.get(uid)
        elif t == P.CANCEL:
            if peer is None:
                return peer
            tid = P.ID.unpack_from(hdr, 1)[0]
            if self._forward_cancel(peer, tid, hdr):
                return peer
            task = self.tasks.get(tid)
            if task is not None and task.submitter is peer and task.worker is not None:
                # prefetched but maybe not started: its worker's control thread decides
                task.worker.cout += [P.CANCEL + hdr[1:9], P.EMPTY]
                return peer
            ok = task is not None and task.worker is None and task.submitter is peer
            if ok:
                del self.tasks[tid]  # left in the queue; skipped when popped
            peer.out += [P.CANCEL + hdr[1:9] + (b"\x01" if ok else b"\x00"), P.EMPTY]
        elif t == P.ASK:
            if peer is not None and not self._forward_ask(peer, P.ID.unpack_from(hdr, 1)[0], hdr):
                task = self.tasks.get(P.ID.unpack_from(hdr, 1)[0])
                state = b"\x02" if task is None else (b"\x00" if task.worker is None else b"\x01")
                peer.out += [hdr[:9] + state, P.EMPTY]
        elif t == P.CONST:
            self._on_const(peer, hdr, body)
        elif t == P.INTERRUPT:
            self._on_interrupt_request(P.U32.unpack_from(hdr, 1)[0])
        elif t == P.RELEASE:
            self._release(peer, P.ID.unpack_from(hdr, 1)[0])
        elif t == P.BYE:
            if peer is not None:
                self._remove(peer, "left")
                peer = None
        elif t == P.SHUTDOWN:
            if peer is not None and peer.role == "origin":
                self.shutdown(body.decode("utf-8", "replace") or "stopped by the origin")
        return peer

    def _on_hello(self, ident, uid, body, now):
        info = json.loads(body)
        if uid in self.peers:
            return
        peer = Peer(uid, ident, self.next_index, info, now, self.dirty)
        self.next_index += 1
        self.peers[uid] = peer
        if peer.role == "origin":
            self.origin = peer
        size = self._size()
        welcome = {"index": peer.index, "size": size, "meta_port": self.meta_port,
                   "main_port": self.main_port}
        peer.out += [P.WELCOME, json.dumps(welcome).encode()]
        for hdr, body in self.consts:
            peer.out += [hdr, body]
        if peer.role == "worker":
            self._broadcast_size()
            origin = self.origin
            if origin is not None and origin.uid in self.peers:
                # the origin waits for joins (cluster start): it hears of each one at once
                origin.out += [P.SIZE + P.U32.pack(self._size()), P.EMPTY]
        self._event("joined", worker=self._peer_info(peer))

    # ---- hooks a sub-broker (scoop.federation) overrides ----------------------------------------
    def _accept_task(self, peer, tid, raw, d, group):
        task = Task(tid, raw, d, group, peer)
        self.tasks[tid] = task
        self.queue.append(task)

    def _on_credit(self, peer, n):
        peer.credit += n

    def _on_blob(self, hdr, body):
        d = hdr[1:17]
        self.blobs[d] = body
        parked = self.waiting_blob.pop(d, None)
        if parked:
            self.queue.extendleft(reversed(parked))

    def _forward_cancel(self, peer, tid, hdr) -> bool:
        return False

    def _forward_ask(self, peer, tid, hdr) -> bool:
        return False

    def _cancel_answer(self, task, rec):
        if self._alive(task.submitter):
            task.submitter.out += rec

    def _alive(self, peer) -> bool:
        return peer.uid in self.peers

    def _on_const(self, peer, hdr, body):
        name = hdr[1:].decode("utf-8", "replace")
        if name in self.const_names:
            return
        self.const_names.add(name)
        self.consts.append((hdr, body))
        for p in self.peers.values():
            if p is not peer:
                p.out += [hdr, body]
        self._event("const", name=name)

    def _on_interrupt_request(self, group):
        self._interrupt(group)

    def _extra_sockets(self):
        return ()

    def _on_extra(self, events):
        pass

    def _periodic(self, now):
        pass

    def _size(self):
        """Workers in the whole cluster, those behind sub-brokers included."""
        return sum(1 if p.role == "worker" else len(p.load.get("workers", ()))
                   for p in self.peers.values() if p.role in _TARGETS)

    def _broadcast_size(self):
        """Coalesced: sent by the periodic check, at most 10 times a second -- a burst of 1,000
        joins must not cost a million SIZE records."""
        self._size_due = True

    def _send_size(self):
        self._size_due = False
        rec = [P.SIZE + P.U32.pack(self._size()), P.EMPTY]
        for p in self.peers.values():
            p.out += rec

    # ---- dispatch ----------------------------------------------------------------------------
    def _dispatch(self):
        workers = [p for p in self.peers.values() if p.credit > 0 and p.role in _TARGETS]
        queue, tasks, blobs = self.queue, self.tasks, self.blobs
        while queue and workers:
            # least loaded first, a fair share each: spreads a burst evenly in O(workers + tasks)
            workers.sort(key=_load)
            share = -(-len(queue) // len(workers))
            for w in workers:
                take = min(w.credit, share)
                out = w.out
                while take and queue:
                    task = queue.popleft()
                    if tasks.get(task.id) is not task or task.worker is not None:
                        continue  # cancelled, interrupted or already done
                    d = task.digest
                    if d not in w.have:
                        blob = blobs.get(d)
                        if blob is None:
                            # its function is on its way on the submitter's other socket
                            self.waiting_blob.setdefault(d, []).append(task)
                            continue
                        w.have.add(d)
                        out.put(P.BLOB + d, blob)
                    out.put_raw(task.raw)
                    task.worker = w
                    w.assigned[task.id] = task
                    w.credit -= 1
                    take -= 1
                if not queue:
                    break
            workers = [w for w in workers if w.credit > 0]

    def _flush(self):
        send = self.main.send_multipart
        signer = self.signer
        dirty = list(self.dirty)
        self.dirty.clear()
        for uid, which in dirty:
            p = self.peers.get(uid)
            if p is None:
                continue
            box = p.cout if which else p.out
            if not box:
                continue
            data = box.take()
            try:
                send([p.cident if which else p.tident, signer.sign((data,)) + data], zmq.NOBLOCK)
                self.routed += 1
            except zmq.ZMQError:
                pass  # peer not connected (yet/any more); liveness handles it

    def _steal(self, now):
        """An idle worker while another holds several unstarted tasks: ask for half of them
        back, so a burst prefetched by one worker does not run serially (work stealing)."""
        idle = [p for p in self.peers.values() if p.role in _TARGETS and p.credit > 0 and not p.assigned]
        if not idle:
            return
        victim = max((p for p in self.peers.values() if p.role in _TARGETS), key=_load)
        if len(victim.assigned) >= 2 and now - victim.last_steal > 0.02:
            victim.last_steal = now
            n = max(1, min(len(idle), len(victim.assigned) // 2))
            victim.cout += [P.STEAL + P.U32.pack(n), P.EMPTY]

    def _release(self, peer, tid):
        task = self.tasks.get(tid)
        if task is not None and task.worker is peer:
            peer.assigned.pop(tid, None)
            task.worker = None
            self.queue.appendleft(task)

    # ---- failures ------------------------------------------------------------------------------
    def _check_liveness(self, now):
        limit = self.heartbeat_timeout
        if now < self._suspect_until:
            # after a disconnect, a peer silent for 3 heartbeat intervals is taken for dead
            limit = min(limit, SUSPECT_SILENCE)
        for p in list(self.peers.values()):
            if now - p.last_seen > limit:
                self._remove(p, f"lost (no heartbeat for {now - p.last_seen:.1f} s)")

    def _remove(self, peer: Peer, why: str):
        if self.peers.pop(peer.uid, None) is None:
            return
        graceful = why == "left"
        if not graceful and peer.role in _TARGETS:
            self.lost_workers += 1
            self.log(f"worker {peer.index} ({peer.host}, pid {peer.pid}) {why}; "
                     f"re-dispatching {len(peer.assigned)} task(s)")
        for task in sorted(peer.assigned.values(), key=lambda t: t.id, reverse=True):
            task.worker = None
            task.attempts += 0 if graceful else 1
            if task.attempts >= MAX_ATTEMPTS:
                self._fail(task, f"task was lost with {task.attempts} workers that died while "
                                 f"running it (last: worker {peer.index} on {peer.host}, pid {peer.pid}, {why})")
            else:
                self.queue.appendleft(task)
        peer.assigned.clear()
        # tasks this peer submitted have nobody to report to: forget them
        orphans = [t for t in self.tasks.values() if t.submitter is peer]
        for t in orphans:
            del self.tasks[t.id]
            if t.worker is not None:
                t.worker.assigned.pop(t.id, None)
        if peer.role in _TARGETS:
            self._broadcast_size()
        self._event("left", worker=self._peer_info(peer), reason=why)
        if peer is self.origin:
            self.shutdown(f"the origin {why}")

    def _fail(self, task: Task, reason: str):
        self.tasks.pop(task.id, None)
        if self._alive(task.submitter):
            task.submitter.out += [P.FAIL + P.ID.pack(task.id), reason.encode()]

    def _interrupt(self, group: int):
        self.interrupted.add(group)
        for tid, task in list(self.tasks.items()):
            if task.group == group:
                del self.tasks[tid]
                if task.worker is not None:
                    task.worker.assigned.pop(tid, None)
        rec = [P.INTERRUPT + P.U32.pack(group), P.EMPTY]
        for p in self.peers.values():
            if p.role in _TARGETS:
                p.cout += rec

    def shutdown(self, reason: str):
        if not self.running:
            return
        self.running = False
        self.reason = reason
        rec = [P.SHUTDOWN, reason.encode()]
        for p in self.peers.values():
            if p is not self.origin or not reason.startswith("the origin"):
                p.out += rec
                p.cout += rec
        self._event("shutdown", reason=reason)

    # ---- meta stream ---------------------------------------------------------------------------
    def _peer_info(self, p: Peer) -> dict:
        load = p.load
        running = load.get("running", 0)
        return {"id": str(p.index), "uid": p.uid.decode(), "host": p.host, "pid": p.pid,
                "role": p.role, "state": "busy" if (running or p.assigned) and p.role == "worker" else "idle",
                "queued": load.get("queued", 0), "running": running, "blocked": load.get("blocked", 0),
                "assigned": len(p.assigned), "done": load.get("done", 0),
                "cpu": load.get("cpu", 0.0), "mem": load.get("mem", 0)}

    def _event(self, kind, **data):
        self._status_due = True
        data["event"] = kind
        data["time"] = time.time()
        self.meta.send_multipart([P.EVENT, P.seal(self.signer, [P.EVENT, json.dumps(data).encode()])])

    def _publish_status(self, now):
        t0, d0 = self._rate_mark
        if now - t0 >= 1.0:
            self.rate = (self.done_total - d0) / (now - t0)
            self._rate_mark = (now, self.done_total)
        workers = []
        for p in self.peers.values():
            if p.role == "worker":
                workers.append(self._peer_info(p))
            elif p.role == "broker":  # a sub-broker reports the workers behind it
                workers.extend(dict(w, via=p.index) for w in p.load.get("workers", ()))
        busy = sum(1 for w in workers if w["state"] == "busy")
        snap = {
            "state": "running" if self.running else "stopped",
            "time": time.time(),
            "workers": workers,
            "origin": self._peer_info(self.origin) if self.origin and self.origin.uid in self.peers else None,
            "totals": {"workers": len(workers), "busy": busy / len(workers) if workers else 0.0,
                       "done": self.done_total, "queued": len(self.queue), "in_flight": len(self.tasks),
                       "running": sum(len(p.assigned) for p in self.peers.values()),
                       "rate": round(self.rate, 1), "lost_workers": self.lost_workers,
                       "dropped_messages": self.dropped, "routed_messages": self.routed},
            "broker": {"main_port": self.main_port, "meta_port": self.meta_port},
        }
        self.meta.send_multipart([P.STATUS, P.seal(self.signer, [P.STATUS, json.dumps(snap).encode()])])


_TARGETS = ("worker", "broker")  # peers that take tasks: workers and sub-brokers
_TASK, _CHUNK, _RESULT = P.TASK[0], P.CHUNK[0], P.RESULT[0]
_GONE = object()  # _on_record: the sender was told to go away; skip the rest of its message


def _load(p):
    return len(p.assigned)


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


def main():
    from ._procutil import die_with_parent, ignore_interrupts, name_process
    name_process("scoop-broker")
    die_with_parent()
    ignore_interrupts()
    line = sys.stdin.buffer.readline()
    if not line:
        sys.stderr.write("scoop broker: expected its configuration on stdin\n")
        sys.exit(2)
    cfg = json.loads(line)
    secret = bytes.fromhex(cfg.pop("secret"))
    try:
        if cfg.get("upstream"):
            from .federation import SubBroker
            broker = SubBroker(secret, cfg["main"], cfg["meta"], cfg["upstream"],
                               heartbeat_timeout=cfg.get("heartbeat_timeout", 3.0))
        else:
            broker = Broker(secret, cfg["main"], cfg["meta"],
                            heartbeat_timeout=cfg.get("heartbeat_timeout", 3.0))
    except zmq.ZMQError as exc:
        sys.stderr.write(f"scoop broker: cannot listen on {cfg['main']} / {cfg['meta']}: {exc}\n")
        sys.exit(2)
    sys.stdout.write(json.dumps({"main_port": broker.main_port, "meta_port": broker.meta_port}) + "\n")
    sys.stdout.flush()
    threading.Thread(target=_watch_stdin, args=(broker,), daemon=True).start()
    broker.serve()
    os._exit(0)


if __name__ == "__main__":
    main()
