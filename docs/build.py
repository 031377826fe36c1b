"""Builds the documentation into the JupyterLab extension's static files (see docs/README.md).

Warnings are errors.  The HTML goes to ``scoop_jupyter/labextension/static/docs`` (shipped by
the wheel with the extension, served offline by the Jupyter server) and, when the extension is
installed from this checkout, into the installed copy too.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "scoop_jupyter", "labextension", "static", "docs")


def installed_copies() -> list[str]:
    """``static/docs`` of every installed copy of this extension."""
    try:
        from jupyter_core.paths import jupyter_path
    except ImportError:
        return []
    out = []
    for base in jupyter_path("labextensions"):
        ext = os.path.join(base, "scoop-jupyter", "static")
        if os.path.isdir(ext) and os.path.realpath(ext) != os.path.realpath(os.path.dirname(OUT)):
            out.append(os.path.join(ext, "docs"))
    return out


def main() -> int:
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
           os.path.join(ROOT, "docs"), OUT]
    code = subprocess.call(cmd)
    if code != 0:
        print(f"docs: sphinx failed (exit {code})", file=sys.stderr)
        return code
    for dest in installed_copies():
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(OUT, dest, ignore=shutil.ignore_patterns(".doctrees"))
    print(f"docs: built into {os.path.relpath(OUT, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
