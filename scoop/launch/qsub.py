"""PBS batch-job clusters (PBS Pro, OpenPBS, Torque): ``--launcher qsub``.

Tested against transcripts of the real commands (tests/fakebatch), not a real PBS server: none
can be installed here.  Each job starts its workers on its one node from the job script itself
(``-l nodes=1:ppn=K``, a form Torque and PBS Pro both read); the rest is :mod:`scoop.launch.batch`.
"""
from __future__ import annotations

import re

from ..errors import ClusterError
from .base import register
from .batch import BatchLauncher, hms


def _count(what: str):
    def render(self, value, workers):
        if not str(value).isdigit():
            raise ClusterError(f"the {self.system} launcher wants a number of GPUs, not {value!r}")
        return [f"-l {what}={value}"]
    return render


@register
class QsubLauncher(BatchLauncher):
    """PBS: ``qsub``/``qstat -f``/``qdel``, ``#PBS`` directives, workers started by the job."""

    name = "qsub"
    system = "PBS"
    submit_cmd, cancel_cmd = "qsub", "qdel"
    directive = "#PBS"
    job_id_pattern = r"^\s*(\S+)"  # 1234.server
    query_forgot = r"Unknown Job Id|Job has finished"
    pending_states = frozenset({"Q", "H", "W", "T", "S", "U"})
    running_states = frozenset({"R", "E", "B"})
    done_states = frozenset({"C", "F", "X"})
    gone_state = "F"
    cancelled_state = "X"
    resources = {
        "job_name": "-N {}",
        "walltime": lambda self, s, _: [f"-l walltime={hms(s)}"],
        "queue": "-q {}",
        "account": "-A {}",
        "memory": "-l mem={}mb",
        "gpus": _count("ngpus"),
        "qos": "-l qos={}",
    }

    def job_directives(self, stem, workers):
        return [f"-l nodes=1:ppn={workers}", f"-o {stem}.out", "-j oe", "-V"]

    def query_argv(self, ids):
        return ["qstat", "-f", *ids]

    def parse_query(self, out, ids):
        """``qstat -f`` blocks: ``Job Id: 1234.server`` then ``key = value`` lines."""
        found, job, attrs = {}, None, {}

        def close():
            if job is not None:
                hosts = [h.split("/")[0] for h in attrs.get("exec_host", "").split("+") if h]
                nodes = ",".join(dict.fromkeys(hosts))
                found[job] = (attrs.get("job_state", ""), nodes, attrs.get("comment", ""))
        for line in out.splitlines():
            m = re.match(r"^Job Id:\s*(\S+)", line)
            if m:
                close()
                job, attrs = self._our_id(m.group(1), ids), {}
            elif "=" in line and job is not None:
                key, _, value = line.strip().partition(" = ")
                attrs[key.strip()] = value.strip()
        close()
        return {k: v for k, v in found.items() if k}

    @staticmethod
    def _our_id(listed: str, ids: list[str]) -> str | None:
        """qstat may name a job ``1234.server.domain`` that qsub called ``1234.server``."""
        for i in ids:
            if listed == i or listed.split(".")[0] == i.split(".")[0]:
                return i
        return None
