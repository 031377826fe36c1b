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


def checkout_jupyter_path(tmp: Path) -> str | None:
    """A JUPYTER_PATH entry whose labextensions/scoop-jupyter is this checkout's build, so the
    server serves the extension under test even where another checkout is installed
    (an editable install elsewhere, a shared machine); None when the checkout has no build
    (CI with a normal pip install then serves the installed one)."""
    if not CHECKOUT_BUILD.joinpath("package.json").is_file():
        return None
    base = tmp / "jupyter-path"
    (base / "labextensions").mkdir(parents=True, exist_ok=True)
    link = base / "labextensions" / "scoop-jupyter"
    if not link.exists():
        link.symlink_to(CHECKOUT_BUILD, target_is_directory=True)
    return str(base)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """A throwaway ``jupyter lab`` with its own runtime/config/settings dirs."""

    def __init__(self, tmp: Path, python: str = sys.executable):
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
        jpath = checkout_jupyter_path(tmp)
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

    def new_notebook(self, name: str) -> str:
        nb = {
            "type": "notebook",
            "format": "json",
            "content": {
                "cells": [],
                "metadata": {
                    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
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
    expect(cell.locator(".widget-label", has_text="done in")).to_be_visible(timeout=30_000)

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
    expect(cell.locator(".widget-label", has_text="interrupted")).to_be_visible(timeout=30_000)
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
    second, so the map ends far sooner than 40 s; Stop during a map stops the cluster at once
    (the map says it was interrupted).  The adapt switch sends its command too."""
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

    # the adapt switch: on with its bounds, or a clear error where the core has no adapt yet
    has_adapt = "True" in run_cell(
        page, "import scoop.cluster\nprint(hasattr(scoop.cluster.Cluster, 'adapt'))"
    )
    page.locator(f"{PANEL} .scoop-adapt-min").fill("1")
    page.locator(f"{PANEL} .scoop-adapt-max").fill("6")
    page.locator("#scoop-adapt-switch").check()
    if has_adapt:
        expect(page.locator(f"{PANEL} .scoop-adapt.scoop-adapt-on")).to_have_count(1, timeout=10_000)
        expect(page.locator("#scoop-adapt-switch")).to_be_checked()
    else:
        expect(page.locator(f"{PANEL} .scoop-error")).to_contain_text("adaptive scaling", timeout=10_000)
    page.locator(PANEL).screenshot(path=str(ARTIFACTS / "panel-adapt-switch.png"))
    page.locator("#scoop-adapt-switch").uncheck()
    if has_adapt:
        expect(page.locator(f"{PANEL} .scoop-adapt.scoop-adapt-on")).to_have_count(0, timeout=10_000)

    # stop during a map: the cluster ends at once, the map says it was interrupted
    cell = start_cell(page, "_ = list(futures.map(nap, [1.0] * 40))")
    expect(cell.locator(".widget-label", has_text="nap:")).to_be_visible(timeout=30_000)
    expect(page.locator(f"{PANEL} .scoop-worker-busy").first).to_be_visible(timeout=10_000)
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
