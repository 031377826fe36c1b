"""Exceptions a SCOOP user can meet, each named after what went wrong."""
from concurrent.futures import CancelledError, TimeoutError  # noqa: F401  (PEP 3148 names)


class WorkerLostError(RuntimeError):
    """A task was running on workers that died (crash, ``os._exit``, lost host) too often."""


class RemoteError(RuntimeError):
    """A task raised an exception that could not be pickled back; keeps its type and message."""


class TaskInterrupted(BaseException):
    """Raised inside a running task when its origin interrupted it (e.g. Jupyter Kernel > Interrupt).

    A BaseException, like KeyboardInterrupt, so ``except Exception`` in user code does not eat it.
    """


class ClusterError(RuntimeError):
    """The cluster could not be started, reached, or has ended."""
