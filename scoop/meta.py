"""Subscriber to the broker's meta stream: cluster snapshots and events.

Observers (the Cluster object, the notebook dashboard, the lab panel) listen here instead of
polling workers.  Only peers with the secret can subscribe (the handshake) and messages are signed.

Each message is one signed record: STATUS (a snapshot) or EVENT, with a JSON body.  A snapshot
comes every 0.2 s (every ``workers / 20000`` s beyond 4,000 workers), and soon after a join or
a leave; its size does not grow with the workers (scoop.census):

    state     "running" | "stopped";   time: epoch seconds;   tick: its sequence number
    totals    workers (the whole cluster), busy (share 0..1), idle, retiring, done, queued,
              in_flight, running (tasks held by workers), rate (tasks/s), lost_workers,
              dropped_messages, routed_messages
    hist      {"held": {"edges", "counts"}, "cpu": {"edges", "counts"}}: workers per bin of tasks
              held and of CPU %, bins starting at each edge
    top       {"busiest", "idle", "changed"}: worker ids (busiest first; idle ones; state changed
              lately, latest last)
    workers   records {id, name, host, pid, host_key, role, state, queued, running, blocked,
              assigned, done, cpu, mem, retiring[, via: the sub-broker's index]}: every worker
              while there are at most 256 (complete: true), else those named in top plus a page
              of 64 that rotates over all of them (page: {start, size, of})
    left      ids of workers gone since the previous snapshot
    origin    the origin's record or null;   broker: {main_port, meta_port}

An event is {event: "joined" | "left" | "retiring" | "const" | "shutdown", time, worker: record
(joined, left, retiring), reason (left, shutdown), name (const)}.

:class:`MetaSubscriber` keeps every worker's latest record (scoop.census.Book), so ``latest``
and the callbacks see a snapshot whose ``workers`` lists every worker known; ``complete`` says
whether that is all of them yet (a subscriber that joins a large cluster late has them all
after one rotation).
"""
from __future__ import annotations

import json
import threading
import time

import zmq

from . import _protocol as P
from .census import Book
from .security import secure_client


class MetaSubscriber(threading.Thread):
    def __init__(self, address: str, secret: bytes, context: zmq.Context | None = None,
                 encryption: bool = True):
        super().__init__(name="scoop-meta", daemon=True)
        self.address = address
        self.signer = P.Signer(secret)
        self.secret = secret
        self.encryption = encryption
        self.ctx = context or zmq.Context.instance()
        self.latest: dict | None = None
        self.book = Book()
        self.events: list[dict] = []
        self._callbacks: list = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._halt = threading.Event()

    def subscribe(self, callback):
        """``callback(kind, data)`` with kind "status" (a snapshot, ~5/s) or "event"; called from
        this thread.  Returns a function that unsubscribes."""
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe():
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)
        return unsubscribe

    def wait_for(self, pred, timeout: float) -> dict | None:
        """Blocks until a snapshot satisfies ``pred`` (or timeout); returns the latest snapshot."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.latest is None or not pred(self.latest):
                left = deadline - time.monotonic()
                if left <= 0 or self._halt.is_set():
                    break
                self._cond.wait(min(left, 0.1))
            return self.latest

    def stop(self, wait: bool = False):
        """Asks the thread to end; it does within one 50 ms poll, so stopping a cluster need
        not wait for it (unless ``wait``)."""
        self._halt.set()
        if wait and self.is_alive() and threading.current_thread() is not self:
            self.join(2)

    def run(self):
        s = self.ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SUBSCRIBE, b"")
        secure_client(s, self.secret, self.address, self.encryption)
        s.connect(self.address)
        try:
            while not self._halt.is_set():
                if not s.poll(50):
                    continue
                while True:
                    try:
                        msg = s.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if len(msg) != 2 or not self.signer.check(P.META, msg[1]):
                        continue
                    recs = P.parse(msg[1], [])
                    if not recs:
                        continue
                    kind = "status" if recs[0].hdr[:1] == P.STATUS else "event"
                    try:
                        data = json.loads(bytes(recs[0].body))
                    except ValueError:
                        continue
                    if kind == "status" and isinstance(data, dict):
                        data = self.book.apply(data)
                    with self._cond:
                        if kind == "status":
                            self.latest = data
                        else:
                            self.events.append(data)
                            del self.events[:-200]
                        self._cond.notify_all()
                        callbacks = list(self._callbacks)
                    for cb in callbacks:
                        try:
                            cb(kind, data)
                        except Exception:
                            from . import logger
                            logger.exception("meta-stream callback %r failed", cb)
        finally:
            s.close(0)


class JoinedNames(set):
    """The names of every worker seen in the cluster at least once: a worker that ends after
    joining was lost (and is replaced); one that ends before never started."""

    def note(self, kind: str, data: dict) -> None:
        """Meta-stream callback."""
        if kind == "event" and data.get("event") == "joined":
            name = (data.get("worker") or {}).get("name")
            if name:
                self.add(name)
        elif kind == "status":
            self.update(w["name"] for w in data.get("workers", ()) if w.get("name"))

