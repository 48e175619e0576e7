"""``rcenp attack`` and the attacks given what a fresh user gave them: counts beyond an int64
(an OverflowError after the run folder was made; C&W's 74.5 GiB learning-rate table), an --out
folder holding another attack's run (advice to --resume that --resume then refused), and a --png
folder holding another run's images (silently mixed)."""
import json
import shutil

import numpy as np
import pytest

from rcenp import attacks
from rcenp.attacks import run as attack_run
from rcenp.attacks import runfiles
from rcenp.attacks.cw import BETA1, BETA2, adam_learning_rate
from rcenp.attacks.run import run_attack
from rcenp.cli import main
from tests.test_attack_jobs import BASE, one_error_line
from tests.test_attack_run import read_samples, setup  # noqa: F401  (the module fixture)
from tests.test_attacks_cw import box_images, linear_model

HUGE = "99999999999999999999"  # 10**20 - 1: beyond an int64


# ---- counts --------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, option", [
    (["--attack", "fgsm", "--eps", "0.1", "--n", "2", "--batch-size", HUGE], "--batch-size"),
    (["--attack", "fgsm", "--eps", "0.1", "--n", HUGE], "--n"),
    (["--attack", "fgsm", "--eps", "0.1", "--n", "2", "--jobs", HUGE], "--jobs"),
    (["--attack", "bim", "--eps", "0.1", "--n", "2", "--steps", HUGE], "--steps"),
    (["--attack", "cw", "--n", "2", "--max-iterations", HUGE], "--max-iterations"),
    (["--attack", "cw", "--n", "2", "--binary-steps", "9223372036854775808"], "--binary-steps"),
    (["--attack", "cw-wb", "--n", "2", "--stage1-iterations", HUGE], "--stage1-iterations"),
    (["--attack", "cw-wb", "--n", "2", "--stage1-binary-steps", HUGE], "--stage1-binary-steps"),
])
def test_a_count_beyond_an_int64_is_one_error_line_before_anything_is_written(setup, tmp_path, capsys, argv,
                                                                              option):
    """--batch-size 99999999999999999999 ran into an OverflowError at its batch numbers, after
    run.json and partial/ were written, so the rerun was refused."""
    run, root = setup
    with pytest.raises(SystemExit) as info:
        main(["attack", str(run), *argv, "--data-dir", str(root), "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"argument {option}: must be at most 9223372036854775807 (an int64), got" in line
    assert not (tmp_path / "out").exists()


def test_a_batch_size_beyond_n_is_one_batch_of_n(setup, tmp_path, capsys):
    run, root = setup
    largest = str(2 ** 63 - 1)
    for name, size in (("one", "3"), ("largest", largest)):
        assert main(["attack", str(run), "--attack", "fgsm", "--eps", "0.1", "--n", "3", "--batch-size", size,
                     "--data-dir", str(root), "--out", str(tmp_path / name)]) == 0
    assert "1 batch" in (tmp_path / "largest" / "attack.log").read_text()
    assert read_samples(tmp_path / "largest" / "samples.jsonl") == read_samples(tmp_path / "one" / "samples.jsonl")
    capsys.readouterr()


@pytest.mark.parametrize("counts, message", [
    (dict(batch_size=10 ** 20), r"batch_size \(--batch-size\) must be at most 9223372036854775807"),
    (dict(n=2 ** 63), r"n \(--n\) must be at most 9223372036854775807"),
])
def test_run_attack_refuses_a_count_beyond_an_int64_before_making_a_folder(setup, tmp_path, counts, message):
    run, root = setup
    with pytest.raises(ValueError, match=message):
        run_attack(str(run), "fgsm", tmp_path / "out", {"eps": 0.1}, data_dir=str(root), **{"n": 2, **counts})
    assert not (tmp_path / "out").exists()


def test_a_failure_before_the_first_batch_leaves_no_run_behind(setup, tmp_path, monkeypatch):
    """Whatever fails between claiming --out and the first batch (the batch numbering did), the
    folder is left as it was, so the corrected command runs without --resume."""
    run, root = setup

    def broken(*args, **kwargs):
        raise RuntimeError("broken")
    monkeypatch.setattr(attack_run, "Progress", broken)
    with pytest.raises(RuntimeError, match="broken"):
        run_attack(str(run), "fgsm", tmp_path / "out", {"eps": 0.1}, n=2, data_dir=str(root),
                   png_dir=tmp_path / "png")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "png").exists()


# ---- C&W's counts and its learning rate -------------------------------------------------------------
@pytest.mark.parametrize("learning_rate", [0.01, 0.05, 0.1, 1e-3])
def test_the_per_iteration_learning_rate_has_the_former_tables_bits(learning_rate):
    """optimise() tabled lr·√(1−β₂ᵗ)/(1−β₁ᵗ) for t = 1 ... max_iterations and indexed it with the
    slots' iterations; it now computes the same expression for the slots' t: the same bits, for a
    scalar, a slot array of any length and order, and the whole range at once."""
    t = np.arange(1, 5001)
    table = learning_rate * np.sqrt(1 - BETA2 ** t) / (1 - BETA1 ** t)  # the former code, verbatim
    bits = table.view(np.int64)
    assert np.array_equal(adam_learning_rate(learning_rate, t).view(np.int64), bits)
    assert all(np.float64(adam_learning_rate(learning_rate, np.int64(k))).view(np.int64) == bits[k - 1]
               for k in range(1, 5001))
    rng = np.random.default_rng(0)
    for size in list(range(1, 40)) + [100, 257]:
        it = rng.integers(0, 5000, size)  # the slots' 0-based iterations, as optimise holds them
        assert np.array_equal(adam_learning_rate(learning_rate, it + 1).view(np.int64), bits[it])


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_iterations=10 ** 20), "max_iterations must be at most 9223372036854775807"),
    (dict(binary_steps=10 ** 20), "binary_steps must be at most 9223372036854775807"),
    (dict(batch_size=2 ** 63), "batch_size must be at most 9223372036854775807"),
])
def test_cw_names_a_count_beyond_an_int64(kwargs, message):
    """max_iterations=10**20 answered 'Maximum allowed size exceeded', naming nothing."""
    with pytest.raises(ValueError, match=message):
        attacks.cw_l2(linear_model("ce", 0), box_images(0, 2), **kwargs)


def test_cw_wb_and_bim_name_the_count_and_the_stage():
    from tests.test_attacks_cw_wb import box_images as wb_images
    from tests.test_attacks_cw_wb import feature_model, fitted_detector

    model = feature_model("ce", 7)
    detector = fitted_detector(model, 7)
    with pytest.raises(ValueError, match="stage2: max_iterations must be at most 9223372036854775807"):
        attacks.cw_wb(model, wb_images(16, 2), detector, attacker_points=5, stage2={"max_iterations": 10 ** 20})
    with pytest.raises(ValueError, match="stage1: binary_steps must be at most"):
        attacks.cw_wb(model, wb_images(16, 2), detector, attacker_points=5, stage1={"binary_steps": 10 ** 20})
    with pytest.raises(ValueError, match="^batch_size must be at most"):  # the call's own, not a stage's
        attacks.cw_wb(model, wb_images(16, 2), detector, attacker_points=5, batch_size=2 ** 63)
    with pytest.raises(ValueError, match="^learning_rate must be"):  # the call's own, for both stages
        attacks.cw_wb(model, wb_images(16, 2), detector, attacker_points=5, learning_rate=-1.0)
    with pytest.raises(ValueError, match="^stage1: learning_rate must be"):
        attacks.cw_wb(model, wb_images(16, 2), detector, attacker_points=5, stage1={"learning_rate": 0.0})
    with pytest.raises(ValueError, match="steps must be at most 9223372036854775807"):
        attacks.bim(linear_model("ce", 0), box_images(0, 2), 0.1, steps=10 ** 20)


def test_a_huge_iteration_budget_starts_without_a_table_of_it(monkeypatch):
    """2**40 iterations per binary step: the former table (8 TiB) failed to allocate; now the first
    iterations run in little memory (stopped here at the first progress report)."""
    import tracemalloc

    from rcenp.attacks import cw

    class Enough(Exception):
        pass

    heard = []

    def progress(text):
        heard.append(text)
        if len(heard) == 3:
            raise Enough
    monkeypatch.setattr(cw, "PROGRESS_SECONDS", 0.0)
    tracemalloc.start()
    try:
        with pytest.raises(Enough):
            attacks.cw_l2(linear_model("ce", 0), box_images(0, 2), max_iterations=2 ** 40, progress=progress)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2 ** 20
    assert heard[-1].endswith(f"iteration up to 2 of {2 ** 40}")


# ---- an --out folder holding another run ------------------------------------------------------------
def test_an_out_folder_holding_another_attack_says_what_differs_not_resume(setup, tmp_path, capsys):
    """FGSM into a folder holding a BIM run advised 'pass --resume ... to continue it', which then
    refused the settings."""
    run, root = setup
    base = ["attack", str(run), "--n", "2", "--data-dir", str(root), "--out", str(tmp_path / "bim")]
    assert main(base + ["--attack", "bim", "--eps", "0.1"]) == 0
    capsys.readouterr()
    assert main(base + ["--attack", "fgsm", "--eps", "0.1"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == (f"rcenp attack: error: {tmp_path / 'bim'} already holds another attack run, which --resume would "
                    'not continue (attack: "bim" there, "fgsm" now): choose another --out (out_dir in Python) for '
                    "this run, or remove that folder to replace it")
    assert main(base + ["--attack", "bim", "--eps", "0.2"]) == 2
    assert "(options.eps: 0.1 there, 0.2 now): choose another --out" in one_error_line(capsys.readouterr().err)
    assert main(base + ["--attack", "bim", "--eps", "0.1"]) == 2  # the same run: --resume is the way
    assert "already holds an attack run: pass --resume" in one_error_line(capsys.readouterr().err)


def test_jsmas_theta_is_named_as_the_command_line_spells_it():
    """`rcenp attack ... --attack jsma --eps 0.2 --resume` answered 'options.theta: 0.1 there, 0.2
    now', a name the user never typed."""
    assert runfiles.describe(("options.theta", 0.1, 0.2)) == "options.theta (JSMA's --eps): 0.1 there, 0.2 now"
    assert runfiles.describe(("options.eps", 0.1, 0.2)) == "options.eps: 0.1 there, 0.2 now"


def test_null_and_absent_options_compare_equal():
    """A transfer's --crafted-from source of another attack listed 'options.targets: null there,
    (none) now': the None defaults that effective_options fills in for JSMA, which BIM lacks."""
    jsma = runfiles.comparable({"attack": "jsma", "options": {"theta": 0.1, "variant": "pang2018"}, "n": 2})
    bim = runfiles.comparable({"attack": "bim", "options": {"eps": 0.1}, "n": 2})
    changed = runfiles.differing(jsma, bim)
    assert not any(there is None or now is None for _, there, now in changed)
    assert runfiles.brief(changed, jsma, bim) == 'attack: "jsma" there, "bim" now'
    assert runfiles.differing({"options": {"max_iterations": None}}, {"options": {}}) == []
    assert runfiles.differing({"options": {"stage1": {"kappa": None}}}, {"options": {"stage1": {}}}) == []
    assert [d[0] for d in runfiles.differing({"options": {"max_iterations": 50}}, {"options": {}})] == [
        "options.max_iterations"]
    assert [d[0] for d in runfiles.differing({"n": 2}, {"n": 2, "detector": None})] == ["detector"]  # unrecorded


def test_a_transfer_from_another_attacks_run_names_the_attack_only(setup, tmp_path):
    from rcenp.attacks.transfer import mismatch

    run, _ = setup
    crafted = {"model": str(run), "attack": "jsma", "options": {"theta": 0.1, "variant": "pang2018"}, "n": 2,
               "seed": 0, "batch_size": 100, "shard": [1, 1], "data": None, "detector": None}
    asked = {"attack": "bim", "options": {"eps": 0.1, "substitute": str(run)}, "n": 2, "seed": 0, "batch_size": 100,
             "data": None, "substitute_detector": None}
    assert mismatch(crafted, asked) == 'attack: "jsma" there, "bim" now'


def test_jobs_into_a_folder_of_another_run_say_what_differs(tmp_path, capsys):
    out = tmp_path / "jobs"
    assert main(BASE + ["--shard", "1/2", "--out", str(out / "shards" / "1-of-2")]) == 0  # a begun --jobs 2 run
    capsys.readouterr()
    other = [a if a != "0.1" else "0.2" for a in BASE]
    assert main(other + ["--jobs", "2", "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "1-of-2 already holds another attack run, which --resume would not continue (options.eps: 0.1 there, " \
           "0.2 now): choose another --out" in line
    assert not (out / "shards" / "2-of-2").exists()


# ---- a --png folder holding another run's images ---------------------------------------------------
def pngs(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_a_png_folder_of_another_run_is_refused(setup, tmp_path, capsys):
    """JSMA n=5 then FGSM n=2 into one --png folder overwrote 00000.png and 00001.png beside three
    JSMA images, exit 0."""
    run, root = setup
    common = ["attack", str(run), "--data-dir", str(root), "--png", str(tmp_path / "png")]
    assert main(common + ["--attack", "jsma", "--eps", "0.1", "--n", "5", "--out", str(tmp_path / "a")]) == 0
    before = pngs(tmp_path / "png")
    assert len(before) == 5
    marker = json.loads((tmp_path / "png" / "png-run.json").read_text())
    assert marker["run"] == str((tmp_path / "a").resolve()) and marker["settings"]["attack"] == "jsma"
    capsys.readouterr()
    assert main(common + ["--attack", "fgsm", "--eps", "0.2", "--n", "2", "--out", str(tmp_path / "b")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == (f"rcenp attack: error: --png {tmp_path / 'png'} holds the PNG images of another run "
                    f"({(tmp_path / 'a').resolve()}): choose an empty folder for --png (png_dir in Python), so that "
                    "it holds one run's images")
    assert pngs(tmp_path / "png") == before and not (tmp_path / "b").exists()
    # the same --out redone with other settings (the folder removed) is another run too
    shutil.rmtree(tmp_path / "a")
    assert main(common + ["--attack", "fgsm", "--eps", "0.2", "--n", "2", "--out", str(tmp_path / "a")]) == 2
    assert "an earlier run in" in one_error_line(capsys.readouterr().err)
    # PNG files that no run claims
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "00000.png").write_bytes(b"")
    with pytest.raises(ValueError, match="already holds PNG files that are not this run's"):
        run_attack(str(run), "fgsm", tmp_path / "c", {"eps": 0.1}, n=2, data_dir=str(root),
                   png_dir=tmp_path / "loose")
    assert not (tmp_path / "c").exists()
    # an empty folder, or one whose run wrote no image, is free
    (tmp_path / "empty").mkdir()
    run_attack(str(run), "fgsm", tmp_path / "d", {"eps": 0.1}, n=2, data_dir=str(root), png_dir=tmp_path / "empty")
    assert sorted(pngs(tmp_path / "empty")) == ["00000.png", "00001.png"]


def test_the_same_run_resumed_goes_on_in_its_png_folder(setup, tmp_path, monkeypatch):
    from tests.test_attack_run import killed_at_batch

    run, root = setup
    args = dict(n=6, batch_size=2, data_dir=str(root), png_dir=tmp_path / "png")
    real = attack_run.attack_function
    monkeypatch.setattr(attack_run, "attack_function", killed_at_batch(2, real))
    with pytest.raises(KeyboardInterrupt):
        run_attack(str(run), "fgsm", tmp_path / "out", {"eps": 0.1}, **args)
    assert sorted(pngs(tmp_path / "png")) == ["00000.png", "00001.png"]
    monkeypatch.setattr(attack_run, "attack_function", real)
    run_attack(str(run), "fgsm", tmp_path / "out", {"eps": 0.1}, resume=True, **args)
    assert len(pngs(tmp_path / "png")) == 6
    # a run begun before png-run.json existed, resumed, goes on in the folder it wrote into
    (tmp_path / "png" / "png-run.json").unlink()
    run_attack(str(run), "fgsm", tmp_path / "out", {"eps": 0.1}, resume=True, **args)
    with pytest.raises(ValueError, match="not this run's"):
        run_attack(str(run), "fgsm", tmp_path / "out2", {"eps": 0.1}, **args)


def test_jobs_shards_share_one_png_folder(tmp_path, capsys):
    out = tmp_path / "jobs"
    assert main(BASE + ["--jobs", "2", "--png", str(tmp_path / "png"), "--out", str(out)]) == 0
    assert len(pngs(tmp_path / "png")) == 6
    assert json.loads((tmp_path / "png" / "png-run.json").read_text())["run"] == str(out.resolve())
    capsys.readouterr()
    assert main(BASE + ["--jobs", "2", "--png", str(tmp_path / "png"), "--out", str(tmp_path / "other")]) == 2
    assert "holds the PNG images of another run" in one_error_line(capsys.readouterr().err)
