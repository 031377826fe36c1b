"""Workers inside an LSF job, started with ``blaunch``: LSF's own task launcher, a drop-in for
rsh (``blaunch HOST COMMAND``), so the workers run inside the job -- counted in its accounting,
ended with it -- without SSH to the nodes.  Like ``qrsh -inherit`` it forwards stdin (its ``-n``
is what would take it from /dev/null), so this is the qrsh launcher with LSF's command line;
the hosts and slots come from ``LSB_MCPU_HOSTS``."""
from __future__ import annotations

from .base import register
from .sge import QrshLauncher


@register
class BlaunchLauncher(QrshLauncher):
    name = "blaunch"
    program = "blaunch"
    allocation_var = "LSB_MCPU_HOSTS"
    allocation = "an LSF job"
    job_id_var = "LSB_JOBID"

    def remote_argv(self, host: str) -> list[str]:
        return [self.program, host]
