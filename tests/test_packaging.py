"""Installing from a clone: Python alone is enough, and a build never rewrites tracked files."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT

PANEL = "share/jupyter/labextensions/scoop-jupyter/package.json"


def _clone(tmp_path) -> str:
    """A fresh clone of the checkout with the working tree's own changes, as a user gets it."""
    dest = str(tmp_path / "clone")
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", ROOT, dest], check=True)
    changed = subprocess.run(["git", "-C", ROOT, "ls-files", "-m", "-o", "--exclude-standard"],
                             capture_output=True, text=True, check=True).stdout.split()
    for rel in changed:
        if os.path.isfile(os.path.join(ROOT, rel)):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, rel), os.path.join(dest, rel))
    subprocess.run(["git", "-C", dest, "add", "-A"], check=True)
    subprocess.run(["git", "-C", dest, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "wip",
                    "--allow-empty"], check=True)
    return dest


def _wheel(src: str, out: str, path: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=path)
    env.pop("SCOOP_SKIP_LABEXTENSION", None)
    return subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
                           "-w", out, src], env=env, capture_output=True, text=True, timeout=600)


def _names(out: str) -> list[str]:
    (whl,) = [f for f in os.listdir(out) if f.endswith(".whl")]
    with zipfile.ZipFile(os.path.join(out, whl)) as z:
        return z.namelist()


def test_a_machine_without_node_installs_everything_but_the_panel(tmp_path):
    pytest.importorskip("hatchling")
    src = _clone(tmp_path)
    bare = tmp_path / "bin"          # a PATH with Python and nothing else: no node, no npm
    bare.mkdir()
    os.symlink(sys.executable, bare / "python")
    r = _wheel(src, str(tmp_path / "dist"), str(bare))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    names = _names(str(tmp_path / "dist"))
    assert "scoop/futures.py" in names and "scoop_jupyter/magics.py" in names
    assert not any(n.endswith(PANEL) for n in names)
    out = r.stdout + r.stderr
    assert out.count("JupyterLab side panel not built") == 1, out[-2000:]


@pytest.mark.skipif(shutil.which("npm") is None, reason="needs Node.js with npm")
def test_building_the_panel_changes_no_tracked_file(tmp_path):
    pytest.importorskip("hatchling")
    src = _clone(tmp_path)
    r = _wheel(src, str(tmp_path / "dist"), os.environ["PATH"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert any(n.endswith(PANEL) for n in _names(str(tmp_path / "dist")))
    status = subprocess.run(["git", "-C", src, "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, check=True).stdout
    assert status == "", status
