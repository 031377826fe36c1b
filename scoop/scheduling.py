"""The broker's scheduling core: queue, dispatch, stealing, loss and re-dispatch -- no I/O.

Events come in as method calls (a peer joined, asked for n tasks, submitted a task, sent a
result, was lost); what must be sent goes into each peer's outboxes, which the broker (or a
sub-broker of a federation) flushes to its sockets.  So load balancing and exactly-once
delivery are unit-tested without ZeroMQ (tests/test_scheduling.py).

Balancing is credit-based: a worker asks for as many tasks as it can start soon, and queued
tasks go to the workers with the most unused credit.  The core knows which worker holds which
task: a lost worker's tasks are queued again, the first result for a task id wins, and an idle
worker makes the core ask a busy one for its unstarted tasks back (work stealing), so short
tasks never wait behind a long one while a worker idles.

A task the origin leased straight to a worker (scoop.direct) reaches the core after it started,
maybe after it finished: a LEASE registers it at that worker (or queues it, if that worker is
gone), and a DONE or RESULT that came first is remembered for a while, so the LEASE of a task
that is over is dropped.

Every event costs the same however many workers are connected: the core keeps indexes (peers
ready for tasks by how many they hold, ready peers by host, peers holding more than they run,
tasks by submitter, peers by index) and counts (workers, hosts, tasks held) up to date as
peers change, instead of walking every peer.  ``visits`` counts the peers an operation looked
at, so tests can check that.  Only broadcasts (a constant, an interrupt, the size) and the
meta figures reach every peer, and the broker paces those.
"""
from __future__ import annotations

import json
import time
from collections import deque
from itertools import islice

from . import _protocol as P

MAX_ATTEMPTS = 3  # a task lost with this many dead workers fails with WorkerLostError
STEAL_EVERY = 0.02  # seconds between two steal requests to one worker
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


class Task:
    """A task in flight; ``rec`` is its record as received, forwarded to a worker as is."""

    __slots__ = ("id", "rec", "digest", "group", "submitter", "worker", "attempts", "host")

    def __init__(self, tid, rec, digest, group, submitter, host=0):
        self.id = tid
        self.rec = rec
        self.digest = digest
        self.group = group
        self.submitter = submitter
        self.worker = None
        self.attempts = 0
        self.host = host  # 0, or the host key the task is pinned to (shared-memory payload)


class Outbox(P.Outbox):
    """A peer's outbox that marks the peer for the next flush, so flushing costs O(peers with
    output), not O(peers): 1,000 idle workers are free."""

    __slots__ = ("key", "dirty")

    def __init__(self, key, dirty: set):
        super().__init__()
        self.key = key
        self.dirty = dirty

    def add(self, hdr, body=P.EMPTY, packed=None):
        if not self.parts:
            self.dirty.add(self.key)
        super().add(hdr, body, packed)

    def add_record(self, rec):
        if not self.parts:
            self.dirty.add(self.key)
        super().add_record(rec)


class Peer:
    """A connected process: a worker, the origin, a sub-broker, or the upstream of a sub-broker."""

    __slots__ = ("uid", "index", "name", "host", "host_key", "pid", "role", "credit", "assigned",
                 "have", "load", "out", "cout", "retiring", "last_steal", "takes", "runs",
                 "bucket", "heavy", "held", "submitted", "behind", "behind_hosts")

    def __init__(self, uid, index, info: dict, dirty: set):
        self.uid = uid
        self.index = index
        self.name = str(info.get("name") or f"w{index}")
        self.host = str(info.get("host", "?"))
        self.host_key = int(info.get("host_key", 0)) & 0xFFFFFFFFFFFFFFFF
        self.pid = info.get("pid", 0)
        self.role = info.get("role", "worker")
        self.credit = 0
        self.assigned: dict[int, Task] = {}
        self.have: set[bytes] = set()
        self.load: dict = {}
        self.out = Outbox((uid, 0), dirty)
        self.cout = Outbox((uid, 1), dirty)
        self.retiring = False
        self.last_steal = 0.0
        self.takes = self.role in TARGETS
        # tasks a steal leaves it: the one a worker runs; none for a sub-broker, which gives back
        # only what still waits in its queue (possibly with no worker left to run it)
        self.runs = 0 if self.role == "broker" else 1
        # where the core's indexes file it (kept by Scheduler._file)
        self.bucket = None   # len(assigned) while it takes tasks and has credit, else None
        self.heavy = False   # holds more than it runs: a steal victim
        self.held = 0        # len(assigned) as counted in Scheduler.n_assigned
        self.submitted: set[int] = set()  # ids of tasks it submitted that are in flight
        self.behind = 0      # a sub-broker: workers behind it
        self.behind_hosts: dict[int, int] = {}  # a sub-broker: host key -> its workers there

    @property
    def takes_tasks(self) -> bool:
        return self.takes


TARGETS = ("worker", "broker")  # peers that take tasks: workers and sub-brokers
STEAL_SCAN = 32  # peers one steal looks at (idle ones for their credit, victims): a constant


def _load(p):
    return len(p.assigned)


class Scheduler:
    def __init__(self, upstream: Peer | None = None, log=None, unlink=None):
        self.dirty: set = set()
        self.peers: dict[bytes, Peer] = {}
        self.by_index: dict[int, Peer] = {}
        self.tasks: dict[int, Task] = {}
        self.queue: deque[Task] = deque()
        self.pinned: dict[int, deque] = {}  # host key -> tasks that only its workers can run, in order
        self.blobs: dict[bytes, P.Record] = {}
        self.waiting_blob: dict[bytes, list] = {}  # tasks that arrived before their function
        self.consts: list[P.Record] = []
        self.const_names: set[str] = set()
        self.interrupted: set[int] = set()
        self.next_index = 1
        self.origin: Peer | None = None
        # a sub-broker: tasks its workers submit go up to the root, which alone schedules
        self.upstream = upstream
        self.local_submitted: dict[int, Peer] = {}
        self.global_size = 0
        self.done_total = 0
        self.lost_workers = 0
        self.size_due = False
        self.early_done = Recent()  # tid -> inputs: DONEs of tasks not known (yet): a LEASE may follow
        self.stopped = Recent()     # tids of tasks interrupted at a worker that may have finished them
        self.log = log or (lambda msg: None)
        self.unlink = unlink or (lambda seg: None)  # frees shared memory of records it drops
        self.on_event = lambda kind, **data: None
        # indexes and counts, kept by _file, join and leave: no operation walks every peer
        self.ready: dict[int, dict[Peer, None]] = {}       # tasks held -> peers with credit
        self.ready_hosts: dict[int, dict[Peer, None]] = {}  # host key -> peers with credit
        self.idle_hosts: dict[int, int] = {}               # host key -> ready peers holding nothing
        self.heavy: dict[Peer, None] = {}                  # peers holding more than they run
        self.n_ready = 0
        self.n_assigned = 0   # tasks held by peers
        self.n_workers = 0    # workers connected here
        self.n_behind = 0     # workers behind sub-brokers
        self.host_refs: dict[int, int] = {}  # host key -> workers (and origin) there
        self.visits = 0       # peers looked at by dispatch and steal: constant per task, tested

    # ---- indexes -----------------------------------------------------------------------------
    def _file(self, p: Peer):
        """Files ``p`` in the indexes after its credit, tasks or state changed: O(1)."""
        n = len(p.assigned)
        self.n_assigned += n - p.held
        p.held = n
        key = n if p.credit > 0 and p.takes and not p.retiring else None
        old = p.bucket
        if key != old:
            ready = self.ready
            if old is not None:
                b = ready[old]
                del b[p]
                if not b:
                    del ready[old]
                if old == 0:
                    _uncount(self.idle_hosts, p.host_key)
            if key is not None:
                b = ready.get(key)
                if b is None:
                    ready[key] = {p: None}
                else:
                    b[p] = None
                if key == 0:
                    self.idle_hosts[p.host_key] = self.idle_hosts.get(p.host_key, 0) + 1
            if old is None:
                self.n_ready += 1
                self.ready_hosts.setdefault(p.host_key, {})[p] = None
            elif key is None:
                self.n_ready -= 1
                hb = self.ready_hosts[p.host_key]
                del hb[p]
                if not hb:
                    del self.ready_hosts[p.host_key]
            p.bucket = key
        heavy = n > p.runs and p.takes
        if heavy != p.heavy:
            p.heavy = heavy
            if heavy:
                self.heavy[p] = None
            else:
                del self.heavy[p]

    def _pop_task(self, tid: int) -> Task | None:
        """The task leaves ``tasks`` (and its submitter's index)."""
        task = self.tasks.pop(tid, None)
        if task is not None:
            task.submitter.submitted.discard(tid)
        return task

    def _track(self, task: Task):
        self.tasks[task.id] = task
        task.submitter.submitted.add(task.id)

    def forget(self, task: Task):
        """A task nobody will run or answer any more (given back to the root, cancelled)."""
        self._pop_task(task.id)

    def queued(self) -> int:
        return len(self.queue) + sum(len(q) for q in self.pinned.values())

    # ---- membership --------------------------------------------------------------------------
    def join(self, uid: bytes, info: dict) -> Peer | None:
        if uid in self.peers:
            return None
        peer = Peer(uid, self.next_index, info, self.dirty)
        self.next_index += 1
        self.peers[uid] = peer
        self.by_index[peer.index] = peer
        if peer.role == "origin":
            self.origin = peer
        if peer.role == "worker":
            self.n_workers += 1
        if peer.role in ("worker", "origin"):
            self.host_refs[peer.host_key] = self.host_refs.get(peer.host_key, 0) + 1
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
        if self.peers.pop(peer.uid, None) is None:
            return
        if self.by_index.get(peer.index) is peer:
            del self.by_index[peer.index]
        if peer.role == "worker":
            self.n_workers -= 1
        if peer.role in ("worker", "origin"):
            _uncount(self.host_refs, peer.host_key)
        self._set_behind(peer, 0, {})
        graceful = why in ("left", "retired")
        if not graceful and peer.takes:
            self.lost_workers += 1
            self.log(f"worker {peer.name} ({peer.host}, pid {peer.pid}) {why}; "
                     f"re-dispatching {len(peer.assigned)} task(s)")
        for task in sorted(peer.assigned.values(), key=lambda t: t.id, reverse=True):
            task.worker = None
            task.attempts += 0 if graceful else 1
            if task.attempts >= MAX_ATTEMPTS:
                self.fail(task, f"task was lost with {task.attempts} workers that died while running it "
                                f"(last: worker {peer.name} on {peer.host}, pid {peer.pid}, {why})")
            else:
                self.queue.appendleft(task)
        peer.assigned.clear()
        if self.upstream is not None and peer.takes and peer.credit > 0:
            # the root counted this credit as ours: it would send tasks for a worker that is gone
            self.upstream.out.add(P.COUNT.pack(P.CREDIT, -peer.credit))
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

    def alive(self, peer) -> bool:
        return peer is self.upstream or peer.uid in self.peers

    def size(self) -> int:
        """Workers in the whole cluster, those behind sub-brokers included."""
        if self.upstream is not None:
            return self.global_size
        return self.n_workers + self.n_behind

    def hosts(self) -> int:
        return max(1, len(self.host_refs))

    def _size_record(self) -> bytes:
        return P.SIZE_HEADER.pack(P.SIZE, self.size(), self.hosts())

    def send_size(self):
        """To every peer: a broadcast, which the broker paces as the cluster grows."""
        self.size_due = False
        hdr = self._size_record()
        for p in self.peers.values():
            p.out.add(hdr)

    def _set_behind(self, peer: Peer, n: int, hosts: dict):
        """A sub-broker's workers, counted in size and hosts."""
        self.n_behind += n - peer.behind
        peer.behind = n
        refs = self.host_refs
        for key, k in peer.behind_hosts.items():
            _uncount(refs, key, k)
        for key, k in hosts.items():
            refs[key] = refs.get(key, 0) + k
        peer.behind_hosts = hosts

    def set_load(self, peer: Peer, load: dict):
        # checked here, where it arrives: the status snapshot and the size broadcast read it later,
        # outside any handler, and a bad value there would end the broker
        workers = load.get("workers", []) if isinstance(load, dict) else None
        if not isinstance(workers, list) or not all(isinstance(w, dict) for w in workers):
            raise ValueError("load figures must be a JSON object (with a list of objects as workers)")
        if peer.role == "broker":
            # a summary (count and hosts) with a page of its workers' records, or every record
            if "count" in load:
                n = load["count"]
                hosts = load.get("hosts", {})
                if not isinstance(n, int) or not isinstance(hosts, dict):
                    raise ValueError("a sub-broker's count must be an integer and its hosts an object")
                hosts = {int(k) & 0xFFFFFFFFFFFFFFFF: int(v) for k, v in hosts.items()}
            else:
                n = len(workers)
                hosts = {}
                for w in workers:
                    key = int(w.get("host_key", 0)) & 0xFFFFFFFFFFFFFFFF
                    hosts[key] = hosts.get(key, 0) + 1
            if n != peer.behind:
                self.size_due = True
            self._set_behind(peer, n, hosts)
        peer.load = load

    # ---- tasks -------------------------------------------------------------------------------
    def submit(self, peer: Peer, rec: P.Record):
        _, tid, group, d, host, flags = P.TASK_HEADER.unpack(rec.hdr)
        if tid in self.tasks or group in self.interrupted:
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
        if self.upstream is not None:
            self.upstream.out.add(P.COUNT.pack(P.CREDIT, n))

    def result(self, rec: P.Record):
        """The first result for a task id goes to its submitter; a duplicate, cancelled or
        orphaned one is dropped: exactly once."""
        tid = P.task_id(rec.hdr)
        # read before anything changes: a malformed record must not leave the task half-done
        inputs = P.RESULT_HEADER.unpack(rec.hdr)[3] if rec.hdr[:1] == P.RESULT else 0
        task = self._finished(tid, inputs)
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
        for tid, task in list(self.tasks.items()):
            if task.group == group:
                self._pop_task(tid)
                w = task.worker
                if w is not None:
                    w.assigned.pop(tid, None)
                    self._file(w)
                    self.stopped.add(tid, None, now)
        hdr = P.GROUP.pack(P.INTERRUPT, group)
        for p in self.peers.values():
            if p.takes:
                p.cout.add(hdr)

    def retire(self, index: int):
        p = self.by_index.get(index)
        if p is not None and p.takes and not p.retiring:
            p.retiring = True
            if self.upstream is not None and p.credit > 0:
                self.upstream.out.add(P.COUNT.pack(P.CREDIT, -p.credit))
            p.credit = 0
            p.out.add(P.RETIRE)
            self._file(p)
            self.on_event("retiring", worker=p)

    # ---- dispatch ----------------------------------------------------------------------------
    def dispatch(self):
        """Queued tasks to the peers with credit, least loaded first, a fair share each (a burst
        spreads evenly): the cost is the tasks sent plus the peers that got some, never the peers
        that did not."""
        queue, ready = self.queue, self.ready
        while queue and self.n_ready:
            served = []
            left = self.n_ready
            for held in sorted(ready):  # distinct loads: as many as the deepest prefetch, at most
                for w in ready[held]:
                    self.visits += 1
                    self._serve(w, min(w.credit, -(-len(queue) // left)))  # a share of what is left
                    served.append(w)
                    left -= 1
                    if not queue:
                        break
                if not queue:
                    break
            for w in served:
                self._file(w)
        if self.pinned:
            self._dispatch_pinned()

    def _dispatch_pinned(self):
        """Tasks set aside for their host (their payload is in its shared memory) go to the
        ready peers of that host."""
        for host in list(self.pinned):
            peers = self.ready_hosts.get(host)
            if not peers:
                continue
            served = []
            for w in peers:
                self.visits += 1
                self._serve(w, w.credit)
                served.append(w)
                if host not in self.pinned:
                    break
            for w in served:
                self._file(w)

    def _serve(self, w: Peer, take: int):
        """Up to ``take`` tasks to ``w``: those set aside for its host first, then the queue.
        Each task popped is sent, set aside, parked for its function, or dropped (stale): so the
        work is bounded by what was popped.  Re-filing ``w`` is the caller's."""
        queue, tasks, blobs, pinned = self.queue, self.tasks, self.blobs, self.pinned
        mine = pinned.get(w.host_key) if pinned else None
        out = w.out
        while take:
            if mine:
                task = mine.popleft()
            elif queue:
                task = queue.popleft()
            else:
                break
            if tasks.get(task.id) is not task or task.worker is not None:
                continue  # cancelled, interrupted or already done
            if task.host and task.host != w.host_key:
                q = pinned.get(task.host)  # its payload is in another host's memory
                if q is None:
                    pinned[task.host] = deque((task,))
                else:
                    q.append(task)
                continue
            d = task.digest
            if d not in w.have:
                blob = blobs.get(d)
                if blob is None:
                    # its function is on its way on the submitter's other socket
                    self.waiting_blob.setdefault(d, []).append(task)
                    continue
                w.have.add(d)
                out.add_record(blob)
            out.add_record(task.rec)
            task.worker = w
            w.assigned[task.id] = task
            w.credit -= 1
            take -= 1
        if mine is not None and not mine:
            del pinned[w.host_key]

    def steal(self, now: float):
        """An idle peer while another holds unstarted tasks: ask for them back (all but the one
        it runs, up to what the idle peers can take), so a burst prefetched by one worker does
        not run serially and short tasks do not wait behind a long one.  It looks at a constant
        number of peers: the victims at the front of ``heavy`` (a peer asked moves to its back),
        the busiest of them first."""
        idle = self.ready.get(0)
        if not idle or not self.heavy:
            return
        room = 0
        for p in islice(idle, STEAL_SCAN):
            self.visits += 1
            room += p.credit
        heavy = self.heavy
        victims = list(islice(heavy, STEAL_SCAN))
        self.visits += len(victims)
        victims.sort(key=_load, reverse=True)
        for victim in victims:
            if now - victim.last_steal <= STEAL_EVERY:
                continue
            n = min(room, len(victim.assigned) - victim.runs)
            del heavy[victim]  # to the back, whether asked or not: the next steal looks at others
            heavy[victim] = None
            if victim.host_key not in self.idle_hosts:
                # its pinned tasks run on its host only: no idle worker here could take them
                n = sum(1 for _ in islice((t for t in victim.assigned.values() if not t.host), n))
                if not n:
                    continue
            victim.last_steal = now
            victim.cout.add(P.COUNT.pack(P.STEAL, n))
            room -= n
            if room <= 0:
                break

    # ---- meta ----------------------------------------------------------------------------------
    def peer_info(self, p: Peer) -> dict:
        load = p.load
        running = load.get("running", 0)
        return {"id": str(p.index), "name": p.name, "host": p.host, "pid": p.pid, "host_key": p.host_key,
                "role": p.role, "state": "busy" if (running or p.assigned) and p.role == "worker" else "idle",
                "queued": load.get("queued", 0), "running": running, "blocked": load.get("blocked", 0),
                "assigned": len(p.assigned), "done": load.get("done", 0),
                "cpu": load.get("cpu", 0.0), "mem": load.get("mem", 0), "retiring": p.retiring}

    def workers_info(self) -> list[dict]:
        workers = []
        for p in self.peers.values():
            if p.role == "worker":
                workers.append(self.peer_info(p))
            elif p.role == "broker":  # a sub-broker reports the workers behind it
                workers.extend(dict(w, via=p.index) for w in p.load.get("workers", ()))
        return workers

    def now(self) -> float:
        return time.monotonic()


def _uncount(counts: dict, key, k: int = 1):
    n = counts.get(key, 0) - k
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)
