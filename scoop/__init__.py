"""SCOOP: Scalable COncurrent Operations in Python.

Futures run on a cluster of worker processes behind a ZeroMQ broker.  Start a program with
``python -m scoop -n 4 prog.py`` (or a notebook with ``%scoop_cluster start``) and use
``scoop.futures``.  The module globals below describe this process's place in the cluster.
"""
import os as _os

__version__ = "0.1.0"
__author__ = "SCOOP-Jupyter developers"

IS_ORIGIN = True          # this process runs the user's program (or the notebook kernel)
IS_RUNNING = False        # connected to a running cluster
worker = None             # unique id of this process in the cluster
SIZE = 1                  # number of workers (processes that run tasks)
DEBUG = bool(_os.environ.get("SCOOP_DEBUG"))
BROKER = None             # BrokerInfo(hostname, task_port, info_port, externalHostname)
CONFIGURATION = {}
SHUTDOWN_REQUESTED = False  # SCOOP 0.7's flag, set once the cluster is asked to stop

# SCOOP 0.7's intervals (seconds), for programs that read them
TIME_BETWEEN_PARTIALDEBUG = 30
TIME_BETWEEN_STATUS_REPORTS = 25
TIME_BETWEEN_STATUS_PRUNING = 60


def _make_logger():
    """``scoop.logger``: records tagged with the worker that wrote them."""
    import logging
    import socket

    class WorkerTag(logging.Filter):
        def filter(self, record):
            if getattr(record, "worker", None) is None:  # a cluster notice names itself
                record.worker = worker if worker is not None else f"{socket.gethostname()}:{_os.getpid()}"
            return True

    log = logging.getLogger("scoop")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)-7s %(worker)s %(message)s"))
        handler.addFilter(WorkerTag())
        log.addHandler(handler)
        log.setLevel(logging.DEBUG if DEBUG else logging.INFO)
        log.propagate = False
    return log


_SUBMODULES = ("futures", "shared", "cluster", "origin", "errors", "meta", "utils", "fallbacks")


def __getattr__(name):
    # made on first use: importing logging costs every broker and worker start ~8 ms
    if name == "logger":
        global logger
        logger = _make_logger()
        return logger
    if name in _SUBMODULES:  # `import scoop; scoop.futures.map(...)` works too
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'scoop' has no attribute {name!r}")
