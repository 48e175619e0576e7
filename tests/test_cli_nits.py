"""The command line's small print (a fresh user's report, N2-N4 and C4): a typo named as such, no
argparse dest names, --version, no Python reprs or errno text, nothing printed or created before a
refusal, readable attack headers and plurals, resume lines, and refused option combinations."""
import io
import json
import re

import numpy as np
import pytest

import rcenp
from rcenp import cli
from rcenp.attacks import run as attack_run
from rcenp.attacks.cli import budget_hint, format_summary
from rcenp.attacks.run import run_attack
from rcenp.cli import main
from rcenp.models import resnet
from rcenp.objectives import Classifier
from tests.test_attack_run import killed_at_batch


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A ResNet-8 run directory (no detector) and an MNIST-format root of 24 training, 12 test images."""
    from rcenp.data import idx
    from rcenp.train import TrainConfig, save_checkpoint

    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("data")
    (root / "mnist").mkdir()
    for split, n in (("train", 24), ("t10k", 12)):
        (root / "mnist" / f"{split}-images-idx3-ubyte").write_bytes(
            idx.encode(rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)))
        (root / "mnist" / f"{split}-labels-idx1-ubyte").write_bytes(idx.encode((np.arange(n) % 10).astype(np.uint8)))
    run = tmp_path_factory.mktemp("run")
    save_checkpoint(run, Classifier(resnet(8, 1, seed=1), "ce").eval(), None, TrainConfig(depth=8, objective="ce"),
                    1, {"note": "test"})
    return run, root


def one_error_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "error: " in lines[0], text
    assert "Traceback" not in text and "Errno" not in text and " at 0x" not in text, text
    return lines[0]


def parser_exit(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


# ---- N2: flags --------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, unknown, suggestion", [
    (["attack", "mnist-resnet32-rce", "--atack", "bim", "--eps", "0.1"], "--atack", "--attack"),
    (["train", "--datset", "mnist", "--objective", "ce", "--out", "x"], "--datset mnist", "--dataset"),
    (["attack", "m", "--attack", "fgsm", "--eps", "0.1", "--nn", "3"], "--nn 3", "--n"),
    (["models", "--jsn"], "--jsn", "--json"),
    (["data", "fetch", "mnist", "--data-dr", "x"], "--data-dr x", "--data-dir"),
])
def test_an_unknown_option_is_named_before_any_missing_argument(capsys, argv, unknown, suggestion):
    code, out, err = parser_exit(argv, capsys)
    line = one_error_line(err)
    assert code == 2 and out == ""
    assert f"unrecognized argument{'s' if ' ' in unknown else ''}: {unknown} (did you mean {suggestion}?)" in line
    assert "required" not in line
    assert line.startswith("rcenp " + " ".join(a for a in argv[:2] if a in ("attack", "train", "models", "data",
                                                                            "fetch")))


@pytest.mark.parametrize("argv, commands", [([], "train, eval, models, data"), (["data"], "fetch")])
def test_no_command_lists_the_commands_not_a_dest_name(capsys, argv, commands):
    code, _, err = parser_exit(argv, capsys)
    line = one_error_line(err)
    assert code == 2 and f"choose a command: {commands}" in line
    assert "required" not in line and "command" not in line.split("choose a command")[0].replace("rcenp", "")
    assert "data_command" not in line and "COMMAND" not in line


def test_an_interrupted_reproduce_says_how_to_go_on(monkeypatch, capsys):
    from rcenp import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "reproduce", interrupted)
    assert main(["reproduce"]) == 130
    assert capsys.readouterr().err == ("rcenp reproduce: interrupted (finished cells are kept: run it again with "
                                       "--resume to go on, or with --report for the report of those)\n")


def test_version(capsys):
    code, out, _ = parser_exit(["--version"], capsys)
    assert code == 0 and out.strip() == f"rcenp {rcenp.__version__}"


def test_the_options_the_report_found_bare_have_help():
    parser = cli.build_parser()
    commands = dict(parser.commands, **{f"data {k}": v for k, v in parser.nested["data"][2].items()})
    bare = [(name, action.option_strings) for name, command in commands.items() for action in command._actions
            if action.option_strings and not action.help]
    assert bare == []  # eval --data-dir and detect --seed among them


# ---- N3: errors without Python text; validated before anything is printed or made -------------------
@pytest.mark.parametrize("option", ["--out", "--png"])
def test_out_or_png_naming_a_file_is_refused_before_the_header(setup, tmp_path, capfd, option):
    run, root = setup
    a_file = tmp_path / "afile"
    a_file.write_text("mine")
    out = a_file if option == "--out" else tmp_path / "out"
    argv = ["attack", str(run), "--attack", "fgsm", "--eps", "0.1", "--n", "2", "--data-dir", str(root),
            "--out", str(out)] + (["--png", str(a_file)] if option == "--png" else [])
    assert main(argv) == 2
    captured = capfd.readouterr()  # file descriptors: the progress stream is the process's stderr
    line = one_error_line(captured.err)
    assert captured.out == ""
    assert line == f"rcenp attack: error: {option} {a_file}: a file of that name exists; {option} names a folder"
    assert a_file.read_text() == "mine" and not (tmp_path / "out").exists()


def test_an_out_inside_a_file_names_the_file(tmp_path):
    from rcenp.checkpoint import check_folder

    a_file = tmp_path / "afile"
    a_file.write_text("mine")
    with pytest.raises(ValueError) as refused:
        check_folder(a_file / "sub" / "deeper", "--out")
    assert str(refused.value) == f"--out {a_file / 'sub' / 'deeper'}: {a_file} is a file, not a folder"
    check_folder(tmp_path / "new" / "deeper", "--out")   # folders to be made: fine
    check_folder("relative/runs", "--out")
    assert a_file.read_text() == "mine" and not (tmp_path / "new").exists()


@pytest.mark.parametrize("argv", [["train", "--dataset", "mnist", "--objective", "ce"],
                                  ["attack", "mnist-resnet32-ce", "--attack", "fgsm"], ["reproduce"]])
def test_an_empty_out_is_refused_not_the_current_directory(argv, tmp_path, monkeypatch, capsys):
    """``--out "$OUT"`` with OUT unset trained into the current directory (a fresh user's trial)."""
    monkeypatch.chdir(tmp_path)
    for empty in ("", " "):
        with pytest.raises(SystemExit) as done:
            cli.main(argv + ["--out", empty])
        assert done.value.code == 2
        said = "an empty" if not empty else "a blank"
        assert f"argument --out: names no folder ({said} name, which would write into the current directory)" \
            in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_os_error_reads_as_path_and_reason():
    assert cli.error_text(FileExistsError(17, "File exists", "/x/afile")) == "/x/afile: file exists"
    assert cli.error_text(ValueError("plain")) == "plain"


def test_the_fetch_hint_appears_once(monkeypatch, tmp_path):
    from rcenp.data import find_test_split

    monkeypatch.delenv("RCENP_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    test, why = find_test_split("cifar10")
    assert test is None and why.count("rcenp data fetch cifar10") == 1, why


# ---- N4: rcenp attack's output ------------------------------------------------------------------------
def test_attack_header_prints_options_and_plurals(setup, tmp_path):
    run, root = setup
    stream = io.StringIO()
    run_attack(run, "bim", tmp_path / "bim", {"eps": 0.1, "steps": 2}, n=3, batch_size=5, data_dir=root,
               stream=stream)
    header = stream.getvalue().splitlines()[0]
    assert header.startswith(f"bim eps=0.1 steps=2 on {run} (CE), images 0-2 of ") and "{" not in header
    assert header.endswith(", 1 batch"), header
    assert stream.getvalue().splitlines()[-1].startswith("done: success ") and "(reached" not in stream.getvalue()
    stream = io.StringIO()
    run_attack(run, "fgsm", tmp_path / "fgsm", {"eps": 0.1}, n=7, batch_size=3, data_dir=root, stream=stream)
    assert stream.getvalue().splitlines()[0].endswith(", 3 batches of 3")
    stream = io.StringIO()  # ILCM's success is reaching the least likely class: 'success 0%' beside a fall in accuracy
    run_attack(run, "ilcm", tmp_path / "ilcm", {"eps": 0.1, "steps": 2}, n=3, data_dir=root, stream=stream)
    assert re.fullmatch(r"done: success \d+\.\d% \(reached least likely\), accuracy under attack .*",
                        stream.getvalue().splitlines()[-1])


def test_resume_says_what_is_done_and_shows_no_rate_it_does_not_know(setup, tmp_path, monkeypatch):
    run, root = setup
    args = dict(n=9, batch_size=3, data_dir=root)
    real = attack_run.attack_function
    monkeypatch.setattr(attack_run, "attack_function", killed_at_batch(2, real))  # killed in the second batch
    with pytest.raises(KeyboardInterrupt):
        run_attack(run, "fgsm", tmp_path / "r", {"eps": 0.05}, stream=io.StringIO(), **args)
    monkeypatch.setattr(attack_run, "attack_function", real)
    with pytest.raises(ValueError) as info:
        run_attack(run, "fgsm", tmp_path / "r", {"eps": 0.06}, resume=True, seed=3, stream=io.StringIO(), **args)
    assert str(info.value).endswith("--resume with other settings than the run there: "
                                    "options.eps: 0.05 there, 0.06 now; seed: 0 there, 3 now")
    stream = io.StringIO()
    run_attack(run, "fgsm", tmp_path / "r", {"eps": 0.05}, resume=True, stream=stream, **args)
    lines = stream.getvalue().splitlines()
    assert lines[1] == "resuming: 1 of 3 batches done"
    progress = [line for line in lines if line.startswith("batch ")]
    assert progress and progress[0].startswith("batch 2/3  6 images  ")  # batch 1 was the earlier process's
    assert "nan" not in stream.getvalue() and "img/s" in progress[0]


def fake_summary(attack, options, efficient=1):
    return {"settings": {"attack": attack, "model": "m", "options": options}, "test_set": "t",
            "counts": {"n": 1}, "accuracy_clean": 1.0, "accuracy_under_attack": 0.0, "success_rate": 0.3,
            "success_rate_8bit": 0.3, "distortion": {"l2_paper": {"efficient": {"n": efficient, "mean": 2.0}}}}


@pytest.mark.parametrize("attack, options, criterion", [
    ("jsma", {"theta": 0.1}, "reached target; "),
    ("cw", {"targets": "random"}, "reached target; "),
    ("cw", {"targets": "untargeted"}, ""),
    ("ilcm", {"eps": 0.1}, "reached least likely; "),
    ("bim", {"eps": 0.1}, ""),
])
def test_summary_says_what_success_counts_and_counts_in_the_singular(attack, options, criterion):
    text = format_summary(fake_summary(attack, options), "out")
    assert f"  attack success          30.0% ({criterion}after 8-bit rounding 30.0%)" in text.splitlines()
    assert len({re.search(r"\d", line).start() for line in text.splitlines()[1:4]}) == 1  # rates in one column
    assert ": 1 image (t)" in text and "over 1 successful attack on" in text
    assert "over 2 successful attacks on" in format_summary(fake_summary(attack, options, efficient=2), "out")


@pytest.mark.parametrize("attack, options, success, hint", [
    ("cw", {"binary_steps": 2, "max_iterations": 10}, 0.0,
     "  no image succeeded within 2 binary steps x 10 iterations; the paper's budget is 9 x 10,000 "
     "(--binary-steps, --max-iterations)"),
    ("cw-hc", {"binary_steps": 1}, 0.0, "  no image succeeded within 1 binary step x 10,000 iterations; "
     "the paper's budget is 9 x 10,000 (--binary-steps, --max-iterations)"),
    ("cw-wb", {"stage2": {"max_iterations": 100}}, 0.0, "  no image succeeded within 9 binary steps x 100 "
     "iterations in stage 2; the authors' code's budget in stage 2 is 9 x 10,000 (--binary-steps, --max-iterations)"),
    ("cw", {}, 0.0, None),                                          # the paper's budget: nothing to raise
    ("cw", {"binary_steps": 2, "max_iterations": 10}, 0.3, None),   # something succeeded
    ("bim", {"eps": 0.1}, 0.0, None),
    ("cw", {"binary_steps": 2, "substitute": "s"}, 0.0, None),      # a transfer's rate is the target's
])
def test_a_cw_run_that_never_succeeds_on_a_small_budget_says_what_to_raise(attack, options, success, hint):
    summary = fake_summary(attack, options)
    summary["success_rate"] = success
    assert budget_hint(summary) == hint
    assert (hint in format_summary(summary, "out").splitlines()) == (hint is not None)


# ---- N4: nothing left behind, options that exclude each other --------------------------------------------
def test_train_that_fails_leaves_no_out_folder(setup, tmp_path, capsys):
    _, root = setup
    base = ["train", "--dataset", "mnist", "--objective", "ce", "--steps", "1"]
    assert main(base + ["--out", str(tmp_path / "a"), "--data-dir", str(tmp_path / "empty")]) == 2
    assert "mnist train images" in one_error_line(capsys.readouterr().err)
    assert main(base + ["--out", str(tmp_path / "b"), "--data-dir", str(root), "--depth", "7"]) == 2
    assert "depth must be 6n+2" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    (tmp_path / "afile").write_text("")
    assert main(base + ["--out", str(tmp_path / "afile"), "--data-dir", str(root)]) == 2
    assert "a file of that name exists" in one_error_line(capsys.readouterr().err)


def test_eval_refuses_sample_with_data_dir(tmp_path, capsys):
    assert main(["eval", "no-such-model", "--sample", "--data-dir", str(tmp_path)]) == 2
    assert "--sample and --data-dir exclude each other" in one_error_line(capsys.readouterr().err)


def test_demo_steps_only_for_the_engine_demo(monkeypatch, capsys):
    from rcenp.models import registry

    monkeypatch.setattr(registry, "shipped_models", lambda: ["a", "b"])
    assert main(["demo", "--steps", "3"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--steps applies only to the engine demo" in line and "2 models are shipped" in line
    steps = []
    monkeypatch.setattr(registry, "shipped_models", lambda: [])
    from rcenp import demo

    monkeypatch.setattr(demo, "engine_demo", lambda n, device: steps.append(n) or 0)
    assert main(["demo", "--steps", "3"]) == 0 and main(["demo"]) == 0
    assert steps == [3, 5]


def test_run_json_is_unchanged_by_the_header(setup, tmp_path):
    """The options recorded in run.json stay a JSON object (the header's text is for people only)."""
    run, root = setup
    run_attack(run, "bim", tmp_path / "o", {"eps": 0.1, "steps": 2}, n=2, batch_size=2, data_dir=root,
               stream=io.StringIO())
    assert json.loads((tmp_path / "o" / "run.json").read_text())["options"] == {"eps": 0.1, "steps": 2}


# ---- second fresh-user report: choices and values read as words -------------------------------------
@pytest.mark.parametrize("argv, suggestion", [(["evl"], "eval"), (["data", "ftch", "mnist"], "fetch"),
                                              (["attack", "m", "--attack", "bimm"], "bim")])
def test_an_invalid_choice_gets_a_did_you_mean(capsys, argv, suggestion):
    code, out, err = parser_exit(argv, capsys)
    assert code == 2 and out == ""
    assert f"(did you mean {suggestion}?)" in one_error_line(err)


@pytest.mark.parametrize("argv", [["attack", "m", "--attack", "bim", "--eps", "0.1", "--ep", "0.2"],
                                  ["attack", "m", "--attack", "bim", "--ep", "0.2"]])
def test_an_abbreviated_option_is_not_taken_for_the_whole(capsys, argv):
    """`--ep 0.2` after `--eps 0.1` ran with eps 0.2, argparse reading it as an abbreviation."""
    code, out, err = parser_exit(argv, capsys)
    assert code == 2 and out == ""
    assert "unrecognized argument" in one_error_line(err) and "--ep" in err and "(did you mean --eps?)" in err


@pytest.mark.parametrize("argv, unknown", [(["--eps", "3"], "--eps"), (["--n", "5", "attack"], "--n"),
                                           (["--eps=3", "--device", "cpu", "attack"], "--eps=3 --device")])
def test_an_option_before_the_command_is_named_not_its_value(capsys, argv, unknown):
    """`rcenp --eps 3` answered "invalid choice: '3'": argparse took the option's value for the command."""
    code, out, err = parser_exit(argv, capsys)
    line = one_error_line(err)
    assert code == 2 and out == ""
    assert f"unrecognized argument{'s' if ' ' in unknown else ''} before the command: {unknown} " in line
    assert "invalid choice" not in line


@pytest.mark.parametrize("argv, expected", [
    (["attack", "m", "--attack", "fgsm", "--eps", "abc"], "argument --eps: not a number: 'abc'"),
    (["attack", "m", "--attack", "fgsm", "--eps", "0.1", "--n", "x"], "argument --n: not an integer: 'x'"),
    (["demo", "--steps", "abc"], "argument --steps: not an integer: 'abc'"),
    (["train", "--dataset", "mnist", "--objective", "ce", "--out", "x", "--steps", "1.5"],
     "argument --steps: not an integer: '1.5'"),
    # options that once used argparse's bare int/float ("invalid int value: 'x'")
    (["train", "--dataset", "mnist", "--objective", "ce", "--out", "x", "--seed", "x"],
     "argument --seed: not an integer: 'x'"),
    (["train", "--dataset", "mnist", "--objective", "ce", "--out", "x", "--depth", "deep"],
     "argument --depth: not an integer: 'deep'"),
    (["train", "--dataset", "cifar10", "--objective", "rce", "--out", "o", "--schedule-scale", "0"],
     "argument --schedule-scale: must be positive, got 0"),
    (["attack", "m", "--attack", "cw", "--kappa", "abc"], "argument --kappa: not a number: 'abc'"),
    (["attack", "m", "--attack", "cw", "--kappa", "-1"], "argument --kappa: must be >= 0, got -1"),
    (["attack", "m", "--attack", "cw", "--initial-const", "0"], "argument --initial-const: must be positive, got 0"),
    (["attack", "m", "--attack", "cw", "--learning-rate", "nan"],
     "argument --learning-rate: must be a finite number, got 'nan'"),
    (["attack", "m", "--attack", "fgsm", "--eps", "0.1", "--seed", "1.5"], "argument --seed: not an integer: '1.5'"),
    (["detect", "m", "--fit", "--per-class", "x"], "argument --per-class: not an integer: 'x'"),
    (["detect", "m", "--fit", "--per-class", "-1"], "argument --per-class: must be >= 0, got -1"),
    (["detect", "m", "--fit", "--kernel-from", "0"], "argument --kernel-from: must be positive, got 0"),
    (["detect", "m", "--fit", "--seed", "s"], "argument --seed: not an integer: 's'"),
    # a negative seed, which NumPy's generators refuse, and which once left an attack's folder behind
    (["attack", "m", "--attack", "cw", "--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    (["train", "--dataset", "mnist", "--objective", "ce", "--out", "x", "--seed", "-1"],
     "argument --seed: must be >= 0, got -1"),
    (["detect", "m", "--fit", "--seed", "-2"], "argument --seed: must be >= 0, got -2"),
    (["detect", "m", "--fit", "--fpr", "abc"], "argument --fpr: not a number: 'abc'"),
])
def test_a_bad_value_names_no_python_function(capsys, argv, expected):
    code, _, err = parser_exit(argv, capsys)
    assert code == 2 and expected in one_error_line(err) and "invalid" not in err


def test_every_data_dir_help_names_the_debian_fashion_mnist_fallback():
    parser = cli.build_parser()
    helps = {name: action.help for name, command in parser.commands.items() for action in command._actions
             if "--data-dir" in action.option_strings}
    assert set(helps) == {"train", "eval", "detect", "attack", "reproduce", "demo"}
    assert all("/usr/share/datasets/fashion-mnist" in text for text in helps.values()), helps


# ---- third fresh-user report ----------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["train", "--dataset", "mnist", "--objective", "ce", "--out", "OUT", "--data-dir", "EMPTY"],
    ["eval", "m", "--sample", "--data-dir", "EMPTY"],
    ["detect", "no-such-model", "--images", "x.npz"],
    ["attack", "no-such-model", "--attack", "fgsm", "--eps", "0.1"],
    ["demo", "--data-dir", "MISSING"],
    ["reproduce", "--budget", "huge", "--out", "OUT"],
    ["data", "fetch", "mnist", "--data-dir", "EMPTY"],
])
def test_a_commands_own_errors_carry_its_prefix_as_argparse_errors_do(tmp_path, capsys, monkeypatch, argv):
    from rcenp.data import DataError, fetch

    def refuse(*args, **kwargs):
        raise DataError("no network here")

    monkeypatch.setattr(fetch, "fetch", refuse)
    (tmp_path / "empty").mkdir()
    places = {"OUT": tmp_path / "out", "EMPTY": tmp_path / "empty", "MISSING": tmp_path / "missing"}
    prefix = "rcenp " + " ".join(a for a in argv[:2] if a in cli.build_parser().commands or a == "fetch")
    assert main([str(places.get(a, a)) for a in argv]) == 2
    assert one_error_line(capsys.readouterr().err).startswith(prefix + ": error: ")
    command = argv[:2] if argv[0] == "data" else argv[:1]
    _, _, err = parser_exit(command + ["--no-such-option"], capsys)  # argparse's error, for comparison
    assert one_error_line(err).startswith(prefix + ": error: ")


@pytest.mark.parametrize("argv", [
    ["attack", "nosuchmodel", "--attack", "bim"],                       # no --eps
    ["attack", "nosuchmodel", "--attack", "cw", "--eps", "0.1"],        # --eps not for cw
    ["attack", "mnist-resnet32-ce", "--attack", "bim", "--substitute", "nosuchmodel"],
    ["detect", "nosuchmodel", "--fpr", "0.1"],                          # --fpr without --fit
])
def test_an_unknown_model_is_named_before_what_its_options_lack(capsys, argv):
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"rcenp {argv[0]}: error: nosuchmodel: neither a run directory"), line


def _zip_of(members: dict) -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.parametrize("content, why", [
    (b"garbage", "not a zip archive"),                                          # numpy said: allow_pickle=
    (b"", "not a zip archive"),
    (_npz_bytes(images=np.zeros((2, 1, 28, 28), np.float32))[:300], "not a zip archive, or a truncated one"),
    (b"\x93NUMPY\x01\x00" + b"\x00" * 40, "a lone .npy array"),
    (_zip_of({"images.npy": b"not an array"}), "its member 'images' is not a NumPy array"),
    (_npz_bytes(images=np.array([{"a": 1}], dtype=object)), "it holds Python objects"),  # numpy: allow_pickle
])
def test_a_corrupt_npz_is_named_plainly(tmp_path, capsys, content, why):
    bad = tmp_path / "batch.npz"
    bad.write_bytes(content)
    assert main(["detect", "mnist-resnet32-rce", "--images", str(bad), "--device", "cpu"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"rcenp detect: error: {bad}: not a readable .npz image archive ({why}")
    assert "pickle" not in line and "allow" not in line


@pytest.mark.parametrize("fill, says", [
    (np.nan, "784 pixel values are NaN or infinite"),
    (np.inf, "784 pixel values are NaN or infinite"),
    (0.75, "float images must lie in [-0.5, 0.5] (or pass uint8 pixels); these hold 0.75..0.75"),
])
def test_images_that_are_not_finite_or_outside_the_box_say_which(tmp_path, capsys, fill, says):
    path = tmp_path / "batch.npz"
    np.savez(path, images=np.full((1, 1, 28, 28), fill, np.float32))
    assert main(["detect", "mnist-resnet32-rce", "--images", str(path), "--device", "cpu"]) == 2
    assert one_error_line(capsys.readouterr().err) == f"rcenp detect: error: {path}: {says}"


@pytest.mark.parametrize("model, shape, takes", [
    ("mnist-resnet32-rce", (2, 28, 29), "(N, 1, 28, 28) or (N, 28, 28)"),   # both are read
    ("cifar10subset-resnet32-ce", (2, 32, 32), "(N, 3, 32, 32)"),
])
def test_a_wrong_npz_shape_names_every_shape_read(tmp_path, capsys, model, shape, takes):
    path = tmp_path / "batch.npz"
    np.savez(path, images=np.zeros(shape, np.float32))
    assert main(["detect", model, "--images", str(path), "--device", "cpu"]) == 2
    assert one_error_line(capsys.readouterr().err) == \
        f"rcenp detect: error: {path}: images of shape {shape}; this model takes {takes}"


@pytest.mark.parametrize("array", [np.zeros((1, 1, 28, 28), np.int64), np.full((1, 1, 28, 28), 255, np.uint16),
                                   np.ones((1, 1, 28, 28), bool)])
def test_integer_images_other_than_uint8_are_refused_naming_the_dtype(tmp_path, capsys, array):
    # int64 zeros were read as box value 0 (grey), where uint8 zeros are black: refuse, do not guess
    path = tmp_path / "batch.npz"
    np.savez(path, images=array)
    assert main(["detect", "mnist-resnet32-rce", "--images", str(path), "--device", "cpu"]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"rcenp detect: error: {path}: images of dtype {array.dtype}; pass uint8 pixels (0..255) or floats in "
        "[-0.5, 0.5]")


def test_resuming_a_finished_run_says_so_and_still_gives_the_summary(setup, tmp_path, capfd):
    run, root = setup
    argv = ["attack", str(run), "--attack", "fgsm", "--eps", "0.1", "--n", "5", "--batch-size", "2",
            "--data-dir", str(root), "--out", str(tmp_path / "a")]
    assert main(argv) == 0
    first = capfd.readouterr()
    assert "already finished" not in first.err
    written = (tmp_path / "a" / "summary.json").read_text()
    assert main(argv + ["--resume"]) == 0
    again = capfd.readouterr()  # file descriptors: the progress stream is the process's stderr
    assert again.err.splitlines() == [f"already finished: 3 of 3 batches; nothing to do ({tmp_path / 'a' / 'summary.json'})"]
    assert again.out == first.out and (tmp_path / "a" / "summary.json").read_text() == written
    assert "already finished: 3 of 3 batches" in (tmp_path / "a" / "attack.log").read_text()


@pytest.fixture
def debian_fashion(tmp_path, monkeypatch):
    """A stand-in for Debian's Fashion-MNIST folder (24 training, 12 test images) and an empty data root."""
    from rcenp.data import datasets, idx

    rng = np.random.default_rng(3)
    debian = tmp_path / "debian-fashion-mnist"
    debian.mkdir()
    for split, n in (("train", 24), ("t10k", 12)):
        (debian / f"{split}-images-idx3-ubyte").write_bytes(idx.encode(rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)))
        (debian / f"{split}-labels-idx1-ubyte").write_bytes(idx.encode((np.arange(n) % 10).astype(np.uint8)))
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", debian)
    (tmp_path / "root").mkdir()
    return debian, tmp_path / "root"


def test_a_data_dir_without_fashion_mnist_says_it_used_debians_once(debian_fashion, tmp_path, capsys, monkeypatch):
    from rcenp.data import load

    debian, root = debian_fashion
    note = f"fashion-mnist: not under {root}; using {debian} (Debian's dataset-fashion-mnist)"
    run = tmp_path / "run"
    assert main(["train", "--dataset", "fashion-mnist", "--objective", "ce", "--preset", "quick", "--depth", "8",
                 "--steps", "1", "--batch-size", "8", "--data-dir", str(root), "--out", str(run)]) == 0
    assert capsys.readouterr().err.splitlines().count(note) == 1  # train and test split: said once
    assert main(["eval", str(run), "--data-dir", str(root)]) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if not line.startswith("test images 12/12  evaluating ")]
    assert notes == [note] and "test images: fashion-mnist/test: 12 images" in captured.out   # beside the progress
    monkeypatch.setenv("RCENP_DATA", str(root))  # no --data-dir: the documented default, nothing to say
    assert main(["eval", str(run)]) == 0
    assert capsys.readouterr().err == f"test images 12/12  evaluating {run}  ETA 0:00:00\n"   # the progress alone
    assert len(load("fashion-mnist", "test", root)) == 12 and capsys.readouterr() == ("", "")  # the library is quiet


def test_class_names_live_with_the_data_sets():
    from rcenp.data import DATASETS, DataError
    from rcenp.data.datasets import CLASS_NAMES, class_name

    assert set(CLASS_NAMES) == set(DATASETS) and all(len(set(names)) == 10 for names in CLASS_NAMES.values())
    assert [class_name(d, 7) for d in ("mnist", "fashion-mnist")] == ["7", "sneaker"]
    assert [class_name("cifar10", k) for k in (0, 3, 9)] == ["airplane", "cat", "truck"]
    with pytest.raises(DataError):
        class_name("svhn", 1)


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_detect_names_the_class_beside_its_index(tmp_path, capsys, dataset):
    from rcenp.data.datasets import CLASS_NAMES
    from rcenp.detect.detector import Detector
    from rcenp.train import TrainConfig, save_checkpoint

    model = Classifier(resnet(8, 1, seed=2), "rce").eval()
    run = tmp_path / "run"
    save_checkpoint(run, model, None, TrainConfig(dataset=dataset, depth=8, objective="rce"), 1, {"note": "test"})
    images = np.random.default_rng(5).uniform(-0.5, 0.5, (20, 1, 28, 28)).astype(np.float32)
    Detector(model, "confidence").calibrate(images, 0.05).save(run / "detector")
    np.savez(tmp_path / "batch.npz", images=images[:4])
    assert main(["detect", str(run), "--images", str(tmp_path / "batch.npz")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 4
    for line in lines:   # the existing fields as they were, the name added
        assert list(line)[:4] == ["image", "answer", "predicted", "class_name"]
        assert line["class_name"] == CLASS_NAMES[dataset][line["predicted"]]
        assert line["answer"] in ("NOT SURE", f"label {line['predicted']}")
    if dataset == "mnist":
        assert all(line["class_name"] == str(line["predicted"]) for line in lines)


@pytest.mark.parametrize("argv, out", [
    (["--attack", "bim", "--eps", "0.1"], "runs/attack-m-bim-0.1"),
    (["--attack", "cw"], "runs/attack-m-cw"),
    (["--attack", "cw", "--kappa", "0"], "runs/attack-m-cw"),
    (["--attack", "cw", "--kappa", "5"], "runs/attack-m-cw-kappa5"),
    (["--attack", "cw-hc"], "runs/attack-m-cw-hc"),
    (["--attack", "jsma", "--eps", "0.1", "--variant", "papernot"], "runs/attack-m-jsma-0.1-variant-papernot"),
    (["--attack", "ilcm", "--eps", "0.1", "--target-vector", "pang2018-code"],
     "runs/attack-m-ilcm-0.1-target-vector-pang2018-code"),
    (["--attack", "cw-wb", "--kernel", "detector", "--anchor", "stage1"],
     "runs/attack-m-cw-wb-kernel-detector-anchor-stage1"),
    (["--attack", "cw-wb", "--substitute", "runs/sub"], "runs/attack-m-cw-wb-from-sub"),
    (["--attack", "cw", "--n", "2", "--binary-steps", "2", "--max-iterations", "20", "--learning-rate", "0.1"],
     "runs/attack-m-cw-max-iterations20-binary-steps2-learning-rate0.1-n2"),
    (["--attack", "bim", "--eps", "0.1", "--steps", "5", "--n", "1000"], "runs/attack-m-bim-0.1-steps5"),
    (["--attack", "cw", "--targets", "untargeted"], "runs/attack-m-cw-targets-untargeted"),
])
def test_default_out_keeps_runs_of_different_attacks_apart(argv, out):
    from rcenp.attacks.cli import default_out

    assert default_out(cli.build_parser().parse_args(["attack", "runs/m", *argv])) == out


@pytest.mark.parametrize("strict, second", [
    ({"confidence": 0.25, "non_me": 0.5, "log_kd": 0.75}, None),          # no ties: one line
    ({"confidence": 0.2501, "non_me": 0.5, "log_kd": 0.75}, None),        # not at the digits shown
    ({"confidence": 0.125, "non_me": 0.5, "log_kd": 0.75},                 # saturated confidence
     "  the same, ties 0 (AUC.m)         confidence 0.125  non_me 0.500  log_kd 0.750"),
])
def test_summary_says_how_its_aucs_count_ties(strict, second):
    """The audit: the printed AUC counts ties as ½ while the paper's AUC.m counts them 0; both are
    said, the second where it differs."""
    summary = fake_summary("bim", {"eps": 0.1})
    summary["detection"] = {m: {"n_pairs": 7, "auc": half, "auc_strict_ties": strict[m]}
                            for m, half in (("confidence", 0.25), ("non_me", 0.5), ("log_kd", 0.75))}
    lines = format_summary(summary, "out").splitlines()
    at = lines.index("  AUC (paper rule, n=7), ties ½    confidence 0.250  non_me 0.500  log_kd 0.750")
    if second is None:
        assert not any("AUC.m" in line for line in lines)
    else:
        assert lines[at + 1] == second
