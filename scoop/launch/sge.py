"""Workers inside an SGE allocation (a parallel environment), started with ``qrsh -inherit``:
the batch system's own remote start, so workers run inside the job without SSH to the nodes.
``qrsh`` forwards stdin, so the config line travels on it as with SSH, and its end (we are gone)
ends the worker."""
from __future__ import annotations

from .base import AllocationLauncher, ProcessHandle, config_line, register, terminate


@register
class QrshLauncher(AllocationLauncher):
    name = "qrsh"
    program = "qrsh"
    allocation_var = "PE_HOSTFILE"
    allocation = "an SGE parallel environment"
    job_id_var = "JOB_ID"

    def remote_argv(self, host: str) -> list[str]:
        """The command starting a task of this job on ``host``; what follows is the worker's."""
        return [self.program, "-inherit", host]

    def start(self, specs):
        handles = []
        for spec in specs:
            host = spec.host or self.env.get("HOSTNAME") or "localhost"
            argv = [*self.remote_argv(host), self.python, "-m", "scoop.worker"]
            proc = self.run_program(argv, config_line(spec.config))
            self.relay.add(spec.name, proc.stdout, proc.stderr)
            h = ProcessHandle(spec.name, spec.host, proc, job_id=self.env.get(self.job_id_var))
            self.handles.append(h)
            handles.append(h)
        return handles

    def stop(self, timeout: float = 5.0):
        procs = [h.proc for h in self.handles]
        for p in procs:
            try:
                p.stdin.close()
            except OSError:
                pass
        terminate(procs, timeout)
