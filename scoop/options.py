"""Every option of a SCOOP cluster, declared once.

``python -m scoop``'s parser, the ``%scoop_cluster start`` parser and the keyword arguments of
``Cluster(...)`` and ``scoop_jupyter.start(...)`` are all generated from :class:`ClusterOptions`,
so an option cannot exist in one front end and be dropped by another, and every front end
rejects the same bad values with the same message.

A field's metadata says how it appears on a command line (``flags``, ``help``, ``metavar``,
``action``) and how a value is checked (``check``: converts and validates one value, raising
ValueError with a message that names the problem).  ``scope`` says which front ends show it:
``"cli"`` (``python -m scoop``), ``"magic"`` (``%scoop_cluster start``); every field is a keyword
of the Python APIs.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import OptionError
from .liveness import DEFAULT_TIMEOUT
from .profiles import load_profile

__all__ = ["ClusterOptions", "OptionError", "LAUNCHER_NAMES", "add_arguments", "option_names"]

#: the ways to start workers (``auto`` picks one from the hosts and the batch allocation)
LAUNCHER_NAMES = ("auto", "local", "ssh", "srun", "pbsdsh", "qrsh", "blaunch", "sbatch", "qsub", "sge", "lsf")

BOTH = ("cli", "magic")




# ---- value checks: each converts one value and raises ValueError naming the problem -------------

def _int(text) -> int:
    if isinstance(text, bool):
        raise ValueError(f"expected a whole number, got {text!r}")
    if isinstance(text, int):
        return text
    if isinstance(text, float) and text.is_integer():
        return int(text)
    try:
        return int(str(text).strip())
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None


def positive_int(text) -> int:
    value = _int(text)
    if value < 1:
        raise ValueError(f"expected at least 1, got {value}")
    return value


def any_int(text) -> int:
    return _int(text)


def positive_float(text) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"expected a positive number of seconds, got {text!r}")
    return value


def launcher_name(text) -> str:
    value = str(text).strip().lower()
    if value not in LAUNCHER_NAMES:
        raise ValueError(f"expected one of {', '.join(LAUNCHER_NAMES)}, got {text!r}")
    return value


def on_off(text) -> bool:
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value not in ("on", "off"):
        raise ValueError(f"expected on or off, got {text!r}")
    return value == "on"


def walltime(text) -> str:
    """SLURM's forms: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    value = str(text).strip()
    if not re.fullmatch(r"(\d+-)?\d+(:\d{1,2}){0,2}", value):
        raise ValueError(f"expected a walltime like 01:30:00 or 2-00:00:00, got {text!r}")
    return value


def walltime_seconds(text: str) -> int:
    """Seconds in a SLURM walltime (``MM`` alone means minutes, as sbatch reads it)."""
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:
        hms = (parts + [0, 0])[:3]  # D-HH[:MM[:SS]]
    else:
        hms = parts if len(parts) == 3 else [0, *parts, 0][:3]  # MM or MM:SS
    return int(days or 0) * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2]


def memory_mb(text) -> int:
    """MiB in ``"4G"``, ``"4 GB"``, ``"1.5GiB"``, ``"500M"``, ``"2T"`` (binary units; a bare
    number is MiB, as sbatch reads it)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"expected an amount of memory like 4G or 500M, got {text!r}")
    scale = {"k": 1 / 1024, "": 1, "m": 1, "g": 1024, "t": 1024 * 1024}[m.group(2).lower()]
    return max(1, int(float(m.group(1)) * scale + 0.5))


def memory(text) -> str:
    memory_mb(text)
    return str(text).strip()


def adapt_range(value) -> tuple[int, int]:
    """``"2:64"`` or ``(2, 64)``: the fewest and the most workers of an adaptive cluster."""
    if isinstance(value, str):
        lo, sep, hi = value.partition(":")
        if not sep:
            raise ValueError(f"expected MIN:MAX such as 2:64, got {value!r}")
        value = (lo, hi)
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise ValueError(f"expected MIN:MAX such as 2:64, got {value!r}") from None
    lo, hi = _int(lo), _int(hi)
    if lo < 0 or hi < max(1, lo):
        raise ValueError(f"expected 0 <= MIN <= MAX and MAX >= 1, got {lo}:{hi}")
    return lo, hi


def text_value(text) -> str:
    value = str(text)
    if not value.strip():
        raise ValueError("expected a non-empty value")
    return value


def _opt(default: Any = None, *, flags=(), help: str = "", metavar: str | None = None,
         check: Callable | None = None, action: str | None = None, nargs=None, scope=BOTH,
         list_of: bool = False, dest_flag: str | None = None):
    """A ClusterOptions field; see the module docstring for the metadata."""
    meta = {"flags": tuple(flags), "help": help, "metavar": metavar, "check": check, "action": action,
            "nargs": nargs, "scope": tuple(scope), "list_of": list_of, "dest_flag": dest_flag}
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ClusterOptions:
    """The options of a cluster; ``ClusterOptions(**kwargs)`` validates them all."""

    n: int | None = _opt(None, flags=("-n", "--workers", "--number"), metavar="N", check=positive_int,
                         help="number of workers (default: the hosts' or the allocation's slots, or one "
                              "per local core)")
    hosts: list = _opt([], flags=("--hosts", "--host"), nargs="+", metavar="HOST", check=text_value,
                       list_of=True,
                       help="hosts to run workers on; repeat a host to give it more workers")
    hostfile: str | None = _opt(None, flags=("--hostfile",), metavar="FILE", check=text_value,
                                help="file of `host [count]` lines")
    launcher: str = _opt("auto", flags=("--launcher",), metavar="NAME", check=launcher_name,
                         help="how workers start: local, ssh, srun (SLURM), pbsdsh (PBS), qrsh (SGE), "
                              "blaunch (LSF), or as batch jobs: sbatch (SLURM), qsub (PBS), sge, lsf; "
                              "default auto: the batch system's own launcher inside an allocation, ssh for "
                              "remote hosts, else local")
    oversubscribe: bool = _opt(False, flags=("--oversubscribe",), action="store_true",
                               help="allow more workers than the allocation's slots")
    brokers: int = _opt(1, flags=("-b", "--brokers"), metavar="B", check=positive_int,
                        help="number of brokers: a root plus B-1 sub-brokers that each serve a share "
                             "of the workers (a federation, for very large clusters; default 1)")
    path: str | None = _opt(None, flags=("--path", "-p"), metavar="DIR", check=text_value,
                            help="working directory of the workers (default: the current one)")
    python: str | None = _opt(None, flags=("--python-interpreter", "-e"), metavar="P", check=text_value,
                              help="Python interpreter of the workers (default: this one)")
    pythonpath: list = _opt([], flags=("--pythonpath",), nargs="+", metavar="DIR", check=text_value,
                            list_of=True, help="directories prepended to the workers' PYTHONPATH")
    prolog: str | None = _opt(None, flags=("--prolog",), metavar="SCRIPT", check=text_value,
                              help="shell script sourced before each worker starts (module loads, venvs)")
    nice: int | None = _opt(None, flags=("--nice",), metavar="N", check=any_int,
                            help="niceness of the workers")
    external_hostname: str | None = _opt(
        None, flags=("--external-hostname", "--broker-hostname"), metavar="ADDR", check=text_value,
        help="address remote workers use to reach the broker (default: the local address of the "
             "SSH connection to each host, or of the route to the allocation's nodes)")
    tunnel: bool = _opt(False, flags=("--tunnel",), action="store_true",
                        help="forward the broker port through SSH, for hosts that cannot connect back")
    ssh_config: str | None = _opt(None, flags=("--ssh-config",), metavar="FILE", check=text_value,
                                  help="SSH config file (default ~/.ssh/config)")
    heartbeat_timeout: float = _opt(DEFAULT_TIMEOUT, flags=("--heartbeat-timeout",), metavar="S",
                                    check=positive_float,
                                    help="seconds of silence after which a worker is declared lost "
                                         "(default 3)")
    adapt: tuple | None = _opt(None, flags=("--adapt",), metavar="MIN:MAX", check=adapt_range,
                               help="adaptive cluster: grow with queued work up to MAX workers, retire "
                                    "workers idle for 5 s down to MIN (starts with MIN, or -n)")
    connect_timeout: float = _opt(10.0, flags=("--connect-timeout",), metavar="S", check=positive_float,
                                  help="seconds to wait for a host's SSH connection (default 10)")
    encryption: bool = _opt(True, flags=("--encryption",), metavar="on|off", check=on_off,
                            help="encrypt every TCP connection (CurveZMQ, keys from the cluster secret; "
                                 "default on); off: authenticated but readable by anyone on the network, "
                                 "for a fabric the site trusts")
    inline: bool = _opt(True, flags=("--no-inline",), action="store_false",
                        help="never run a task in the process that waits on it: `submit(f).result()` "
                             "then always goes to a worker (default: it runs in place, saving a round trip)")
    prefix_output: bool = _opt(False, flags=("--prefix-output",), action="store_true", scope=("cli",),
                               help="prefix worker output lines with the worker's name")
    verbose: int = _opt(0, flags=("-v", "--verbose"), action="count", scope=("cli",),
                        help="more launcher messages")
    # ---- batch-job clusters (sbatch / qsub) -------------------------------------------------------
    slurm: bool = _opt(False, flags=("--slurm",), action="store_true",
                       help="get workers as SLURM batch jobs (same as --launcher sbatch)")
    cpus_per_job: int | None = _opt(None, flags=("--cpus-per-job",), metavar="C", check=positive_int,
                                    help="workers (CPUs) per batch job")
    walltime: str | None = _opt(None, flags=("--walltime",), metavar="T", check=walltime,
                                help="time limit of each batch job, e.g. 01:00:00")
    job_name: str | None = _opt(None, flags=("--job-name",), metavar="NAME", check=text_value,
                                help="name of the batch jobs (default scoop-<random>)")
    memory: str | None = _opt(None, flags=("--memory",), metavar="M", check=memory,
                              help="memory of each batch job, e.g. 16G")
    gpus: str | None = _opt(None, flags=("--gpus",), metavar="G", check=text_value,
                            help="GPUs of each batch job (SLURM also takes TYPE:COUNT)")
    gres: str | None = _opt(None, flags=("--gres",), metavar="SPEC", check=text_value,
                            help="generic resources of each SLURM job, e.g. gpu:a100:2")
    qos: str | None = _opt(None, flags=("--qos",), metavar="Q", check=text_value,
                           help="quality of service of the batch jobs (SLURM, PBS/Torque)")
    constraint: str | None = _opt(None, flags=("--constraint",), metavar="C", check=text_value,
                                  help="node features the batch jobs need (SLURM --constraint, LSF select[])")
    job_extra_directive: list = _opt([], flags=("--job-extra-directive",), action="append", metavar="D",
                                     check=text_value, list_of=True,
                                     help="extra line for the job script's header, without the prefix "
                                          "(repeatable), e.g. --job-extra-directive='--exclusive'")
    local_directory: str | None = _opt(None, flags=("--local-directory",), metavar="DIR", check=text_value,
                                       help="worker scratch on the batch nodes (TMPDIR of the workers); "
                                            "$VARIABLES expand on the node")
    partition: str | None = _opt(None, flags=("--partition",), metavar="P", check=text_value,
                                 help="SLURM partition of the batch jobs")
    account: str | None = _opt(None, flags=("--account",), metavar="A", check=text_value,
                               help="account charged for the batch jobs")
    queue: str | None = _opt(None, flags=("--queue",), metavar="Q", check=text_value,
                             help="PBS/SGE queue of the batch jobs")
    sbatch_arg: list = _opt([], flags=("--sbatch-arg",), action="append", metavar="ARG", check=text_value,
                            list_of=True,
                            help="extra sbatch argument (repeatable), e.g. --sbatch-arg=--mem=4G")
    job_replace: bool = _opt(False, flags=("--job-replace",), action="store_true",
                             help="submit a replacement job before a job's walltime ends")
    cluster_profile: str | None = _opt(None, flags=("--cluster-profile",), metavar="NAME", check=text_value,
                                       help="start from a named profile of clusters.toml (site and user "
                                            "defaults; options given here win)")
    env: dict = _opt(None, scope=(), help="extra environment variables of the workers")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            meta = f.metadata
            check = meta.get("check")
            if value is None:
                if f.name == "env":
                    self.env = {}
                continue
            try:
                if meta.get("list_of"):
                    if isinstance(value, (str, bytes)):
                        value = [value]
                    value = [check(v) for v in value] if check else list(value)
                elif check is not None:
                    value = check(value)
                elif isinstance(f.default, bool):
                    value = bool(value)
            except (TypeError, ValueError) as exc:
                raise OptionError(f"{_describe(f)}: {exc}") from None
            setattr(self, f.name, value)
        if self.env is not None and not isinstance(self.env, dict):
            raise OptionError(f"env: expected a dict of environment variables, got {type(self.env).__name__}")
        if self.slurm:
            if self.launcher not in ("auto", "sbatch"):
                raise OptionError(f"--slurm means --launcher sbatch, not --launcher {self.launcher}")
            self.launcher = "sbatch"

    @classmethod
    def from_kwargs(cls, **kwargs) -> "ClusterOptions":
        """Like the constructor, but an unknown keyword is a TypeError naming it and the known ones."""
        unknown = sorted(set(kwargs) - set(option_names()))
        if unknown:
            raise TypeError(f"unknown cluster option{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(map(repr, unknown))} (known: {', '.join(option_names())})")
        if kwargs.get("cluster_profile"):
            given = {k: v for k, v in kwargs.items() if v is not None and v != []}
            profile = load_profile(str(kwargs["cluster_profile"]), option_names(), lambda v: cls(**v))
            kwargs = dict(profile, **given)
        return cls(**kwargs)

    def replace(self, **changes) -> "ClusterOptions":
        return ClusterOptions.from_kwargs(**dict(self.as_dict(), **changes))

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _describe(f) -> str:
    flags = f.metadata.get("flags")
    return f"{f.name} ({'/'.join(flags)})" if flags else f.name


def option_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(ClusterOptions))


def _argtype(check, f):
    def convert(text):
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = f.name  # argparse names the type in some messages
    return convert


def add_arguments(parser: argparse.ArgumentParser, scope: str, *, suppress_defaults: bool = True) -> None:
    """Adds the options shown in ``scope`` ("cli" or "magic") to ``parser``.

    With ``suppress_defaults`` an option not given is absent from the parsed namespace, so the
    defaults live in ClusterOptions alone; :func:`given` collects what was given."""
    for f in dataclasses.fields(ClusterOptions):
        meta = f.metadata
        if scope not in meta["scope"] or not meta["flags"]:
            continue
        kw: dict = {"dest": f.name, "help": meta["help"]}
        if suppress_defaults:
            kw["default"] = argparse.SUPPRESS
        action = meta["action"]
        if action:
            kw["action"] = action
            if action == "append":
                kw["type"] = _argtype(meta["check"], f)
                kw["metavar"] = meta["metavar"]
        else:
            if meta["check"]:
                kw["type"] = _argtype(meta["check"], f)
            kw["metavar"] = meta["metavar"]
            if meta["nargs"]:
                kw["nargs"] = meta["nargs"]
        parser.add_argument(*meta["flags"], **kw)


# ---- options of the launcher itself (``python -m scoop``), not of the cluster ----------------------

@dataclass(frozen=True)
class LauncherOption:
    """An option of ``python -m scoop`` that is no cluster option: what the launcher does with
    it (``--log``, ``--profile``), or a SCOOP 0.7 option accepted for old command lines that
    has no effect here (``no_effect`` says why, in the one-line note the launcher prints)."""
    name: str
    flags: tuple
    help: str
    metavar: str | None = None    # None: a flag without a value
    no_effect: str | None = None


LAUNCHER_OPTIONS = (
    LauncherOption("log", ("--log",), "write SCOOP's log messages to FILE instead of stderr", "FILE"),
    LauncherOption("profile", ("--profile",), "write each worker's cProfile statistics to "
                   "profile/<worker>.prof (the program's to profile/origin.prof), as SCOOP 0.7 did"),
    LauncherOption("rsh", ("--rsh",), "SCOOP 0.7: start workers with rsh (no effect here)",
                   no_effect="workers start over SSH (paramiko)"),
    LauncherOption("ssh_executable", ("--ssh-executable",), "SCOOP 0.7: the ssh program (no effect here)",
                   "NAME", no_effect="SSH is built in (paramiko) and honours ~/.ssh/config"),
    LauncherOption("backend", ("--backend",), "SCOOP 0.7: ZMQ or TCP (no effect here)", "NAME",
                   no_effect="the transport is always ZeroMQ"),
    LauncherOption("debug", ("--debug",), "SCOOP 0.7: debug traces (no effect here)",
                   no_effect="set SCOOP_DEBUG=1 for debug logging"),
)


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds :data:`LAUNCHER_OPTIONS` to the launcher's parser (absent from the namespace unless given)."""
    for opt in LAUNCHER_OPTIONS:
        if opt.metavar is None:
            parser.add_argument(*opt.flags, dest=opt.name, action="store_true", default=argparse.SUPPRESS,
                                help=opt.help)
        else:
            parser.add_argument(*opt.flags, dest=opt.name, metavar=opt.metavar, default=argparse.SUPPRESS,
                                type=_argtype(text_value, opt), help=opt.help)


def launcher_given(namespace: argparse.Namespace) -> dict:
    """The launcher options present in a namespace: ``{name: value}``."""
    return {o.name: getattr(namespace, o.name) for o in LAUNCHER_OPTIONS if hasattr(namespace, o.name)}


def no_effect_notes(given_options: dict) -> list[str]:
    """One line per SCOOP 0.7 option given that has no effect here."""
    return [f"scoop: note: {o.flags[0]} has no effect here: {o.no_effect}"
            for o in LAUNCHER_OPTIONS if o.no_effect and o.name in given_options]


def given(namespace: argparse.Namespace) -> dict:
    """The cluster options present in a namespace parsed with suppressed defaults."""
    names = set(option_names())
    return {k: v for k, v in vars(namespace).items() if k in names}


def flags_taking_a_value(scope: str = "cli") -> set[str]:
    """Flags followed by exactly one value (the CLI needs them to find where the program starts)."""
    out = {flag for o in LAUNCHER_OPTIONS if o.metavar for flag in o.flags} if scope == "cli" else set()
    for f in dataclasses.fields(ClusterOptions):
        meta = f.metadata
        if scope in meta["scope"] and not meta["nargs"] and meta["action"] in (None, "append"):
            out.update(meta["flags"])
    return out
