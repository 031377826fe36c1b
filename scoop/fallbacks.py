"""SCOOP 0.7's ``scoop.fallbacks``: what programs written for it import.

Here a program started without a cluster runs its futures serially (after one warning) rather
than failing, so ``NotStartedProperly`` is never raised; it exists so that 0.7 programs that
import it, or catch it, run unchanged.
"""


class NotStartedProperly(Exception):
    """SCOOP was not started properly (``python -m scoop``); kept for SCOOP 0.7 programs."""
