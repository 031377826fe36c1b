"""Remote tracebacks name the user's files, lines and source, whatever cloudpickle does to the
file names of code it ships by value (3.1.3 renames them all to "<dynamic-code>")."""
from __future__ import annotations

import linecache
import re
import types

import cloudpickle

from scoop import _codemap

from conftest import run_scoop

CELL = "/nonexistent/ipykernel_1/cell7.py"  # what a worker cannot read, as a notebook cell
SOURCE = ("def helper(x):\n    y = x - 3\n    return 1 / y\n"
          "def task(x):\n    f = lambda v: helper(v)\n    return f(x)\n")


def _shipped():
    """``task`` as defined by the origin, and as a worker gets it (a by-value round trip)."""
    mod = types.ModuleType("__cellmod__")  # not importable: cloudpickle ships it by value
    exec(compile(SOURCE, CELL, "exec"), mod.__dict__)
    linecache.cache[CELL] = (len(SOURCE), None, SOURCE.splitlines(True), CELL)  # as IPython does
    return mod.task, cloudpickle.loads(cloudpickle.dumps(mod.task))


def _remote_text(fn, x):
    try:
        fn(x)
    except ZeroDivisionError as exc:
        return _codemap.format_exception(exc, exc.__traceback__)
    raise AssertionError("no error")


def test_frames_without_source_carry_their_codes_key_and_come_back_with_file_and_source():
    task, remote = _shipped()
    _codemap.remember(task)
    text = _remote_text(remote, 3)
    tagged = re.findall(r'File "[^"]*#k[0-9a-f]{12}", line (\d+), in (\S+)', text)
    assert tagged == [("6", "task"), ("5", "<lambda>"), ("3", "helper")], text
    back = _codemap.restore(text)
    assert "#k" not in back, back
    for line, name, src in (("6", "task", "return f(x)"), ("5", "<lambda>", "f = lambda v: helper(v)"),
                            ("3", "helper", "return 1 / y")):
        assert re.search(rf'File "{CELL}", line {line}, in {name}\n\s+{re.escape(src)}\n', back), back


def test_a_worker_keeps_the_tags_it_cannot_resolve_and_unknown_keys_lose_theirs():
    _task, remote = _shipped()
    text = _remote_text(remote, 3)
    other = re.sub(r"#k[0-9a-f]{12}", "#kffffffffffff", text)
    assert _codemap.restore(other, final=False) == other
    plain = _codemap.restore(other)
    assert "#k" not in plain and 'in helper' in plain, plain


def test_frames_with_source_on_the_worker_are_left_alone():
    try:
        int("x")
    except ValueError as exc:
        text = _codemap.format_exception(exc, exc.__traceback__)
    assert "#k" not in text and "int(\"x\")" in text and __file__ in text, text


def test_program_frames_name_file_line_and_source_in_nested_tasks(no_leak, tmp_path):
    prog = tmp_path / "nested_error.py"
    prog.write_text("from scoop import futures\n\n"
                    "def helper(x):\n    y = x - 3\n    return 1 / y\n\n"
                    "def inner(x):\n    f = lambda v: helper(v)\n    return f(x)\n\n"
                    "def outer(x):\n    return futures.submit(inner, x).result()\n\n"
                    "if __name__ == '__main__':\n    print(list(futures.map(outer, range(5))))\n")
    for extra in ([], ["--no-inline"]):
        r = run_scoop(["-n", "2", *extra, str(prog)], cwd=str(tmp_path))
        err = r.stderr
        assert r.returncode == 1 and "ZeroDivisionError" in err, err
        assert "<dynamic-code>" not in err and "#k" not in err, err
        for line, name, src in ((12, "outer", "return futures.submit(inner, x).result()"),
                                (9, "inner", "return f(x)"), (8, "<lambda>", "f = lambda v: helper(v)"),
                                (5, "helper", "return 1 / y")):
            assert re.search(rf'File "{re.escape(str(prog))}", line {line}, in {re.escape(name)}\n'
                             rf'\s+{re.escape(src)}\n', err), (extra, err)
