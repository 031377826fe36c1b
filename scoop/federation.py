"""Broker federation: sub-brokers that serve their own workers under a root broker.

A sub-broker is to the root what a worker is: it asks for tasks (its workers' credits, passed
through one for one), returns results and reports the load of the workers behind it.  The root
stays the only scheduler, so balancing, stealing, re-dispatch and exactly-once work across the
whole tree unchanged; a sub-broker saves the root the connections and messages of its workers
(fan-in), which is what lets one cluster grow past what a single broker process serves.  It
composes the same scheduling core as the root, with the root as its ``upstream`` peer.
Payloads stay opaque at every level.
"""
from __future__ import annotations

import json
import os
import socket
import time
from itertools import islice

import zmq

from . import _protocol as P
from .broker import Broker
from .broker import main as serve
from .census import status_interval
from .liveness import LOAD_INTERVAL, configure_socket
from .scheduling import STEAL_SCAN, Peer
from .security import secure_client

SUB_STATUS_INTERVAL = 2.0  # seconds between two snapshots on a sub-broker's own meta stream
OWED_FOR = 1.0  # seconds tasks our workers give back still go up to the root that asked for them
# tiny tasks a worker here gets in one message (scoop.dispatch): the root sends a sub-broker its
# tasks as its workers' credits come back, a few hundred at a time for thousands of workers, and
# a fair share of those was one task per message (the messages, on both ends, were then the limit)
PACK = 8
REPORT_MAX = 2.0  # seconds a load report to the root waits at most (the root's own snapshot comes
                  # as seldom from 40,000 workers on)


def report_interval(workers: int, cluster: int) -> float:
    """Seconds between two load reports to the root: a report feeds the root's snapshot, so it
    comes as often as the root publishes one (up to ``REPORT_MAX``), and never so often that
    the walk over this broker's workers behind it costs more than a small share (census)."""
    return max(status_interval(workers, LOAD_INTERVAL), min(status_interval(cluster), REPORT_MAX))


class SubBroker(Broker):
    def __init__(self, secret: bytes, main_addr: str, meta_addr: str, upstream: str, **kw):
        # the parent, seen as a peer: tasks it sends us have it as submitter, so results go back
        # to it through the ordinary routing
        self.upstream = Peer(b"^", 0, {"role": "upstream", "host": "upstream"}, set())
        # views subscribe to the root's meta stream: what the root hears of our workers is the load
        # report; our own stream is for whoever looks at this broker alone, so it comes seldom
        # (each snapshot walks our workers: twice the walk at the same pace was ~6 % of a core)
        kw.setdefault("status_interval", SUB_STATUS_INTERVAL)
        super().__init__(secret, main_addr, meta_addr, upstream=self.upstream, **kw)
        # one walk over our workers per report: our own meta stream shows the last report
        self.last_report = None
        self.reported_at = 0.0
        self.reported_count = 0
        self.upstream.out.dirty = self.upstream.cout.dirty = self.core.dirty
        self.core.pack = PACK
        uid = os.urandom(8).hex().encode()
        self.control_id = os.urandom(8).hex()  # its own, named in our hello (scoop.security)
        self.upc = self._dealer(b"c" + self.control_id.encode(), upstream, connect=False)
        self.upc_monitor = self.upc.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.upc.connect(upstream)
        self.up = self._dealer(b"t" + uid, upstream)
        self.up_monitor = self.up.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.next_beat = 0.0
        self.owed = None  # (tasks the root asked back that our workers hold, since when)
        self._from_root = {
            P.TASK: self._u_task, P.CHUNK: self._u_task, P.BLOB: self._u_blob, P.RESULT: self._u_result,
            P.FAIL: self._u_result, P.CANCEL: self._u_answer, P.ASK: self._u_answer, P.CONST: self._u_const,
            P.SIZE: self._u_size, P.SHUTDOWN: self._u_shutdown,
        }
        self._from_root_control = {
            P.INTERRUPT: lambda rec: self.core.interrupt(P.GROUP.unpack(rec.hdr)[1]),
            P.STEAL: lambda rec: self._give_back(P.COUNT.unpack(rec.hdr)[1]),
            P.CANCEL: self._cancel_for_root, P.SHUTDOWN: self._u_shutdown,
        }
        self._join(upstream)

    def _dealer(self, ident, addr, connect=True):
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, ident)
        for opt, val in ((zmq.SNDHWM, 0), (zmq.RCVHWM, 0), (zmq.LINGER, 500)):
            s.setsockopt(opt, val)
        configure_socket(s, self.heartbeat_timeout)
        secure_client(s, self.secret, addr, self.encryption)
        if connect:
            s.connect(addr)
        return s

    def _join(self, upstream, timeout=30.0):
        hello = {"uid": self.up.getsockopt(zmq.IDENTITY)[1:].decode(), "control": self.control_id,
                 "role": "broker", "host": socket.gethostname(), "pid": os.getpid(), "name": "broker"}
        up = self.upc_monitor.poll(int(timeout * 1000))
        self.upc.disable_monitor()
        self.upc_monitor.close(0)
        if not up:
            raise zmq.ZMQError(msg=f"no answer from the root broker at {upstream}")
        P.send_records(self.up, self.signer, P.TO_BROKER, [(P.HELLO, json.dumps(hello).encode())])
        if not self.up.poll(int(timeout * 1000)):
            raise zmq.ZMQError(msg=f"no answer from the root broker at {upstream}")
        recs = P.recv_verified(self.up, self.signer, P.FROM_BROKER)
        if not recs or recs[0].hdr[:1] != P.WELCOME:
            raise zmq.ZMQError(msg=f"unexpected first answer from the root broker at {upstream}")
        w = json.loads(bytes(recs[0].body))
        # ids of our workers' tasks stay globally unique: each sub-broker has its own index range
        self.core.next_index = (w["index"] << 12) + 1
        self.core.global_size = w["size"]
        self._on_upstream(recs[1:])

    # ---- from the root ----------------------------------------------------------------------------
    def _extra_sockets(self):
        return (self.up, self.upc, self.up_monitor)

    def _on_extra(self, events):
        if self.up_monitor in events:
            while self.up_monitor.poll(0):
                self.up_monitor.recv_multipart()
            self.shutdown("lost the root broker (its connection dropped)")
            return
        for sock, channel, handler in ((self.up, P.FROM_BROKER, self._on_upstream),
                                       (self.upc, P.CONTROL_FROM_BROKER, self._on_upstream_control)):
            if sock in events:
                while sock.getsockopt(P.EVENTS) & P.POLLIN:
                    recs = P.recv_verified(sock, self.signer, channel)
                    if recs is None:
                        self.dropped += 1
                        continue
                    handler(recs)

    def _on_upstream(self, recs):
        for rec in recs:
            handler = self._from_root.get(rec.hdr[:1])
            if handler is not None:
                handler(rec)

    def _on_upstream_control(self, recs):
        for rec in recs:
            handler = self._from_root_control.get(rec.hdr[:1])
            if handler is not None:
                handler(rec)

    def _u_task(self, rec):
        self.core.submit(self.upstream, rec)

    def _u_blob(self, rec):
        self.core.blob(self.upstream, rec)

    def _u_result(self, rec):
        self.core.result(rec)

    def _u_answer(self, rec):
        """The root's answer to a cancel or a question one of our workers asked."""
        tid = P.task_id(rec.hdr)
        peer = self.core.local_submitted.get(tid)
        if peer is not None:
            if rec.hdr[:1] == P.CANCEL and P.answer_of(rec.hdr, 0) == 1:
                del self.core.local_submitted[tid]
                peer.submitted.discard(tid)
            peer.out.add_record(rec)

    def _u_const(self, rec):
        self.core.const(self.upstream, rec)

    def _u_size(self, rec):
        # passed on as the root's own broadcast is: paced by the broker's loop (while thousands
        # join, the root's size changes at every report, and a broadcast is a message per worker)
        size = P.SIZE_HEADER.unpack(rec.hdr)[1]
        if size != self.core.global_size:
            self.core.global_size = size
            self.core.size_due = True

    def _u_shutdown(self, rec):
        self.shutdown(bytes(rec.body).decode("utf-8", "replace") or "the root broker ended")

    def _give_back(self, n):
        """The root steals: hand back tasks still queued here (not yet given to a worker); for
        the rest, ask our own workers for their unstarted ones, which go up as they come back
        (:meth:`_r_release`) -- or a short task would wait here behind a long one while a
        worker elsewhere in the tree sits idle."""
        rest = self._hand_back(n)
        self.owed = (rest, time.monotonic()) if rest else None
        core = self.core
        for victim in list(islice(core.heavy, STEAL_SCAN)):
            if rest <= 0:
                break
            k = min(rest, len(victim.assigned) - victim.runs)
            if k > 0:
                victim.cout.add(P.COUNT.pack(P.STEAL, k))
                rest -= k

    def _hand_back(self, n) -> int:
        """Up to ``n`` queued tasks of the root's back to it; how many it still wants.  Each
        one frees the credit of ours it took at the root (none of our workers holds it)."""
        core = self.core
        kept = []
        given = 0
        while core.queue and given < n:
            task = core.queue.pop()
            if core.tasks.get(task.id) is task and task.worker is None and task.submitter is self.upstream:
                core.forget(task)
                self.upstream.cout.add(P.TID.pack(P.RELEASE, task.id))
                given += 1
            elif core.tasks.get(task.id) is task:
                kept.append(task)
        core.queue.extend(reversed(kept))
        core.credit_up(given)
        return n - given

    def _r_release(self, peer, rec):
        super()._r_release(peer, rec)
        if self.owed is not None:
            n, since = self.owed
            n = self._hand_back(n) if time.monotonic() - since < OWED_FOR else 0
            self.owed = (n, since) if n else None

    def _cancel_for_root(self, rec):
        tid = P.task_id(rec.hdr)
        task = self.core.tasks.get(tid)
        if task is not None and task.worker is not None:
            task.worker.cout.add(P.TID.pack(P.CANCEL, tid))  # its worker decides; the answer comes back up
            return
        ok = task is not None
        if ok:
            self.core.forget(task)
            self.core.credit_up(1)  # it took a credit of ours at the root, and no worker holds it
        self.upstream.cout.add(P.answer(rec.hdr, ok))

    # ---- to the root ------------------------------------------------------------------------------
    def _periodic(self, now):
        """The load report to the root: a snapshot of this broker's workers (scoop.census), of a
        size that does not grow with them, with their count and hosts."""
        core = self.core
        # workers joined or left: the root counts them at once (a cluster's start waits for them)
        moved = core.n_workers != self.reported_count
        if now >= self.next_beat or (moved and now - self.reported_at >= status_interval(core.n_workers,
                                                                                        LOAD_INTERVAL)):
            self.next_beat = now + report_interval(core.n_workers, core.global_size)
            self.reported_at, self.reported_count = now, core.n_workers
            snap = self.last_report = self.census.snapshot()
            load = dict(snap, count=core.n_workers, hosts={str(k): v for k, v in core.host_refs.items()},
                        queued=core.queued(), running=core.n_assigned, done=core.done_total)
            self.upstream.cout.add(P.LOAD, json.dumps(load).encode())

    def _snapshot(self):
        """Our own meta stream shows the last report (views read the root's): no walk of its own."""
        snap = self.last_report
        if snap is None:
            return super()._snapshot()
        core = self.core  # its counts kept fresh (they cost nothing)
        return dict(snap, totals=dict(snap["totals"], done=core.done_total, queued=core.queued(),
                                      in_flight=len(core.tasks), running=core.n_assigned))

    def _flush(self):
        core = self.core
        up = [(k, w) for k, w in core.dirty if k == b"^"]
        for key in up:
            core.dirty.discard(key)
        super()._flush()
        for sock, channel, box in ((self.up, P.TO_BROKER, self.upstream.out),
                                   (self.upc, P.CONTROL_TO_BROKER, self.upstream.cout)):
            if box:
                P.send(sock, self.signer, channel, box)

    def serve(self):
        try:
            super().serve()
        finally:
            self.up.disable_monitor()
            self.up_monitor.close(0)
            self.up.close(linger=500)
            self.upc.close(linger=0)


def main():
    """``python -m scoop.federation``: a sub-broker, configured as the root broker is."""
    serve(SubBroker)


if __name__ == "__main__":
    main()
