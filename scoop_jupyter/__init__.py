"""SCOOP in Jupyter: ``%load_ext scoop_jupyter``, then ``%scoop_cluster start -n 4``.

The kernel becomes the cluster's origin and stays it between cells; see
:mod:`scoop_jupyter.origin` for how, :mod:`scoop_jupyter.dashboard` for the live view and
:mod:`scoop_jupyter.comm` for the JupyterLab panel's protocol.
"""
from __future__ import annotations

# the dashboard module first: importing it later would make ``scoop_jupyter.dashboard`` the
# module rather than the function below
from . import dashboard as _dashboard_module  # noqa: F401
from . import reprs, tracebacks
from .api import cluster, dashboard, logs, restart, scale, session, start, status, stop, timeline  # noqa: F401

try:
    from ._labext_paths import _jupyter_labextension_paths  # noqa: F401
except ImportError:  # the lab extension's helper is not part of this checkout
    def _jupyter_labextension_paths():
        return [{"src": "labextension", "dest": "scoop-jupyter"}]

__all__ = ["start", "stop", "restart", "scale", "status", "dashboard", "timeline", "logs", "cluster",
           "load_ipython_extension", "unload_ipython_extension"]

_unregister_comm = None


def load_ipython_extension(ip):
    """``%load_ext scoop_jupyter`` (or the ``extensions`` config): magics, cell hooks, comm."""
    global _unregister_comm
    from .magics import ScoopMagics
    ip.register_magics(ScoopMagics)
    s = session()
    s.install(ip)
    tracebacks.install(ip)
    reprs.register(ip)
    _show_costly_function_warnings()
    _note_missing_panel()
    kernel = getattr(ip, "kernel", None)
    if kernel is not None and _unregister_comm is None:
        from .comm import register
        _unregister_comm = register(kernel, s)


def _note_missing_panel():
    """An install without Node.js has no JupyterLab side panel; say once how to get it, since
    the build step's own message is hidden by pip."""
    global _panel_noted
    if _panel_noted:
        return
    _panel_noted = True
    try:
        from jupyter_core.paths import jupyter_path
    except ImportError:
        return
    import os
    if not any(os.path.exists(os.path.join(p, "scoop-jupyter", "package.json"))
               for p in jupyter_path("labextensions")):
        print("scoop_jupyter: the JupyterLab side panel is not installed (it needs Node.js >= 20 at "
              "install time); everything else works. To add it: install Node.js, then reinstall this "
              "package (pip install -e .).")


_panel_noted = False


def _show_costly_function_warnings():
    """The core warns when a task's function pickles to many MiB because it captures large data:
    in a notebook, where closures over big arrays happen easily, that warning must be seen every
    time a new such function is shipped (the core already says it once per function), not once
    per code location as Python's default filter would."""
    import warnings
    warnings.filterwarnings("always", message=r"the function .* pickles to", category=RuntimeWarning)


def unload_ipython_extension(ip):
    """Stops this kernel's cluster and removes the hooks (``%unload_ext``/``%reload_ext``)."""
    global _unregister_comm
    s = session()
    s.stop()
    s.uninstall(ip)
    tracebacks.uninstall(ip)
    reprs.unregister(ip)
    if _unregister_comm is not None:
        _unregister_comm()
        _unregister_comm = None
    magics = ip.magics_manager.magics.get("line", {})
    magics.pop("scoop_cluster", None)
