"""The example notebooks run top to bottom in a real kernel, with the outputs they promise."""
from __future__ import annotations

import os
import re
import time

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT, scoop_processes

NOTEBOOKS = os.path.join(ROOT, "notebooks")

pytestmark = pytest.mark.timeout(600)


def execute(name: str, env: dict | None = None, monkeypatch=None):
    """Runs a notebook in a fresh kernel; fails on any cell error or a cell over 180 s."""
    path = os.path.join(NOTEBOOKS, name)
    nb = nbformat.read(path, as_version=4)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    client = NotebookClient(nb, timeout=180, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": NOTEBOOKS}})
    client.execute()
    return nb


def text_of(nb) -> str:
    """Every text output of the notebook, in order.  A stream's text is kept as it came (one
    print may arrive in several outputs, its own newlines in them)."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out["text"])
            elif "data" in out and "text/plain" in out["data"]:
                parts.append("\n" + out["data"]["text/plain"] + "\n")
        parts.append("\n")
    return "".join(parts)


@pytest.fixture
def leak_check():
    """No broker or worker of the notebook's (they run in the notebook folder) outlives it;
    other jobs on this machine may run clusters of their own meanwhile."""
    before = {p.pid for p in scoop_processes()}
    yield
    deadline = time.monotonic() + 8
    while True:
        left = [p for p in scoop_processes() if p.pid not in before and _in_notebook_dir(p)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not left, left


def _in_notebook_dir(p) -> bool:
    try:
        return p.cwd() == NOTEBOOKS
    except Exception:
        return False


def test_quickstart(monkeypatch, leak_check):
    nb = execute("quickstart.ipynb", monkeypatch=monkeypatch)
    text = text_of(nb)
    assert re.search(r"SCOOP cluster started in [\d.]+ s: 2 workers", text), text
    assert "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in text
    assert "144" in text  # fib(12)
    assert "['Hello, Ada!', 'Hello, Alan!', 'Hello, Grace!']" in text
    assert "([144], 144)" in text
    assert "SCOOP cluster stopped" in text
    assert re.search(r"^--- w\d+ ", text, re.M) and "working on" in text, text  # %scoop_cluster logs
    htmls = [o["data"]["text/html"] for c in nb.cells for o in c.get("outputs", [])
             if "text/html" in o.get("data", {})]
    assert any("scoop-timeline" in h for h in htmls) and any("scoop-status" in h for h in htmls), htmls
    # the dashboard was live until the cluster stopped; its last state stays, as a static record
    assert any('class="scoop-dashboard" data-state="stale"' in h for h in htmls), htmls
    views = [o for c in nb.cells for o in c.get("outputs", [])
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert not views, views


def test_monte_carlo_pi(monkeypatch, leak_check):
    text = text_of(execute("monte_carlo_pi.ipynb", monkeypatch=monkeypatch))
    estimates = [float(x) for x in re.findall(r"pi is about (\d\.\d+)", text)]
    assert len(estimates) == 2, text
    for pi in estimates:
        assert abs(pi - 3.14159) < 0.01, pi
    assert estimates[0] == estimates[1]  # same seeds, same points


def test_nested_recursion(monkeypatch, leak_check):
    text = text_of(execute("nested_recursion.ipynb", monkeypatch=monkeypatch))
    assert "sorted correctly: True" in text
    assert "nodes in the tree: 121 expected: 121" in text
    assert "fib(22) = 17711" in text


def _netns_reason():
    try:
        from netns import skip_reason
    except ImportError:
        return "tests/netns.py is not available"
    return skip_reason()


def test_remote_hosts_localhost_fallback(monkeypatch, leak_check):
    monkeypatch.delenv("SCOOP_NOTEBOOK_HOSTS", raising=False)
    monkeypatch.delenv("SCOOP_NOTEBOOK_OPTIONS", raising=False)
    text = text_of(execute("remote_hosts.ipynb", monkeypatch=monkeypatch))
    assert "hosts: localhost localhost" in text
    assert re.search(r"started in [\d.]+ s: 2 workers", text), text
    m = re.search(r"tasks per host: (\{.*\})", text)
    assert m and sum(eval(m.group(1)).values()) == 200, text
    assert re.search(r"\[w\d+\] task 3 runs in process \d+", text), text


@pytest.mark.skipif(_netns_reason() is not None, reason=str(_netns_reason()))
def test_remote_hosts_over_ssh(monkeypatch, leak_check):
    """Against two real sshd hosts in network namespaces (tests/netns.py)."""
    from netns import NetnsCluster
    with NetnsCluster(2) as hosts:
        text = text_of(execute("remote_hosts.ipynb", monkeypatch=monkeypatch, env={
            "HOME": hosts.home,  # its ~/.ssh/config names h1 and h2
            "SCOOP_NOTEBOOK_HOSTS": "h1 h2",
            "SCOOP_NOTEBOOK_OPTIONS": f"--pythonpath {ROOT}",
        }))
        assert "hosts: h1 h2" in text
        assert re.search(r"started in [\d.]+ s: 2 workers \(h1: 1, h2: 1\)", text), text
        m = re.search(r"tasks per host: (\{.*\})", text)
        per_host = eval(m.group(1))
        assert set(per_host) <= {"h1", "h2"} and sum(per_host.values()) == 200, text
        assert re.search(r"\[w\d+\] task \d runs in process \d+", text), text  # one name per worker


STORY = [
    "%load_ext scoop_jupyter\n%scoop_cluster start -n 2",
    "%scoop_cluster dashboard",
    "import time\nfrom scoop import futures\n\ndef nap(x):\n    time.sleep(0.1)\n    return x\n\n"
    "total = sum(futures.map(nap, range(30)))\nprint('total', total)",
    "%scoop_cluster status",
    "%scoop_cluster stop",
]
BROKEN = ("model not found", "Error displaying widget", "HBox(children=", "VBox(children=", "IntProgress(")


def test_a_saved_notebook_keeps_its_story(tmp_path, monkeypatch, leak_check):
    """Executed, saved, reopened without a kernel and rendered by nbconvert (HTML and text):
    the map's final bar and summary, the dashboard's last state and the status card are there,
    and nothing says a widget model is missing."""
    from nbconvert import HTMLExporter, MarkdownExporter
    from traitlets.config import Config
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in STORY])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    path = tmp_path / "story.ipynb"
    nbformat.write(nb, str(path))
    saved = nbformat.read(str(path), as_version=4)
    outputs = [o for c in saved.cells for o in c.get("outputs", [])]
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert not widgets, widgets
    html, _ = HTMLExporter().from_notebook_node(saved)
    # as text: what a reader without HTML sees (text/plain preferred to every other kind)
    plain = Config({"NbConvertBase": {"display_data_priority": ["text/plain", "text/html"]}})
    text, _ = MarkdownExporter(config=plain).from_notebook_node(saved)
    raw = path.read_text()
    for rendering in (html, text, raw):
        for bad in BROKEN:
            assert bad not in rendering, (bad, rendering[:2000])
    for rendering in (html, text):
        assert re.search(r"nap: 30 done in [\d.]+ s \([\d.]+/s\)", rendering), rendering[-3000:]
        assert "SCOOP dashboard as of" in rendering or 'class="scoop-dashboard"' in rendering
        assert "2 workers" in rendering and "30 done" in rendering, path
    assert 'class="scoop-progress"' in html and 'class="scoop-dashboard" data-state="stale"' in html
    assert "SCOOP dashboard as of" in text and "stopped at" in text  # the status card says it is past
