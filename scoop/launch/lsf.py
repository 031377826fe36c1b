"""LSF batch-job clusters (IBM Spectrum LSF, OpenLava): ``--launcher lsf``.

Tested against transcripts of the real commands (tests/fakebatch), not a real LSF cluster: none
can be installed here.  ``bsub`` reads ``#BSUB`` lines only from a script on its stdin, so the
script goes there.  A job of K workers asks for K slots on one host (``-n K -R span[hosts=1]``)
and starts its workers from the job script; the rest is :mod:`scoop.launch.batch`.
"""
from __future__ import annotations

from ..errors import ClusterError
from .base import register
from .batch import BatchLauncher


def _gpus(self, value, workers):
    if not str(value).isdigit():
        raise ClusterError(f"the LSF launcher wants a number of GPUs, not {value!r}")
    return [f'-gpu "num={value}"']


@register
class LsfLauncher(BatchLauncher):
    """LSF: ``bsub < script``/``bjobs -o``/``bkill``, ``#BSUB`` directives."""

    name = "lsf"
    system = "LSF"
    submit_cmd, cancel_cmd = "bsub", "bkill"
    script_on_stdin = True
    directive = "#BSUB"
    job_id_pattern = r"Job <(\d+)>"
    query_forgot = r"is not found"
    pending_states = frozenset({"PEND", "PSUSP", "WAIT"})
    running_states = frozenset({"RUN", "PROV", "USUSP", "SSUSP"})
    done_states = frozenset({"DONE"})
    gone_state = "DONE"  # cleaned from mbatchd's memory: it ended a while ago
    cancelled_state = "EXIT"
    resources = {
        "job_name": "-J {}",
        "walltime": lambda self, s, _: [f"-W {-(-s // 60) // 60}:{-(-s // 60) % 60:02d}"],  # [hours:]minutes
        "queue": "-q {}",
        "account": "-P {}",
        "memory": "-M {}MB",
        "gpus": _gpus,
        "constraint": '-R "select[{}]"',
    }

    def job_directives(self, stem, workers):
        return [f"-n {workers}", '-R "span[hosts=1]"', f"-o {stem}.out", f"-cwd {self.path}"]

    def query_argv(self, ids):
        return ["bjobs", "-noheader", "-o", "jobid stat exec_host pend_reason delimiter='|'", *ids]

    def parse_query(self, out, ids):
        found = {}
        for line in out.splitlines():
            parts = line.split("|", 3)
            if len(parts) == 4 and parts[0].strip() in ids:
                hosts = [h.split("*")[-1] for h in parts[2].replace(":", " ").split() if h != "-"]
                reason = parts[3].strip()
                found[parts[0].strip()] = (parts[1].strip(), ",".join(dict.fromkeys(hosts)),
                                           "" if reason == "-" else reason)
        return found
