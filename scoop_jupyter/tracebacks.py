"""Errors from the cluster that read like local ones: the user's frames, short, named.

A notebook user's traceback should show their cells and the cause, not SCOOP's, ZeroMQ's or
cloudpickle's machinery.  Before IPython shows an exception, this module

- drops frames of those packages (``%xmode Verbose`` keeps everything, for debugging SCOOP),
  and causes raised entirely inside them (the cloudpickle error behind "could not be pickled",
  whose message the SCOOP error already repeats);
- rewrites a task's remote traceback (whose frames the submitter already put back at their
  files, see ``scoop._codemap``): cell files (``/tmp/ipykernel_NNN/...py``) become
  ``Cell In[15]`` with the cell's source lines (the worker ran the function by value and had
  no source), worker frames of those packages go, and the worker is called by its one name;
- turns the ``KeyboardInterrupt`` of an interrupted map into one line that says what
  happened: ``map nap interrupted: 8 of 200 done, 192 dropped``.
"""
from __future__ import annotations

import linecache
import os
import re
import types

import scoop

_FRAME = re.compile(r'^(?P<indent>\s*)File "(?P<file>[^"]+)", line (?P<line>\d+), in ')
# a nested task's traceback, chained in its parent's, starts "scoop._protocol.RemoteTraceback: [worker ..."
_HEADER = re.compile(r"^(?:[\w.]*RemoteTraceback: )?\[worker (?P<index>\S+) on (?P<host>.*?), "
                     r"pid (?P<pid>\d+), task (?P<task>.*)\]$")
#: worker-side frames of these packages are machinery (the worker's paths may differ from ours)
_REMOTE_INTERNAL = re.compile(r"[/\\](scoop|scoop_jupyter|cloudpickle|zmq|greenlet)[/\\][^\"]*\.py$")


def _internal_dirs() -> tuple:
    dirs = [os.path.dirname(os.path.abspath(scoop.__file__)), os.path.dirname(os.path.abspath(__file__))]
    for name in ("zmq", "cloudpickle", "greenlet"):
        try:
            mod = __import__(name)
            dirs.append(os.path.dirname(os.path.abspath(mod.__file__)))
        except Exception:
            pass
    import pickle
    std = os.path.dirname(os.path.abspath(pickle.__file__))
    return tuple(d + os.sep for d in dirs) + (os.path.join(std, "pickle.py"), os.path.join(std, "copyreg.py"),
                                               os.path.join(std, "concurrent") + os.sep)


_INTERNAL = None
#: compiled (Cython) modules name their files relative to site-packages
_INTERNAL_PACKAGES = ("scoop", "scoop_jupyter", "zmq", "cloudpickle", "greenlet")


def is_internal(filename: str) -> bool:
    global _INTERNAL
    if not filename or filename[0] == "<":
        return False
    if not os.path.isabs(filename):
        return filename.replace("\\", "/").split("/", 1)[0] in _INTERNAL_PACKAGES
    if _INTERNAL is None:
        _INTERNAL = _internal_dirs()
    return filename.startswith(_INTERNAL)


def prune(tb, keep_first: bool = True):
    """``tb`` without the frames of SCOOP and the packages it uses.  The first entry (IPython's
    own ``run_code`` frame, which IPython's ``tb_offset`` skips) is kept."""
    entries = []
    first = True
    while tb is not None:
        if (first and keep_first) or not is_internal(tb.tb_frame.f_code.co_filename):
            entries.append(tb)
        first = False
        tb = tb.tb_next
    new = None
    for e in reversed(entries):
        new = types.TracebackType(new, e.tb_frame, e.tb_lasti, e.tb_lineno)
    return new


def _all_internal(tb) -> bool:
    seen = False
    while tb is not None:
        if not is_internal(tb.tb_frame.f_code.co_filename):
            return False
        seen = True
        tb = tb.tb_next
    return seen


# ---- remote tracebacks ----------------------------------------------------------------------
def _cell_line(filename: str, lineno: int) -> str:
    entry = linecache.cache.get(filename)
    # cells are registered without a modification time; real files are left alone, since the
    # worker's copy (possibly on another host) is the one that ran
    if entry is None or entry[1] is not None:
        return ""
    lines = entry[2]
    return lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""


def with_cell_source(text: str) -> str:
    """``text`` (a formatted traceback) with source lines added under cell frames."""
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        out.append(line)
        m = _FRAME.match(line)
        if not m:
            continue
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if nxt.startswith("    ") and not _FRAME.match(nxt):
            continue  # the worker had the source
        src = _cell_line(m["file"], int(m["line"]))
        if src:
            out.append(f"{m['indent']}  {src}")
    return "\n".join(out)


def _cell_names() -> dict:
    try:
        from IPython import get_ipython
        ip = get_ipython()
        return dict(getattr(ip.compile, "_filename_map", {})) if ip is not None else {}
    except Exception:
        return {}


def _worker_names() -> dict:
    try:
        from .origin import session
        return session().feed.names()
    except Exception:
        return {}


def tidy_remote(text: str, cells: dict | None = None, names: dict | None = None) -> str:
    """A worker's formatted traceback as the user wants it: cell names and source, no
    machinery frames, the worker's one name."""
    cells = _cell_names() if cells is None else cells
    names = _worker_names() if names is None else names
    text = with_cell_source(text)
    out = []
    skipping = False
    for line in text.split("\n"):
        h = _HEADER.match(line)
        if h:
            index = h["index"]
            name = (names.get(int(h["pid"])) or f"worker {index}") if index.isdigit() else index
            pre = "RemoteTraceback: " if line.startswith(("RemoteTraceback", "scoop")) else ""
            out.append(f"{pre}[{name} on {h['host']}, pid {h['pid']}, task {h['task']}]")
            continue
        m = _FRAME.match(line)
        if m:
            skipping = bool(_REMOTE_INTERNAL.search(m["file"]))
            if skipping:
                continue
            n = cells.get(m["file"])
            if n is not None:
                line = f"{m['indent']}Cell In[{n}], line {m['line']}, in {line[m.end():]}"
            out.append(line)
            continue
        if skipping and line.startswith("    "):
            continue  # the source lines of a skipped frame
        skipping = False
        out.append(line)
    return "\n".join(out)


# ---- interrupts -------------------------------------------------------------------------------
def interrupted_work(exc: BaseException) -> list:
    """The maps and futures a KeyboardInterrupt cut short, from the frames it passed through:
    ``[("map", progress dict) | ("task", name)]``."""
    from scoop._future import Future
    from scoop.futures import _MapIterator
    found, seen = [], set()
    tb = exc.__traceback__
    while tb is not None:
        try:
            obj = tb.tb_frame.f_locals.get("self")
        except Exception:
            obj = None
        if obj is not None and id(obj) not in seen:
            if isinstance(obj, _MapIterator):
                seen.add(id(obj))
                found.append(("map", getattr(obj, "closed_at", None) or obj.progress()))
            elif isinstance(obj, Future):
                seen.add(id(obj))
                found.append(("task", getattr(obj, "_name", None) or getattr(obj, "name", "task")))
        tb = tb.tb_next
    return found


def describe_map(p: dict) -> str:
    done = int(p.get("done", 0))
    total = p.get("total")
    if total is None:
        dropped = max(0, int(p.get("submitted", 0)) - done)
        return f"map {p.get('name')} interrupted: {done} done, {dropped} submitted dropped"
    return f"map {p.get('name')} interrupted: {done} of {total} done, {max(0, total - done)} dropped"


def interrupt_message(exc: BaseException) -> str | None:
    work = interrupted_work(exc)
    if not work:
        return None
    kind, what = work[0]
    return describe_map(what) if kind == "map" else f"task {what} interrupted (its result was dropped)"


# ---- the exception as shown -------------------------------------------------------------------
def clean(exc: BaseException) -> BaseException:
    """The exception to show for ``exc``: internal frames and causes gone, remote tracebacks
    tidied, an interrupted map's KeyboardInterrupt made explicit.  Changes ``exc`` in place
    (and may return a new KeyboardInterrupt in its place)."""
    if isinstance(exc, KeyboardInterrupt):
        msg = interrupt_message(exc)
        tb = prune(exc.__traceback__)
        if msg is not None:
            new = KeyboardInterrupt(msg)
            new.__suppress_context__ = True
            return new.with_traceback(tb)
        return exc.with_traceback(tb)
    seen = set()
    cur = exc
    first = True
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if type(cur).__name__ == "RemoteTraceback" and isinstance(getattr(cur, "tb", None), str):
            cur.tb = tidy_remote(cur.tb)
            cur.args = (cur.tb,)
            break
        if cur.__traceback__ is not None:
            cur.__traceback__ = prune(cur.__traceback__, keep_first=first)
        for attr in ("__cause__", "__context__"):
            nxt = getattr(cur, attr)
            remote = type(nxt).__name__ == "RemoteTraceback"
            if nxt is not None and not remote and _all_internal(nxt.__traceback__):
                setattr(cur, attr, None)
        if cur.__cause__ is None and cur.__context__ is None:
            cur.__suppress_context__ = True
        cur = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)
        first = False
    return exc


def _verbose(shell) -> bool:
    return getattr(getattr(shell, "InteractiveTB", None), "mode", "") == "Verbose"


def install(shell):
    """Hooks IPython's custom exception handler (its documented hook for this), unless the
    user already set one.  Every exception still goes through IPython's own ``showtraceback``."""
    if getattr(shell, "custom_exceptions", ()) not in ((), None):
        return False

    def handler(self, etype, value, tb, tb_offset=None):
        shown = value
        if not _verbose(self):
            try:
                value.__traceback__ = tb
                shown = clean(value)
                tb = shown.__traceback__
                etype = type(shown)
            except Exception:
                shown = value
        self.showtraceback((etype, shown, tb), tb_offset=tb_offset, running_compiled_code=True)

    shell.set_custom_exc((Exception, KeyboardInterrupt), handler)
    shell._scoop_jupyter_tb = shell.CustomTB
    return True


def uninstall(shell):
    if getattr(shell, "_scoop_jupyter_tb", None) is not None and shell.CustomTB is shell._scoop_jupyter_tb:
        shell.set_custom_exc((), None)
    shell._scoop_jupyter_tb = None
