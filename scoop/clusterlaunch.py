"""A cluster's side facing its launcher: which launcher, and what its processes start with.

:class:`scoop.cluster.Cluster` derives from :class:`ClusterLaunch` (which derives from the
observing :class:`~scoop.clusterview.ClusterView`).  Here: the launcher made for the plan
(:mod:`scoop.launch.plan`), the environment every process of the cluster gets, each worker's
config (its one name, its broker, the secret), and a batch cluster's job script as
:meth:`Cluster.start <scoop.cluster.Cluster.start>` will submit it.  The launcher decides *how*
a worker starts; the spec (:mod:`scoop.reconcile`) decides *which* ones.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from . import _protocol as P
from .clusterview import ClusterView
from .errors import ClusterError
from .launch.base import WorkerSpec, launcher_class
from .launch.hosts import is_local_host
from .launch.plan import make_plan

if TYPE_CHECKING:
    from .launch.plan import Plan

__all__ = ["ClusterLaunch"]


class ClusterLaunch(ClusterView):
    """The launcher and the config of what it starts; the state it reads is kept by ``Cluster``."""

    n: int | None          # workers asked for at start
    python: str            # the workers' interpreter
    path: str              # their working directory
    program_dir: str | None
    fork: bool
    brokers: int           # broker processes: workers are spread over them
    heartbeat_timeout: float
    inline: bool
    _plan: Plan | None
    _spread: int           # workers given a broker so far

    # ---- the launcher ------------------------------------------------------------------------
    def _check_dirs(self):
        """A local working or program directory that does not exist is an error before anything starts."""
        if self.launcher.remote:
            return  # the directory is the hosts'; a worker there names it if it is missing
        for what, d in (("working directory (--path)", self.path), ("program directory", self.program_dir)):
            if d and not os.path.isdir(d):
                raise ClusterError(f"the {what} {d!r} does not exist")

    def _new_launcher(self, name: str):
        """The launcher called ``name`` (:func:`scoop.launch.base.launcher_class`), for this cluster."""
        return launcher_class(name)(self.options, self.relay, env=self._env(), cwd=self.path,
                                    python=self.python)

    def _env(self) -> dict:
        """The environment of every process the cluster starts: never the secret (it travels
        on stdin), and a PYTHONPATH under which local children import this very scoop."""
        env = dict(os.environ)
        env.update(self.options.env or {})
        env.pop(P.SECRET_ENV, None)
        env["PYTHONUNBUFFERED"] = "1"
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        inherited = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        paths = self.options.pythonpath + [here] + inherited
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        return env

    # ---- a worker's config ---------------------------------------------------------------------
    def _host_key(self, host: str) -> str | None:
        """None (this machine) unless the launcher must start even local workers itself."""
        if self.launcher.in_allocation or not is_local_host(host):
            return host
        return None

    def _worker_spec(self, name: str, host: str | None) -> WorkerSpec:
        """One worker's config: its one name, its broker (spread over the brokers) and the secret."""
        port = self.broker_ports[self._spread % self.brokers][0]
        self._spread += 1
        sys_path = [p for p in (self.program_dir, self.path) if p]
        config = {"secret": self.secret.hex(), "broker": self.launcher.broker_address(host, port),
                  "name": name, "label": name, "sys_path": sys_path, "nice": self.options.nice,
                  "host": host, "broker_timeout": self.heartbeat_timeout,
                  "connect_timeout": 15.0, "broker_info": self.broker_info(), "inline": self.inline,
                  "encryption": self.options.encryption}
        return WorkerSpec(name, host, config)

    # ---- what start would submit (batch clusters) --------------------------------------------
    def job_script(self) -> str:
        """The script of this batch-job cluster's first job, exactly as :meth:`start` will submit
        it (once started: the next job's)."""
        launcher = self._batch_launcher("job_script")
        return launcher.job_script(None if self._started else self._first_names()[:launcher.cpus_per_job])

    def dry_run(self) -> str:
        """What :meth:`start` would submit (the command and the first job's script), submitting nothing."""
        return self._batch_launcher("dry_run").dry_run(self._first_names())

    def _batch_launcher(self, what: str):
        """The launcher, made for the plan if start has not made it yet; only a batch one will do."""
        if self.launcher is None:
            plan = make_plan(self.options, fork=self.fork)
            self._planned = sum(k for _, k in plan.first)
            self.launcher = self._new_launcher(plan.launcher)
        if not self.queued:
            raise ClusterError(f"{what}: only batch-job clusters (sbatch, qsub, sge, lsf) submit job "
                               f"scripts, not the {self.launcher.name} launcher")
        return self.launcher

    def _first_names(self) -> list[str]:
        count = len(self._spec) if self._started else getattr(self, "_planned", self.n or 1)
        return [f"w{k}" for k in range(1, count + 1)]
