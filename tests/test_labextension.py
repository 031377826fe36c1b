"""Real-browser test of the JupyterLab extension in labextension/.

Starts a private JupyterLab server, drives headless Chromium with Playwright,
runs a SCOOP cluster from notebook cells and checks the SCOOP sidebar panel and
status-bar item, then makes sure the server leaves no process behind.

Needs the prebuilt extension installed (``pip install -e .`` builds it) and
Debian's ``/usr/bin/chromium`` (Playwright's own browser downloads are not used).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")
psutil = pytest.importorskip("psutil")
expect = sync_api.expect

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PANEL = "#scoop-cluster-panel"
STATUS_ITEM = "#scoop-status-item"
# Lumino hides inactive dock tabs with lm-mod-hidden: target the visible notebook.
ACTIVE_NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"


# The npm build of this checkout (labextension/package.json's outputDir).
CHECKOUT_BUILD = ROOT / "scoop_jupyter" / "labextension"


def labextension_installed() -> bool:
    from jupyter_core.paths import jupyter_path

    return CHECKOUT_BUILD.joinpath("package.json").is_file() or any(
        Path(p, "scoop-jupyter", "package.json").is_file() for p in jupyter_path("labextensions")
    )


def checkout_jupyter_path(tmp: Path, docs: Path | None = None) -> str | None:
    """A JUPYTER_PATH entry whose labextensions/scoop-jupyter is this checkout's build, so the
    server serves the extension under test even where another checkout is installed
    (an editable install elsewhere, a shared machine); None when the checkout has no build
    (CI with a normal pip install then serves the installed one).  ``docs``: a built HTML
    documentation to serve as the extension's static/docs instead of the build's own."""
    if not CHECKOUT_BUILD.joinpath("package.json").is_file():
        return None
    base = tmp / "jupyter-path"
    (base / "labextensions").mkdir(parents=True, exist_ok=True)
    link = base / "labextensions" / "scoop-jupyter"
    if link.exists():
        return str(base)
    if docs is None:
        link.symlink_to(CHECKOUT_BUILD, target_is_directory=True)
        return str(base)
    # copies: the server serves no file whose real path is outside the extension's directory
    shutil.copytree(CHECKOUT_BUILD, link, ignore=lambda d, names: ["docs"] if d.endswith("static") else [])
    shutil.copytree(docs, link / "static" / "docs")
    return str(base)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """A throwaway ``jupyter lab`` with its own runtime/config/settings dirs."""

    def __init__(self, tmp: Path, python: str = sys.executable, docs: Path | None = None):
        self.root = tmp / "notebooks"
        self.root.mkdir(parents=True)
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        settings = tmp / "lab-settings"
        # No news/update toasts over the UI, and no request to the internet.
        notif = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
        notif.parent.mkdir(parents=True)
        notif.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        self.runtime_dir = tmp / "runtime"
        env = dict(
            os.environ,
            JUPYTER_RUNTIME_DIR=str(self.runtime_dir),
            JUPYTER_CONFIG_DIR=str(tmp / "config"),
            JUPYTERLAB_SETTINGS_DIR=str(settings),
            JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
            PYTHONUNBUFFERED="1",
            # kernels run this checkout's scoop and scoop_jupyter
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        )
        jpath = checkout_jupyter_path(tmp, docs)
        if jpath:
            env["JUPYTER_PATH"] = os.pathsep.join(filter(None, [jpath, os.environ.get("JUPYTER_PATH")]))
        self.log_path = tmp / "jupyter-lab.log"
        self._log = open(self.log_path, "wb")
        cmd = [
            python, "-m", "jupyterlab", "--no-browser",
            f"--port={self.port}", "--ip=127.0.0.1", "--port-retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--LabApp.news_url=",
        ]  # fmt: skip
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")  # CI containers run as root
        self.proc = subprocess.Popen(
            cmd, cwd=self.root, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited early:\n{self.log()}")
            try:
                self.api("GET", "/api/status")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        raise TimeoutError(f"jupyter lab did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def url(self, path: str) -> str:
        return f"{self.base}{path}?token={self.token}"

    def api(self, method: str, path: str, body: object = None):
        req = urllib.request.Request(
            self.base + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            data = resp.read()
        return json.loads(data) if data else None

    def new_notebook(self, name: str, kernel: str = "python3") -> str:
        nb = {
            "type": "notebook",
            "format": "json",
            "content": {
                "cells": [],
                "metadata": {
                    "kernelspec": {"name": kernel, "display_name": kernel, "language": "python"}
                },
                "nbformat": 4,
                "nbformat_minor": 5,
            },
        }
        self.api("PUT", f"/api/contents/{name}", nb)
        return name

    def wait_kernel_idle(self, path: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for session in self.api("GET", "/api/sessions") or []:
                if session["path"] == path and session["kernel"]["execution_state"] == "idle":
                    return
            time.sleep(0.3)
        raise TimeoutError(f"kernel of {path} never became idle:\n{self.log()}")

    def descendants(self) -> list:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def shutdown_kernels(self) -> None:
        for session in self.api("GET", "/api/sessions") or []:
            self.api("DELETE", f"/api/sessions/{session['id']}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.api("POST", "/api/shutdown")
                self.proc.wait(timeout=30)
            except (urllib.error.URLError, ConnectionError, subprocess.TimeoutExpired):
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self._log.close()


def stop_lab_leaving_nothing(lab: LabServer, known: list) -> None:
    """Shuts the kernels and the server down; asserts that no process outlived them (killing
    any that did, so one failure does not leak into the next test)."""
    lab.shutdown_kernels()
    lab.stop()
    _, alive = psutil.wait_procs(known, timeout=20)
    leftovers = leftover_processes(alive, lab)
    for p in leftovers:
        with contextlib.suppress(psutil.Error):
            p.kill()
    assert not leftovers, f"processes left behind: {[p.pid for p in leftovers]}"


def leftover_processes(known: list, lab: LabServer) -> list:
    """Processes that outlived the server: known descendants, plus anything
    that inherited this server's private runtime dir or runs in its notebook
    dir (e.g. a detached SCOOP worker). Other sessions' processes don't match."""

    def running(p) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def ours(p) -> bool:
        try:
            cwd = p.cwd()
            if cwd == str(lab.root) or cwd.startswith(str(lab.root) + os.sep):
                return True
            return p.environ().get("JUPYTER_RUNTIME_DIR") == str(lab.runtime_dir)
        except psutil.Error:
            return False

    alive = {p.pid: p for p in known if running(p)}
    for p in psutil.process_iter():
        if p.pid != os.getpid() and running(p) and ours(p):
            alive[p.pid] = p
    return list(alive.values())


def open_notebook(page, server: LabServer, name: str) -> None:
    page.goto(server.url(f"/lab/tree/{name}"))
    expect(page.locator(f"{ACTIVE_NOTEBOOK} .jp-Cell .cm-content").first).to_be_visible(
        timeout=60_000
    )
    server.wait_kernel_idle(name)


def run_cell(page, code: str, timeout: float = 120) -> str:
    """Type code into the last (empty) cell, run it, wait, return its output text."""
    cell = start_cell(page, code)
    expect(cell.locator(".jp-InputPrompt")).to_have_text(
        re.compile(r"\[\d+\]"), timeout=timeout * 1000
    )
    errors = cell.locator("[data-mime-type='application/vnd.jupyter.error']")
    if errors.count():
        pytest.fail(f"cell {code!r} raised:\n{errors.first.inner_text()}")
    return cell.locator(".jp-OutputArea").inner_text()


def open_scoop_panel(page) -> None:
    tab = page.locator(f".jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id='{PANEL[1:]}']")
    expect(tab).to_have_count(1, timeout=30_000)
    if "lm-mod-current" not in (tab.get_attribute("class") or ""):
        tab.click()
    expect(page.locator(PANEL)).to_be_visible()


@pytest.fixture
def lab(tmp_path):
    if not labextension_installed():
        pytest.fail("scoop-jupyter labextension is not installed: run `pip install -e .`")
    server = LabServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def lab_single_shell(tmp_path, monkeypatch):
    """A lab that also offers the kernel without subshells of test_notebook_without_subshells
    (a real ipykernel 6 with SCOOP_TEST_IPYKERNEL6_PYTHON)."""
    from test_notebook_without_subshells import IPYKERNEL6, single_shell_kernelspec

    if not labextension_installed():
        pytest.fail("scoop-jupyter labextension is not installed: run `pip install -e .`")
    single_shell_kernelspec(tmp_path / "single-shell", IPYKERNEL6)
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(
        filter(None, [str(tmp_path / "single-shell"), os.environ.get("JUPYTER_PATH")])))
    server = LabServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def page(tmp_path):
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            yield ctx.pages[0] if ctx.pages else ctx.new_page()
        finally:
            ctx.close()


def test_scoop_panel_follows_cluster(lab, page):
    open_notebook(page, lab, lab.new_notebook("scoop-test.ipynb"))
    open_scoop_panel(page)
    # Before %load_ext the comm target does not exist in the kernel.
    expect(page.locator(PANEL)).to_contain_text("%load_ext scoop_jupyter", timeout=30_000)

    out = run_cell(page, "%load_ext scoop_jupyter")
    assert "not an IPython extension" not in out, out
    # The panel retries the comm after each executed cell: it must come alive.
    expect(
        page.locator(f"{PANEL} .scoop-state"), "panel did not connect after %load_ext"
    ).to_have_text(re.compile("stopped|running"), timeout=30_000)
    out = run_cell(page, "%scoop_cluster start -n 2")
    assert "UsageError" not in out, out
    out = run_cell(
        page,
        "from scoop import futures\n"
        "squares = list(futures.map(lambda x: x * x, range(2000)))\n"
        "print(len(squares), sum(squares))",
    )
    assert f"2000 {sum(x * x for x in range(2000))}" in out

    rows = page.locator(f"{PANEL} .scoop-worker-row")
    expect(rows).to_have_count(2, timeout=30_000)
    expect(page.locator(f"{PANEL} .scoop-load-bar")).to_have_count(2)
    expect(page.locator(f"{PANEL} .scoop-state")).to_have_text("running")
    expect(page.locator(STATUS_ITEM)).to_contain_text("2 workers")
    known = lab.descendants()  # kernel + cluster processes, for the leak check
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "labextension-panel.png"))

    out = run_cell(page, "%scoop_cluster stop")
    assert "UsageError" not in out, out
    expect(page.locator(f"{PANEL} .scoop-state")).to_have_text("stopped", timeout=30_000)
    expect(rows).to_have_count(0)
    expect(page.locator(STATUS_ITEM)).to_have_text("SCOOP: stopped")

    known += lab.descendants()
    lab.shutdown_kernels()
    lab.stop()
    _, alive = psutil.wait_procs(known, timeout=20)
    leftovers = leftover_processes(alive, lab)
    described = []
    for p in leftovers:
        with contextlib.suppress(psutil.Error):
            described.append((p.pid, " ".join(p.cmdline())[:120]))
            p.kill()
    assert not leftovers, f"processes left behind: {described}"


def test_dashboard_widget_and_panel_buttons(lab, page):
    """The dashboard renders as plain ipywidgets in JupyterLab and keeps updating while another
    cell blocks in a map; the panel's Start and Stop buttons drive the kernel's cluster."""
    open_notebook(page, lab, lab.new_notebook("dashboard-test.ipynb"))
    open_scoop_panel(page)
    run_cell(page, "%load_ext scoop_jupyter")
    expect(page.locator(f"{PANEL} .scoop-state")).to_have_text("stopped", timeout=30_000)

    # Start from the panel, with n = 2
    n_input = page.locator(f"{PANEL} .scoop-n-input")
    n_input.fill("2")
    page.locator("#scoop-start-button").click()
    expect(page.locator(f"{PANEL} .scoop-state")).to_have_text("running", timeout=60_000)
    expect(page.locator(f"{PANEL} .scoop-worker-row")).to_have_count(2, timeout=30_000)

    run_cell(page, "%scoop_cluster dashboard")
    dash = page.locator(".scoop-dashboard").first
    expect(dash).to_be_visible(timeout=30_000)
    expect(dash.locator("tr.scoop-worker")).to_have_count(2, timeout=30_000)

    # a map that blocks its cell for a few seconds: the dashboard above shows busy workers
    nb = page.locator(ACTIVE_NOTEBOOK)
    cells = nb.locator(".jp-Notebook .jp-Cell")
    cell = cells.nth(cells.count() - 1)
    cell.locator(".cm-content").click()
    page.keyboard.insert_text("import time\nfrom scoop import futures\n"
                              "_ = list(futures.map(time.sleep, [0.25] * 40))")
    page.keyboard.press("Shift+Enter")
    expect(dash.locator("tr.scoop-worker[data-state='busy']").first).to_be_visible(timeout=30_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-widget.png"))
    expect(cell.locator(".jp-InputPrompt")).to_have_text(re.compile(r"\[\d+\]"), timeout=120_000)

    known = lab.descendants()
    page.locator("#scoop-stop-button").click()
    expect(page.locator(f"{PANEL} .scoop-state")).to_have_text("stopped", timeout=30_000)
    expect(dash).to_contain_text("stopped", timeout=30_000)

    stop_lab_leaving_nothing(lab, known)


def start_cell(page, code: str):
    """Types code into the last cell and runs it without waiting; returns the cell."""
    nb = page.locator(ACTIVE_NOTEBOOK)
    cells = nb.locator(".jp-Notebook .jp-Cell")
    # Pin the index: Shift+Enter appends a new cell, so `.last` would move.
    cell = cells.nth(cells.count() - 1)
    cell.locator(".cm-content").click()
    # insert_text skips per-key editor behaviour (auto-brackets, auto-indent).
    page.keyboard.insert_text(code)
    page.keyboard.press("Shift+Enter")
    return cell


def menu(page, top: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=top).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def test_timeline_scaling_interrupt_and_stale_dashboard(lab, page):
    """What a user meets after start-up: the dashboard's task timeline while a map runs,
    scaling from the panel (workers under their one name), an interrupted map that says so
    in one line, and a dashboard whose kernel restarted marked stale."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.set_viewport_size({"width": 1400, "height": 1100})
    open_notebook(page, lab, lab.new_notebook("polish-test.ipynb"))
    open_scoop_panel(page)
    run_cell(page, "%load_ext scoop_jupyter")
    expect(page.locator(f"{PANEL} .scoop-state")).to_have_text("stopped", timeout=30_000)
    run_cell(page, "%scoop_cluster start -n 2")
    has_timeline = "True" in run_cell(page, "import scoop.origin\nprint(hasattr(scoop.origin, 'timeline'))")
    run_cell(page, "%scoop_cluster dashboard")
    dash = page.locator(".scoop-dashboard").first
    expect(dash.locator("tr.scoop-worker")).to_have_count(2, timeout=30_000)
    expect(dash.locator("tr.scoop-worker").first).to_contain_text(re.compile(r"w\d"))
    run_cell(page, "import time\nfrom scoop import futures\n"
                   "def nap(s):\n    time.sleep(s)\n    return s\n"
                   "_ = list(futures.map(lambda x: print('hello from task', x), range(4)))")

    # the dashboard mid-map: busy workers, throughput axes and (with the core's timeline) task bars
    cell = start_cell(page, "_ = list(futures.map(nap, [0.2] * 60))")
    expect(dash.locator("tr.scoop-worker[data-state='busy']").first).to_be_visible(timeout=30_000)
    expect(dash.locator("svg.scoop-throughput")).to_be_visible()
    expect(dash.locator(".scoop-logs")).to_contain_text("hello from task")
    timeline = page.locator(".scoop-dashboard-timeline").first
    if has_timeline:
        expect(timeline.locator("rect.scoop-task").nth(3)).to_be_attached(timeout=30_000)
    expect(cell.locator(".widget-label", has_text="ETA")).to_be_visible(timeout=30_000)
    if has_timeline:
        expect(timeline.locator("rect.scoop-task").nth(12)).to_be_attached(timeout=30_000)
    # the widgets' containers stay while their HTML (.scoop-dashboard, ...) is replaced on updates
    widget = page.locator(".widget-vbox:has(.scoop-dashboard)").first
    widget.evaluate("node => node.scrollIntoView({block: 'start'})")
    page.screenshot(path=str(ARTIFACTS / "dashboard-timeline.png"))
    widget.screenshot(path=str(ARTIFACTS / "dashboard-timeline-widget.png"))
    expect(cell.locator(".jp-InputPrompt")).to_have_text(re.compile(r"\[\d+\]"), timeout=120_000)
    # the finished bar stays as a static record (HTML, readable in a saved notebook) with its summary
    expect(cell.locator(".jp-OutputArea-output", has_text="done in").first).to_be_visible(timeout=30_000)

    # scaling from the panel: the number follows, rows carry names, memory in MiB
    n_input = page.locator(f"{PANEL} .scoop-n-input")
    expect(n_input).to_have_value("2")
    n_input.fill("3")
    page.locator("#scoop-scale-button").click()
    rows = page.locator(f"{PANEL} .scoop-worker-row")
    expect(rows).to_have_count(3, timeout=60_000)
    expect(page.locator(f"{PANEL} .scoop-worker-joining")).to_have_count(0, timeout=60_000)
    expect(page.locator(STATUS_ITEM)).to_contain_text("3 workers", timeout=30_000)
    expect(page.locator(f"{PANEL} .scoop-worker-name")).to_have_text(["w1", "w2", "w3"], timeout=30_000)
    expect(page.locator(f"{PANEL} .scoop-workers")).to_contain_text("MiB", timeout=30_000)
    expect(page.locator(f"{PANEL} .scoop-docs")).to_have_text("Documentation")
    expect(dash.locator("tr.scoop-worker")).to_have_count(3, timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "panel-after-scaling.png"))
    n_input.fill("2")
    page.locator("#scoop-scale-button").click()
    expect(rows).to_have_count(2, timeout=60_000)
    expect(page.locator(f"{PANEL} .scoop-worker-lost")).to_have_count(0)

    # the cluster object and the status as HTML cards
    run_cell(page, "import scoop_jupyter as _sj\n_sj.cluster()")
    expect(page.locator(".scoop-cluster-repr")).to_contain_text("SCOOP Cluster", timeout=30_000)
    run_cell(page, "%scoop_cluster status")
    expect(page.locator(".scoop-status tr.scoop-worker")).to_have_count(2, timeout=30_000)
    page.locator(".scoop-status").first.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "cluster-and-status-cards.png"))

    # an interrupted map: one short error, the bar labelled interrupted
    cell = start_cell(page, "_ = list(futures.map(nap, [0.5] * 200))")
    expect(cell.locator(".widget-label", has_text="nap:")).to_be_visible(timeout=30_000)
    time.sleep(1.0)
    menu(page, "Kernel", "Interrupt Kernel")
    error = cell.locator("[data-mime-type='application/vnd.jupyter.stderr']")
    said = re.compile(r"map nap interrupted: \d+ of 200 done, \d+ dropped")
    expect(error).to_contain_text(said, timeout=30_000)
    # the bar's static record says it was interrupted
    expect(cell.locator(".jp-OutputArea-output", has_text="nap: interrupted after").first).to_be_visible(
        timeout=30_000)
    text = error.inner_text()
    assert "site-packages" not in text and "scoop/" not in text and "zmq" not in text, text
    cell.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "interrupted-cell.png"))

    # the kernel restarts: the dashboard it fed says it is stale
    known = lab.descendants()
    menu(page, "Kernel", "Restart Kernel")
    page.locator(".jp-Dialog .jp-mod-accept").click()
    expect(page.locator(".scoop-dashboard.scoop-stale")).to_have_count(1, timeout=30_000)
    expect(page.locator(".scoop-dashboard .scoop-stale-note").first).to_contain_text("no longer updates")
    page.locator(".scoop-dashboard").first.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "stale-dashboard.png"))
    # the new kernel is up once the panel finds it without the extension
    expect(page.locator(f"{PANEL} .scoop-state")).to_have_text("not loaded", timeout=60_000)
    lab.wait_kernel_idle("polish-test.ipynb")

    known += lab.descendants()
    stop_lab_leaving_nothing(lab, known)


def test_panel_shows_batch_jobs_pending_in_the_queue(slurm_cluster, lab, page):
    """A batch-job cluster on the real SLURM test cluster: a held job's workers show in the panel
    as pending in the queue, apart from the running workers, and in the status bar as
    "(+N pending)"; released, they join; stop leaves no job in squeue."""
    ARTIFACTS.mkdir(exist_ok=True)
    open_notebook(page, lab, lab.new_notebook("slurm-test.ipynb"))
    open_scoop_panel(page)
    run_cell(page, "%load_ext scoop_jupyter")
    expect(page.locator(f"{PANEL} .scoop-state")).to_have_text("stopped", timeout=30_000)
    out = run_cell(page, "%scoop_cluster start --slurm -n 2 --cpus-per-job 2 --sbatch-arg=--hold")
    (job,) = slurm_cluster.jobs()
    assert f"1 sbatch job submitted for 2 workers (job {job['id']})" in out, out
    pending = page.locator(f"{PANEL} .scoop-pending")
    expect(pending).to_contain_text(f"2 workers pending in the queue (job {job['id']}: JobHeldUser)",
                                    timeout=30_000)
    expect(page.locator(f"{PANEL} .scoop-job-row.scoop-job-pending")).to_have_count(1)
    expect(page.locator(f"{PANEL} .scoop-worker-row")).to_have_count(0)
    expect(page.locator(STATUS_ITEM)).to_contain_text("SCOOP: 0 workers (+2 pending)")
    page.screenshot(path=str(ARTIFACTS / "panel-pending-job.png"))

    slurm_cluster.run(["scontrol", "release", job["id"]])
    rows = page.locator(f"{PANEL} .scoop-worker-row")
    expect(rows).to_have_count(2, timeout=90_000)
    expect(pending).to_have_count(0, timeout=30_000)
    expect(page.locator(STATUS_ITEM)).to_contain_text("SCOOP: 2 workers,", timeout=30_000)
    # scaling up submits another held job: running and pending side by side
    out = run_cell(page, "%scoop_cluster scale 4")
    assert "2 running, 2 workers pending in the queue" in out, out
    expect(pending).to_contain_text("2 workers pending in the queue", timeout=30_000)
    expect(page.locator(f"{PANEL} .scoop-job-row")).to_have_count(2)
    expect(page.locator(f"{PANEL} .scoop-job-row.scoop-job-running")).to_have_count(1)
    expect(rows).to_have_count(2)
    expect(page.locator(STATUS_ITEM)).to_contain_text("SCOOP: 2 workers (+2 pending)")
    expect(page.locator(f"{PANEL} .scoop-n-input")).to_have_value("4")
    page.screenshot(path=str(ARTIFACTS / "panel-running-and-pending.png"))
    page.locator(PANEL).screenshot(path=str(ARTIFACTS / "panel-running-and-pending-panel.png"))

    known = lab.descendants()
    run_cell(page, "%scoop_cluster stop")
    expect(page.locator(f"{PANEL} .scoop-state")).to_have_text("stopped", timeout=30_000)
    expect(page.locator(f"{PANEL} .scoop-jobs")).to_be_hidden()
    assert slurm_cluster.wait_no_jobs(15) == []
    stop_lab_leaving_nothing(lab, known)


def _status(states, pending=0, state="running"):
    return {"state": state, "workers": [{"state": s} for s in states], "totals": {"pending_workers": pending}}


def test_panel_request_is_done_when_the_status_shows_it():
    """A panel command stays pending ("scaling to 4 workers…") until a status shows its effect:
    the workers joined (or wait in a batch queue), the cluster running, or stopped."""
    from scoop_jupyter.comm import _done

    scale4 = {"action": "scale", "n": 4}
    assert not _done(scale4, _status(["busy", "joining", "joining", "joining"]))
    assert not _done(scale4, _status(["busy", "idle", "idle"]))
    assert _done(scale4, _status(["busy", "idle", "idle", "idle"]))
    assert _done(scale4, _status(["busy", "idle"], pending=2))  # two wait in the batch queue
    assert _done(scale4, _status(["busy"] * 4 + ["lost"]))
    assert not _done({"action": "scale", "n": 2}, _status(["busy", "idle", "idle"]))
    assert not _done({"action": "stop", "n": None}, _status(["idle"]))
    assert _done({"action": "stop", "n": None}, _status([], state="stopped"))
    assert not _done({"action": "start", "n": 2}, _status([], state="stopped"))
    assert _done({"action": "start", "n": 2}, _status(["joining", "joining"]))


def test_panel_request_expires_with_an_error(monkeypatch):
    import scoop_jupyter.comm as C

    req = C._Request()
    req.set("scale", 4, "scaling to 4 workers…")
    pending, error = req.check(_status(["busy"]))
    assert pending["text"] == "scaling to 4 workers…" and not error
    monkeypatch.setattr(C, "REQUEST_TIMEOUT", -1.0)
    pending, error = req.check(_status(["busy"]))
    assert pending is None and "scaling to 4 workers did not finish" in error
    assert req.check(_status(["busy"])) == (None, "")


def test_task_stream_sends_each_finished_task_once(monkeypatch):
    """The task stream sends what finished since its last message, each task once, in chunks,
    with workers and functions as indexes into lists that only grow."""
    import scoop_jupyter.comm as C

    recs = []
    monkeypatch.setattr(C.task_timeline, "records", lambda since=0.0: [r for r in recs if r["end"] >= since])

    def task(w, name, start, end, inputs=1, ok=True):
        return {"worker": w, "name": name, "start": start, "end": end, "inputs": inputs, "group": 3, "ok": ok}

    stream = C.TaskStream()
    (first,) = stream.take()
    assert first["reset"] and first["tasks"] == []
    recs += [task("w1", "f", 100.0, 101.0), task("w2", "g", 100.5, 101.5, inputs=50, ok=False)]
    (msg,) = stream.take()
    assert not msg["reset"] and msg["workers"] == ["w1", "w2"] and msg["names"] == ["f", "g"]
    assert msg["tasks"] == [[0, 0, 100.0, 1.0, 1, True, 3], [1, 1, 100.5, 1.0, 50, False, 3]]
    assert stream.take() == []  # nothing new
    recs.append(task("w1", "g", 101.0, 101.2))
    (msg,) = stream.take()
    assert msg["tasks"] == [[0, 1, 101.0, pytest.approx(0.2), 1, True, 3]]
    recs += [task("w3", "f", 200.0 + i * 1e-4, 200.0 + (i + 1) * 1e-4) for i in range(C.STREAM_CHUNK + 10)]
    msgs = stream.take()
    assert [len(m["tasks"]) for m in msgs] == [C.STREAM_CHUNK, 10]
    assert msgs[-1]["workers"] == ["w1", "w2", "w3"]


def test_comm_messages_follow_the_subshell_they_came_on():
    """ipykernel routes a comm's incoming messages to the subshell of the message it last
    published under; the panel's comm keeps each message on the subshell the frontend chose."""
    from scoop_jupyter.comm import _follow_frontend_subshell

    class Comm:
        def _reply_subshell_for(self, data, default):
            return None  # the main shell, where a running cell blocks everything

    comm = Comm()
    _follow_frontend_subshell(comm)
    assert comm._reply_subshell_for({"action": "scale"}, "subshell-1") == "subshell-1"


def record_texts(page, selectors: dict) -> None:
    """Records in the page every text the elements matching ``selectors`` (name -> CSS) show,
    with the time (ms, performance.now()), including states too short for a poll to see."""
    page.evaluate(
        """sels => {
            window.__scoopSeen = window.__scoopSeen || {};
            const look = () => {
                const now = performance.now();
                for (const [name, sel] of Object.entries(sels)) {
                    const seen = window.__scoopSeen[name] = window.__scoopSeen[name] || [];
                    const node = document.querySelector(sel);
                    const text = node && !node.hidden ? node.textContent : '';
                    if (!seen.length || seen[seen.length - 1][1] !== text) seen.push([now, text]);
                }
            };
            new MutationObserver(look).observe(document.body, {subtree: true, childList: true,
                                                               characterData: true, attributes: true});
            look();
        }""",
        selectors,
    )


def seen_texts(page, name: str) -> list:
    return page.evaluate("name => (window.__scoopSeen || {})[name] || []", name)


def click_at(page, selector: str) -> float:
    """Clicks in the page; returns performance.now() of the click."""
    return page.evaluate(
        "sel => { const t = performance.now(); document.querySelector(sel).click(); return t; }", selector
    )


def test_panel_scales_and_stops_while_a_map_runs(lab, page):
    """The panel's commands reach the kernel on a subshell: during a 40-task map of 1-s tasks on
    one worker, Scale to 4 shows "scaling to 4 workers…" and the workers join within about a
    second, so the map ends far sooner than 40 s.  During the next map the adapt switch grows
    the cluster to its maximum, and Stop stops the cluster at once (the map says it was
    interrupted)."""
    ARTIFACTS.mkdir(exist_ok=True)
    open_notebook(page, lab, lab.new_notebook("scale-mid-map.ipynb"))
    open_scoop_panel(page)
    run_cell(page, "%load_ext scoop_jupyter")
    expect(page.locator(f"{PANEL} .scoop-state")).to_have_text("stopped", timeout=30_000)
    run_cell(page, "%scoop_cluster start -n 1")
    expect(page.locator(f"{PANEL} .scoop-worker-row")).to_have_count(1, timeout=30_000)
    expect(page.locator(f"{PANEL} .scoop-n-input")).to_have_value("1", timeout=30_000)
    record_texts(page, {"request": f"{PANEL} .scoop-request", "status": STATUS_ITEM})

    cell = start_cell(page, "import time\nfrom scoop import futures\n"
                            "def nap(s):\n    time.sleep(s)\n    return s\n"
                            "t0 = time.time()\n_ = list(futures.map(nap, [1.0] * 40))\n"
                            "print(f'map took {time.time() - t0:.1f} s')")
    expect(cell.locator(".widget-label", has_text="nap:")).to_be_visible(timeout=30_000)
    time.sleep(1.5)  # the map runs on one worker
    expect(page.locator(f"{PANEL} .scoop-worker-busy")).to_have_count(1)
    page.locator(f"{PANEL} .scoop-n-input").fill("4")
    clicked = click_at(page, "#scoop-scale-button")
    page.screenshot(path=str(ARTIFACTS / "panel-scaling-mid-map.png"))
    expect(page.locator(STATUS_ITEM)).to_contain_text("SCOOP: 4 workers", timeout=10_000)
    expect(page.locator(f"{PANEL} .scoop-worker-busy")).to_have_count(4, timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "panel-scaled-mid-map.png"))
    requests = seen_texts(page, "request")
    status = seen_texts(page, "status")
    assert any("scaling to 4 workers" in text for _, text in requests), requests
    joined = next(t for t, text in status if "4 workers" in text and "scaling" not in text)
    pending = next(t for t, text in requests if "scaling to 4" in text)
    print(f"scale mid-map: pending shown after {pending - clicked:.0f} ms, "
          f"4 workers after {joined - clicked:.0f} ms")
    assert joined - clicked < 3000, status
    expect(cell.locator(".jp-InputPrompt")).to_have_text(re.compile(r"\[\d+\]"), timeout=60_000)
    took = float(re.search(r"map took ([\d.]+) s", cell.locator(".jp-OutputArea").inner_text()).group(1))
    print(f"40 x 1 s map with a scale from 1 to 4 workers after ~1.5 s: {took:.1f} s")
    assert took < 20, took  # on 1 worker it takes 40 s

    # mid-map, the adapt switch grows the cluster to its maximum within a few seconds (queued
    # work), and off it leaves the workers as they are; then Stop ends the cluster and the map
    cell = start_cell(page, "_ = list(futures.map(nap, [1.0] * 60))")
    expect(cell.locator(".widget-label", has_text="nap:")).to_be_visible(timeout=30_000)
    expect(page.locator(f"{PANEL} .scoop-worker-busy")).to_have_count(4, timeout=10_000)
    page.locator(f"{PANEL} .scoop-adapt-min").fill("1")
    page.locator(f"{PANEL} .scoop-adapt-max").fill("6")
    clicked = page.evaluate("""() => { const t = performance.now();
                                       document.querySelector('#scoop-adapt-switch').click(); return t; }""")
    expect(page.locator(f"{PANEL} .scoop-adapt.scoop-adapt-on")).to_have_count(1, timeout=10_000)
    expect(page.locator(STATUS_ITEM)).to_contain_text("SCOOP: 6 workers", timeout=15_000)
    grown = next(t for t, text in seen_texts(page, "status") if "6 workers" in text and t > clicked)
    print(f"adapt 1-6 switched on mid-map: 6 workers after {grown - clicked:.0f} ms")
    expect(page.locator(f"{PANEL} .scoop-worker-busy")).to_have_count(6, timeout=10_000)
    page.locator(PANEL).screenshot(path=str(ARTIFACTS / "panel-adapt-switch.png"))
    page.locator("#scoop-adapt-switch").uncheck()
    expect(page.locator(f"{PANEL} .scoop-adapt.scoop-adapt-on")).to_have_count(0, timeout=10_000)
    expect(page.locator("#scoop-adapt-switch")).not_to_be_checked()

    known = lab.descendants()
    clicked = click_at(page, "#scoop-stop-button")
    expect(page.locator(f"{PANEL} .scoop-state")).to_have_text("stopped", timeout=10_000)
    stopped = next(t for t, text in seen_texts(page, "status") if text == "SCOOP: stopped" and t > clicked)
    print(f"stop mid-map: stopped after {stopped - clicked:.0f} ms")
    error = cell.locator("[data-mime-type='application/vnd.jupyter.stderr']")
    expect(error).to_contain_text(re.compile(r"map nap interrupted"), timeout=30_000)
    expect(page.locator(f"{PANEL} .scoop-worker-row")).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "panel-stopped-mid-map.png"))
    known += lab.descendants()
    stop_lab_leaving_nothing(lab, known)


def console_errors(page) -> list:
    """Collects the page's console errors and uncaught exceptions from now on."""
    errors: list = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


# In the kernel: tasks as the origin's timeline would list them, 10,000 a second on 16 workers
# (what a flood of tiny tasks looks like), so the stream's path is measured at that rate.
FAKE_TIMELINE = """
import time
import scoop_jupyter.task_timeline as _tt
_fake = {"t": time.time(), "i": 0}
def _records(since=0.0, _s=_fake):
    now = time.time()
    k = int((now - _s["t"]) * 10000)
    out = []
    for j in range(k):
        i = _s["i"] + j
        end = _s["t"] + (j + 1) / 10000
        dur = 0.0016 * (1 + (i % 7) / 7)
        out.append({"worker": f"w{i % 16 + 1}", "name": "tiny" if i % 5 else "small", "start": end - dur,
                    "end": end, "inputs": 1, "group": 9, "ok": i % 997 != 0})
    _s["t"] += k / 10000
    _s["i"] += k
    return out[-5000:]
_tt.records = _records
"""


def test_live_task_stream(lab, page):
    """The task stream tab: a row per worker while a map runs, zoom with the wheel, a hover that
    names the task, its inputs and its duration; then 10,000 tasks a second for a few seconds,
    received and drawn as they come."""
    ARTIFACTS.mkdir(exist_ok=True)
    errors = console_errors(page)
    open_notebook(page, lab, lab.new_notebook("task-stream.ipynb"))
    open_scoop_panel(page)
    run_cell(page, "%load_ext scoop_jupyter")
    run_cell(page, "%scoop_cluster start -n 4")
    expect(page.locator(f"{PANEL} .scoop-worker-row")).to_have_count(4, timeout=30_000)
    page.locator("#scoop-stream-button").click()
    stream = page.locator(".scoop-task-stream")
    expect(stream).to_be_visible(timeout=10_000)
    expect(stream.locator(".scoop-ts-empty")).to_contain_text("No finished tasks yet")

    cell = start_cell(page, "import time\nfrom scoop import futures\n"
                            "def nap(s):\n    time.sleep(s)\n    return s\n"
                            "def quick(x):\n    time.sleep(0.02)\n    return x\n"
                            "_ = list(futures.map(nap, [0.25] * 40))\n"
                            "_ = list(futures.map(quick, range(400)))\n"
                            "_ = list(futures.map(nap, [0.25] * 40))")
    expect(stream).to_have_attribute("data-rows", "4", timeout=30_000)
    expect(stream).to_have_attribute("data-tasks", re.compile(r"^([4-9]\d|\d{3,})$"), timeout=30_000)
    # zoom in around the middle of the canvas, then hover a bar
    canvas = stream.locator("canvas")
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2)
    for _ in range(2):
        page.mouse.wheel(0, -150)
    expect(stream).to_have_attribute("data-mode", "fixed")
    tip = stream.locator(".scoop-ts-tip")
    found = False
    for fx in (0.6, 0.55, 0.65, 0.5, 0.7, 0.45, 0.75):
        for fy in (0.5, 0.3, 0.7, 0.2, 0.8):
            page.mouse.move(box["x"] + box["width"] * fx, box["y"] + 22 + (box["height"] - 26) * fy)
            if tip.is_visible():
                found = True
                break
        if found:
            break
    assert found, "no task under the mouse in the zoomed stream"
    text = tip.inner_text()
    assert re.search(r"(nap|quick) on w\d", text) and "input" in text and "took" in text, text
    page.screenshot(path=str(ARTIFACTS / "task-stream-zoomed.png"))
    expect(cell.locator(".jp-InputPrompt")).to_have_text(re.compile(r"\[\d+\]"), timeout=120_000)

    # 10,000 tasks a second: received in chunks, drawn in a frame's time
    run_cell(page, FAKE_TIMELINE)
    page.locator(".scoop-ts-clear").click()
    t0 = time.monotonic()
    time.sleep(6)
    got = int(stream.get_attribute("data-tasks"))
    seconds = time.monotonic() - t0
    draw_ms = float(stream.get_attribute("data-draw-ms"))
    print(f"task stream at 10,000 tasks/s: {got} tasks in {seconds:.1f} s, last draw {draw_ms} ms")
    assert got >= 0.8 * 10_000 * (seconds - 1.5), got
    assert draw_ms < 100, draw_ms
    expect(stream).to_have_attribute("data-rows", "16")
    page.screenshot(path=str(ARTIFACTS / "task-stream-10k.png"))
    assert not errors, errors

    known = lab.descendants()
    run_cell(page, "%scoop_cluster stop")
    known += lab.descendants()
    stop_lab_leaving_nothing(lab, known)


# In the kernel: the panel's feed shows 1,000 workers (each second a new status: loads move),
# as a cluster of that size would send them, without starting 1,000 processes.
FAKE_THOUSAND = """
import threading, time, random
import scoop_jupyter
_feed = scoop_jupyter.session().feed
_stop_fake = threading.Event()
def _statuses():
    rnd = random.Random(1)
    while not _stop_fake.is_set():
        workers = []
        for i in range(1000):
            held = rnd.choice([0, 0, 1, 1, 1, 2, 3, 5, 9, 20])
            workers.append({"id": str(i), "name": f"w{i + 1}", "host": f"node{i // 32:03d}",
                            "pid": 10000 + i, "state": "busy" if held else "idle",
                            "running": min(held, 1), "queued": max(0, held - 1),
                            "done": rnd.randrange(5000), "cpu": rnd.random() * 100,
                            "mem": 60_000_000 + rnd.randrange(40_000_000)})
        workers[7]["state"] = "joining"
        workers[9]["state"] = "lost"
        live = [w for w in workers if w["state"] in ("busy", "idle")]
        busy = sum(w["state"] == "busy" for w in live) / len(live)
        totals = {"workers": len(live), "busy": busy, "done": sum(w["done"] for w in workers),
                  "queued": sum(w["queued"] for w in workers), "running": sum(w["running"] for w in workers),
                  "rate": 20000.0 + rnd.random() * 500, "pending_workers": 0}
        _feed.latest = {"type": "status", "state": "running", "workers": workers, "jobs": [],
                        "totals": totals}
        _feed.refresh()
        _stop_fake.wait(0.5)
threading.Thread(target=_statuses, daemon=True).start()
"""


# In the page: the width ``digits`` take in a number input's font, and the room for text inside
# it (its content box less the spin buttons' width, which Chromium draws inside it).
TEXT_ROOM = """(input, digits) => {
    const style = getComputedStyle(input);
    const ctx = document.createElement('canvas').getContext('2d');
    ctx.font = `${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
    const pad = parseFloat(style.paddingLeft) + parseFloat(style.paddingRight);
    const border = parseFloat(style.borderLeftWidth) + parseFloat(style.borderRightWidth);
    const spin = 16;
    const room = input.getBoundingClientRect().width - pad - border - spin;
    return {text: ctx.measureText(digits).width, room};
}"""


def test_panel_with_a_thousand_workers(lab, page):
    """1,000 (simulated) workers: totals, a heat strip, a histogram, the busiest and the idle
    workers, and a list that builds only the rows in view; it updates at least once a second
    with no console error."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.set_viewport_size({"width": 1400, "height": 1000})
    errors = console_errors(page)
    open_notebook(page, lab, lab.new_notebook("thousand.ipynb"))
    open_scoop_panel(page)
    run_cell(page, "%load_ext scoop_jupyter")
    run_cell(page, FAKE_THOUSAND)
    panel = page.locator(PANEL)
    expect(panel.locator(".scoop-total[data-total='workers'] .scoop-total-value")).to_have_text("998",
                                                                                              timeout=30_000)
    expect(panel.locator(".scoop-heat-canvas")).to_be_visible()
    expect(panel.locator(".scoop-histogram-col")).to_have_count(7)
    expect(panel.locator(".scoop-busiest .scoop-worker-link")).to_have_count(5)
    expect(panel.locator(".scoop-idle")).to_contain_text("Idle")
    rows = panel.locator(".scoop-worker-row")
    assert 0 < rows.count() < 60, rows.count()  # virtualised: only the rows in view exist
    # updates: the panel renders at least once a second
    r0 = int(panel.get_attribute("data-renders"))
    time.sleep(5)
    r1 = int(panel.get_attribute("data-renders"))
    print(f"panel with 1,000 workers: {r1 - r0} renders in 5 s")
    assert r1 - r0 >= 5, (r0, r1)
    # scrolling the list builds the rows further down; a busiest worker's link shows its row
    panel.locator(".scoop-workers").evaluate("n => { n.scrollTop = 52 * 500; }")
    expect(panel.locator(".scoop-worker-row[data-worker-name='w505']")).to_have_count(1, timeout=5_000)
    panel.locator(".scoop-workers").evaluate("n => { n.scrollTop = 0; }")
    # the Workers box shows the cluster's size whole, and five digits would fit too
    n_input = panel.locator(".scoop-n-input")
    expect(n_input).to_have_value("999")
    for digits in ("999", "99999"):
        room = n_input.evaluate(TEXT_ROOM, digits)
        assert room["text"] <= room["room"], (digits, room)
    panel.locator(".scoop-workers").evaluate("n => { n.scrollTop = 0; }")
    page.screenshot(path=str(ARTIFACTS / "panel-1000-workers.png"))
    panel.screenshot(path=str(ARTIFACTS / "panel-1000-workers-panel.png"))
    # read the link and click it at once: the panel re-renders its busiest list every status
    name = page.evaluate("""() => {
        const a = document.querySelector('#scoop-cluster-panel .scoop-busiest .scoop-worker-link');
        a.click();
        return a.textContent.split(' ')[0];
    }""")
    expect(panel.locator(f".scoop-worker-row[data-worker-name='{name}']")).to_be_visible(timeout=5_000)
    run_cell(page, "_stop_fake.set()")
    assert not errors, errors
    known = lab.descendants()
    stop_lab_leaving_nothing(lab, known)


def built_docs(tmp: Path) -> Path | None:
    """This project's HTML documentation: $SCOOP_DOCS_HTML (a built copy), else the build's own
    (static/docs), else built here from docs/ with Sphinx; None when the checkout has no docs/."""
    if os.environ.get("SCOOP_DOCS_HTML"):
        return Path(os.environ["SCOOP_DOCS_HTML"])
    own = CHECKOUT_BUILD / "static" / "docs"
    if own.joinpath("index.html").is_file():
        return own
    if not (ROOT / "docs" / "conf.py").is_file():
        return None
    out = tmp / "docs-html"
    subprocess.run([sys.executable, "-m", "sphinx", "-q", "-b", "html", str(ROOT / "docs"), str(out)],
                   check=True, timeout=240)
    return out


def test_documentation_opens_offline_in_a_tab(tmp_path, page):
    """The panel's Documentation opens this project's documentation in a JupyterLab tab,
    served by JupyterLab itself (no internet), or says plainly that it is not built."""
    ARTIFACTS.mkdir(exist_ok=True)
    if not labextension_installed():
        pytest.fail("scoop-jupyter labextension is not installed: run `pip install -e .`")
    docs = built_docs(tmp_path)
    lab = LabServer(tmp_path, docs=docs)
    try:
        requests: list = []
        page.on("request", lambda r: requests.append(r.url))
        open_notebook(page, lab, lab.new_notebook("docs.ipynb"))
        open_scoop_panel(page)
        page.locator(f"{PANEL} .scoop-docs").click()
        tab = page.locator(".lm-TabBar-tab", has_text="SCOOP Documentation")
        expect(tab).to_have_count(1, timeout=10_000)
        if docs is None:
            expect(page.locator(".scoop-docs-missing")).to_contain_text("not built")
        else:
            frame = page.frame_locator(".scoop-docs-frame iframe")
            expect(frame.locator("body")).to_contain_text("SCOOP", timeout=20_000)
            outside = [u for u in requests if not u.startswith(lab.base) and not u.startswith("data:")]
            assert not outside, outside  # offline: everything from this server
        page.screenshot(path=str(ARTIFACTS / "docs-tab.png"))
        # a second click shows the same tab
        page.locator(f"{PANEL} .scoop-docs").click()
        expect(tab).to_have_count(1)
        known = lab.descendants()
        stop_lab_leaving_nothing(lab, known)
    finally:
        lab.stop()


def test_panel_on_a_kernel_without_subshells(lab_single_shell, page):
    """On a kernel without subshells (ipykernel 6's single shell channel) the panel's commands
    wait behind a running cell: the panel says so (the Workers box keeps the number asked for,
    the Stop button stays pressed), nothing errs, and each command takes effect when the cell
    ends; the stop does not interrupt the cell."""
    from test_notebook_without_subshells import SPEC

    lab = lab_single_shell
    ARTIFACTS.mkdir(exist_ok=True)
    errors = console_errors(page)
    name = lab.new_notebook("single-shell.ipynb", kernel=SPEC)
    open_notebook(page, lab, name)
    open_scoop_panel(page)
    run_cell(page, "%load_ext scoop_jupyter")
    run_cell(page, "%scoop_cluster start -n 1")
    expect(page.locator(f"{PANEL} .scoop-worker-row")).to_have_count(1, timeout=30_000)
    request = page.locator(f"{PANEL} .scoop-request")

    cell = start_cell(page, "import time\nfrom scoop import futures\n"
                            "def nap(s):\n    time.sleep(s)\n    return s\n"
                            "_ = list(futures.map(nap, [1.0] * 6))\nprint('first map done')")
    expect(cell.locator(".widget-label", has_text="nap:")).to_be_visible(timeout=30_000)
    page.locator(f"{PANEL} .scoop-n-input").fill("3")
    page.locator("#scoop-scale-button").click()
    expect(request).to_contain_text("scale to 3 sent… the kernel takes it when the running cell ends")
    time.sleep(1.5)  # statuses keep coming meanwhile: the box keeps the number asked for
    expect(page.locator(f"{PANEL} .scoop-n-input")).to_have_value("3")
    expect(page.locator(f"{PANEL} .scoop-worker-row")).to_have_count(1)
    page.locator(PANEL).screenshot(path=str(ARTIFACTS / "panel-single-shell-scale-waits.png"))
    expect(cell.locator(".jp-OutputArea")).to_contain_text("first map done", timeout=30_000)
    expect(page.locator(f"{PANEL} .scoop-worker-row")).to_have_count(3, timeout=30_000)
    expect(request).to_be_hidden(timeout=30_000)

    cell = start_cell(page, "_ = list(futures.map(nap, [1.0] * 9))\nprint('second map done')")
    expect(cell.locator(".widget-label", has_text="nap:")).to_be_visible(timeout=30_000)
    page.locator("#scoop-stop-button").click()
    expect(request).to_contain_text("stop sent… the kernel takes it when the running cell ends")
    time.sleep(1.0)
    expect(page.locator("#scoop-stop-button")).to_be_disabled()
    page.screenshot(path=str(ARTIFACTS / "single-shell-stop-waits.png"))
    expect(cell.locator(".jp-OutputArea")).to_contain_text("second map done", timeout=30_000)
    expect(page.locator(f"{PANEL} .scoop-state")).to_have_text("stopped", timeout=30_000)
    expect(cell.locator("[data-mime-type='application/vnd.jupyter.stderr']")).to_have_count(0)
    expect(page.locator(f"{PANEL} .scoop-error")).to_be_hidden()
    assert not errors, errors
    known = lab.descendants()
    stop_lab_leaving_nothing(lab, known)


WIDGET_BROKEN = re.compile(r"model not found|Error displaying widget|Loading widget")


def test_a_reopened_notebook_shows_its_records(lab, page):
    """A notebook run with a dashboard and a map, saved, closed with its kernel shut down while
    its cluster still ran, then reopened from the file browser: the map's final bar and summary
    and the dashboard's last state are there as static records, and no widget error shows."""
    ARTIFACTS.mkdir(exist_ok=True)
    name = lab.new_notebook("story.ipynb")
    open_notebook(page, lab, name)
    open_scoop_panel(page)
    run_cell(page, "%load_ext scoop_jupyter")
    run_cell(page, "%scoop_cluster start -n 2")
    run_cell(page, "%scoop_cluster dashboard")
    dash = page.locator(".scoop-dashboard").first
    expect(dash.locator("tr.scoop-worker")).to_have_count(2, timeout=30_000)
    out = run_cell(page, "import time\nfrom scoop import futures\n"
                         "def nap(x):\n    time.sleep(0.1)\n    return x\n"
                         "print('total', sum(futures.map(nap, range(40))))")
    assert "total 780" in out, out
    cells = page.locator(f"{ACTIVE_NOTEBOOK} .jp-Notebook .jp-Cell")
    expect(cells.nth(3).locator(".jp-OutputArea-output", has_text=re.compile(r"nap: 40 done in [\d.]+ s"))
           ).to_have_count(1, timeout=30_000)
    expect(dash.locator("tr.scoop-worker[data-state='idle']")).to_have_count(2, timeout=30_000)
    known = lab.descendants()

    # save, then File > Close and Shut Down Notebook (the cluster was never stopped)
    page.locator(f"{ACTIVE_NOTEBOOK} .jp-Notebook").click()
    page.keyboard.press("Control+s")
    expect(page.locator(".lm-TabBar-tab.jp-mod-dirty", has_text=name)).to_have_count(0, timeout=10_000)
    menu(page, "File", "Close and Shut Down Notebook")
    page.locator(".jp-Dialog .jp-mod-accept").click()
    expect(page.locator(".lm-TabBar-tab", has_text=name)).to_have_count(0, timeout=10_000)
    deadline = time.monotonic() + 30
    while lab.api("GET", "/api/sessions") and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not lab.api("GET", "/api/sessions")
    _, alive = psutil.wait_procs(known, timeout=20)
    assert not alive, [p.pid for p in alive]  # kernel and cluster gone

    # reopen from the file browser
    page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id='filebrowser']").click()
    page.locator(".jp-DirListing-item", has_text=name).dblclick()
    nb = page.locator(ACTIVE_NOTEBOOK)
    expect(nb.locator(".jp-Cell")).to_have_count(5, timeout=30_000)
    lab.wait_kernel_idle(name)
    expect(nb.locator(".jp-OutputArea-output", has_text=re.compile(r"nap: 40 done in [\d.]+ s \([\d.]+/s\)"))
           ).to_have_count(1, timeout=30_000)
    expect(nb.locator(".scoop-progress")).to_have_count(1)
    record = nb.locator(".scoop-dashboard")
    expect(record).to_have_count(1, timeout=30_000)
    # its state when the notebook was saved, after the map, not when its own cell ended
    expect(record).to_contain_text(re.compile(r"2 workers .* 40 done"))
    expect(record.locator("tr.scoop-worker")).to_have_count(2)
    time.sleep(3.0)  # whatever the widget manager would say has been said by now
    text = nb.inner_text()
    assert not WIDGET_BROKEN.search(text), text
    assert "HBox(" not in text and "VBox(" not in text, text
    page.screenshot(path=str(ARTIFACTS / "reopened-notebook.png"))
    known = lab.descendants()
    stop_lab_leaving_nothing(lab, known)
