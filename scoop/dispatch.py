"""Where queued tasks go: dispatch by credit and work stealing, over the peer book -- no I/O.

Balancing is credit-based: a worker asks for as many tasks as it can start soon, and queued
tasks go to the workers with the most unused credit, a fair share each, so a burst spreads
evenly.  A task whose payload sits in one host's shared memory is pinned: set aside for the
ready workers of that host.  An idle worker makes the core ask a busy one for its unstarted
tasks back (work stealing), so short tasks never wait behind a long one while a worker idles.

A sub-broker packs (``pack`` > 1): a burst of tiny tasks spread one per worker over thousands
of workers is one message per task, and the messages become the limit of a stream.  So a
worker holding nothing, whose credit says it starts at least twice ``pack`` tasks within ~2 ms,
gets ``pack`` tasks in one message -- only tasks of functions whose recent runs here were all
tiny (``PACK_TINY``, timed from their results), and only to a worker that holds nothing else:
so no task is packed behind one that may be long.  A task that
turns out long anyway is a steal's to fix, as for any prefetched task.

Both cost what they send plus a constant: they read the book's indexes (:mod:`scoop.peers`),
never the peer list.  ``visits`` counts the peers they looked at, so tests can check that.
"""
from __future__ import annotations

from collections import deque
from itertools import islice

from . import _protocol as P
from .peers import Peer, PeerBook

__all__ = ["PACK_AFTER", "PACK_DECAY", "PACK_TINY", "STEAL_EVERY", "STEAL_SCAN", "Task", "Dispatcher"]

STEAL_EVERY = 0.02  # seconds between two steal requests to one worker
STEAL_SCAN = 32  # peers one steal looks at (idle ones for their credit, victims): a constant
# packing (a sub-broker): a function is packed once PACK_AFTER of its results came here and its
# recent runs all took less than PACK_TINY (pack of them start within ~2 ms, the worker's own
# prefetch budget); "recent": the longest run, decaying by PACK_DECAY per result, so one long
# run keeps the function unpacked for its next ~270 results
PACK_TINY = 0.00025
PACK_AFTER = 16
PACK_DECAY = 0.97


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


def _load(p):
    return len(p.assigned)


class Dispatcher(PeerBook):
    """The tasks in flight, the queue, and the policy that empties it into the peers' outboxes."""

    def __init__(self, upstream: Peer | None = None):
        super().__init__(upstream)
        self.tasks: dict[int, Task] = {}
        self.queue: deque[Task] = deque()
        self.pinned: dict[int, deque] = {}  # host key -> tasks that only its workers can run, in order
        self.blobs: dict[bytes, P.Record] = {}
        self.waiting_blob: dict[bytes, list] = {}  # tasks that arrived before their function
        self.visits = 0       # peers looked at by dispatch and steal: constant per task, tested
        self.pack = 1         # tasks an idle peer with credit of twice that gets in one dispatch,
                              # if they are tiny: 1 is no packing (the root)
        self.run_times: dict[bytes, list] = {}  # digest -> [longest recent run (s), results seen]
        self.tiny: set[bytes] = set()      # digests whose tasks are packed

    # ---- tasks in flight -------------------------------------------------------------------
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

    # ---- run times (packing) ------------------------------------------------------------------
    def timed(self, digest: bytes, seconds: float):
        """A task of function ``digest`` ran ``seconds`` (its worker's clock, from its result)."""
        r = self.run_times.get(digest)
        if r is None:
            r = self.run_times[digest] = [seconds, 1]
        else:
            r[0] = max(seconds, r[0] * PACK_DECAY)
            r[1] += 1
        if r[0] < PACK_TINY and r[1] >= PACK_AFTER:
            self.tiny.add(digest)
        else:
            self.tiny.discard(digest)

    def _tiny_ahead(self) -> bool:
        """The next ``pack`` queued tasks are all of functions known to be tiny."""
        tiny = self.tiny
        return all(t.digest in tiny for t in islice(self.queue, self.pack))

    # ---- dispatch ----------------------------------------------------------------------------
    def dispatch(self):
        """Queued tasks to the peers with credit, least loaded first, a fair share each (a burst
        spreads evenly), or ``pack`` tiny ones to a peer that holds nothing else: the cost is
        the tasks sent plus the peers that got some, never the peers that did not."""
        queue, ready, pack, tiny = self.queue, self.ready, self.pack, self.tiny
        while queue and self.n_ready:
            served = []
            left = self.n_ready
            for held in sorted(ready):  # distinct loads: as many as the deepest prefetch, at most
                # packs go to peers holding fewer than a pack, all tiny: a look at 7 tasks at most
                packs = pack > 1 and held < pack and tiny and not self.pinned
                for w in ready[held]:
                    self.visits += 1
                    share = -(-len(queue) // left)  # a share of what is left
                    if (packs and share < pack and w.credit >= 2 * pack and self._tiny_ahead()
                            and (not held or all(t.digest in tiny for t in w.assigned.values()))):
                        share = pack
                    self._serve(w, min(w.credit, share))
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

    # ---- steal -------------------------------------------------------------------------------
    def steal(self, now: float):
        """An idle peer while another holds unstarted tasks: ask for them back (all but the one
        it runs, up to what the idle peers can take), so a burst prefetched by one worker does
        not run serially and short tasks do not wait behind a long one.  A victim that finished
        as many tasks since the last look as it holds waiting is left alone.  It looks at a
        constant number of peers: the victims at the front of ``heavy`` (a peer asked moves to
        its back), the busiest of them first."""
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
            ran, victim.seen = victim.finished - victim.seen, victim.finished
            if ran >= n:
                # it finished as many since the last look as it holds waiting: they will be done
                # before a steal could help (a stream of tiny tasks: otherwise a request to
                # thousands of workers a second, each holding one or two that are on their way)
                continue
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
