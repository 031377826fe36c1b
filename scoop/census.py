"""What the meta stream says about the workers, at a size that does not grow with them.

Publisher side (:class:`Census`, read by the broker): a snapshot carries exact totals, load
histograms and the interesting workers -- the busiest, idle ones, and those whose state just
changed -- plus every worker's record while there are at most ``FULL`` of them, and beyond that
a page of records that rotates over all of them.  Subscriber side (:class:`Book`, in
scoop.meta): records are kept by worker id, so a subscriber still sees every worker, each one
refreshed at least once per rotation.  The message shape is documented in scoop.meta.  Pure
logic over the scheduling core, no sockets: unit-tested in tests/test_census.py.

A sub-broker sends the root its own snapshot as its load report (with the count and hosts of its
workers): the root adds up the totals and histograms, and keeps the records in one Book per
sub-broker, so its work per report grows with the snapshot, not with the workers behind it.
"""
from __future__ import annotations

import heapq
from bisect import bisect_right

FULL = 256    # up to this many workers, each snapshot lists them all
PAGE = 64     # beyond: records of a page that rotates over all workers, per snapshot
TOP = 8       # busiest and idle workers named in each snapshot
CHANGED = 16  # workers whose state changed lately, named in each snapshot
HELD_EDGES = (0, 1, 2, 3, 5, 9, 17, 33, 65)  # lower edges of the "tasks held" histogram bins
CPU_EDGES = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90)  # lower edges of the CPU % bins


def status_interval(workers: int, base: float = 0.2) -> float:
    """Seconds between two snapshots: ``base`` up to 4,000 workers, then longer, so the scan
    behind a snapshot stays a small share of the broker (~1 ms per 2,000 workers)."""
    return max(base, workers / 20000)


def report_interval(workers: int, base: float = 0.25) -> float:
    """Seconds between two load reports of one worker: ``base`` up to 1,000 workers, then
    longer, so the broker reads about 4,000 reports a second however many there are."""
    return max(base, workers / 4000)


def _check_summary(load: dict):
    """A sub-broker's report must have the shape a snapshot has (what the root reads of it)."""
    t, top, hist = load.get("totals"), load.get("top"), load.get("hist")
    ok = (isinstance(t, dict) and isinstance(t.get("idle", 0), int) and isinstance(t.get("retiring", 0), int)
          and isinstance(top, dict)
          and all(isinstance(top.get(k, []), list) for k in ("busiest", "idle", "changed"))
          and isinstance(hist, dict)
          and all(isinstance(hist.get(k), dict) and isinstance(hist[k].get("counts"), list)
                  and all(isinstance(c, int) for c in hist[k]["counts"]) for k in ("held", "cpu"))
          and isinstance(load.get("left", []), list))
    if not ok:
        raise ValueError("a sub-broker's report must have the shape of a snapshot")


def _bin(edges, x) -> int:
    return max(0, bisect_right(edges, x) - 1)


_HELD_BIN = [_bin(HELD_EDGES, k) for k in range(HELD_EDGES[-1] + 1)]  # a lookup per worker, not a search


class Census:
    """Builds the broker's snapshots from its scheduling core."""

    def __init__(self, core):
        self.core = core
        self.tick = 0
        self.cursor = 0
        self.state: dict[str, str] = {}      # worker id -> state at the last snapshot
        self.changed: dict[str, None] = {}   # ids whose state changed lately, oldest first
        self.left: list[str] = []            # ids gone since the last snapshot
        self.total = 0
        self.books: dict[bytes, Ledger] = {}  # sub-broker uid -> the records of its workers
        self.turn = 0                        # whose page the next snapshot carries (see _page)
        self.summaries: dict[bytes, dict] = {}  # sub-broker uid -> its last report, checked

    def note_load(self, peer):
        """A sub-broker's report (its snapshot): checked, its records go to its ledger; a bad
        one is a ValueError and changes nothing.  The work is the report's size."""
        load = peer.load
        if "count" not in load:
            return  # every record, as the report itself: read at each snapshot
        _check_summary(load)
        self.summaries[peer.uid] = load
        book = self.books.get(peer.uid)
        if book is None:
            book = self.books[peer.uid] = Ledger()
        for wid in book.apply(load):
            self.note_left(wid)

    def note_gone(self, peer):
        """A sub-broker left: the workers behind it with it."""
        self.summaries.pop(peer.uid, None)
        book = self.books.pop(peer.uid, None)
        if book is not None:
            for wid in book.records:
                self.note_left(wid)

    def note_left(self, wid: str):
        self.left.append(wid)
        self.state.pop(wid, None)
        self.changed.pop(wid, None)

    def _sources(self, ledgers: bool):
        """(id, the record or its peer) of the workers looked at one by one: direct ones, those
        of sub-brokers that send every record, and (``ledgers``: few of them) those in ledgers."""
        for p in self.core.peers.values():
            if p.role == "worker":
                yield str(p.index), p
            elif p.role == "broker":
                book = self.books.get(p.uid)
                if book is None:
                    for w in p.load.get("workers", ()):
                        yield str(w.get("id")), (p, w)
                elif ledgers:
                    for wid, w in book.records.items():
                        yield wid, (p, w)

    def _add_summaries(self, held_hist, cpu_hist) -> dict:
        """Sub-brokers whose report is a snapshot: their histograms are added here (their
        workers are not looked at one by one)."""
        summed = {}
        for uid, load in self.summaries.items():
            p = self.core.peers.get(uid)
            if p is None:
                continue
            hist = load["hist"]
            for mine, key in ((held_hist, "held"), (cpu_hist, "cpu")):
                counts = hist[key]["counts"]
                if len(counts) == len(mine):
                    for i, k in enumerate(counts):
                        mine[i] += k
            summed[uid] = (p, load)
        return summed

    def _record(self, src) -> dict:
        if type(src) is tuple:
            broker, w = src
            return dict(w, via=broker.index)
        return self.core.peer_info(src)

    def snapshot(self) -> dict:
        """A snapshot without the broker's own figures (state, time, rate, ports: its part)."""
        self.tick += 1
        core = self.core
        held_hist = [0] * len(HELD_EDGES)
        cpu_hist = [0] * len(CPU_EDGES)
        busiest: list = []  # heap of (held, n, id, src)
        idle: list = []
        items = []
        busy = retiring = 0
        state, changed = self.state, self.changed
        n = 0
        summed = self._add_summaries(held_hist, cpu_hist)
        # the root of a federation: the workers behind sub-brokers are counted in their reports;
        # their records are listed one by one only while there are few
        few = sum(len(b.records) for b in self.books.values()) <= FULL
        for wid, src in self._sources(few):
            n += 1
            if type(src) is tuple and src[0].uid in summed:
                items.append((wid, src))  # counted in its sub-broker's totals and histograms
                continue
            if type(src) is tuple:
                w = src[1]
                held = w.get("assigned", 0) or 0
                is_busy = w.get("state") == "busy"
                cpu = w.get("cpu", 0.0) or 0.0
                ret = bool(w.get("retiring"))
            else:
                load = src.load
                held = src.held
                is_busy = bool(held or load.get("running", 0))
                cpu = load.get("cpu", 0.0) or 0.0
                ret = src.retiring
            if type(held) is not int or held < 0 or not isinstance(cpu, (int, float)):
                held, cpu = 0, 0.0
            items.append((wid, src))
            held_hist[_HELD_BIN[held] if held < len(_HELD_BIN) else -1] += 1
            cpu_hist[_bin(CPU_EDGES, cpu)] += 1
            s = "retiring" if ret else "busy" if is_busy else "idle"
            if state.get(wid) != s:
                state[wid] = s
                changed.pop(wid, None)
                changed[wid] = None
            busy += is_busy
            retiring += ret
            if held or is_busy:
                if len(busiest) < TOP:
                    heapq.heappush(busiest, (held, n, wid, src))
                elif held > busiest[0][0]:
                    heapq.heapreplace(busiest, (held, n, wid, src))
            elif len(idle) < TOP:
                idle.append((wid, src))
        for p, load in summed.values():
            t = load.get("totals", {})
            busy += max(0, p.behind - t.get("idle", p.behind))
            retiring += t.get("retiring", 0)
            top = load.get("top", {})
            records = self.books[p.uid].records
            for wid in top.get("busiest", ()):
                w = records.get(str(wid))
                if w is not None:
                    held = w.get("assigned", 0)
                    held = held if isinstance(held, int) else 0
                    if len(busiest) < TOP:
                        heapq.heappush(busiest, (held, n, str(wid), (p, w)))
                    elif held > busiest[0][0]:
                        heapq.heapreplace(busiest, (held, n, str(wid), (p, w)))
            for wid in top.get("idle", ())[:TOP - len(idle)]:
                w = records.get(str(wid))
                if w is not None:
                    idle.append((str(wid), (p, w)))
            for wid in top.get("changed", ()):
                changed.pop(str(wid), None)
                changed[str(wid)] = None
        if len(changed) > 4 * CHANGED:
            # the newest kept, in one pass: deleting the oldest one at a time skips every entry
            # deleted before at each step (quadratic in the workers that changed: 8 ms for 5,000)
            self.changed = changed = dict.fromkeys(list(changed)[-4 * CHANGED:])
        listed = n  # workers whose record is here
        if core.upstream is None:
            n = core.size()  # with those behind sub-brokers whose records have not all come yet
        self.total = n
        busiest = [(wid, src) for _h, _n, wid, src in sorted(busiest, reverse=True)]
        recent = list(changed)[-CHANGED:]
        if n <= FULL and listed == n:
            records = [self._record(src) for _wid, src in items]
            page = {"start": 0, "size": n, "of": n}
        else:
            chosen = dict(busiest)
            chosen.update(idle)
            by_id = None
            for wid in recent:
                if wid not in chosen:
                    if by_id is None:
                        by_id = dict(items)
                    if wid in by_id:
                        chosen[wid] = by_id[wid]
            paged, start = self._page(items, [] if few else list(summed.values()))
            chosen.update(paged)
            records = [self._record(src) for src in chosen.values()]
            page = {"start": start, "size": len(paged), "of": n}
        left, self.left = self.left, []
        return {
            "tick": self.tick,
            "workers": records,
            "complete": n <= FULL and listed == n,
            "page": page,
            "left": left,
            "totals": {"workers": n, "busy": busy / n if n else 0.0,
                       "idle": n - busy, "retiring": retiring,
                       "done": core.done_total, "queued": core.queued(), "in_flight": len(core.tasks),
                       "running": core.n_assigned, "lost_workers": core.lost_workers},
            "hist": {"held": {"edges": list(HELD_EDGES), "counts": held_hist},
                     "cpu": {"edges": list(CPU_EDGES), "counts": cpu_hist}},
            "top": {"busiest": [wid for wid, _ in busiest], "idle": [wid for wid, _ in idle],
                    "changed": recent},
        }


    def _page(self, items: list, subs: list) -> tuple[list, int]:
        """The next page: in turn, of the workers listed here and of each sub-broker's ledger
        (one source per snapshot), so a rotation over every worker costs what it would on one
        broker and no snapshot walks the records sub-brokers sent."""
        sources = len(subs) + 1
        for _ in range(sources):
            turn = self.turn % sources
            self.turn += 1
            if turn == 0:
                if not items:
                    continue
                start = self.cursor % len(items)
                paged = items[start:start + PAGE]
                if len(paged) < PAGE:
                    paged += items[:PAGE - len(paged)]
                self.cursor = start + PAGE
                return paged, start
            p, _load = subs[turn - 1]
            book = self.books[p.uid]
            start = book.cursor
            paged = [(wid, (p, w)) for wid, w in book.page(PAGE)]
            if paged:
                return paged, start
        return [], 0


class Book:
    """Subscriber side: every worker's latest record, from complete snapshots or from pages."""

    def __init__(self):
        self.records: dict[str, dict] = {}
        self.seen: dict[str, int] = {}

    def apply(self, snap: dict) -> dict:
        """The snapshot as today's readers expect it: ``workers`` lists every worker known."""
        workers = snap.get("workers")
        if not isinstance(workers, list):
            return snap
        if snap.get("complete", True):
            self.records = {str(w.get("id")): w for w in workers if isinstance(w, dict)}
            self.seen = dict.fromkeys(self.records, snap.get("tick", 0))
            return snap
        tick = snap.get("tick", 0)
        records, seen = self.records, self.seen
        for wid in snap.get("left", ()):
            records.pop(str(wid), None)
            seen.pop(str(wid), None)
        for w in workers:
            if isinstance(w, dict):
                wid = str(w.get("id"))
                records[wid] = w
                seen[wid] = tick
        total = (snap.get("totals") or {}).get("workers")
        if isinstance(total, int) and len(records) > total:
            # leaves this subscriber missed: the records not refreshed for longest go
            for wid in heapq.nsmallest(len(records) - total, seen, key=seen.get):
                records.pop(wid, None)
                seen.pop(wid, None)
        out = dict(snap, workers=list(records.values()))
        out["complete"] = isinstance(total, int) and len(records) == total
        return out


class Ledger(Book):
    """The root's book of one sub-broker's workers: the records its reports carried, paged in
    the order they first came.  Applying a report costs its size; a page costs its size."""

    def __init__(self):
        super().__init__()
        self.order: list[str] = []  # ids in the order they came (some may be gone: skipped)
        self.cursor = 0

    def apply(self, snap: dict) -> list:
        """Takes a report's records; returns the ids of workers gone."""
        records = self.records
        fresh = {str(w.get("id")): w for w in snap.get("workers", ()) if isinstance(w, dict)}
        gone = [str(w) for w in snap.get("left", ())]
        if snap.get("complete", True):
            gone += [wid for wid in records if wid not in fresh]  # a complete report lists everyone
        for wid in gone:
            records.pop(wid, None)
        order = self.order
        for wid, w in fresh.items():
            if wid not in records:
                order.append(wid)
            records[wid] = w
        if len(order) > 2 * len(records) + PAGE:
            self.order = [wid for wid in dict.fromkeys(order) if wid in records]
            self.cursor = 0
        return gone

    def page(self, k: int) -> list:
        """Up to ``k`` records, from where the last page ended (each at most once)."""
        order, records = self.order, self.records
        out = []
        for _ in range(len(order)):
            if len(out) >= k:
                break
            if self.cursor >= len(order):
                self.cursor = 0
            wid = order[self.cursor]
            self.cursor += 1
            w = records.get(wid)
            if w is not None:
                out.append((wid, w))
        return out
