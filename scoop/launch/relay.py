"""Relaying the output of a cluster's processes: one thread reads every local child's pipes.

The lowest floor of :mod:`scoop.launch`: launchers (local, SSH, batch) and the Cluster hand it
their children's pipes or remote text, and it delivers each line to one sink, keeping the last
lines of each child's stderr to explain a child that died.
"""
from __future__ import annotations

import os
import selectors
import sys
import threading
from collections import deque

__all__ = ["OutputRelay"]


class OutputRelay:
    """One thread relays every local child's stdout/stderr, optionally prefixed by its label.

    Pipes (rather than inherited descriptors) let a notebook show worker output in the cell,
    and keep the last lines of each child's stderr to explain a child that died.
    """

    def __init__(self, sink=None, prefix: bool = False, start: bool = True):
        self.sink = sink  # callable(label, stream, text) or None for this process's stdout/stderr
        self.prefix = prefix
        self.sel = selectors.DefaultSelector()
        self.tails: dict[str, deque] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._partial: dict[tuple, bytes] = {}
        self._thread = threading.Thread(target=self._run, name="scoop-output", daemon=True)
        self._closed = False
        if start:
            self._thread.start()

    def start(self):
        if not self._thread.is_alive():
            self._thread.start()

    def add(self, label: str, stdout=None, stderr=None):
        self.tails[label] = deque(maxlen=30)
        with self._lock:
            for stream, pipe in (("stdout", stdout), ("stderr", stderr)):
                if pipe is not None:
                    os.set_blocking(pipe.fileno(), False)
                    self.sel.register(pipe, selectors.EVENT_READ, (label, stream))
        os.write(self._wake_w, b"x")

    def emit(self, label: str, stream: str, text: str):
        """Delivers text from any child (local pipe or remote channel) to the sink."""
        if stream == "stderr":
            tail = self.tails.setdefault(label, deque(maxlen=30))
            tail.extend(text.splitlines())
        if self.prefix:
            text = "".join(f"[{label}] {line}\n" for line in text.splitlines())
        if self.sink is not None:
            self.sink(label, stream, text)
        else:
            out = sys.stderr if stream == "stderr" else sys.stdout
            try:
                out.write(text)
                out.flush()
            except Exception:
                pass

    def note(self, label: str, text: str):
        """Keeps text in a child's tail (to explain its death) without printing it."""
        self.tails.setdefault(label, deque(maxlen=30)).extend(text.splitlines())

    def tail(self, label: str) -> str:
        return "\n".join(self.tails.get(label, ()))

    def _run(self):
        while not self._closed:
            try:
                events = self.sel.select(0.5)
            except (OSError, ValueError):
                return
            for key, _ in events:
                if key.data is None:
                    os.read(self._wake_r, 4096)
                    continue
                label, stream = key.data
                try:
                    pipe = key.fileobj
                    data = pipe.read1(65536) if hasattr(pipe, "read1") else pipe.read(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except (OSError, ValueError):
                    data = b""
                if not data:
                    with self._lock:
                        try:
                            self.sel.unregister(key.fileobj)
                        except (KeyError, ValueError):
                            pass
                    rest = self._partial.pop((label, stream), b"")
                    if rest:
                        self.emit(label, stream, rest.decode("utf-8", "replace"))
                    continue
                if self.prefix:
                    data = self._partial.pop((label, stream), b"") + data
                    cut = data.rfind(b"\n") + 1
                    if cut < len(data):
                        self._partial[(label, stream)] = data[cut:]
                    data = data[:cut]
                    if not data:
                        continue
                self.emit(label, stream, data.decode("utf-8", "replace"))

    def flush(self, timeout: float = 0.5):
        """Gives the relay a moment to drain pipes of children that just exited."""
        import time
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                live = [k for k in self.sel.get_map().values() if k.data is not None]
            if not live:
                return
            time.sleep(0.02)

    def close(self):
        self._closed = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread.is_alive():
            self._thread.join(1)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
