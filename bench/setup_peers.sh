#!/usr/bin/env bash
# Prepare everything bench/run.py compares against.  Idempotent: safe to re-run.
#
#  1. bench/.venv-scoop07  -- a private venv holding the ORIGINAL SCOOP 0.7.2.0
#     from the package registry.  Its import name ("scoop") clashes with ours,
#     hence the separate venv.  No source patches are applied: on Python 3.11
#     SCOOP 0.7.2.0 installs and runs unchanged (it only needs greenlet and
#     pyzmq, which pip pulls in; "argparse" is only required on Python < 2.7).
#     psutil is added because SCOOP's optional "nice" extra uses it and our
#     workloads read RSS with it.
#  2. The peers in the *current* interpreter (loky, dask.distributed,
#     ipyparallel, jupyter_client/ipykernel, psutil, matplotlib, blake3) -- installed
#     only when missing.  These are the same packages as our `bench` extra.
#
# Usage: bash bench/setup_peers.sh        (PYTHON=/path/to/python to override)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"
VENV="$HERE/.venv-scoop07"
SCOOP07_VERSION="0.7.2.0"

echo "== bench setup: interpreter $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"

# --- 1. original SCOOP 0.7.2.0 in its own venv --------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    "$PY" -m venv "$VENV"
fi
have_scoop07() {
    "$VENV/bin/python" - "$SCOOP07_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
assert version("scoop") == sys.argv[1], version("scoop")
import scoop.futures, greenlet, zmq, psutil  # noqa: F401
EOF
}
if have_scoop07; then
    echo "== SCOOP $SCOOP07_VERSION already installed in $VENV"
else
    echo "== installing scoop==$SCOOP07_VERSION (+ greenlet, pyzmq, psutil) into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip setuptools wheel
    # setup.py of 0.7.2.0 imports the package itself at build time; with the
    # default build isolation this works because it only needs the stdlib.
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "scoop==$SCOOP07_VERSION" "greenlet>=3" "pyzmq>=25" psutil
    have_scoop07 || { echo "!! SCOOP $SCOOP07_VERSION import check failed" >&2; exit 1; }
fi

# Smoke test: a 2-worker SCOOP 0.7.2 run must complete (kills its group on timeout).
SMOKE="$(mktemp -d)"
trap 'rm -rf "$SMOKE"' EXIT
cat > "$SMOKE/smoke.py" <<'EOF'
from scoop import futures
def sq(x):
    return x * x
if __name__ == "__main__":
    assert sum(futures.map(sq, range(100))) == 328350
    assert futures.submit(abs, -3).result() == 3
    print("scoop07-smoke-ok")
EOF
if (cd "$SMOKE" && timeout -k 5 60 setsid "$VENV/bin/python" -m scoop -n 2 smoke.py 2>"$SMOKE/err" | grep -q scoop07-smoke-ok); then
    echo "== SCOOP $SCOOP07_VERSION smoke run OK (python -m scoop -n 2)"
else
    echo "!! SCOOP $SCOOP07_VERSION smoke run failed:" >&2
    cat "$SMOKE/err" >&2
    exit 1
fi

# --- 2. peers in the current interpreter --------------------------------------
missing=()
"$PY" -c 'import loky' 2>/dev/null            || missing+=("loky>=3.4")
"$PY" -c 'import distributed' 2>/dev/null     || missing+=("dask[distributed]>=2024.1")
"$PY" -c 'import ipyparallel' 2>/dev/null     || missing+=("ipyparallel>=8.6")
"$PY" -c 'import matplotlib' 2>/dev/null      || missing+=("matplotlib>=3.7")
"$PY" -c 'import psutil' 2>/dev/null          || missing+=("psutil>=5.9")
"$PY" -c 'import blake3' 2>/dev/null          || missing+=("blake3>=0.4")
"$PY" -c 'import jupyter_client' 2>/dev/null  || missing+=("jupyter_client>=8")
"$PY" -c 'import ipykernel' 2>/dev/null       || missing+=("ipykernel>=6.20")
if [ "${#missing[@]}" -gt 0 ]; then
    echo "== installing missing peer packages: ${missing[*]}"
    "$PY" -m pip install --quiet --disable-pip-version-check "${missing[@]}"
else
    echo "== peer packages present (loky, distributed, ipyparallel, matplotlib, psutil, blake3, jupyter_client, ipykernel)"
fi
echo "== bench setup done"
