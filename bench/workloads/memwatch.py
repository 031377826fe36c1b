"""Peak RSS growth of this process and of its descendants during one phase of a benchmark.

The kernel keeps each process's RSS high-water mark (VmHWM) and resets it to the current RSS
when "5" is written to /proc/PID/clear_refs (Linux >= 4.0), so a peak that lasts a millisecond
inside a C call is not missed the way a sampling thread (which needs the GIL) would miss it.
Where that file cannot be written, a thread samples RSS every 2 ms instead.

Memory in /dev/shm that no process has mapped (a segment filled with write()) is in nobody's
RSS, so a thread also samples the machine's Shmem (/proc/meminfo) every 2 ms: shm_mb is its peak
growth during the phase.  It is machine-wide: other users' segments show up in it too.
origin_shm_mb is the peak growth of (the origin's private RSS + the machine's Shmem), sampled
together (the origin's data wherever it lives, each shared page counted once), and at least the
origin's own peak growth.
"""
import os
import threading
import time

import psutil


def _hwm_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise OSError("no VmHWM")


def _reset(pid):
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


class PeakWatch:
    """with PeakWatch() as w: ...  then w.origin_mb, w.others_mb (max over descendants)."""

    def __init__(self, children=True):
        self.me = psutil.Process()
        self.procs = [self.me] + (self.me.children(recursive=True) if children else [])
        self.base = {}
        self.peak = {}
        self.names = {}
        self.mode = "hwm"
        self._stop = threading.Event()
        self._thread = None

    def _rss(self, p):
        return p.memory_info().rss

    @staticmethod
    def _shmem():
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("Shmem:"):
                    return int(line.split()[1]) * 1024
        return 0

    @staticmethod
    def _anon():
        """This process's private resident memory (RssAnon), bytes."""
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _both(self):
        shm = self._shmem()
        return shm, shm + self._anon()

    def __enter__(self):
        for p in self.procs:
            try:
                self.base[p.pid] = self._rss(p)
                self.names[p.pid] = p.name()
            except psutil.Error:
                continue
        try:
            for pid in self.base:
                _reset(pid)
            for pid in self.base:  # the reset sets VmHWM to the current RSS
                self.base[pid] = _hwm_kb(pid) * 1024
        except OSError:
            self.mode = "sampled"
            self.peak = dict(self.base)
        self.shm_base, self.both_base = self._both()
        self.shm_peak, self.both_peak = self.shm_base, self.both_base
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self._sample_both()
            if self.mode != "sampled":
                continue
            for p in self.procs:
                try:
                    r = self._rss(p)
                except psutil.Error:
                    continue
                if r > self.peak.get(p.pid, 0):
                    self.peak[p.pid] = r

    def _sample_both(self):
        shm, both = self._both()
        self.shm_peak = max(self.shm_peak, shm)
        self.both_peak = max(self.both_peak, both)

    @property
    def origin_shm_mb(self):
        """Peak growth of the origin's private RSS plus the machine's Shmem, sampled together;
        never less than the origin's own (kernel-measured) peak, which a sample can miss while
        the origin holds the GIL."""
        return max(max(0, self.both_peak - self.both_base) / 2**20, self.origin_mb)

    @property
    def shm_mb(self):
        """Peak growth of the machine's Shmem during the phase (machine-wide)."""
        return max(0, self.shm_peak - self.shm_base) / 2**20

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample_both()  # the end state (what is held) counts too
        if self.mode == "hwm":
            for pid in self.base:
                try:
                    self.peak[pid] = _hwm_kb(pid) * 1024
                except OSError:
                    pass
        return False

    def growth(self, pid):
        return max(0, self.peak.get(pid, 0) - self.base.get(pid, 0))

    @property
    def origin_mb(self):
        return self.growth(self.me.pid) / 2**20

    @property
    def others_mb(self):
        """Largest growth among the descendants (workers, broker, dask nannies...)."""
        return max([self.growth(pid) for pid in self.base if pid != self.me.pid] or [0]) / 2**20

    def named_mb(self, word):
        """Largest growth among the descendants whose process name contains `word` (or None)."""
        g = [self.growth(pid) for pid, n in self.names.items() if word in n and pid != self.me.pid]
        return max(g) / 2**20 if g else None


def settle():
    """Give freed memory back to the OS before the next phase's baseline, so that the next phase
    cannot hide its growth in memory an earlier phase left mapped."""
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    time.sleep(0.05)


if __name__ == "__main__":
    import numpy as np
    with PeakWatch() as w:
        a = np.ones(2**25)
        del a
    print(w.mode, f"{w.origin_mb:.0f} MB (expect ~256)", os.getpid())
