"""Subscriber to the broker's meta stream: per-worker load snapshots and cluster events.

Observers (the Cluster object, the notebook dashboard, the lab panel) listen here instead of
polling workers.  Only peers with the secret can subscribe (the handshake) and messages are signed.
"""
from __future__ import annotations

import json
import threading
import time

import zmq

from . import _protocol as P
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
