"""``python -m scoop``: start a cluster, run a program as its origin, end everything after.

The launcher process itself is the origin: it starts the broker and the workers through the
Cluster API, runs the program as ``__main__``, and stops the cluster however the program ends
(normally, by an exception, by SIGINT or SIGTERM).  Its exit status is the program's.
"""
from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys
import traceback

DESCRIPTION = """\
Run a Python program on a SCOOP cluster: the program is the origin, and its scoop.futures calls
run on the workers.  With no hosts, the workers run on this machine (one per core); inside a
SLURM, PBS/Torque or SGE allocation they run on the allocated nodes, started by the batch
system's own launcher (srun, pbsdsh, qrsh -inherit), one per allocated CPU.

-n counts the workers that run tasks.  The origin (your program) comes in addition and runs no
queued tasks, so `-n 2` on a 2-core machine keeps both cores computing while it waits.
"""

EPILOG = """\
examples:
  python -m scoop prog.py                     one worker per core on this machine
  python -m scoop -n 8 --hosts a b prog.py    8 workers over hosts a and b (over SSH)
  python -m scoop --hostfile hosts.txt prog.py arg1 arg2
  salloc -N2 -n8 python -m scoop prog.py      8 workers in SLURM job steps on the 2 nodes
hostfile lines: `host [count]`; # starts a comment.  SSH honours ~/.ssh/config.
"""


def build_parser() -> argparse.ArgumentParser:
    """The launcher's options come from scoop.options (declared once for every front end)."""
    from ..options import add_arguments, add_launcher_arguments
    p = argparse.ArgumentParser(prog="python -m scoop", description=DESCRIPTION, epilog=EPILOG,
                                allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, "cli")
    add_launcher_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="only errors from the launcher")
    p.add_argument("--dry-run", action="store_true",
                   help="batch jobs: print what would be submitted (command and job script), submit nothing")
    p.add_argument("program", nargs="?",
                   help="the Python program to run (the origin); its arguments follow it")
    return p


def _one_value_flags() -> set:
    from ..options import flags_taking_a_value
    return flags_taking_a_value("cli")


def split_argv(argv):
    """Splits ``[launcher options] program [program args]``.

    ``--hosts a b prog.py`` must work as in SCOOP, so the program is found by looking (the
    first word that is a ``.py`` file or an existing file, not an option's value) rather than
    left to argparse, whose ``nargs='+'`` would swallow it; ``--`` also ends the options.
    """
    one_value = _one_value_flags()
    for i, tok in enumerate(argv):
        if tok == "--":
            return argv[:i], argv[i + 1:i + 2], argv[i + 2:]
        if tok.startswith("-") or (i > 0 and argv[i - 1] in one_value):
            continue
        if tok.endswith(".py") or os.path.isfile(tok):
            return argv[:i], [tok], argv[i + 1:]
    return argv, [], []


class _Terminated(BaseException):
    pass


def main(argv=None) -> int:
    launcher_argv, program, prog_args = split_argv(sys.argv[1:] if argv is None else list(argv))
    parser = build_parser()
    args = parser.parse_args(launcher_argv)
    if program:
        args.program = program[0]
    if args.dry_run:
        return _dry_run(parser, args)
    if not args.program:
        parser.error("no program given: python -m scoop [options] program.py [args]")
    args.args = prog_args
    prog = args.program
    if not os.path.isfile(prog):
        sys.stderr.write(f"scoop: error: program {prog!r} not found\n")
        return 2
    from ..cluster import Cluster
    from ..errors import ClusterError
    from ..options import given, launcher_given, no_effect_notes
    from .hosts import HostfileError

    extra = launcher_given(args)
    if not args.quiet:
        for note in no_effect_notes(extra):
            sys.stderr.write(note + "\n")
    if "log" in extra:
        try:
            _log_to(extra["log"])
        except OSError as exc:
            sys.stderr.write(f"scoop: error: --log {extra['log']}: {exc.strerror or exc}\n")
            return 2

    def on_term(signum, frame):
        raise _Terminated(signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    # a process started in the background by a shell without job control inherits SIGINT
    # ignored, and Python then never raises KeyboardInterrupt: the launcher of a cluster must
    # still stop (and stop its cluster) when it is interrupted, as it does on SIGTERM and SIGHUP
    signal.signal(signal.SIGINT, signal.default_int_handler)
    prog_dir = os.path.dirname(os.path.abspath(prog))
    options = given(args)
    if extra.get("profile"):
        # each worker profiles itself (scoop.worker) into the directory named here, relative to its
        # working directory, as SCOOP 0.7's ./profile/
        options["env"] = dict(options.get("env") or {}, SCOOP_PROFILE=PROFILE_DIR)
    try:
        cluster = Cluster(program_dir=prog_dir, fork=True, **options)
    except ValueError as exc:
        parser.error(str(exc))
    code = 0
    try:
        try:
            cluster.start()
            if cluster.pending:
                # a program run by scoop expects its workers (scoop.SIZE): batch jobs still in the
                # queue are waited for here, as a job script waits for its allocation
                if not args.quiet:
                    sys.stderr.write(f"scoop: waiting for {cluster.pending} workers pending in the queue "
                                     f"(jobs {', '.join(cluster.launcher.pending())})\n")
                cluster.wait_for_workers(cluster.requested, float("inf"))
        except (ClusterError, HostfileError, OSError) as exc:
            sys.stderr.write(f"scoop: error: {exc}\n")
            return 1
        if options.get("verbose") and not args.quiet:
            plan = ", ".join(f"{h}: {k}" for h, k in cluster.plan)
            pending = f", {cluster.pending} pending in the queue" if cluster.pending else ""
            message = (f"{cluster.size} workers ({plan}) started by {cluster.launcher.name}{pending}; "
                       f"broker on port {cluster.main_port}")
            if "log" in extra:
                import scoop
                scoop.logger.info(message)
            else:
                sys.stderr.write(f"scoop: {message}\n")
        sys.argv = [prog] + list(args.args)
        sys.path.insert(0, prog_dir)
        try:
            if extra.get("profile"):
                _run_profiled(prog)
            else:
                runpy.run_path(prog, run_name="__main__")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                sys.stderr.write(f"{exc.code}\n")
        except KeyboardInterrupt:
            sys.stderr.write("scoop: interrupted\n")
            code = 130
        except _Terminated as exc:
            code = 128 + exc.args[0]
        except BaseException:
            _print_user_traceback()
            code = 1
    except (KeyboardInterrupt, _Terminated) as exc:
        code = 130 if isinstance(exc, KeyboardInterrupt) else 128 + exc.args[0]
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sys.stdout.flush()
        cluster.stop()
    return code


PROFILE_DIR = "profile"


def _run_profiled(prog: str):
    """The program under cProfile, its statistics in profile/origin.prof (also when it raises)."""
    import cProfile
    prof = cProfile.Profile()
    try:
        prof.runcall(runpy.run_path, prog, run_name="__main__")
    finally:
        os.makedirs(PROFILE_DIR, exist_ok=True)
        prof.dump_stats(os.path.join(PROFILE_DIR, "origin.prof"))


def _log_to(path: str):
    """--log FILE: SCOOP's log records go to FILE (appended) instead of stderr."""
    import logging

    import scoop
    handler = logging.FileHandler(path, encoding="utf-8")
    log = scoop.logger
    for old in list(log.handlers):
        handler.setFormatter(old.formatter)
        for f in old.filters:
            handler.addFilter(f)
        log.removeHandler(old)
    log.addHandler(handler)


def _dry_run(parser, args) -> int:
    from ..cluster import Cluster
    from ..errors import ClusterError
    from ..options import given
    try:
        print(Cluster(**given(args)).dry_run(), end="")
    except ValueError as exc:
        parser.error(str(exc))
    except ClusterError as exc:
        sys.stderr.write(f"scoop: error: {exc}\n")
        return 1
    return 0


def _print_user_traceback():
    """Prints the program's traceback without the launcher's own frames."""
    etype, value, tb = sys.exc_info()
    while tb is not None and ("runpy" in tb.tb_frame.f_code.co_filename
                              or tb.tb_frame.f_code.co_filename.endswith("cProfile.py")
                              or tb.tb_frame.f_code.co_filename == __file__):
        tb = tb.tb_next
    traceback.print_exception(etype, value, tb)
    sys.stderr.flush()
