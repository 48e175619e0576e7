#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install rcenp with the extras in
# $RCENP_EXTRAS (default: test,report: the test suite's and the figures' libraries, as the README's
# commands use them).
# Usage: source scripts/setup-venv.sh   (bash or zsh; sets PATH so `python` and `rcenp` are the venv's)
# Safe to source from an interactive shell: it leaves the shell's options as they are, and a failed
# install returns 1 with a message and PATH unchanged (the venv may be half made; sourcing it again
# finishes it), where `set -e` would have closed the terminal. It also exports RCENP_DATA=../shared/data
# when that folder exists and RCENP_DATA is unset.
if [ -n "${ZSH_VERSION:-}" ]; then
    eval '_rcenp_root=${(%):-%x}'   # this file (zsh syntax, which bash cannot parse)
elif [ -n "${BASH_VERSION:-}" ]; then
    _rcenp_root=${BASH_SOURCE[0]}
else
    echo "setup-venv.sh: source it from bash or zsh (or run: bash scripts/test.sh)" >&2
    return 1 2>/dev/null || exit 1
fi
_rcenp_root="$(cd "$(dirname "$_rcenp_root")/.." && pwd)"
_rcenp_venv="${RCENP_VENV:-$_rcenp_root/.venv}"
if { [ -x "$_rcenp_venv/bin/python" ] || python3 -m venv "$_rcenp_venv"; } &&
    "$_rcenp_venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip &&
    "$_rcenp_venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "${_rcenp_root}[${RCENP_EXTRAS:-test,report}]"
then
    export PATH="$_rcenp_venv/bin:$PATH"
    # The data sets shipped beside the checkout (../shared/data), unless RCENP_DATA says otherwise.
    if [ -z "${RCENP_DATA:-}" ] && [ -d "$_rcenp_root/../shared/data" ]; then
        RCENP_DATA="$(cd "$_rcenp_root/../shared/data" && pwd)"
        export RCENP_DATA
    fi
    unset _rcenp_root _rcenp_venv
else
    echo "setup-venv.sh: could not set up $_rcenp_venv (the error is above); PATH is unchanged" >&2
    unset _rcenp_root _rcenp_venv
    return 1 2>/dev/null || exit 1
fi
