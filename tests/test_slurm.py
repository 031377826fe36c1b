"""SCOOP on a real SLURM cluster (tests/slurm_cluster.py): the cluster itself, job steps inside
allocations, and batch-job clusters started from the login node."""
from __future__ import annotations

import os
import time

import pytest


def test_cluster_runs_jobs_on_both_nodes(slurm_cluster, tmp_path):
    """The test cluster itself: a batch job spans both nodes, and srun inside salloc -N2 too."""
    out = tmp_path / "job.out"
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\nsrun hostname\n")
    r = slurm_cluster.run(["sbatch", "--parsable", "-N2", "-n2", f"--output={out}", str(script)])
    assert r.stdout.strip().split(";")[0].isdigit()
    assert slurm_cluster.wait_no_jobs(60) == []
    assert sorted(out.read_text().split()) == ["node1", "node2"]
    r = slurm_cluster.run(["salloc", "-N2", "srun", "hostname"])
    assert sorted(r.stdout.split()) == ["node1", "node2"]
    assert slurm_cluster.wait_no_jobs() == []
