"""SCOOP: Scalable COncurrent Operations in Python.

Futures run on a cluster of worker processes behind a ZeroMQ broker.  Start a program with
``python -m scoop -n 4 prog.py`` (or a notebook with ``%scoop_cluster start``) and use
``scoop.futures``.  The module globals below describe this process's place in the cluster.
"""
import logging as _logging
import os as _os
import socket as _socket

__version__ = "0.1.0"
__author__ = "SCOOP-Jupyter developers"

IS_ORIGIN = True          # this process runs the user's program (or the notebook kernel)
IS_RUNNING = False        # connected to a running cluster
worker = None             # unique id of this process in the cluster
SIZE = 1                  # number of workers (processes that run tasks)
DEBUG = bool(_os.environ.get("SCOOP_DEBUG"))
BROKER = None             # BrokerInfo(hostname, task_port, info_port, externalHostname)
CONFIGURATION = {}


class _WorkerTag(_logging.Filter):
    def filter(self, record):
        record.worker = worker if worker is not None else f"{_socket.gethostname()}:{_os.getpid()}"
        return True


logger = _logging.getLogger("scoop")
if not logger.handlers:
    _h = _logging.StreamHandler()
    _h.setFormatter(_logging.Formatter("[%(asctime)s] %(levelname)-7s %(worker)s %(message)s"))
    _h.addFilter(_WorkerTag())
    logger.addHandler(_h)
    logger.setLevel(_logging.DEBUG if DEBUG else _logging.INFO)
    logger.propagate = False
