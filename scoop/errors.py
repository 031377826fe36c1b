"""Exceptions a SCOOP user can meet, each named after what went wrong."""
from concurrent.futures import CancelledError, TimeoutError  # noqa: F401  (PEP 3148 names)


class WorkerLostError(RuntimeError):
    """A task was running on workers that died (crash, ``os._exit``, lost host) too often."""


class RemoteError(RuntimeError):
    """A task raised an exception that could not be rebuilt here (its class does not unpickle:
    a custom ``__init__``, a module the caller lacks); keeps its type name and message."""

    def __init__(self, text: str = "", type_name: str = "", message: str = ""):
        super().__init__(text)
        self.type_name = type_name
        self.message = message

    def __reduce__(self):
        return (RemoteError, (str(self), self.type_name, self.message))


class TaskInterrupted(BaseException):
    """Raised inside a running task when its origin interrupted it (e.g. Jupyter Kernel > Interrupt).

    A BaseException, like KeyboardInterrupt, so ``except Exception`` in user code does not eat it.
    """


class ClusterError(RuntimeError):
    """The cluster could not be started, reached, or has ended."""
