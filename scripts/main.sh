#!/usr/bin/env bash
# The main job of the README: set up .venv, then run `rcenp demo` (on ../shared/data when it is there,
# which setup-venv.sh exports as RCENP_DATA; else on the per-user cache or the embedded MNIST sample).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=setup-venv.sh
source "$root/scripts/setup-venv.sh"   # a failed install returns 1, which set -e makes this script's exit
rcenp demo "$@"
