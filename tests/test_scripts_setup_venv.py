"""scripts/setup-venv.sh, sourced from bash or zsh with a fake venv whose python records its
arguments: it finds the checkout, keeps the caller's shell options, and on a failed install returns
1 with a message and PATH unchanged (the CI's scripts/test.sh, under set -e, stops there)."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "scripts" / "setup-venv.sh"
CHECK = f"""set -o pipefail; before="$(set -o)"; saved_path="$PATH"
source {SETUP}; rc=$?
[ "$(set -o)" = "$before" ] && echo options-kept; [ "$PATH" = "$saved_path" ] && echo path-kept
echo "rc=$rc python=$(command -v python)"
"""


def fake_venv(tmp_path, status):
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/calls"\nexit {status}\n')
    python.chmod(0o755)
    return {"PATH": "/usr/bin:/bin", "RCENP_VENV": str(tmp_path / "venv"), "RCENP_DATA": "/data"}


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_sourced_it_installs_this_checkout_and_keeps_the_shells_options(tmp_path, shell):
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell}")
    done = subprocess.run([shell, "-c", CHECK], cwd=tmp_path, env=fake_venv(tmp_path, 0), capture_output=True, text=True)
    assert done.stdout.split() == ["options-kept", "rc=0", f"python={tmp_path}/venv/bin/python"], done.stderr
    assert f"-m pip install --quiet --disable-pip-version-check -e {ROOT}[test,report]" in (tmp_path / "calls").read_text()


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_a_failed_install_returns_1_and_changes_nothing(tmp_path, shell):
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell}")
    done = subprocess.run([shell, "-c", CHECK], cwd=tmp_path, env=fake_venv(tmp_path, 1), capture_output=True, text=True)
    assert done.stdout.split() == ["options-kept", "path-kept", "rc=1", "python="]
    assert done.stderr.strip() == f"setup-venv.sh: could not set up {tmp_path}/venv (the error is above); PATH is unchanged"


def test_under_set_e_a_failed_install_stops_the_script_and_other_shells_are_refused(tmp_path):
    env = fake_venv(tmp_path, 1)
    done = subprocess.run(["bash", "-c", f"set -euo pipefail; source {SETUP}; echo reached"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 1 and "reached" not in done.stdout
    if shutil.which("dash"):
        done = subprocess.run(["dash", "-c", f". {SETUP}; echo rc=$?"], env=env, capture_output=True, text=True)
        assert done.stdout == "rc=1\n" and "source it from bash or zsh" in done.stderr
