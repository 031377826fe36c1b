"""Exceptions a SCOOP user can meet, each named after what went wrong; warnings that point at
the user's own line."""
import os
import sys
from concurrent.futures import CancelledError, TimeoutError  # noqa: F401  (PEP 3148 names)

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` in the calling function that names the first
    caller outside this package, so a warning points at the user's line (a notebook cell, a
    script) whatever the depth of the call inside SCOOP."""
    level, f = 1, sys._getframe(1)
    while f is not None and f.f_code.co_filename.startswith(_PACKAGE_DIR):
        f = f.f_back
        level += 1
    return level


class OptionError(ValueError):
    """A bad option value; the message names the option and the value."""


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
