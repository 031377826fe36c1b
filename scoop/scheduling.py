"""The broker's scheduling core: queue, dispatch, stealing, loss and re-dispatch -- no I/O.

Events come in as method calls (a peer joined, asked for n tasks, submitted a task, sent a
result, was lost); what must be sent goes into each peer's outboxes, which the broker (or a
sub-broker of a federation) flushes to its sockets.  So load balancing and exactly-once
delivery are unit-tested without ZeroMQ (tests/test_scheduling.py).

The core is three layers, one concern each: the peer book (:mod:`scoop.peers`: who is
connected, and indexes that find a peer in O(1)), the dispatch policy over it
(:mod:`scoop.dispatch`: queued tasks to the workers with credit, work stealing), and here the
events and their outcome.  The core knows which worker holds which task: a lost worker's tasks
are queued again (a task that killed :data:`MAX_ATTEMPTS` workers fails), the first result for
a task id wins, and a duplicate, cancelled or orphaned one is dropped (its shared memory freed).

A task the origin leased straight to a worker (scoop.direct) reaches the core after it started,
maybe after it finished: a LEASE registers it at that worker (or queues it, if that worker is
gone), and a DONE or RESULT that came first is remembered for a while, so the LEASE of a task
that is over is dropped.

Every event costs the same however many workers are connected: the book's indexes and counts
are kept up to date as peers change, instead of walking every peer (tests count the peers each
operation visits, at 10 and at 10,000 workers).  Only broadcasts (a constant, an interrupt,
the size) and the meta figures reach every peer, and the broker paces those.
"""
from __future__ import annotations

import json
import time

from . import _protocol as P
from .dispatch import STEAL_EVERY, STEAL_SCAN, Dispatcher, Task
from .peers import TARGETS, Outbox, Peer

__all__ = ["MAX_ATTEMPTS", "STEAL_EVERY", "STEAL_SCAN", "TARGETS", "Outbox", "Peer", "Recent",
           "Scheduler", "Task"]

MAX_ATTEMPTS = 3  # a task lost with this many dead workers fails with WorkerLostError
RECENT_KEEP = 10.0  # seconds task ids are remembered for records that may still come (at most twice)


class Recent:
    """Task ids remembered for a while, for a record about them that may still come: at least
    ``RECENT_KEEP`` seconds, at most twice that, in two generations (no per-entry clock)."""

    __slots__ = ("young", "old", "since")

    def __init__(self):
        self.young: dict = {}
        self.old: dict = {}
        self.since = 0.0

    def add(self, tid: int, value, now: float):
        if now - self.since > RECENT_KEEP:
            self.old, self.young = self.young, {}
            self.since = now
        self.young[tid] = value

    def pop(self, tid: int, default=None):
        if tid in self.young:
            return self.young.pop(tid)
        return self.old.pop(tid, default)

    def __contains__(self, tid):
        return tid in self.young or tid in self.old

    def __len__(self):
        return len(self.young) + len(self.old)


class Scheduler(Dispatcher):
    """The scheduling core: one method per event; what must be sent lands in peers' outboxes."""

    def __init__(self, upstream: Peer | None = None, log=None, unlink=None):
        super().__init__(upstream)
        self.consts: list[P.Record] = []
        self.const_names: set[str] = set()
        self.interrupted: set[int] = set()
        self.local_submitted: dict[int, Peer] = {}  # a sub-broker: tasks it sent up, by submitter
        self.done_total = 0
        self.lost_workers = 0
        self.early_done = Recent()  # tid -> inputs: DONEs of tasks not known (yet): a LEASE may follow
        self.stopped = Recent()     # tids of tasks interrupted at a worker that may have finished them
        self.log = log or (lambda msg: None)
        self.unlink = unlink or (lambda seg: None)  # frees shared memory of records it drops
        self.on_event = lambda kind, **data: None

    # ---- membership --------------------------------------------------------------------------
    def join(self, uid: bytes, info: dict) -> Peer | None:
        peer = self._add_peer(uid, info)
        if peer is None:
            return None
        welcome = {"index": peer.index, "size": self.size(), "hosts": self.hosts(), "name": peer.name,
                   "root": self.upstream is None}
        peer.out.add(P.WELCOME, json.dumps(welcome).encode())
        for rec in self.consts:
            peer.out.add_record(rec)
        if peer.takes:
            self.size_due = True
            origin = self.origin
            if origin is not None and origin.uid in self.peers:
                # the origin waits for joins (cluster start): it hears of each one at once
                origin.out.add(self._size_record())
        self.on_event("joined", worker=peer)
        return peer

    def leave(self, peer: Peer, why: str):
        """A peer is gone: ``why`` is "left" or "retired" (it said goodbye) or the cause of its loss."""
        if not self._remove_peer(peer):
            return
        graceful = why in ("left", "retired")
        if not graceful and peer.takes:
            self.lost_workers += 1
            self.log(f"worker {peer.name} ({peer.host}, pid {peer.pid}) {why}; "
                     f"re-dispatching {len(peer.assigned)} task(s)")
        requeued = 0
        for task in sorted(peer.assigned.values(), key=lambda t: t.id, reverse=True):
            task.worker = None
            task.attempts += 0 if graceful else 1
            if task.attempts >= MAX_ATTEMPTS:
                self.fail(task, f"task was lost with {task.attempts} workers that died while running it "
                                f"(last: worker {peer.name} on {peer.host}, pid {peer.pid}, {why})")
            else:
                self.queue.appendleft(task)
                requeued += 1
        peer.assigned.clear()
        if peer.takes:
            # the root counted this credit as ours (it would send tasks for a worker that is gone),
            # and the tasks queued again here need credit of our other workers
            self.credit_up(-max(peer.credit, 0) - requeued)
        peer.credit = 0
        self._file(peer)
        # tasks this peer submitted have nobody to report to: forget them
        for tid in peer.submitted:
            t = self.tasks.get(tid)
            if t is not None and t.submitter is peer:
                del self.tasks[tid]
                w = t.worker
                if w is not None and w.assigned.pop(tid, None) is not None:
                    self._file(w)
            if self.local_submitted.get(tid) is peer:
                del self.local_submitted[tid]
        peer.submitted.clear()
        if peer.takes:
            self.size_due = True
        self.on_event("left", worker=peer, reason=why)

    # ---- tasks -------------------------------------------------------------------------------
    def submit(self, peer: Peer, rec: P.Record):
        _, tid, group, d, host, flags = P.TASK_HEADER.unpack(rec.hdr)
        if tid in self.tasks or group in self.interrupted:
            if peer is self.upstream:
                self.credit_up(1)  # the root spent our credit on it: not here
            return
        if self.upstream is not None and peer is not self.upstream:
            self.local_submitted[tid] = peer
            peer.submitted.add(tid)
            self.upstream.out.add_record(rec)
            return
        task = Task(tid, rec, d, group, peer, host if flags & P.PINNED else 0)
        self._track(task)
        self.queue.append(task)

    def lease(self, peer: Peer, rec: P.Record):
        """The origin sent a task straight to a worker: that worker holds it now (not against its
        credit), or, if it is gone, the task queues like any other."""
        wuid, hdr = bytes(rec.hdr[1:1 + P.UID_SIZE]), bytes(rec.hdr[1 + P.UID_SIZE:])
        task_rec = P.record(hdr, bytes(rec.body))
        _, tid, group, d, _host, _flags = P.TASK_HEADER.unpack(hdr)
        if self.upstream is not None:  # not ours to track: the root schedules
            self.submit(peer, task_rec)
            return
        if tid in self.tasks or group in self.interrupted:
            return
        inputs = self.early_done.pop(tid)
        if inputs is not None:  # over before the broker heard of it
            self.done_total += inputs
            return
        task = Task(tid, task_rec, d, group, peer)
        self._track(task)
        w = self.peers.get(wuid)
        if w is not None and w.role == "worker":
            task.worker = w
            w.assigned[tid] = task
            w.have.add(d)  # the origin sent the callable along
            self._file(w)
        else:
            self.queue.append(task)

    def _remember_done(self, tid: int, inputs: int):
        """A DONE (or RESULT) of a task not known: its LEASE may be on its way."""
        self.early_done.add(tid, inputs, self.now())

    def blob(self, peer: Peer, rec: P.Record):
        d = P.blob_digest(rec.hdr)
        self.blobs[d] = rec
        if self.upstream is not None and peer is not self.upstream:
            self.upstream.out.add_record(rec)
        parked = self.waiting_blob.pop(d, None)
        if parked:
            self.queue.extendleft(reversed(parked))

    def credit(self, peer: Peer, n: int):
        if peer.retiring:
            return
        peer.credit += n
        self._file(peer)
        self.credit_up(n)

    def credit_up(self, n: int):
        """A sub-broker: its credit at the root changes by ``n``.  The root counts our workers'
        credit, passed up one for one, less the tasks it sent us: so what it counts is our
        workers' credit less the root's tasks queued here.  Besides credits, the queue moves it:
        a task given back to the queue needs a credit again (-1), one that leaves the queue
        without a worker (handed back, cancelled, dropped) frees one (+1).  Off by one, a single
        lost credit starves a sub-broker whose one worker asks for one."""
        if n and self.upstream is not None:
            self.upstream.out.add(P.COUNT.pack(P.CREDIT, n))

    def result(self, rec: P.Record):
        """The first result for a task id goes to its submitter; a duplicate, cancelled or
        orphaned one is dropped: exactly once."""
        tid = P.task_id(rec.hdr)
        # read before anything changes: a malformed record must not leave the task half-done
        if rec.hdr[:1] == P.RESULT:
            _, _, _, inputs, started, ended, _ = P.RESULT_HEADER.unpack(rec.hdr)
        else:
            inputs = 0
        task = self._finished(tid, inputs)
        if inputs and self.pack > 1 and task is not None:
            self.timed(task.digest, ended - started)
        if task is None:
            sub = self.local_submitted.pop(tid, None)  # a sub-broker: the root's answer
            origin = self.origin
            if sub is not None:
                sub.submitted.discard(tid)
            if sub is not None and sub.uid in self.peers:
                sub.out.add_record(rec)
            elif (self.upstream is None and origin is not None and tid >> P.TID_SHIFT == origin.index
                  and origin.uid in self.peers and rec.hdr[:1] == P.RESULT):
                # the origin's task whose LEASE has not come yet (or a duplicate: it keeps the first)
                self._remember_done(tid, inputs)
                origin.out.add_record(rec)
            else:
                self.drop(rec)
        elif self.alive(task.submitter):
            task.submitter.out.add_record(rec)
        else:
            self.drop(rec)

    def done(self, rec: P.Record):
        """A task whose result went straight from its worker to the origin: over here too (a
        later RESULT for it, from a second attempt, is dropped as a duplicate)."""
        _, tid, inputs = P.DONE_HEADER.unpack(rec.hdr)
        task = self._finished(tid, inputs)
        if task is None:
            if self.upstream is None:
                self._remember_done(tid, inputs)
        elif task.submitter is self.upstream:
            self.upstream.out.add_record(rec)  # a sub-broker: the root tracks the task too

    def _finished(self, tid: int, inputs: int) -> Task | None:
        """Ends a task in flight; None if none was (a duplicate, cancelled, or never known)."""
        task = self._pop_task(tid)
        if task is not None:
            w = task.worker
            if w is not None:
                w.assigned.pop(tid, None)
                w.finished += 1
                self._file(w)
            self.done_total += inputs
            self.free(task)
        elif self.stopped and self.stopped.pop(tid, False) is None:
            # interrupted, but it had finished (its result may even have reached the origin
            # straight, before the interrupt): it was done, and the counts say so
            self.done_total += inputs
        return task

    def fail(self, task: Task, reason: str):
        self._pop_task(task.id)
        self.free(task)
        if self.alive(task.submitter):
            task.submitter.out.add(P.TID.pack(P.FAIL, task.id), reason.encode())

    def free(self, task: Task):
        """A finished task's record is gone for good: its argument segments are its submitter's
        to free (it does when the future completes), nothing to do here but let go."""
        task.rec = None

    def drop(self, rec: P.Record):
        """A record nobody will receive: free the shared memory it names."""
        for kind, _size, key in rec.refs:
            if kind & P.REF_SHM:
                self.unlink(key)

    def release(self, peer: Peer, tid: int):
        task = self.tasks.get(tid)
        if task is not None and task.worker is peer:
            peer.assigned.pop(tid, None)
            task.worker = None
            self.queue.appendleft(task)
            self._file(peer)
            if task.submitter is self.upstream:
                self.credit_up(-1)  # its worker asks for a credit again: this task takes it

    def cancel(self, peer: Peer, hdr: bytes):
        """A submitter cancels a task: done at once if still queued; a task a worker holds is
        for that worker to decide (it may not have started it)."""
        tid = P.task_id(hdr)
        if self.upstream is not None and self.local_submitted.get(tid) is peer:
            self.upstream.out.add(hdr)
            return
        task = self.tasks.get(tid)
        if task is not None and task.worker is not None and task.submitter is peer:
            task.worker.cout.add(P.TID.pack(P.CANCEL, tid))
            return
        ok = task is not None and task.worker is None and task.submitter is peer
        if ok:
            self._pop_task(tid)  # left in the queue; skipped when popped
        peer.out.add(P.answer(hdr, ok))

    def cancel_answer(self, peer: Peer, hdr: bytes):
        """A worker's answer to a forwarded cancel."""
        tid = P.task_id(hdr)
        task = self.tasks.get(tid)
        ok = P.answer_of(hdr, 0) == 1 and task is not None and task.worker is peer
        if ok:
            self._pop_task(tid)
            peer.assigned.pop(tid, None)
            self._file(peer)
        if task is not None and self.alive(task.submitter):
            box = task.submitter.cout if task.submitter is self.upstream else task.submitter.out
            box.add(P.answer(hdr, ok))

    def ask(self, peer: Peer, hdr: bytes):
        tid = P.task_id(hdr)
        if self.upstream is not None and self.local_submitted.get(tid) is peer:
            self.upstream.out.add(hdr)
            return
        task = self.tasks.get(tid)
        peer.out.add(P.answer(hdr, 2 if task is None else 0 if task.worker is None else 1))

    def const(self, peer: Peer, rec: P.Record):
        """A shared constant, once per name, to every peer (and to each one that joins later)."""
        name = P.const_name(rec.hdr)
        if name in self.const_names:
            return
        self.const_names.add(name)
        self.consts.append(rec)
        if self.upstream is not None and peer is not self.upstream:
            self.upstream.out.add_record(rec)
        for p in self.peers.values():
            if p is not peer:
                p.out.add_record(rec)
        self.on_event("const", name=name)

    def output(self, rec: P.Record):
        """Task output goes to the origin (through the root, in a federation)."""
        if self.upstream is not None:
            self.upstream.out.add_record(rec)
        elif self.origin is not None and self.origin.uid in self.peers:
            self.origin.out.add_record(rec)

    def interrupt(self, group: int):
        """Drops a group's tasks (a walk over the tasks in flight) and tells every peer that takes
        tasks (a broadcast: a worker may hold tasks of the group the core has not seen, such as
        leases on their way): rare, the user pressed interrupt."""
        self.interrupted.add(group)
        now = self.now()
        unqueued = 0
        for tid, task in list(self.tasks.items()):
            if task.group == group:
                self._pop_task(tid)
                w = task.worker
                if w is not None:
                    w.assigned.pop(tid, None)
                    self._file(w)
                    self.stopped.add(tid, None, now)
                elif task.submitter is self.upstream:
                    unqueued += 1
        self.credit_up(unqueued)
        hdr = P.GROUP.pack(P.INTERRUPT, group)
        for p in self.peers.values():
            if p.takes:
                p.cout.add(hdr)

    def retire(self, index: int):
        p = self.by_index.get(index)
        if p is not None and p.takes and not p.retiring:
            p.retiring = True
            self.credit_up(-max(p.credit, 0))
            p.credit = 0
            p.out.add(P.RETIRE)
            self._file(p)
            self.on_event("retiring", worker=p)

    # ---- clock -------------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic()
