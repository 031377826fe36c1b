"""Broker federation: sub-brokers that serve their own workers under a root broker.

A sub-broker is to the root what a worker is: it asks for tasks (its workers' credits, passed
through one for one), returns results, heartbeats and reports the load of the workers behind
it.  The root stays the only scheduler, so balancing, stealing, re-dispatch and exactly-once
work across the whole tree unchanged; a sub-broker saves the root the connections, messages
and heartbeats of its workers (fan-in), which is what lets one cluster grow past what a single
broker process serves.  Payloads stay opaque at every level.
"""
from __future__ import annotations

import json
import os
import socket
import time

import zmq

from . import _protocol as P
from .broker import Broker, Peer


class SubBroker(Broker):
    def __init__(self, secret: bytes, main_addr: str, meta_addr: str, upstream: str, **kw):
        super().__init__(secret, main_addr, meta_addr, **kw)
        uid = os.urandom(8).hex().encode()
        self.up = self._dealer(b"t" + uid, upstream)
        self.upc = self._dealer(b"c" + uid, upstream)
        # the parent, seen as a peer: tasks it sends us have it as submitter, so results go back
        # to it through the ordinary routing
        self.upstream = Peer(b"^", None, 0, {"role": "upstream", "host": "upstream"}, time.monotonic())
        self.local_submitted: dict[int, Peer] = {}
        self.global_size = 0
        self.last_pong = time.monotonic()
        self.next_beat = 0.0
        self._join(upstream)

    def _dealer(self, ident, addr):
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, ident)
        for opt, val in ((zmq.SNDHWM, 0), (zmq.RCVHWM, 0), (zmq.LINGER, 500)):
            s.setsockopt(opt, val)
        s.connect(addr)
        return s

    def _join(self, upstream, timeout=30.0):
        hello = {"role": "broker", "host": socket.gethostname(), "pid": os.getpid()}
        P.send(self.up, self.signer, [P.HELLO, json.dumps(hello).encode()])
        if not self.up.poll(int(timeout * 1000)):
            raise zmq.ZMQError(msg=f"no answer from the root broker at {upstream}")
        recs = P.recv_verified(self.up, self.signer)
        if not recs or recs[0] != P.WELCOME:
            raise zmq.ZMQError(msg=f"unexpected first answer from the root broker at {upstream}")
        w = json.loads(recs[1])
        # ids of our workers' tasks stay globally unique: each sub-broker has its own index range
        self.next_index = (w["index"] << 12) + 1
        self.global_size = w["size"]
        self._on_upstream(recs[2:])

    # ---- hooks ----------------------------------------------------------------------------------
    def _accept_task(self, peer, tid, raw, d, group):
        self.local_submitted[tid] = peer
        self.upstream.out.put_raw(raw)

    def _on_credit(self, peer, n):
        peer.credit += n
        self.upstream.out += [P.CREDIT + P.I32.pack(n), P.EMPTY]

    def _on_blob(self, hdr, body):
        super()._on_blob(hdr, body)
        self.upstream.out += [hdr, body]

    def _forward_ask(self, peer, tid, hdr) -> bool:
        if self.local_submitted.get(tid) is peer:
            self.upstream.out += [hdr, P.EMPTY]
            return True
        return False

    def _forward_cancel(self, peer, tid, hdr) -> bool:
        if self.local_submitted.get(tid) is peer:
            self.upstream.out += [hdr, P.EMPTY]
            return True
        return False

    def _cancel_answer(self, task, rec):
        if task.submitter is self.upstream:
            self.upstream.cout += rec  # the root asked on our control socket
        else:
            super()._cancel_answer(task, rec)

    def _on_const(self, peer, hdr, body):
        if peer is not self.upstream:
            self.upstream.out += [hdr, body]
        super()._on_const(peer, hdr, body)

    def _on_interrupt_request(self, group):
        self.upstream.out += [P.INTERRUPT + P.U32.pack(group), P.EMPTY]

    def _alive(self, peer) -> bool:
        return peer is self.upstream or peer.uid in self.peers

    def _size(self):
        return self.global_size

    def _extra_sockets(self):
        return (self.up, self.upc)

    # ---- from the root ----------------------------------------------------------------------------
    def _on_extra(self, events):
        for sock, handler in ((self.up, self._on_upstream), (self.upc, self._on_upstream_control)):
            if sock in events:
                while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    recs = P.recv_verified(sock, self.signer)
                    if recs is None:
                        self.dropped += 1
                        continue
                    self.last_pong = time.monotonic()
                    handler(recs)

    def _on_upstream(self, recs):
        for i in range(0, len(recs), 2):
            hdr, body = recs[i], recs[i + 1]
            t = hdr[:1]
            if t == P.TASK or t == P.CHUNK:
                _, tid, group, d = P.TASK_HEADER.unpack(hdr)
                if tid not in self.tasks and group not in self.interrupted:
                    Broker._accept_task(self, self.upstream, tid, P.REC.pack(len(hdr), len(body)) + hdr + body,
                                        d, group)
            elif t == P.BLOB:
                Broker._on_blob(self, hdr, body)
            elif t in (P.RESULT, P.FAIL):
                tid = P.ID.unpack_from(hdr, 1)[0]
                peer = self.local_submitted.pop(tid, None)
                if peer is not None and peer.uid in self.peers:
                    peer.out += [hdr, body]
            elif t == P.CANCEL:
                tid = P.ID.unpack_from(hdr, 1)[0]
                peer = self.local_submitted.get(tid)
                if peer is not None:
                    if hdr[9:10] == b"\x01":
                        del self.local_submitted[tid]
                    peer.out += [hdr, body]
            elif t == P.ASK:
                peer = self.local_submitted.get(P.ID.unpack_from(hdr, 1)[0])
                if peer is not None:
                    peer.out += [hdr, body]
            elif t == P.CONST:
                self._on_const(self.upstream, hdr, body)
            elif t == P.SIZE:
                self.global_size = P.U32.unpack_from(hdr, 1)[0]
                self._send_size()
            elif t == P.SHUTDOWN:
                self.shutdown(body.decode("utf-8", "replace") or "the root broker ended")

    def _on_upstream_control(self, recs):
        for i in range(0, len(recs), 2):
            hdr = recs[i]
            t = hdr[:1]
            if t == P.INTERRUPT:
                self._interrupt(P.U32.unpack_from(hdr, 1)[0])
            elif t == P.STEAL:
                self._give_back(P.U32.unpack_from(hdr, 1)[0])
            elif t == P.CANCEL:
                self._cancel_for_root(hdr)
            elif t == P.SHUTDOWN:
                self.shutdown(recs[i + 1].decode("utf-8", "replace") or "the root broker ended")

    def _give_back(self, n):
        """The root steals: hand back tasks still queued here (not yet given to a worker)."""
        kept = []
        while self.queue and n > 0:
            task = self.queue.pop()
            if self.tasks.get(task.id) is task and task.worker is None and task.submitter is self.upstream:
                del self.tasks[task.id]
                self.upstream.cout += [P.RELEASE + P.ID.pack(task.id), P.EMPTY]
                n -= 1
            elif self.tasks.get(task.id) is task:
                kept.append(task)
        self.queue.extend(reversed(kept))

    def _cancel_for_root(self, hdr):
        tid = P.ID.unpack_from(hdr, 1)[0]
        task = self.tasks.get(tid)
        if task is not None and task.worker is not None:
            task.worker.cout += [hdr, P.EMPTY]  # its worker decides; the answer comes back up
            return
        ok = task is not None
        if ok:
            del self.tasks[tid]
        self.upstream.cout += [P.CANCEL + hdr[1:9] + (b"\x01" if ok else b"\x00"), P.EMPTY]

    # ---- to the root ------------------------------------------------------------------------------
    def _periodic(self, now):
        if now >= self.next_beat:
            self.next_beat = now + 0.25
            workers = [self._peer_info(p) for p in self.peers.values() if p.role == "worker"]
            load = {"workers": workers, "queued": len(self.queue),
                    "running": sum(w["running"] for w in workers),
                    "done": sum(w["done"] for w in workers)}
            self.upstream.cout += [P.HEARTBEAT, json.dumps(load).encode()]
        if now - self.last_pong > max(5.0, self.heartbeat_timeout + 2):
            self.shutdown("lost the root broker")

    def _flush(self):
        super()._flush()
        for sock, box in ((self.up, self.upstream.out), (self.upc, self.upstream.cout)):
            if box:
                data = box.take()
                sock.send(self.signer.sign((data,)) + data)

    def serve(self):
        try:
            super().serve()
        finally:
            self.up.close(linger=500)
            self.upc.close(linger=0)
