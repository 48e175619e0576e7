#!/usr/bin/env bash
# The test command of the README and of CI: set up .venv, then run the whole suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The report extra too, so that the smoke reproduction draws (and the tests check) its figures.
RCENP_EXTRAS=test,report
# shellcheck source=setup-venv.sh
source "$root/scripts/setup-venv.sh"   # a failed install returns 1, which set -e makes this script's exit
cd "$root"
echo "RCENP_DATA=${RCENP_DATA:-<unset: real-data tests skip>}"
python -m pytest -p no:cacheprovider "$@"
