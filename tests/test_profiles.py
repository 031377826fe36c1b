"""Cluster profiles from clusters.toml (scoop/profiles.py): pure option handling, no process.
A profile starting real clusters is tested in test_slurm.py and test_batch_transcripts.py."""
from __future__ import annotations

import pytest

from scoop.options import ClusterOptions, OptionError


@pytest.fixture
def config(tmp_path, monkeypatch):
    site = tmp_path / "site.toml"
    monkeypatch.setenv("SCOOP_CONFIG", str(site))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "user"))
    (tmp_path / "user" / "scoop").mkdir(parents=True)

    def write(site_text, user_text=""):
        site.write_text(site_text)
        (tmp_path / "user" / "scoop" / "clusters.toml").write_text(user_text)
    return write


def test_profile_values_apply_and_given_options_win(config):
    config('[profiles.gpu-short]\nslurm = true\npartition = "gpu"\ncpus-per-job = 4\nwalltime = "00:30:00"\n',
           '[profiles.gpu-short]\naccount = "mine"\n')
    o = ClusterOptions.from_kwargs(cluster_profile="gpu-short", walltime="01:00:00", n=None)
    assert (o.launcher, o.partition, o.cpus_per_job, o.walltime, o.account) == \
        ("sbatch", "gpu", 4, "01:00:00", "mine")


def test_unknown_profile_names_the_files_and_the_known_ones(config):
    config('[profiles.a]\nn = 2\n[profiles.b]\nn = 3\n')
    with pytest.raises(OptionError, match=r"no cluster profile 'c' in .*site.toml or .*toml \(known: a, b"):
        ClusterOptions.from_kwargs(cluster_profile="c")


@pytest.mark.parametrize("text, message", [
    ('[profiles.p]\ncpus_per_job = 0\n', r"profile 'p' in .*site.toml: cpus_per_job \(--cpus-per-job\): "
                                         r"expected at least 1"),
    ('[profiles.p]\nmemmory = "4G"\n', r"profile 'p' in .*site.toml: 'memmory' is not a cluster option"),
    ('[profiles.p\n', r"cannot read cluster profiles in .*site.toml"),
    ('profiles = 3\n', r"site.toml: profiles are tables"),
])
def test_bad_profiles_are_errors_naming_file_and_value(config, text, message):
    config(text)
    with pytest.raises(OptionError, match=message):
        ClusterOptions.from_kwargs(cluster_profile="p")
