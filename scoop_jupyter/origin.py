"""The notebook kernel as a long-lived SCOOP origin.

A script's origin only pumps its task socket while it waits on a future.  A kernel spends most
of its life between cells, so here the kernel's own event loop (the tornado/asyncio loop that
ipykernel runs in its main thread) watches the origin's ZeroMQ descriptor and pumps it, with a
100 ms safety timer because that descriptor is edge-triggered.  Results therefore reach their
futures (and done-callbacks fire) while no cell runs.

Each cell gets a task group of its own, so Kernel > Interrupt drops exactly that cell's work.
Jupyter routes output by the parent header of the message, so output caused by a cell carries
that cell's header, at any later time: task output is published under the header of the cell
whose group submitted the task, and a done-callback runs under the header of the cell that
registered it.  Every cluster started here is stopped when the kernel exits, on top of the
core's own parent-death guarantees.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import re
import sys
import threading
import time
from collections import deque

import scoop.origin
from scoop.cluster import Cluster
from scoop.errors import ClusterError
from scoop.options import option_names

from .notices import LossNotices, SupervisorFilter
from .status import StatusFeed, forget_maps

SAFETY_PUMP_MS = 100
#: lines of recent output kept per worker for the worker-log view
LOG_LINES = 200
#: cell groups whose parent header is remembered (a kernel's life is long, headers are small)
MAX_GROUPS = 10_000
#: stopped dashboards a new start brings back to life (the most recent ones; each one costs a
#: rendering per refresh, and older ones are likely out of sight)
REVIVE = 3

#: ``start`` options that map one to one onto ``scoop.cluster.Cluster`` arguments (declared in
#: scoop.options; ``n`` is start's own argument and output is always prefixed here)
CLUSTER_OPTIONS = tuple(k for k in option_names() if k not in ("n", "prefix_output"))


class _LoopPump:
    """Pumps the origin's task socket from the kernel's event loop, between cells."""

    def __init__(self, io_loop):
        self.io_loop = io_loop
        self.fd = None
        self.timer = None
        self.pumps = 0  # handled messages, for tests and curiosity

    def attach(self):
        from tornado.ioloop import IOLoop, PeriodicCallback
        self.fd = scoop.origin.fileno()
        self.io_loop.add_handler(self.fd, self._on_ready, IOLoop.READ)
        self.timer = PeriodicCallback(self.pump_now, SAFETY_PUMP_MS)
        self.timer.start()

    def detach(self):
        """Must run before the origin's socket closes: the loop must not watch a dead fd."""
        if self.timer is not None:
            self.timer.stop()
            self.timer = None
        if self.fd is not None:
            try:
                self.io_loop.remove_handler(self.fd)
            except Exception:
                pass
            self.fd = None

    def _on_ready(self, fd, events):
        self.pump_now()

    def pump_now(self):
        try:
            if not scoop.origin.is_attached():
                return
            n = scoop.origin.pump(0)
            while scoop.origin.has_input():
                n += scoop.origin.pump(0)
            self.pumps += n
        except Exception:
            import logging
            logging.getLogger("scoop_jupyter").exception("pumping the SCOOP origin failed")


class KernelOrigin:
    """The cluster this kernel (or plain Python process) started, and its notebook plumbing."""

    def __init__(self):
        self.cluster: Cluster | None = None
        self.options: dict = {}
        self.feed = StatusFeed()
        self.start_seconds: float | None = None
        self.shell = None
        self._pump: _LoopPump | None = None
        self._cell_parent = None
        self._cell_group = None
        self.cell_running = False
        self.cell_started = 0.0
        self._out_parent: dict = {}
        self._group_parent: dict = {}      # task group -> parent header of the cell that made it
        self.logs: dict[str, deque] = {}   # worker name -> its recent output lines
        self._unpatch_callbacks = None
        self._atexit = False
        self.progress = None  # the map progress bars (scoop_jupyter.progress), set by api.session()
        self.restarting = False
        self.notices = LossNotices(self._notice, retired=lambda name, pid: pid in self.feed.retired_pids)
        self._log_filter = SupervisorFilter(self.notices)
        self.displays: list = []  # live displays to turn into static records: cell_finished(), stopped()
        #: how to revive the last dashboards a stop froze: the next start runs them
        self.dormant: deque = deque(maxlen=REVIVE)

    # ---- IPython integration --------------------------------------------------------------------
    @property
    def kernel(self):
        return getattr(self.shell, "kernel", None)

    def install(self, shell):
        """Hooks into an IPython shell (a kernel's, or a terminal's)."""
        if self.shell is shell:
            return
        self.shell = shell
        shell.events.register("pre_run_cell", self._pre_run_cell)
        shell.events.register("post_run_cell", self._post_run_cell)
        if hasattr(shell, "observe") and "exit_now" in shell.trait_names():
            shell.observe(self._on_exit_now, names="exit_now")
        if not self._atexit:
            atexit.register(self._at_exit)
            self._atexit = True
        if self._unpatch_callbacks is None and self.kernel is not None:
            self._unpatch_callbacks = _route_done_callbacks(self)
        if self.kernel is not None:
            logging.getLogger("scoop").addFilter(self._log_filter)

    def uninstall(self, shell):
        for name, fn in (("pre_run_cell", self._pre_run_cell), ("post_run_cell", self._post_run_cell)):
            try:
                shell.events.unregister(name, fn)
            except ValueError:
                pass
        try:
            shell.unobserve(self._on_exit_now, names="exit_now")
        except (ValueError, AttributeError):
            pass
        if self.shell is shell:
            self.shell = None
        logging.getLogger("scoop").removeFilter(self._log_filter)
        if self._unpatch_callbacks is not None:
            self._unpatch_callbacks()
            self._unpatch_callbacks = None

    def _pre_run_cell(self, info=None):
        kernel = self.kernel
        if kernel is not None:
            try:
                self._cell_parent = kernel.get_parent("shell")
            except Exception:
                self._cell_parent = None
        self.cell_started = time.time()
        self.cell_running = True
        self._new_cell_group()
        if self.progress is not None:
            self.progress.cell_started()

    def _new_cell_group(self):
        self._cell_group = scoop.origin.new_group() if scoop.origin.is_attached() else None
        if self._cell_group is not None and self._cell_parent is not None:
            if len(self._group_parent) >= MAX_GROUPS:
                for g in list(self._group_parent)[:MAX_GROUPS // 2]:
                    del self._group_parent[g]
            self._group_parent[self._cell_group] = self._cell_parent

    def current_parent(self):
        """The parent header output caused now belongs to: the running cell's, else the
        request being handled (a comm message, say)."""
        if self.cell_running and self._cell_parent is not None:
            return self._cell_parent
        kernel = self.kernel
        try:
            return kernel.get_parent("shell") if kernel is not None else None
        except Exception:
            return None

    @contextlib.contextmanager
    def under(self, parent):
        """Output written (and displays made) in this block, on this thread, carry ``parent``."""
        tokens = []
        if parent is not None:
            for target in (sys.stdout, sys.stderr, getattr(self.shell, "display_pub", None)):
                if hasattr(target, "set_thread_parent") and hasattr(target, "reset_thread_parent"):
                    try:
                        tokens.append((target, target.set_thread_parent(parent)))
                    except Exception:
                        pass
        try:
            yield
        finally:
            for target, token in reversed(tokens):
                try:
                    target.reset_thread_parent(token)
                except Exception:
                    pass

    def _post_run_cell(self, result=None):
        self.cell_running = False
        err = getattr(result, "error_in_exec", None)
        if isinstance(err, KeyboardInterrupt) and self._cell_group is not None and scoop.origin.is_attached():
            # the core interrupts the group when Ctrl-C meets a futures wait; this also covers a
            # Ctrl-C that landed anywhere else in the cell
            try:
                scoop.origin.interrupt(self._cell_group)
            except Exception:
                pass
        if self.progress is not None:
            self.progress.cell_finished(err)
        for d in list(self.displays):
            _quietly(d.cell_finished)
        if self._pump is not None:
            self._pump.pump_now()

    def _on_exit_now(self, change):
        """A shutdown (or restart) request: ipykernel sets ``exit_now`` on its control thread,
        then terminates the kernel's child processes.  Stopping the cluster first, on the main
        thread that owns the origin's socket, ends it cleanly instead (no worker is replaced
        meanwhile).  If the main thread is busy in a cell, ipykernel's kill and the core's
        parent-death ties end the cluster anyway."""
        if not change.get("new") or self.cluster is None:
            return
        io_loop = getattr(self.kernel, "io_loop", None)
        if io_loop is None or threading.current_thread() is threading.main_thread():
            self.stop()
            return
        done = threading.Event()

        def stop():
            try:
                self.stop()
            finally:
                done.set()
        io_loop.add_callback(stop)
        done.wait(3.0)

    def _at_exit(self):
        try:
            self.stop()
        except Exception:
            pass

    # ---- worker output ------------------------------------------------------------------------
    def _log(self, name: str, stream: str, text: str):
        log = self.logs.get(name)
        if log is None:
            log = self.logs[name] = deque(maxlen=LOG_LINES)
        now = time.time()
        for line in text.splitlines():
            log.append((now, stream, line))

    def _on_task_output(self, name, stream, text, group=None):
        """``scoop.origin`` output handler: a task's output, published under the header of the
        cell that submitted it (at any later time), prefixed with the worker's name."""
        self._log(name, stream, text)
        out = sys.stderr if stream == "stderr" else sys.stdout
        parent = self._group_parent.get(group) if group is not None else None
        if parent is None:
            parent = self._cell_parent
        prefixed = "".join(f"[{name}] {line}\n" for line in text.splitlines())
        try:
            with self.under(parent):
                out.write(prefixed)
        except Exception:
            pass

    def _notice(self, text: str):
        """A notice of the cluster's (a lost worker): to the running cell, else the last one."""
        try:
            with self.under(self._cell_parent):
                sys.stderr.write(text)
        except Exception:
            pass

    def _without_losses(self, label: str, text: str) -> str:
        """``text`` without the broker's lines about a lost worker: those become the one notice
        (:mod:`notices`), or nothing for a worker this kernel retired."""
        if not label.startswith("broker") or "re-dispatching" not in text:
            return text
        return "".join(line for line in text.splitlines(keepends=True) if not self.notices.from_broker(line))

    def _output_sink(self):
        """Output of the cluster's processes (the broker's, and the workers' when the core does
        not send task output over the cluster connection): to the running cell (else the last
        one), prefixed by process.

        ipykernel sends output written by background threads with whatever parent header was
        set last (which may be a comm or completion request); setting the relay thread's parent
        to the cell's execute request pins worker output to that cell.
        """
        if self.kernel is None:
            return None
        streams = {"stdout": sys.stdout, "stderr": sys.stderr}

        def sink(label, stream, text):
            text = self._without_losses(label, text)
            if not text:
                return
            m = re.match(r"\[([^\]]+)\] ", text)
            if m:
                self._log(m.group(1), stream, text.replace(f"[{m.group(1)}] ", ""))
            out = streams.get(stream, streams["stdout"])
            parent = self._cell_parent
            if parent is not None and self._out_parent.get(stream) is not parent \
                    and hasattr(out, "set_thread_parent"):
                out.set_thread_parent(parent)
                self._out_parent[stream] = parent
            try:
                out.write(text)
            except Exception:
                pass
        return sink

    # ---- cluster lifecycle ------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.cluster is not None and self.cluster.running

    def start(self, n: int | None = None, **options) -> Cluster:
        """Starts a cluster whose origin is this process; see :func:`scoop_jupyter.start`."""
        if self.cluster is not None:
            if self.cluster.running:
                raise ClusterError(f"a SCOOP cluster is already running in this kernel "
                                   f"({self.cluster.size} workers); stop or restart it first")
            self.stop()
        unknown = set(options) - set(CLUSTER_OPTIONS)
        if unknown:
            raise TypeError(f"unknown cluster option(s): {', '.join(sorted(unknown))}")
        if n is not None and n < 1:
            raise ValueError(f"the number of workers must be at least 1, not {n}")
        self.options = dict(options, n=n)
        kwargs = {k: v for k, v in options.items() if v is not None}
        cluster = Cluster(n, output=self._output_sink(), prefix_output=True, **kwargs)
        t0 = time.perf_counter()
        cluster.start(connect=True)
        self.start_seconds = time.perf_counter() - t0
        self.cluster = cluster
        self.logs.clear()
        self.feed.retired_pids.clear()
        forget_maps()
        if self.kernel is not None:
            scoop.origin.set_output_handler(self._on_task_output)
        if self.cell_running:
            self._new_cell_group()
        kernel = self.kernel
        io_loop = getattr(kernel, "io_loop", None)
        if io_loop is not None:
            self._pump = _LoopPump(io_loop)
            self._pump.attach()
        self.feed.attach(cluster)
        if not self.restarting:
            revive, self.dormant = list(self.dormant), deque(maxlen=REVIVE)
            for fn in revive:
                _quietly(fn)
        return cluster

    def stop(self) -> bool:
        """Stops the cluster (idempotent); views show "stopped"."""
        cluster, self.cluster = self.cluster, None
        if self._pump is not None:
            self._pump.detach()
            self._pump = None
        self._cell_group = None
        forget_maps()
        if cluster is None:
            return False
        try:
            cluster.stop()
        finally:
            self.feed.detach()
            for d in list(self.displays):
                _quietly(d.stopped)
        return True

    def restart(self) -> Cluster:
        """Stops the cluster and starts one with the same options."""
        if not self.options:
            raise ClusterError("no SCOOP cluster was started in this kernel yet")
        opts = dict(self.options)
        self.restarting = True  # live views follow the new cluster rather than freeze
        try:
            self.stop()
            n = opts.pop("n", None)
            return self.start(n, **opts)
        finally:
            self.restarting = False

    def scale(self, n: int, wait: bool = True):
        """``wait=False``: returns once the workers are asked for, safe from a thread other than
        the kernel's main one (the lab panel's commands arrive on a kernel subshell)."""
        if not self.running:
            raise ClusterError("no SCOOP cluster is running in this kernel")
        if n < 1:
            raise ValueError(f"a cluster needs at least 1 worker, not {n}")
        live = [w for w in self.cluster.workers if not w.retired and w.poll() is None]
        # the cluster retires the newest workers: the views show them as leaving, not lost
        self.feed.retired_pids.update(w.pid for w in live[n:] if w.pid)
        self.cluster.scale(n, wait=wait)
        self.options["n"] = n
        self.feed.refresh_now()

    def status(self, settle: float = 1.0) -> dict:
        """The latest broker snapshot.  Right after a start, a scale or a map the snapshot (sent
        ~5 times a second, with the workers' load reports of every 0.25 s) may not list every
        worker yet, or not count the last results on their rows: wait up to ``settle`` s for
        it to agree with the cluster's size and the broker's own count of results, so a status
        asked for just then shows the cluster as it is."""
        cluster = self.cluster
        if cluster is None:
            return {"state": "stopped", "workers": [], "totals": {}}
        deadline = time.monotonic() + settle

        def settled(snap):
            workers = snap.get("workers", [])
            done = sum(int(w.get("done") or 0) for w in workers) + self.feed.model.departed_done
            return len(workers) == cluster.size and done >= int(snap.get("totals", {}).get("done") or 0)
        while True:
            snap = cluster.status()
            if settled(snap) or time.monotonic() > deadline:
                return snap
            time.sleep(0.05)

    def summary(self) -> str:
        """One line: workers per host and the start time."""
        c = self.cluster
        if c is None:
            return "no SCOOP cluster is running"
        hosts = ", ".join(f"{h}: {k}" for h, k in c.plan)
        total = sum(k for _, k in c.plan)
        took = f" in {self.start_seconds:.2f} s" if self.start_seconds is not None else ""
        return (f"SCOOP cluster started{took}: {total} worker{'s' if total != 1 else ''} "
                f"({hosts}); this kernel is the origin (broker port {c.main_port})")


def _quietly(fn):
    """Runs a view's hook: a broken view must not break the cell or the stop."""
    try:
        fn()
    except Exception:
        import logging
        logging.getLogger("scoop_jupyter").exception("view hook %r failed", fn)


def _route_done_callbacks(origin: KernelOrigin):
    """Done-callbacks run under the parent header of the cell that registered them, so their
    output lands in that cell whenever the result arrives.  Returns the undo function."""
    import scoop.origin

    def wrap(fn):
        parent = origin.current_parent()
        if parent is None or origin.kernel is None:
            return fn

        def in_its_cell(fut, _fn=fn, _parent=parent):
            with origin.under(_parent):
                return _fn(fut)
        in_its_cell.__wrapped__ = fn
        return in_its_cell

    scoop.origin.set_callback_wrapper(wrap)
    return lambda: scoop.origin.set_callback_wrapper(None)


_session: KernelOrigin | None = None
_session_lock = threading.Lock()


def session() -> KernelOrigin:
    """The process-wide KernelOrigin (a process is the origin of at most one cluster)."""
    global _session
    with _session_lock:
        if _session is None:
            _session = KernelOrigin()
        return _session
