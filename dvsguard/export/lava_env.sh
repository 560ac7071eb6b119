#!/usr/bin/env bash
# Creates the Lava runtime that checks netx exports: a separate Python 3.10 virtual
# environment with lava-dl 0.6.0 and lava-nc 0.10.0 (they require Python 3.10, numpy<2 and
# torch 2.3.x, which is why they do not live in the main .venv).
#
# Usage, from a checkout:  make lava-env   (or: bash dvsguard/export/lava_env.sh)
#        installed package: bash "$(python -c 'import dvsguard.export.lava_env as m; print(m.SCRIPT)')"
#                           (or let `dvsguard export --verify --build-lava` run it)
#        any Python 3.10:   LAVA_PYTHON=/path/to/python3.10 bash .../lava_env.sh
#
# Where the environment goes (dvsguard.export.lava_env searches the same default folder):
#   $DVSGUARD_LAVA_ENV if set; a relative path is taken from the repository root in a
#     checkout, from the current folder otherwise;
#   in a checkout (this script at <repo>/dvsguard/export/, <repo>/pyproject.toml present):
#     <repo>/.lava-env;
#   in an installed package (a wheel in site-packages): ${XDG_CACHE_HOME:-~/.cache}/dvsguard/lava-env,
#     so that it outlives reinstalls and is shared by the user's virtual environments.
#
# Idempotent: the folder holds a stamp of the requirements in .ok and the script returns at
# once when it matches. A failed build leaves no stamp, so the next run starts over.
# Downloads come from PyPI through pip's cache, so a rebuild (a fresh clone) is quick.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
if [ -f "$REPO_ROOT/pyproject.toml" ]; then
    cd "$REPO_ROOT"
    ENV_DIR="${DVSGUARD_LAVA_ENV:-.lava-env}"
else
    ENV_DIR="${DVSGUARD_LAVA_ENV:-${XDG_CACHE_HOME:-$HOME/.cache}/dvsguard/lava-env}"
fi
REQUIREMENTS=("lava-nc==0.10.0" "lava-dl==0.6.0")

find_python() {
    if [ -n "${LAVA_PYTHON:-}" ]; then echo "$LAVA_PYTHON"; return; fi
    local root
    root="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"
    local candidate
    for candidate in "$root/versions/3.10.13/bin/python" "$root"/versions/3.10.*/bin/python; do
        if [ -x "$candidate" ]; then echo "$candidate"; return; fi
    done
    if command -v python3.10 >/dev/null 2>&1; then command -v python3.10; return; fi
    return 1
}

PY="$(find_python)" || {
    echo "lava_env: no Python 3.10 found (set LAVA_PYTHON, install pyenv's 3.10, or python3.10)" >&2
    exit 3
}
PY_VERSION="$("$PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
case "$PY_VERSION" in
    3.10.*) ;;
    *) echo "lava_env: $PY is Python $PY_VERSION; lava-dl 0.6.0 needs 3.10" >&2; exit 3 ;;
esac

STAMP="$(printf '%s\n' "${REQUIREMENTS[@]}" "python $PY_VERSION" | sha256sum | cut -c1-16)"
if [ -f "$ENV_DIR/.ok" ] && [ "$(cat "$ENV_DIR/.ok")" = "$STAMP" ] && [ -x "$ENV_DIR/bin/python" ]; then
    echo "lava_env: $ENV_DIR is up to date ($STAMP)"
    exit 0
fi

echo "lava_env: building $ENV_DIR with Python $PY_VERSION ($PY): ${REQUIREMENTS[*]}"
echo "lava_env: first build downloads about 3 GB (torch 2.3.1 and its CUDA libraries); later builds use pip's cache"
rm -rf "$ENV_DIR"
"$PY" -m venv "$ENV_DIR"
# -qq: errors only (pip's warnings about unused local index folders are noise here)
"$ENV_DIR/bin/python" -m pip install -qq --upgrade "pip<25" "setuptools<70" wheel
"$ENV_DIR/bin/python" -m pip install -qq --progress-bar off "${REQUIREMENTS[@]}"
# A smoke test of exactly what the verifier uses.
"$ENV_DIR/bin/python" - 2>&1 <<'EOF' | grep -v -e "CUDA runtime" -e "Prophesee" -e "Only Prophesee" -e "Please install it from"
import h5py, numpy
import lava.lib.dl.netx as netx
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.magma.core.run_conditions import RunSteps
from lava.proc import io
print("lava_env: lava-dl netx imports fine; numpy", numpy.__version__, "h5py", h5py.__version__)
EOF
echo "$STAMP" > "$ENV_DIR/.ok"
echo "lava_env: ready: $ENV_DIR/bin/python"
