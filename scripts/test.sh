#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine, then runs it.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
# a private SLURM cluster for tests/test_slurm.py (tests/slurm_cluster.py starts the daemons itself)
[ -x /usr/sbin/slurmctld ] || need_apt+=(slurmctld)
[ -x /usr/sbin/slurmd ] || need_apt+=(slurmd)
command -v sbatch >/dev/null 2>&1 || need_apt+=(slurm-client)
[ -x /usr/sbin/munged ] || need_apt+=(munge)
# a private Grid Engine cell for tests/test_sge.py (tests/sge_cluster.py starts the daemons itself)
[ -x /usr/sbin/sge_qmaster ] || need_apt+=(gridengine-master)
[ -x /usr/sbin/sge_execd ] || need_apt+=(gridengine-exec)
command -v qrsh >/dev/null 2>&1 || need_apt+=(gridengine-client)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing system packages: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # gridengine asks whether to configure a cell: no (the tests make their own)
    printf '%s\n' "gridengine-common shared/gridengineconfig boolean false" \
      "gridengine-client shared/gridengineconfig boolean false" \
      "gridengine-master shared/gridengineconfig boolean false" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "== not root: skipping system packages (${need_apt[*]}); tests needing them will skip"
  fi
fi

# --upgrade-strategy eager: every dependency at its newest release, as a fresh machine gets it, so a
# long-lived machine cannot hide breakage from a new release
echo "== installing scoop-jupyter with its test dependencies, all at their newest releases (builds the JupyterLab extension)"
python -m pip install -q --disable-pip-version-check --upgrade --upgrade-strategy eager -e ".[test,docs]"

echo "== lint (ruff, configured in pyproject.toml)"
python -m ruff check .

echo "== documentation (Sphinx, warnings are errors; into the lab extension, see docs/README.md)"
python docs/build.py

echo "== running the test suite"
exec python -m pytest -q --durations=15 "$@"
