"""Starting workers: where they go (hosts, placement) and how they start (one launcher class each).

``base`` declares the Launcher interface and its registry; ``local`` (fork, spawn), ``ssh``,
``srun`` (SLURM job steps), ``pbs`` (pbsdsh), ``sge`` (qrsh -inherit), ``blaunch`` (LSF) and the
batch-job launchers implement it, and ``task`` is the entry point of workers started as tasks of
a multi-task launch.  ``cli`` is
``python -m scoop``.
"""
