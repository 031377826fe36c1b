"""One declaration per option (scoop.options): the CLI, the magic and the Python APIs agree."""
from __future__ import annotations

import dataclasses

import pytest

from scoop.launch.cli import build_parser as cli_parser
from scoop.launch.cli import split_argv
from scoop.options import ClusterOptions, OptionError, given, option_names, walltime_seconds


def _dests(parser):
    return {a.dest for a in parser._actions}


def _start_parser():
    from scoop_jupyter.magics import build_parser
    p = build_parser()
    sub = next(a for a in p._actions if a.dest == "command")
    return sub.choices["start"]


def test_every_option_is_in_the_cli_and_the_shared_ones_in_the_magic():
    cli = _dests(cli_parser())
    magic = _dests(_start_parser())
    for f in dataclasses.fields(ClusterOptions):
        scope = f.metadata["scope"]
        assert ("cli" in scope) == (f.name in cli), f.name
        assert ("magic" in scope) == (f.name in magic), f.name
    for hpc in ("launcher", "oversubscribe", "slurm", "cpus_per_job", "walltime", "partition", "account",
                "sbatch_arg", "job_replace", "queue"):
        assert hpc in cli and hpc in magic


def test_cli_and_magic_parse_to_the_same_options():
    line = ["-n", "3", "--hosts", "a", "b", "-b", "2", "--heartbeat-timeout", "4.5", "--no-inline",
            "--launcher", "srun", "--oversubscribe", "--walltime", "01:00:00", "--sbatch-arg=--mem=1G",
            "--sbatch-arg=--qos=low"]
    from_cli = given(cli_parser().parse_args(line))
    from_magic = given(_start_parser().parse_args(line))
    assert from_cli == from_magic
    opts = ClusterOptions.from_kwargs(**from_cli)
    assert (opts.n, opts.hosts, opts.brokers, opts.heartbeat_timeout, opts.inline, opts.launcher) == \
        (3, ["a", "b"], 2, 4.5, False, "srun")
    assert opts.sbatch_arg == ["--mem=1G", "--qos=low"] and opts.oversubscribe


def test_options_not_given_are_absent_so_defaults_live_in_one_place():
    assert given(cli_parser().parse_args([])) == {}
    assert ClusterOptions().heartbeat_timeout == 3.0 and ClusterOptions().launcher == "auto"


@pytest.mark.parametrize("kwargs,says", [
    ({"n": 0}, "n (-n/--workers/--number): expected at least 1, got 0"),
    ({"brokers": "two"}, "expected a whole number"),
    ({"heartbeat_timeout": float("nan")}, "heartbeat_timeout"),
    ({"launcher": "mpirun"}, "launcher (--launcher): expected one of"),
    ({"walltime": "one hour"}, "walltime"),
    ({"cpus_per_job": 0}, "cpus_per_job"),
    ({"slurm": True, "launcher": "ssh"}, "--slurm means --launcher sbatch"),
])
def test_bad_values_name_the_option(kwargs, says):
    with pytest.raises(OptionError) as e:
        ClusterOptions.from_kwargs(**kwargs)
    assert says in str(e.value)


def test_unknown_keywords_are_named():
    with pytest.raises(TypeError, match="unknown cluster option 'nworkers'"):
        ClusterOptions.from_kwargs(nworkers=2)


def test_values_are_converted():
    o = ClusterOptions(n="4", hosts="h1", slurm=True, nice="5", heartbeat_timeout="2")
    assert (o.n, o.hosts, o.launcher, o.nice, o.heartbeat_timeout) == (4, ["h1"], "sbatch", 5, 2.0)


def test_python_api_accepts_every_option():
    import inspect

    import scoop_jupyter
    from scoop_jupyter.origin import CLUSTER_OPTIONS
    assert set(CLUSTER_OPTIONS) == set(option_names()) - {"n", "prefix_output"}
    assert "options" in inspect.signature(scoop_jupyter.start).parameters
    with pytest.raises(TypeError, match="unknown cluster option"):
        scoop_jupyter.start(2, nworkers=3)
    with pytest.raises(ValueError, match="expected at least 1"):
        scoop_jupyter.start(0)


def test_magic_reports_bad_values_as_usage_errors():
    from IPython.core.error import UsageError
    with pytest.raises(UsageError, match="expected at least 1, got 0"):
        _start_parser().parse_args(["-n", "0"])


def test_split_argv_knows_which_flags_take_a_value():
    assert split_argv(["--walltime", "10", "prog.py", "x"]) == (["--walltime", "10"], ["prog.py"], ["x"])
    assert split_argv(["--hosts", "a", "b", "prog.py"]) == (["--hosts", "a", "b"], ["prog.py"], [])
    assert split_argv(["--oversubscribe", "--", "prog", "-n"]) == (["--oversubscribe"], ["prog"], ["-n"])


@pytest.mark.parametrize("text,seconds", [("10", 600), ("10:30", 630), ("01:00:00", 3600),
                                          ("2-00", 172800), ("1-02:03:04", 93784)])
def test_walltime_seconds(text, seconds):
    assert walltime_seconds(text) == seconds
