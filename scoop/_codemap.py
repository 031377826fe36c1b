"""Where code shipped by value came from, so remote tracebacks name the user's files and cells.

cloudpickle ships functions defined in ``__main__`` (a program run by ``python -m scoop``, a
notebook cell) by value, and from 3.1.3 on it renames their code objects' file to
``"<dynamic-code>"``; older releases kept the name, but a worker seldom has the file anyway (a
notebook cell's temporary file, another host).  So nothing here relies on the file name
surviving the trip:

- the submitter ``remember``s, for every callable it pickles, each code object reachable from
  it (nested functions, lambdas, closures, the ``__main__`` helpers it calls, methods of its
  classes) under a key computed from what pickling keeps (name, first line, bytecode);
- a worker formats a task's traceback with ``format_exception``: a frame whose source it cannot
  read carries its code's key, ``File "<dynamic-code>#k1a2b3c4d5e6f", line 3, in f``;
- the process that submitted the task (the origin: its map covers code reachable from what it
  shipped, so also the nested tasks its tasks submit) ``restore``s such frames to the original
  file, with the source line when it can read it.  Keys it does not know lose their tag.
"""
from __future__ import annotations

import functools
import hashlib
import linecache
import re
import sys
import traceback
import types
from collections import OrderedDict

_MAX_CODES = 20000      # remembered code objects (oldest forgotten first)
_MAX_WALK = 4000        # objects visited per callable: a closure over a big structure stays cheap
_MAX_CONTAINER = 256    # containers longer than this are not looked into
_TAG = re.compile(r'^(?P<pre>\s*File ")(?P<file>[^"#]*)#k(?P<key>[0-9a-f]{12})'
                  r'(?P<post>", line (?P<line>\d+), in .*)$')

_codes: OrderedDict = OrderedDict()  # key -> (filename, first line, qualified name)


def code_key(code: types.CodeType) -> str:
    """What identifies a code object on both sides of pickling (not its file name)."""
    h = hashlib.blake2b(digest_size=6)
    qual = getattr(code, "co_qualname", code.co_name)
    h.update(f"{qual}\0{code.co_name}\0{code.co_firstlineno}\0".encode("utf-8", "replace"))
    h.update(code.co_code)
    h.update(getattr(code, "co_linetable", b"") or b"")
    return h.hexdigest()


def _by_value(obj) -> bool:
    """Whether cloudpickle ships this function or class by value (not importable by name)."""
    try:
        from cloudpickle import cloudpickle as cp
        return not cp._should_pickle_by_reference(obj)
    except Exception:
        module = getattr(obj, "__module__", None)
        return module == "__main__" or module not in sys.modules


def _names(code: types.CodeType, out: set):
    out.update(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _names(c, out)


def remember(fn):
    """Records the code objects reachable from ``fn`` that pickling ships by value."""
    seen: set = set()
    stack = [fn]
    while stack and len(seen) < _MAX_WALK:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, types.CodeType):
            if obj.co_filename != "<dynamic-code>":  # arrived by value itself: its origin knows it
                key = code_key(obj)
                _codes[key] = (obj.co_filename, obj.co_firstlineno, getattr(obj, "co_qualname", obj.co_name))
                _codes.move_to_end(key)
            stack.extend(c for c in obj.co_consts if isinstance(c, types.CodeType))
        elif isinstance(obj, types.FunctionType):
            if not _by_value(obj):
                continue
            stack.append(obj.__code__)
            for cell in obj.__closure__ or ():
                try:
                    stack.append(cell.cell_contents)
                except ValueError:  # an empty cell
                    pass
            stack.extend(obj.__defaults__ or ())
            stack.extend((obj.__kwdefaults__ or {}).values())
            names: set = set()
            _names(obj.__code__, names)
            g = obj.__globals__
            stack.extend(g[n] for n in names if n in g)
        elif isinstance(obj, types.MethodType):
            stack += [obj.__func__, obj.__self__]
        elif isinstance(obj, functools.partial):
            stack.append(obj.func)
            stack.extend(obj.args)
            stack.extend((obj.keywords or {}).values())
        elif isinstance(obj, type):
            if _by_value(obj):
                stack.extend(vars(obj).values())
        elif isinstance(obj, (staticmethod, classmethod)):
            stack.append(obj.__func__)
        elif isinstance(obj, property):
            stack += [obj.fget, obj.fset, obj.fdel]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            if len(obj) <= _MAX_CONTAINER:
                stack.extend(obj)
        elif isinstance(obj, dict):
            if len(obj) <= _MAX_CONTAINER:
                stack.extend(obj.values())
        elif isinstance(obj, (types.ModuleType, str, bytes, int, float, complex, bool, type(None))):
            continue
        else:
            stack.append(type(obj))  # a callable instance: its class's methods
    while len(_codes) > _MAX_CODES:
        _codes.popitem(last=False)


# ---- on a worker ------------------------------------------------------------------------------
def _tag_stack(te: traceback.TracebackException, tb):
    frames = [f for f, _ in traceback.walk_tb(tb)]
    if len(frames) != len(te.stack):
        return
    for fs, frame in zip(te.stack, frames):
        if not linecache.getline(fs.filename, fs.lineno or 0):
            fs.filename = f"{fs.filename}#k{code_key(frame.f_code)}"


def format_exception(exc: BaseException, tb) -> str:
    """``traceback.format_exception`` with the key of each frame whose source is not here."""
    try:
        te = traceback.TracebackException(type(exc), exc, tb)
        cur_te, cur, seen = te, exc, set()
        first = True
        while cur_te is not None and cur is not None and id(cur) not in seen:
            seen.add(id(cur))
            _tag_stack(cur_te, tb if first else cur.__traceback__)
            first = False
            if cur_te.__cause__ is not None:
                cur_te, cur = cur_te.__cause__, cur.__cause__
            elif cur_te.__context__ is not None and not cur_te.__suppress_context__:
                cur_te, cur = cur_te.__context__, cur.__context__
            else:
                break
        return "".join(te.format())
    except Exception:
        return "".join(traceback.format_exception(type(exc), exc, tb))


# ---- where the task was submitted ---------------------------------------------------------------
def restore(text: str, final: bool = True) -> str:
    """``text`` (a remote traceback) with tagged frames back at their files, with the source
    line when it can be read here.  Not ``final`` (a worker, whose traceback goes on to the
    origin): a frame whose source is not readable here keeps its tag for the origin."""
    if "#k" not in text:
        return text
    out = []
    for line in text.split("\n"):
        m = _TAG.match(line)
        if not m:
            out.append(line)
            continue
        where = _codes.get(m["key"])
        filename = where[0] if where is not None else m["file"]
        src = linecache.getline(filename, int(m["line"])).strip() if where is not None else ""
        if not src and not final:
            out.append(line)
            continue
        out.append(f"{m['pre']}{filename}{m['post']}")
        if src:
            out.append(f"{m['pre'][:-6]}  {src}")
    return "\n".join(out)


def restore_exception(exc: BaseException, final: bool = True) -> BaseException:
    """Restores the remote traceback an exception from a task carries (its ``__cause__``)."""
    cause = getattr(exc, "__cause__", None)
    tb = getattr(cause, "tb", None)
    if type(cause).__name__ == "RemoteTraceback" and isinstance(tb, str) and "#k" in tb:
        cause.tb = restore(tb, final)
        cause.args = (cause.tb,)
    return exc
