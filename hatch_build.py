"""Build hook: the JupyterLab side panel is built when Node.js is here, and optional otherwise.

Everything but the side panel is pure Python, so a machine with Python alone can install the
package; the panel's prebuilt files (``scoop_jupyter/labextension``) ship in the wheel only when
they exist.  ``npm ci`` installs exactly the lock file's versions and never rewrites it, so a
build leaves the checkout as it found it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = "labextension"
OUTPUT = "scoop_jupyter/labextension"
INSTALLED = "share/jupyter/labextensions/scoop-jupyter"
HOW_TO_GET_IT = ("scoop-jupyter: JupyterLab side panel not built (no Node.js >= 20 with npm on PATH); "
                 "everything else works. To get it: install Node.js, then `pip install -e .` again.")


def _newest(path: str, skip=("node_modules", "lib")) -> float:
    newest = 0.0
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d not in skip]
        for f in files:
            newest = max(newest, os.path.getmtime(os.path.join(root, f)))
    return newest


def _run(cmd: list[str], cwd: str) -> None:
    print("scoop-jupyter:", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, cwd=cwd, check=True)


class LabExtensionHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version, build_data):
        if self.target_name != "wheel":
            return
        root = self.root
        src, out = os.path.join(root, SOURCE), os.path.join(root, OUTPUT)
        built = os.path.join(out, "package.json")
        stale = not os.path.exists(built) or _newest(src) > os.path.getmtime(built)
        npm = shutil.which("npm")
        if stale and npm and os.path.isdir(src) and not os.environ.get("SCOOP_SKIP_LABEXTENSION"):
            modules = os.path.join(src, "node_modules", ".package-lock.json")
            lock = os.path.join(src, "package-lock.json")
            if not os.path.exists(modules) or os.path.getmtime(lock) > os.path.getmtime(modules):
                _run([npm, "ci", "--no-audit", "--no-fund"], src)
            _run([npm, "run", "build:prod"], src)
        if not os.path.exists(built):
            print(HOW_TO_GET_IT, file=sys.stderr)
            return
        if self.target_name == "wheel":
            shared = build_data["shared_data"]
            shared[out] = INSTALLED
            shared[os.path.join(src, "install.json")] = f"{INSTALLED}/install.json"
