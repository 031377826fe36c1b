"""Worker tracebacks that read like local ones: with the notebook cell's source lines.

A task's exception re-raises in the kernel with a ``RemoteTraceback`` cause carrying the
worker's formatted traceback.  Functions defined in cells travel by value, so the worker knows
their file name and line numbers but not the cell's text, and its traceback shows no source
for them.  The kernel does have that text (IPython keeps every cell in ``linecache``), so
before IPython shows such an exception the missing cell lines are filled in here.
"""
from __future__ import annotations

import linecache
import re

_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in ')


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
            indent = line[:len(line) - len(line.lstrip())]
            out.append(f"{indent}  {src}")
    return "\n".join(out)


def enrich(exc: BaseException) -> None:
    """Adds cell source to every remote traceback in ``exc``'s chain (in place)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        cause = exc.__cause__
        if type(cause).__name__ == "RemoteTraceback" and isinstance(getattr(cause, "tb", None), str):
            cause.tb = with_cell_source(cause.tb)
            cause.args = (cause.tb,)
        exc = cause or exc.__context__


def install(shell):
    """Hooks IPython's custom exception handler (its documented hook for this), unless the
    user already set one.  Every exception still goes through IPython's own ``showtraceback``."""
    if getattr(shell, "custom_exceptions", ()) not in ((), None):
        return False

    def handler(self, etype, value, tb, tb_offset=None):
        try:
            enrich(value)
        except Exception:
            pass
        self.showtraceback((etype, value, tb), tb_offset=tb_offset, running_compiled_code=True)

    shell.set_custom_exc((Exception,), handler)
    shell._scoop_jupyter_tb = shell.CustomTB
    return True


def uninstall(shell):
    if getattr(shell, "_scoop_jupyter_tb", None) is not None and shell.CustomTB is shell._scoop_jupyter_tb:
        shell.set_custom_exc((), None)
    shell._scoop_jupyter_tb = None
