"""Grid Engine batch-job clusters (Son of Grid Engine, Univa/Altair GE): ``--launcher sge``.

Tested on a real SGE cluster here (tests/sge_cluster.py).  A job of K workers asks for K slots
of the ``smp`` parallel environment (the name most sites give their one-node PE) and starts its
workers from the job script; the rest is :mod:`scoop.launch.batch`.
"""
from __future__ import annotations

import socket

from ..errors import ClusterError
from .base import register, route_address
from .batch import BatchLauncher, hms


def _memory(self, mb, workers):
    # h_vmem counts per slot: the job's memory shared among its slots
    return [f"-l h_vmem={-(-mb // workers)}M"]


def _gpus(self, value, workers):
    if not str(value).isdigit():
        raise ClusterError(f"the SGE launcher wants a number of GPUs, not {value!r}")
    return [f"-l gpu={value}"]  # the consumable most sites call gpu


@register
class SgeLauncher(BatchLauncher):
    """SGE: ``qsub``/``qstat``/``qdel``, ``#$`` directives, ``h_rt``, ``-pe smp K``."""

    name = "sge"
    system = "SGE"
    submit_cmd, cancel_cmd = "qsub", "qdel"
    directive = "#$"
    job_id_pattern = r"Your job(?:-array)? (\d+)"
    # qstat's state letters, read by parse_query as one of these
    pending_states = frozenset({"qw", "s"})
    running_states = frozenset({"r"})
    gone_state = "done"
    resources = {
        "job_name": "-N {}",
        "walltime": lambda self, s, _: [f"-l h_rt={hms(s)}"],
        "queue": "-q {}",
        "account": "-P {}",
        "memory": _memory,
        "gpus": _gpus,
    }
    #: why a job waits, read from its state letters
    reasons = {"h": "held", "E": "error: see qstat -j", "s": "suspended", "S": "queue suspended"}

    def job_directives(self, stem, workers):
        pe = [f"-pe smp {workers}"] if workers > 1 else []
        return [*pe, f"-o {stem}.out", "-j y", "-V", "-S /bin/sh", f"-wd {self.path}"]

    def query_argv(self, ids):
        return ["qstat"]

    def _pick_address(self):
        """The local address of the route to the first execution host."""
        hosts = (self._ask(["qconf", "-sel"]) or "").split()
        try:
            return route_address(socket.gethostbyname(hosts[0]) if hosts else None)
        except OSError:
            return route_address(None)

    def parse_query(self, out, ids):
        """qstat's table: job-ID prior name user state submit/start-date time [queue] slots."""
        found = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) < 5 or parts[0] not in ids:
                continue
            letters = parts[4]  # qw, hqw, Eqw, r, t, Rr, dr, s...
            state = "qw" if "q" in letters else "r" if ("r" in letters or "t" in letters) else \
                "s" if letters.lower().strip("t") == "s" else letters
            queue = parts[7] if len(parts) > 8 and "@" in parts[7] else ""
            why = ", ".join(text for letter, text in self.reasons.items()
                            if letter in letters and state != "r")
            found[parts[0]] = (state, queue.split("@", 1)[-1] if queue else "", why)
        return found
