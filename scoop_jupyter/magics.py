"""``%scoop_cluster``: start, stop, observe and resize this kernel's SCOOP cluster.

The start options are ``python -m scoop``'s, generated from the same declarations
(scoop.options), so a command line moves into a notebook unchanged.  One help text, generated
from the parser, is shown by ``%scoop_cluster --help``, ``%scoop_cluster?`` and
``%scoop_cluster help``: usage, every command with its arguments, every start option, examples.
Mistakes are reported as one-line usage errors (IPython's ``UsageError``), with a "did you
mean" for a misspelt command, never as a traceback from the parser.
"""
from __future__ import annotations

import argparse
import difflib
import re
import shlex

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

from scoop.errors import ClusterError
from scoop.options import add_arguments, given

from . import api
from .views import pending_text, plural


class _HelpShown(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that reports instead of exiting the kernel."""

    def error(self, message):
        raise UsageError(f"%scoop_cluster: {message}{_did_you_mean(message)}  (see %scoop_cluster --help)")

    def exit(self, status=0, message=None):
        if message:
            print(message, end="")
        raise _HelpShown()

    def print_help(self, file=None):
        print(full_help() if self.prog == "%scoop_cluster" else self.format_help(), end="")


def _did_you_mean(message: str) -> str:
    """", did you mean 'start'?" for ``invalid choice: 'strat'``."""
    m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if not m:
        return ""
    choices = re.findall(r"'([^']*)'", m.group(2)) or [c.strip() for c in m.group(2).split(",")]
    close = difflib.get_close_matches(m.group(1), choices, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _positive(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="%scoop_cluster", description="Run a SCOOP cluster whose origin is this kernel: "
                "scoop.futures calls in later cells run on its workers.",
                epilog="Python equivalents: scoop_jupyter.start(n=4, ...), .stop(), .status(), "
                       ".restart(), .scale(n), .dashboard(), .timeline(), .logs().")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    s = sub.add_parser("start", help="start a cluster (this kernel becomes its origin)",
                       description="Start a SCOOP broker and workers; this kernel becomes the origin.")
    add_arguments(s, "magic")
    s.add_argument("--no-progress", dest="progress", action="store_false", default=True,
                   help="no progress bars for long futures.map calls")
    s.add_argument("--dry-run", action="store_true",
                   help="batch jobs: print what would be submitted (command and job script), submit nothing")
    sub.add_parser("stop", help="stop the cluster (live views keep its last state)")
    sub.add_parser("status", help="totals, workers per host and per worker (the default command)")
    sub.add_parser("restart", help="stop, then start with the same options")
    sc = sub.add_parser("scale", help="grow or shrink the cluster to N workers")
    sc.add_argument("workers", type=_positive, metavar="N")
    sub.add_parser("jobs", help="this session's batch jobs, ended ones too: state, nodes, times, exit status")
    ad = sub.add_parser("adapt", help="scale with the work between --minimum and --maximum workers "
                                      "(--off: stop adapting)")
    ad.add_argument("--minimum", type=int, default=1, metavar="N", help="fewest workers (default 1)")
    ad.add_argument("--maximum", type=int, default=None, metavar="N",
                    help="most workers (default: the hosts' or the allocation's slots)")
    ad.add_argument("--interval", type=float, default=1.0, metavar="S",
                    help="seconds between two looks at the work (default 1)")
    ad.add_argument("--wait", type=float, default=5.0, metavar="S",
                    help="seconds a worker idles before it is retired (default 5)")
    ad.add_argument("--off", action="store_true", help="stop adapting; the workers stay as they are")
    sub.add_parser("dashboard", help="show the live load dashboard")
    tl = sub.add_parser("timeline", help="task timeline of the last maps: a row per worker, a bar per task")
    tl.add_argument("--last", type=float, default=60.0, metavar="SECONDS",
                    help="how far back to show (default: 60 s)")
    lg = sub.add_parser("logs", help="recent output of every worker, or of one (logs w3); -n N lines each")
    lg.add_argument("worker", nargs="?", default=None, metavar="NAME")
    lg.add_argument("-n", "--lines", type=_positive, default=50, metavar="N",
                    help="lines per worker (default 50)")
    pr = sub.add_parser("progress", help="turn progress bars for long maps on or off")
    pr.add_argument("switch", choices=["on", "off"])
    sub.add_parser("help", help="this help")
    return p


EXAMPLES = """\
examples:
  %scoop_cluster start -n 4                      4 local workers; this kernel is the origin
  %scoop_cluster start --hosts node1 node2 -n 8  workers over SSH (~/.ssh/config is honoured)
  %scoop_cluster start --slurm -n 16 --cpus-per-job 4 --walltime 01:00:00
                                                 workers from SLURM batch jobs, from a login node
  %scoop_cluster status                          totals, hosts and workers
  %scoop_cluster dashboard                       live view; leaves its last state when stopped
  %scoop_cluster scale 8                         grow, or retire workers after their tasks
  %scoop_cluster logs w3 -n 20                   the last 20 lines printed by worker w3
  %scoop_cluster timeline --last 30              a bar per task of the last 30 s, a row per worker
  %scoop_cluster stop
"""


def full_help() -> str:
    """Usage, every command with its arguments, every ``start`` option, examples."""
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    out = [p.format_usage(), p.description, "", "commands:"]
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, parser in sub.choices.items():
        usage = re.sub(r"\s+", " ", parser.format_usage().replace("usage: ", "").replace(" [-h]", "")).strip()
        if name == "start":
            usage = "%scoop_cluster start [-n N] [OPTIONS]   (the start options are below)"
        out.append(f"  {usage}")
        out.append(f"      {helps.get(name, '')}")
    start = sub.choices["start"].format_help()
    options = start[start.find("options:"):] if "options:" in start else start
    out += ["", "start " + options.strip(), "", EXAMPLES, p.epilog, ""]
    return "\n".join(out).replace("`", "")  # plain text: no markup quotes


def _queue_note(cluster) -> str:
    """For a batch-job cluster: how many workers run and how many wait in the queue."""
    if cluster is None or not getattr(cluster, "queued", False):
        return ""
    pending = pending_text({"jobs": cluster.jobs()})
    return f": {cluster.size} running" + (f", {pending}" if pending else "")


def started_message(session) -> str:
    """The start line: workers per host, or for a batch-job cluster the jobs submitted and that
    their workers join as the scheduler starts them (start does not wait for the queue)."""
    c = session.cluster
    if c is None or not getattr(c, "queued", False):
        return session.summary()
    jobs = [j for j in c.jobs() if j["state"] != "ended"]
    ids = ", ".join(str(j["id"]) for j in jobs)
    pending = pending_text({"jobs": jobs})
    n = c.requested
    took = f" in {session.start_seconds:.2f} s" if session.start_seconds is not None else ""
    return (f"SCOOP cluster started{took}: {plural(len(jobs), c.launcher.name + ' job')} "
            f"submitted for {plural(n, 'worker')} (job{'s' if len(jobs) != 1 else ''} {ids}); "
            f"{c.size} running" + (f", {pending}" if pending else "") + ".\n"
            f"Workers join as their jobs start (%scoop_cluster status shows them; "
            f"scoop_jupyter.cluster().wait_for_workers({n}) waits for them); "
            f"this kernel is the origin (broker port {c.main_port})")


def adapt_command(cluster, args) -> str:
    """``%scoop_cluster adapt``: starts (or with --off ends) adaptive scaling; says what it does."""
    if cluster is None or not cluster.running:
        raise ClusterError("no SCOOP cluster is running in this kernel")
    if args.off:
        policy = cluster.adaptive
        if policy is None:
            return "SCOOP cluster was not adapting"
        policy.stop()
        return f"SCOOP cluster stopped adapting; it keeps its {cluster.requested} workers"
    p = cluster.adapt(args.minimum, args.maximum, interval=args.interval, wait=args.wait)
    return (f"SCOOP cluster adapts between {p.minimum} and {p.maximum} workers: it grows as tasks wait and "
            f"retires workers idle for {p.wait:g} s (looking every {p.interval:g} s)")


@magics_class
class ScoopMagics(Magics):
    """The ``%scoop_cluster`` line magic."""

    @line_magic
    def scoop_cluster(self, line: str = ""):
        parser = build_parser()
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%scoop_cluster: {exc}") from None
        try:
            args = parser.parse_args(argv)
        except _HelpShown:
            return None
        cmd = args.command or "status"
        try:
            if cmd == "help":
                print(full_help(), end="")
            elif cmd == "start" and args.dry_run:
                from scoop.cluster import Cluster
                print(Cluster(**given(args)).dry_run(), end="")
            elif cmd == "start":
                api.start(progress=args.progress, **given(args))
                print(started_message(api.session()))
            elif cmd == "stop":
                s = api.session()
                print("SCOOP cluster stopped" if api.stop() else
                      "no SCOOP cluster is running" if s.feed.started else "no SCOOP cluster yet")
            elif cmd == "status":
                from IPython.display import display
                display(api.status())
            elif cmd == "restart":
                api.restart()
                print(started_message(api.session()).replace("started", "restarted", 1))
            elif cmd == "scale":
                api.scale(args.workers)
                print(f"SCOOP cluster scaled to {plural(args.workers, 'worker')}"
                      + _queue_note(api.cluster()))
            elif cmd == "jobs":
                from scoop.launch.jobtable import job_table
                c = api.cluster()
                print(job_table(c.jobs(history=True)) if c is not None else "no SCOOP cluster is running")
            elif cmd == "adapt":
                print(adapt_command(api.cluster(), args))
            elif cmd == "dashboard":
                from IPython.display import display
                display(api.dashboard())
            elif cmd == "timeline":
                if args.last <= 0:
                    raise ValueError(f"--last must be a positive number of seconds, not {args.last}")
                from IPython.display import display
                display(api.timeline(args.last))
            elif cmd == "logs":
                print(api.logs(args.worker, args.lines))
            elif cmd == "progress":
                api.session().progress.enabled = args.switch == "on"
                print(f"map progress bars {args.switch}")
        except (ClusterError, ValueError) as exc:
            # the cluster explains what failed; a traceback through this magic would only hide it
            raise UsageError(f"%scoop_cluster {cmd}: {exc}") from None
        return None


# ``%scoop_cluster?`` shows the magic's docstring: the same full help as --help
ScoopMagics.scoop_cluster.__doc__ = full_help()
