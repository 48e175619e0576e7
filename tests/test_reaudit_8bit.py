"""scripts/reaudit_8bit.py: an old run's 8-bit success, re-tested from its files, is what
``rcenp attack`` now writes (the attack's own test), and nothing else in the files changes."""
import json

import pytest

from rcenp.attacks.run import run_attack
from rcenp.attacks.runfiles import read_samples
from tests.test_attack_run import setup  # noqa: F401  (the fixture)
from tests.test_attack_transfer import TINY_WB


@pytest.mark.parametrize("attack, options", [
    ("cw-hc", {"binary_steps": 2, "max_iterations": 8, "learning_rate": 0.05}),
    ("cw-wb", TINY_WB),
])
def test_reaudit_gives_back_what_the_attack_now_writes(setup, tmp_path, load_script, attack, options):  # noqa: F811
    run, root = setup
    out = tmp_path / attack
    run_attack(run, attack, out, dict(options), n=6, batch_size=6, data_dir=root)
    samples, summary = (out / "samples.jsonl").read_text(), json.loads((out / "summary.json").read_text())
    # as an audit before 978d080 left them: every image classified as its target counted
    old = read_samples(out)
    for r in old:
        r["success_8bit"] = not r["success_8bit"]
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    stale = dict(summary, success_rate_8bit=-1.0)
    del stale["success_8bit_test"]
    (out / "summary.json").write_text(json.dumps(stale, indent=2) + "\n")

    assert load_script("reaudit_8bit").main([str(out), "--data-dir", str(root)]) == 0
    assert (out / "samples.jsonl").read_text() == samples
    assert json.loads((out / "summary.json").read_text()) == summary


def test_reaudit_refuses_a_run_without_its_images(setup, tmp_path, load_script):  # noqa: F811
    run, root = setup
    out = tmp_path / "cw"
    run_attack(run, "cw", out, {"binary_steps": 1, "max_iterations": 2}, n=2, batch_size=2, data_dir=root)
    (out / "adversarial.npz").unlink()
    with pytest.raises(SystemExit, match="kept its adversarial.npz"):
        load_script("reaudit_8bit").main([str(out)])
