"""The broker's book of connected peers: who they are, and indexes that find one in O(1) -- no I/O.

A peer is a connected process: a worker, the origin, a sub-broker, or a sub-broker's upstream
(the root).  The book files every peer that can take tasks by how many it holds (the ready
buckets, least loaded first), by host (for tasks pinned to a host's shared memory), and as a
steal victim when it holds more than it runs; and it keeps the counts the size broadcast and
the meta stream read (workers, hosts, tasks held).  Every change re-files one peer at a fixed
cost, so no operation of the scheduling core (:mod:`scoop.scheduling`) walks the peer list.

What the broker holds for one peer is bounded.  libzmq queues at most ``SEND_QUEUE`` messages
of at most ``SEND_SPLIT`` header bytes for it (the ROUTER's SNDHWM); what that queue does not
take waits in the peer's outboxes, and a peer for which more than ``OUT_MAX`` bytes wait has
stopped reading: the broker cuts it and its tasks run elsewhere (:func:`stalled`).  A process
of the cluster reads its connection in libzmq's I/O thread whatever its own threads do, so a
busy one never gets there; only a frozen process, a saturated link or a peer that refuses to
read does.
"""
from __future__ import annotations

import time
from collections import deque

from . import _protocol as P

__all__ = ["ASKS_MAX", "OUT_MAX", "ROUND_REQUESTS", "SEND_QUEUE", "SEND_SPLIT", "TARGETS", "Outbox", "Peer",
           "PeerBook", "asks_over", "stalled"]

TARGETS = ("worker", "broker")  # peers that take tasks: workers and sub-brokers
SEND_QUEUE = 64         # messages libzmq queues for one connection of a peer (the ROUTER's SNDHWM)
SEND_SPLIT = 64 << 10   # header bytes per message to a peer: that queue holds 4 MiB of them at most
OUT_MAX = 8 << 20       # bytes waiting for a peer whose queue is full, past which it is cut
RECORD_COST = 64        # what a record waiting as its own bytes object costs besides its bytes
ROUND_REQUESTS = 1000   # requests (ASK, CANCEL) of one peer the broker answers in one round of its loop
# ASKs a peer other than the origin may send in a second: each waits for its answer (a future's
# state, a worker's fencing check), so a process of the cluster sends a few thousand at most;
# one that sends more is flooding, and is cut (:func:`asks_over`).  CANCELs are not counted: an
# abandoned map cancels all its tasks at once
ASKS_MAX = 50_000


class Outbox(P.Outbox):
    """A peer's outbox that marks the peer for the next flush, so flushing costs O(peers with
    output), not O(peers): 1,000 idle workers are free.

    It keeps what the peer's connection did not take (``backlog``: signed messages, oldest
    first) and counts in ``held`` the bytes waiting here, backlog included; payload frames are
    not counted: they are other peers' data the broker holds anyway, as the same frame objects,
    bounded by the tasks in flight."""

    __slots__ = ("key", "dirty", "held", "backlog")

    def __init__(self, key, dirty: set):
        super().__init__()
        self.key = key
        self.dirty = dirty
        self.held = 0
        self.backlog: deque | None = None  # (header, frames) the connection's queue had no room for

    def add(self, hdr, body=P.EMPTY, packed=None):
        if not self.parts:
            self.dirty.add(self.key)
        super().add(hdr, body, packed)

    def add_record(self, rec):
        if not self.parts:
            self.dirty.add(self.key)
        super().add_record(rec)

    def _grow(self, n):
        # messages of at most SEND_SPLIT header bytes (one larger record goes alone), so the
        # messages libzmq queues for the peer are bounded in bytes, not only in number; each is
        # joined as soon as it is complete, so what waits costs its bytes, not an object per record
        self.held += n + RECORD_COST
        self.nbytes += n
        if self.nbytes > SEND_SPLIT:
            marks = self.marks
            if marks is None:
                marks = self.marks = []
            parts = self.parts
            p0 = marks[-1][0] if marks else 0
            k = len(parts) - p0
            if k > 1:
                parts[p0:] = [b"".join(parts[p0:])]
                self.held -= RECORD_COST * (k - 1)
            marks.append((len(parts), len(self.frames)))
            self.nbytes = 0

    def take(self):
        """Everything as one message (the scheduling core's tests read an outbox this way)."""
        msgs = self.take_messages()
        if len(msgs) == 1:
            return msgs[0]
        return b"".join(d for d, _ in msgs), [f for _, fs in msgs for f in fs]

    def take_messages(self):
        self.held = self.queued()
        return super().take_messages()

    def queued(self) -> int:
        """Bytes of the messages in the backlog."""
        return sum(len(h) for h, _ in self.backlog) if self.backlog else 0

    def pending(self, sign) -> deque:
        """What to send now, oldest first: the backlog, then the records added since, as
        messages signed by ``sign(data)``.  Hand them to the connection in order, and give back
        what it did not take with :meth:`keep`."""
        msgs = self.backlog if self.backlog is not None else deque()
        self.backlog = None
        if self.parts:
            for data, frames in self.take_messages():
                msgs.append((sign(data), frames))
        return msgs

    def keep(self, msgs: deque):
        """Messages the peer's connection had no room for (none: it took everything): they go
        first next time."""
        self.backlog = msgs or None
        self.held = self.queued()


def asks_over(peer) -> bool:
    """Counts one ASK of ``peer``; True if it sent more than ``ASKS_MAX`` within a second.  O(1)
    (the clock is read once per ``ASKS_MAX`` ASKs).  Never for the origin (its cluster is its
    own) nor for a sub-broker (it passes on its workers')."""
    peer.asked += 1
    if peer.asked <= ASKS_MAX:
        return False
    now = time.monotonic()
    if now - peer.asked_since >= 1.0:
        peer.asked, peer.asked_since = 1, now
        return False
    return peer.role not in ("origin", "broker")


def stalled(peer) -> int:
    """Bytes waiting for ``peer`` if its connection refuses more than ``OUT_MAX`` of them (it
    stopped reading), else 0.  O(1)."""
    held = peer.out.held + peer.cout.held
    if held > OUT_MAX and (peer.out.backlog or peer.cout.backlog):
        return held
    return 0


class Peer:
    """A connected process: a worker, the origin, a sub-broker, or the upstream of a sub-broker."""

    __slots__ = ("uid", "index", "name", "host", "host_key", "pid", "role", "credit", "assigned",
                 "have", "load", "out", "cout", "retiring", "last_steal", "takes", "runs",
                 "bucket", "heavy", "held", "submitted", "behind", "behind_hosts", "finished", "seen",
                 "asked", "asked_since")

    def __init__(self, uid, index, info: dict, dirty: set):
        self.uid = uid
        self.index = index
        self.name = str(info.get("name") or f"w{index}")
        self.host = str(info.get("host", "?"))
        self.host_key = int(info.get("host_key", 0)) & 0xFFFFFFFFFFFFFFFF
        self.pid = info.get("pid", 0)
        self.role = info.get("role", "worker")
        self.credit = 0
        self.assigned: dict = {}   # task id -> Task it holds
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
        # where the book's indexes file it (kept by PeerBook._file)
        self.bucket = None   # len(assigned) while it takes tasks and has credit, else None
        self.heavy = False   # holds more than it runs: a steal victim
        self.held = 0        # len(assigned) as counted in PeerBook.n_assigned
        self.submitted: set[int] = set()  # ids of tasks it submitted that are in flight
        self.behind = 0      # a sub-broker: workers behind it
        self.behind_hosts: dict[int, int] = {}  # a sub-broker: host key -> its workers there
        self.finished = 0    # tasks it finished here (results and DONEs)
        self.seen = 0        # ``finished`` when a steal last looked at it
        self.asked = 0       # ASKs it sent since ``asked_since`` (asks_over)
        self.asked_since = 0.0

    @property
    def takes_tasks(self) -> bool:
        return self.takes


class PeerBook:
    """The peers connected here, their indexes and counts.  ``upstream`` is a sub-broker's root
    (None at the root itself)."""

    def __init__(self, upstream: Peer | None = None):
        self.dirty: set = set()   # (uid, 0 or 1) of outboxes with something to send
        self.peers: dict[bytes, Peer] = {}
        self.by_index: dict[int, Peer] = {}
        self.next_index = 1
        self.origin: Peer | None = None
        # a sub-broker: tasks its workers submit go up to the root, which alone schedules
        self.upstream = upstream
        self.global_size = 0      # a sub-broker: the whole cluster's size, as the root says
        self.size_due = False
        # indexes and counts, kept by _file, _add_peer and _remove_peer: nothing walks every peer
        self.ready: dict[int, dict[Peer, None]] = {}       # tasks held -> peers with credit
        self.ready_hosts: dict[int, dict[Peer, None]] = {}  # host key -> peers with credit
        self.idle_hosts: dict[int, int] = {}               # host key -> ready peers holding nothing
        self.heavy: dict[Peer, None] = {}                  # peers holding more than they run
        self.n_ready = 0
        self.n_assigned = 0   # tasks held by peers
        self.n_workers = 0    # workers connected here
        self.n_behind = 0     # workers behind sub-brokers
        self.host_refs: dict[int, int] = {}  # host key -> workers (and origin) there

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

    # ---- membership --------------------------------------------------------------------------
    def _add_peer(self, uid: bytes, info: dict) -> Peer | None:
        """A new peer in the book, counted; None if ``uid`` is here already."""
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
        return peer

    def _remove_peer(self, peer: Peer) -> bool:
        """``peer`` leaves the book and its counts; False if it had left already.  Its tasks
        are the caller's to re-queue, and it is re-filed once they are gone."""
        if self.peers.pop(peer.uid, None) is None:
            return False
        if self.by_index.get(peer.index) is peer:
            del self.by_index[peer.index]
        if peer.role == "worker":
            self.n_workers -= 1
        if peer.role in ("worker", "origin"):
            _uncount(self.host_refs, peer.host_key)
        self._set_behind(peer, 0, {})
        return True

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


def _uncount(counts: dict, key, k: int = 1):
    n = counts.get(key, 0) - k
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)
