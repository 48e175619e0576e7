#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install rcenp with the extras in
# $RCENP_EXTRAS (default: test).
# Usage: source scripts/setup-venv.sh   (sets PATH so `python` and `rcenp` are the venv's)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${RCENP_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[${RCENP_EXTRAS:-test}]"
export PATH="$venv/bin:$PATH"
# The data sets shipped beside the checkout (../shared/data), unless RCENP_DATA says otherwise.
if [ -z "${RCENP_DATA:-}" ] && [ -d "$root/../shared/data" ]; then
    RCENP_DATA="$(cd "$root/../shared/data" && pwd)"
    export RCENP_DATA
fi
set +euo pipefail
