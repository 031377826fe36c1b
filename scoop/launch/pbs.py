"""Workers inside a PBS/Torque allocation, started with ``pbsdsh`` (the batch system's own
task launcher: the workers run inside the job, no SSH to the nodes).

``pbsdsh`` gives its task no stdin, so the config line goes through a file only its owner can
read, in a private directory of the home directory (shared with the nodes on PBS sites), removed
when the cluster stops; such workers are ``detached`` (they end when they lose the broker).
Each worker is one ``pbsdsh -n INDEX`` call, INDEX being the first line of its host in
``PBS_NODEFILE`` (the form both Torque and PBS Pro/OpenPBS accept).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

from ..errors import ClusterError
from .base import AllocationLauncher, ProcessHandle, WorkerSpec, register, terminate


def node_indexes(nodefile: str) -> dict[str, int]:
    """Host -> index of its first line in a PBS node file."""
    out: dict[str, int] = {}
    with open(nodefile, encoding="utf-8") as f:
        for i, line in enumerate(x.strip() for x in f if x.strip()):
            out.setdefault(line, i)
    return out


@register
class PbsdshLauncher(AllocationLauncher):
    name = "pbsdsh"
    program = "pbsdsh"
    allocation_var = "PBS_NODEFILE"
    allocation = "a PBS allocation"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._dir = None
        self._index: dict[str, int] = {}

    def prepare(self, hosts):
        super().prepare(hosts)
        self._index = node_indexes(self.env[self.allocation_var])

    def _config_file(self, spec: WorkerSpec) -> str:
        if self._dir is None:
            base = os.path.join(os.path.expanduser("~"), ".scoop")
            os.makedirs(base, mode=0o700, exist_ok=True)
            self._dir = tempfile.mkdtemp(prefix="run-", dir=base)  # mode 0700
        path = os.path.join(self._dir, f"{spec.name}.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(spec.config) + "\n")
        return path

    def start(self, specs):
        handles = []
        for spec in specs:
            if spec.host is not None and spec.host not in self._index:
                raise ClusterError(f"launcher {self.name}: host {spec.host!r} is not in PBS_NODEFILE")
            argv = [self.program]
            if spec.host is not None:
                argv += ["-n", str(self._index[spec.host])]
            argv += ["--", self.python, "-m", "scoop.launch.task", "--config-file", self._config_file(spec)]
            proc = self.run_program(argv)
            self.relay.add(spec.name, proc.stdout, proc.stderr)
            h = ProcessHandle(spec.name, spec.host, proc, job_id=self.env.get("PBS_JOBID"))
            self.handles.append(h)
            handles.append(h)
        return handles

    def stop(self, timeout: float = 5.0):
        terminate([h.proc for h in self.handles], timeout)
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
