"""Named cluster profiles: site defaults in TOML files, ``--cluster-profile NAME``.

A site installs ``/etc/scoop/clusters.toml`` (or points ``SCOOP_CONFIG`` at another file); a user
adds ``~/.config/scoop/clusters.toml`` (``$XDG_CONFIG_HOME``).  Each holds profiles whose keys are
the cluster options (``cpus_per_job`` or ``cpus-per-job``)::

    [profiles.gpu-short]
    slurm = true
    partition = "gpu"
    gpus = 1
    walltime = "00:30:00"

The user's file wins key by key over the site's; options given on the command line or as
keywords win over both.  Values are checked by the same declarations as every option
(:mod:`scoop.options`), and a mistake names the file and the profile.
"""
from __future__ import annotations

import os
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from .errors import OptionError

__all__ = ["SITE_FILE", "config_files", "load_profile", "profile_names"]

SITE_FILE = "/etc/scoop/clusters.toml"


def config_files(env=None) -> list[str]:
    """The files profiles come from, site first (``SCOOP_CONFIG`` replaces the site file)."""
    env = os.environ if env is None else env
    user_dir = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return [env.get("SCOOP_CONFIG") or SITE_FILE, os.path.join(user_dir, "scoop", "clusters.toml")]


def _read(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise OptionError(f"cannot read cluster profiles in {path}: {exc}") from None
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
        raise OptionError(f"{path}: profiles are tables such as [profiles.gpu-short]")
    return profiles


def profile_names(env=None) -> list[str]:
    return sorted({name for path in config_files(env) for name in _read(path)})


def load_profile(name: str, names, check, env=None) -> dict:
    """The options of profile ``name``, each one of ``names`` and checked by ``check(values)``
    (the option declarations, passed down by :mod:`scoop.options`); OptionError naming the
    file for a bad one."""
    values, found = {}, []
    for path in config_files(env):
        table = _read(path).get(name)
        if table is None:
            continue
        found.append(path)
        for key, value in table.items():
            option = key.replace("-", "_")
            if option not in names or option == "cluster_profile":
                raise OptionError(f"profile {name!r} in {path}: {key!r} is not a cluster option")
            values[option] = value
        try:
            check(values)
        except OptionError as exc:
            raise OptionError(f"profile {name!r} in {path}: {exc}") from None
    if not found:
        known = ", ".join(profile_names(env)) or "none"
        raise OptionError(f"no cluster profile {name!r} in {' or '.join(config_files(env))} (known: {known})")
    return values
