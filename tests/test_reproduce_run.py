"""``rcenp.reproduce`` runs: refused and stale cells, reuse rules, timings, white-box planning for the
sanity check, broken manifests, η costing, transfer cells, data-set narrowing, an OUT that holds a
run."""
import dataclasses
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from rcenp.attacks.runfiles import weights_identity
from rcenp.reproduce import budgets, cells, costs, lineup, provenance, report, reuse, run, runner, sanity
from rcenp.reproduce.results import Results
from tests.reproduce_fakes import DEVNULL, fake_published, fake_run_attack, smoke_cell, unavailable


def test_a_cell_that_run_attack_refuses_is_not_available_and_the_run_goes_on(tmp_path, monkeypatch):
    """A ValueError or CheckpointError of one cell is that cell's reason; the other cells still run.
    A transfer whose substitute has no fitted detector is not attempted."""
    from rcenp.attacks import run as attack_run
    from rcenp.checkpoint import CheckpointError

    fgsm, bim = smoke_cell("fgsm"), smoke_cell("bim")
    calls = []

    def refuse(model, attack, out_dir, *args, **kwargs):
        calls.append(attack)
        if attack == "fgsm":
            raise ValueError("out: --resume with other settings than the run there: options.eps: 0.1 there\nmore")
        raise CheckpointError("mnist-resnet32-ce: detector fitted for other weights")

    monkeypatch.setattr(attack_run, "run_attack", refuse)
    outcomes = runner.run_cells([fgsm, bim], tmp_path / "out", stream=DEVNULL)
    assert calls == ["fgsm", "bim"]
    assert outcomes[fgsm.key]["status"] == outcomes[bim.key]["status"] == "not available"
    assert outcomes[fgsm.key]["reason"] == \
        "not available: out: --resume with other settings than the run there: options.eps: 0.1 there"
    assert outcomes[bim.key]["reason"] == "not available: mnist-resnet32-ce: detector fitted for other weights"
    assert set(json.loads((tmp_path / "out" / "cells.json").read_text())) == {fgsm.key, bim.key}
    smoke = budgets.get_budget("smoke")
    transfer = cells.Cell("mnist-resnet32-ce/cw-wb-from-mnist-resnet32-rce", "attack", "mnist-resnet32-ce", "mnist",
                          32, "ce", 2, attack="cw-wb", options=budgets.cw_wb_options(smoke, "attacker",
                                                                                     "mnist-resnet32-rce"),
                          substitute="mnist-resnet32-rce", batch_size=2)
    monkeypatch.setattr(lineup, "has_detector", lambda name: name != "mnist-resnet32-rce")
    outcome = runner.run_cell(transfer, tmp_path / transfer.key, stream=DEVNULL)
    assert outcome["status"] == "not available" and calls == ["fgsm", "bim"]
    assert outcome["reason"].startswith("not available: substitute mnist-resnet32-rce has no fitted K-density detector")


def test_a_finished_cell_computed_with_other_settings_is_set_aside_and_recomputed(tmp_path, monkeypatch):
    """The run's own finished cells get reusable's check: one asked with another ε, or scored by a
    detector refit since, is renamed <name>.stale-<k> (kept) and computed afresh; a matching one is kept."""
    from rcenp.attacks import run as attack_run
    from rcenp.attacks.runfiles import detector_identity

    fgsm, bim = smoke_cell("fgsm"), smoke_cell("bim")
    root = tmp_path / "out" / "cells"
    fake_published(root, fgsm, options={"eps": 0.3})
    fake_published(root, bim, batch_size=bim.batch_size, detector=detector_identity(bim.model))
    calls = []
    monkeypatch.setattr(attack_run, "run_attack", fake_run_attack(calls))
    outcomes = runner.run_cells([fgsm, bim], tmp_path / "out", stream=DEVNULL)
    assert calls == [root / fgsm.key]
    assert outcomes[fgsm.key]["source"] == "computed" and outcomes[bim.key]["source"] == "resumed"
    aside = root / "mnist-resnet32-ce" / "fgsm-0.08.stale-1"
    assert json.loads((aside / "run.json").read_text())["options"] == {"eps": 0.3}
    assert (aside / "summary.json").is_file()
    assert "options.eps: 0.3 there, 0.08 now" in (tmp_path / "out" / "reproduce.log").read_text()
    refit = dict(detector_identity(fgsm.model), threshold=1e9)
    run_file = root / fgsm.key / "run.json"
    run_file.write_text(json.dumps(dict(json.loads(run_file.read_text()), detector=refit)))
    runner.run_cells([fgsm, bim], tmp_path / "out", stream=DEVNULL)
    assert calls == [root / fgsm.key] * 2 and (root / "mnist-resnet32-ce" / "fgsm-0.08.stale-2").is_dir()
    assert runner.run_cells([fgsm, bim], tmp_path / "out", stream=DEVNULL)[fgsm.key]["source"] == "resumed"
    assert len(calls) == 2


def test_reuse_compares_the_test_split_but_not_the_batch_size(tmp_path):
    """Other test images are other cells: a copy on another split is not reused, the same files
    in another folder are the same split; another batch size changes only float32 rounding."""
    jsma = next(c for c in cells.plan(budgets.get_budget("cpu"), ["table2"])
                if c.model == "mnist-resnet32-ce" and c.attack == "jsma")
    split = {"name": "mnist", "split": "test", "n": 10000, "note": "full",
             "sha256": {"t10k-images-idx3-ubyte.gz": "aa", "t10k-labels-idx1-ubyte.gz": "bb"}, "source": "/here"}
    here = lambda dataset: dict(split, source="/elsewhere")  # noqa: E731
    fake_published(tmp_path / "same", jsma, batch_size=100, data=split)
    fake_published(tmp_path / "batch", jsma, batch_size=1000, data=split)
    other = dict(split, sha256={"t10k-images-idx3-ubyte.gz": "cc", "t10k-labels-idx1-ubyte.gz": "bb"})
    fake_published(tmp_path / "data", jsma, batch_size=100, data=other)
    assert reuse.reusable(jsma, [tmp_path / "same"], here) == tmp_path / "same" / jsma.key
    assert reuse.reusable(jsma, [tmp_path / "batch"], here) == tmp_path / "batch" / jsma.key
    assert reuse.reusable(jsma, [tmp_path / "data"], here) is None
    asked = json.loads((tmp_path / "data" / jsma.key / "run.json").read_text())
    assert reuse.stale(jsma, asked, here) == "data: other test images (their SHA-256 differ)"


def test_timings_are_written_after_every_cell(tmp_path, monkeypatch):
    """A run killed in its second cell keeps the first cell's seconds; the report reads them back."""
    import time

    from rcenp.reproduce import run

    fgsm, bim = smoke_cell("fgsm"), smoke_cell("bim")

    def run_cell(cell, cell_dir, *args):
        if cell is bim:
            raise KeyboardInterrupt
        time.sleep(0.01)
        return {"status": "done", "path": str(cell_dir), "source": "computed"}

    monkeypatch.setattr(runner, "run_cell", run_cell)
    with pytest.raises(KeyboardInterrupt):
        runner.run_cells([fgsm, bim], tmp_path, stream=DEVNULL)
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert set(timings) == {fgsm.key} and timings[fgsm.key] >= 0.01
    assert run._part_seconds(tmp_path, [fgsm, bim]) == {"table2": timings[fgsm.key]}


def test_a_cell_continued_over_several_runs_counts_the_seconds_of_each(tmp_path, monkeypatch):
    """The GPU's jsma-0.1 cell, begun in one run stopped at its limit and finished in the next,
    counted 19.7 s, the second run's share of about 40 s."""
    import time

    bim = smoke_cell("bim")
    runs = []

    def run_cell(cell, cell_dir, *args):
        runs.append(cell.key)
        cell_dir.mkdir(parents=True, exist_ok=True)
        time.sleep(0.05)
        if len(runs) < 3:   # stopped twice, as by a time limit, its finished batches kept
            raise KeyboardInterrupt
        return {"status": "done", "path": str(cell_dir), "source": "continued"}

    monkeypatch.setattr(runner, "run_cell", run_cell)
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            runner.run_cells([bim], tmp_path, stream=DEVNULL)
    assert not (tmp_path / "timings.json").exists()   # nothing finished: no rate to measure from it
    assert json.loads((tmp_path / "cells" / bim.key / runner.UNFINISHED_SECONDS).read_text())["seconds"] >= 0.1
    runner.run_cells([bim], tmp_path, stream=DEVNULL)
    assert json.loads((tmp_path / "timings.json").read_text())[bim.key] >= 0.15
    assert not (tmp_path / "cells" / bim.key / runner.UNFINISHED_SECONDS).exists()


def test_the_white_box_attack_on_a_table4_target_is_planned_only_for_the_sanity_check(monkeypatch):
    infos = lineup._shipped() + ({"name": "mnist-resnet56-ce", "dataset": "mnist", "depth": 56, "objective": "ce",
                                  "detector": True},)
    monkeypatch.setattr(lineup, "_shipped", lambda: infos)
    smoke = budgets.get_budget("smoke")
    assert "mnist-resnet56-ce/cw-wb" not in {c.key for c in cells.plan(smoke, ["table4"])}
    both = {c.key: c for c in cells.plan(smoke, ["table4", "sanity"])}
    assert both["mnist-resnet56-ce/cw-wb"].parts == {"sanity"}
    assert "mnist-resnet56-ce/cw-wb-from-mnist-resnet32-ce" in both


def test_the_white_box_versus_transfer_check_without_table4_says_why(monkeypatch):
    """--only sanity plans no transfer cell: the check is listed as not run, not left out."""
    from rcenp.reproduce.results import Results

    smoke = budgets.get_budget("smoke")
    rows = sanity.run_checks(Results(cells.plan(smoke, ["sanity"]), {}), smoke)
    wb = [r for r in rows if r["check"] == "white-box C&W-wb ≥ transfer"]
    assert {r["subject"] for r in wb} == {"mnist-resnet56-ce", "mnist-resnet56-rce"}
    assert all(r["status"] == "n/a" and "add table4 to --only" in r["detail"] for r in wb)
    both = sanity.run_checks(Results(cells.plan(smoke, ["sanity", "table4"]), {}), smoke)
    assert not any("add table4" in r["detail"] for r in both)
    # the checks whose cells belong to other parts say so too, instead of dropping out
    not_run = {(r["check"], r["subject"]): r["detail"] for r in rows if r["detail"].startswith("not run")}
    assert not_run[("accuracy non-increasing in θ", "mnist-resnet32-ce jsma")] == \
        "not run: its θ sweep is Fig. 2's; add fig2 to --only"
    assert not_run[("zero input-gradient fraction", "mnist-resnet32-rce cw-wb")] == \
        "not run: the cell is table3's; add table3 to --only"
    assert ("zero input-gradient fraction", "mnist-resnet32-ce ilcm-0.08") in not_run
    full = sanity.run_checks(Results(cells.plan(smoke, list(cells.PARTS)), {}), smoke)
    assert not any(r["detail"].startswith("not run") for r in full)


def test_a_broken_manifest_is_the_reason_not_a_missing_model(monkeypatch):
    from rcenp.models import registry

    real = registry.model_info

    def model_info(name):
        if name == "mnist-resnet32-rce":
            raise KeyError("config")
        return real(name)

    monkeypatch.setattr(registry, "model_info", model_info)
    lineup.refresh()
    try:
        assert lineup.find_model("mnist", 32, "rce") is None
        why = "not available: model mnist-resnet32-rce ships with a manifest that cannot be read (KeyError: 'config')"
        assert lineup.missing_reason("mnist", 32, "rce") == why
        text = report.cells_md(unavailable(cells.plan(budgets.get_budget("smoke"), ["table1"])))
        line, = [line for line in text.splitlines() if line.startswith("- mnist-resnet32-rce: ")]
        assert line.endswith(why) and "not shipped" not in line and "rcenp train" not in line
    finally:
        monkeypatch.undo()
        lineup.refresh()


def test_a_missing_model_of_a_skipped_data_set_is_named(monkeypatch):
    """... as not available (not shipped, with its train command), whichever data sets the run covers:
    smoke's report called it 'not run', as if a run covering its data set could fill it."""
    infos = tuple(i for i in lineup._shipped() if i["depth"] != 56)
    monkeypatch.setattr(lineup, "_shipped", lambda: infos)
    text = report.cells_md(unavailable(cells.plan(budgets.get_budget("smoke"), ["table1"])))
    assert "- None:" not in text
    for name in ("cifar10subset-resnet56-ce", "fashion-mnist-resnet56-rce"):
        line, = [line for line in text.splitlines() if line.startswith(f"- {name}: ")]
        assert line.startswith(f"- {name}: not shipped in this version; 1 cell (table1); `rcenp train ")


def test_the_detector_line_comes_from_each_detectors_record():
    calibration = "509 test images, a random half of the test split (held_out_split(1017, seed=0))"
    cifar = {"kernel_per_class": 475, "fitted_on": 5085, "target_fpr": 0.05, "calibration": calibration}
    line = report.detector_line({"cifar10subset-resnet32-ce": cifar, "cifar10subset-resnet32-rce": cifar,
                                 "fashion-mnist-resnet32-ce": None})
    assert (f"cifar10subset-resnet32-ce, cifar10subset-resnet32-rce: 475 kernel points per class drawn from the "
            f"first 5,085 training images; T at 5% false positives on {calibration}") in line
    assert "60,000" not in line and "fashion" not in line
    assert "overlaps the attacked test images" in line and "partly in-sample" in line
    smoke = budgets.get_budget("smoke")
    detectors = report.run_detectors(unavailable(cells.plan(smoke, ["table2"])))
    assert set(detectors) == {"mnist-resnet32-ce", "mnist-resnet32-rce"}  # smoke runs MNIST only
    assert all(info["kernel_per_class"] == 1000 for info in detectors.values())
    assert report.detector_line(detectors) in report.protocol_differences(smoke, detectors)


def test_table4s_line_says_whether_substitute_and_target_share_a_training_seed(monkeypatch):
    """All shipped models train with seed 0: each Table 4 pair saw one batch order, unlike the
    authors' unseeded pairs, which may raise the transfer rate (MNIST CE -> CE: 75.5% against the
    paper's under 50%)."""
    def info(dataset, depth, objective, seed):
        return {"name": f"{dataset}-resnet{depth}-{objective}", "dataset": dataset, "depth": depth,
                "objective": objective, "seed": seed, "train_images": None, "test_images": None, "steps": None,
                "batch_size": None}

    mnist = [info("mnist", d, o, 0) for d in (32, 56) for o in ("ce", "rce")]
    cifar32 = [info("cifar10", 32, o, 0) for o in ("ce", "rce")]
    monkeypatch.setattr(lineup, "_shipped", lambda: tuple(mnist + cifar32))
    line = report.table4_seeds_line()
    assert line.startswith("Substitutes and targets share their training seed (MNIST: mnist-resnet32-ce, "
                           "mnist-resnet32-rce, mnist-resnet56-ce, mnist-resnet56-rce: seed 0), so each pair saw "
                           "the same batch order")
    assert "cifar10-resnet32" not in line                             # no ResNet-56 target shipped: no pair
    assert line in " ".join(report.protocol_differences(budgets.get_budget("smoke")))
    mnist[3]["seed"] = 1                                              # one target trained on another order
    monkeypatch.setattr(lineup, "_shipped", lambda: tuple(mnist + cifar32))
    assert report.table4_seeds_line() == "Training seeds: as each model's manifest records them."


def test_the_eta_pass_is_costed_once_per_crafting_model_where_its_training_split_is_found(tmp_path):
    """The ETA counts C&W-wb's forward over the training split once per crafting model (run_attack
    caches it per process), and not at all without a training split (η is then the approximation)."""
    from tests.test_train import write_mnist_root

    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    root = write_mnist_root(tmp_path / "data", lambda split, n: (rng.integers(0, 256, (n, 28, 28)), np.arange(n) % 10),
                            (50, 10))
    bare = tmp_path / "bare"
    (bare / "mnist").mkdir(parents=True)
    for name in (root / "mnist").iterdir():
        if name.name.startswith("t10k"):
            (bare / "mnist" / name.name).symlink_to(name)

    def todo():
        wb = {"stage1": {"binary_steps": 1, "max_iterations": 2}, "stage2": {"binary_steps": 1, "max_iterations": 2}}
        made = [cells.Cell(f"{m}/{name}", "attack", m, "mnist", 32, m[-3:].strip("-"), 4, attack=attack,
                           options=dict(wb, **({"substitute": sub} if sub else {})) if attack == "cw-wb" else {})
                for m, name, attack, sub in (
                    ("mnist-resnet32-ce", "cw-wb", "cw-wb", None),
                    ("mnist-resnet32-ce", "cw-wb-detector", "cw-wb", None),
                    ("mnist-resnet32-ce", "cw-wb-from-mnist-resnet32-rce", "cw-wb", "mnist-resnet32-rce"),
                    ("mnist-resnet32-rce", "cw-wb", "cw-wb", None),
                    ("mnist-resnet32-rce", "fgsm-0.1", "fgsm", None))]
        for cell in made:
            cell.cost = 1.0
        return made

    with_train, without = todo(), todo()
    costs.add_eta_costs(with_train, root)
    costs.add_eta_costs(without, bare)
    eta = costs.ETA_PASS_PER_IMAGE * 50
    assert [c.cost for c in with_train] == [1.0 + eta, 1.0, 1.0 + eta, 1.0, 1.0]  # CE, then RCE as crafter
    assert [c.cost for c in without] == [1.0] * 5


def test_table4_scores_the_images_of_its_substitutes_own_white_box_cell(monkeypatch):
    """A transfer crafts what its substitute's Table 3 C&W-wb cell crafts (rcenp.attacks.transfer),
    so Table 4 plans that cell, after which the transfer cell only scores its images."""
    infos = lineup._shipped() + tuple({"name": f"mnist-resnet56-{o}", "dataset": "mnist", "depth": 56,
                                       "objective": o, "detector": True} for o in ("ce", "rce"))
    monkeypatch.setattr(lineup, "_shipped", lambda: infos)
    for budget in ("smoke", "cpu", "paper"):
        planned = cells.plan(budgets.get_budget(budget), ["table4"])
        order = {c.key: i for i, c in enumerate(planned)}
        transfers = [c for c in planned if (c.options or {}).get("substitute") and c.dataset == "mnist"]
        assert len(transfers) == 4
        for cell in transfers:
            source = planned[order[cell.crafted]]
            assert cell.crafted == f"{cell.substitute}/cw-wb" and source.model == cell.substitute
            assert order[cell.crafted] < order[cell.key] and source.n == cell.n and source.batch_size == cell.batch_size
            assert source.options == {k: v for k, v in cell.options.items() if k != "substitute"}
            assert cell.cost < source.cost / 10
        mnist = {c.key for c in planned if c.dataset == "mnist"}
        assert mnist == {c.key for c in transfers} | {c.crafted for c in transfers}


def test_a_transfer_cell_is_given_the_finished_source_and_a_begun_one_goes_on_as_it_began(tmp_path, monkeypatch):
    from rcenp.attacks import run as attack_run
    from rcenp.attacks.transfer import CraftedMismatch

    smoke = budgets.get_budget("smoke")
    source = cells.Cell("mnist-resnet32-rce/cw-wb", "attack", "mnist-resnet32-rce", "mnist", 32, "rce", 20,
                        attack="cw-wb", options=budgets.cw_wb_options(smoke), batch_size=20)
    transfer = cells.Cell("mnist-resnet32-ce/cw-wb-from-mnist-resnet32-rce", "attack", "mnist-resnet32-ce", "mnist",
                          32, "ce", 20, attack="cw-wb", options=budgets.cw_wb_options(smoke, "attacker",
                                                                                    "mnist-resnet32-rce"),
                          substitute="mnist-resnet32-rce", batch_size=20, crafted=source.key)
    given, refuse = [], set()

    def run_attack(model, attack, out_dir, options, crafted=None, **kwargs):
        given.append((Path(out_dir).name, crafted))
        if crafted is not None and "mismatch" in refuse:
            raise CraftedMismatch(f"{crafted}: not mnist-resnet32-rce's own cw-wb run of these settings (n: 8 there)")
        fake_run_attack([])(model, attack, out_dir, options, **kwargs)

    monkeypatch.setattr(attack_run, "run_attack", run_attack)
    monkeypatch.setattr(lineup, "has_detector", lambda name: True)
    outcomes = runner.run_cells([source, transfer], tmp_path / "a", stream=DEVNULL)
    assert given == [("cw-wb", None), ("cw-wb-from-mnist-resnet32-rce", tmp_path / "a" / "cells" / source.key)]
    assert outcomes[transfer.key]["status"] == "done"
    given.clear()  # the source is not finished: the transfer crafts its own
    outcomes = runner.run_cells([transfer], tmp_path / "b", stream=DEVNULL)
    assert given == [("cw-wb-from-mnist-resnet32-rce", None)]
    given.clear()  # a source that is not the run the transfer would craft: crafting afresh, said once
    refuse.add("mismatch")
    stream = io.StringIO()
    outcomes = runner.run_cells([source, transfer], tmp_path / "c", stream=stream)
    assert given == [("cw-wb", None), ("cw-wb-from-mnist-resnet32-rce", tmp_path / "c" / "cells" / source.key),
                     ("cw-wb-from-mnist-resnet32-rce", None)]
    note = outcomes[transfer.key]["note"]
    assert note.startswith("crafted its own images: mnist-resnet32-rce/cw-wb is not their source") and "n: 8 there" in note
    assert f"{transfer.key}: {note}" in stream.getvalue()
    assert f"{transfer.key}: {note}" in (tmp_path / "c" / "reproduce.log").read_text()
    given.clear()  # a cell begun crafting its own goes on so, though its source has finished since
    begun = tmp_path / "d" / "cells" / transfer.key
    begun.mkdir(parents=True)
    (begun / "run.json").write_text(json.dumps({"model": transfer.model, "attack": "cw-wb",
                                                "options": transfer.options, "n": 20, "seed": 0,
                                                "eta": "exact: training features",
                                                "model_sha256": weights_identity(transfer.model)[0]}))
    refuse.clear()
    runner.run_cells([source, transfer], tmp_path / "d", stream=DEVNULL)
    assert given == [("cw-wb", None), ("cw-wb-from-mnist-resnet32-rce", None)] and begun.is_dir()


def test_a_begun_cell_goes_on_in_the_batches_it_began_with(tmp_path, monkeypatch):
    """The paper budget's batch went from 100 to 1,000 with one of its cells half done in batches
    of 100; run_attack refuses to resume a run under another batch size, so the cell would have
    been lost. A cell not begun takes the budget's batch."""
    from rcenp.attacks import run as attack_run

    jsma = smoke_cell("jsma")
    batches = []

    def run_attack(model, attack, out_dir, options, batch_size=None, **kwargs):
        batches.append(batch_size)
        fake_run_attack([])(model, attack, out_dir, options, batch_size=batch_size, **kwargs)

    monkeypatch.setattr(attack_run, "run_attack", run_attack)
    begun = tmp_path / "a" / "cells" / jsma.key
    begun.mkdir(parents=True)
    (begun / "run.json").write_text(json.dumps({"model": jsma.model, "attack": "jsma", "options": jsma.options,
                                                "n": jsma.n, "seed": 0, "batch_size": 7,
                                                "model_sha256": weights_identity(jsma.model)[0]}))
    runner.run_cells([jsma], tmp_path / "a", stream=DEVNULL)
    runner.run_cells([jsma], tmp_path / "b", stream=DEVNULL)
    assert batches == [7, jsma.batch_size] and jsma.batch_size != 7


def test_datasets_narrow_a_budget_and_the_others_say_why_not_run(tmp_path, monkeypatch, capsys):
    from rcenp.cli import main

    cpu = budgets.get_budget("cpu")
    assert run.parse_datasets(None, cpu) is None
    assert run.parse_datasets("fashion-mnist, mnist", cpu) == ("mnist", "fashion-mnist")  # report order
    empty = "--datasets: an empty item; expected"  # a mistake, not "every one"
    for bad, message in (("mnist,svhn", "unknown data set 'svhn'"), (",", empty), ("", empty), ("mnist,,cifar10", empty)):
        with pytest.raises(ValueError, match=re.escape(message)):
            run.parse_datasets(bad, cpu)
    with pytest.raises(ValueError, match="the smoke budget covers MNIST only, not CIFAR-10"):
        run.parse_datasets("mnist,cifar10", budgets.get_budget("smoke"))
    narrowed = dataclasses.replace(cpu, datasets=("mnist",), datasets_by="--datasets mnist")
    planned = cells.plan(narrowed, cells.PARTS)
    assert {c.key for c in planned} == {c.key for c in cells.plan(cpu, cells.PARTS)}  # the same places
    assert all(c.missing is None for c in planned if c.dataset == "mnist" and c.model and c.depth == 32)
    others = [c for c in planned if c.dataset != "mnist" and c.model]
    assert others and all(c.missing == "not run: --datasets mnist covers MNIST only" for c in others)
    assert all(c.missing.endswith("is not shipped in this version") for c in planned if not c.model)
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "--budget", "cpu", "--datasets", "mnist,svhn", "--out", "r"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown data set 'svhn'" in err[0] and not (tmp_path / "r").exists()


def test_a_later_run_over_other_data_sets_keeps_the_finished_cells_of_the_earlier_ones(tmp_path):
    cpu = budgets.get_budget("cpu")
    mnist = dataclasses.replace(cpu, datasets=("mnist",), datasets_by="--datasets mnist")
    fashion = dataclasses.replace(cpu, datasets=("fashion-mnist",), datasets_by="--datasets fashion-mnist")
    planned = cells.plan(mnist, ["table1"])
    done = [c for c in planned if c.dataset == "mnist" and c.model]
    for cell in done:   # as the first run left them
        folder = tmp_path / "cells" / cell.key
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps({"model_sha256": weights_identity(cell.model)[0]}))
    later = cells.plan(fashion, ["table1"])
    assert all(c.skipped for c in later if c.dataset != "fashion-mnist")
    outcomes = runner.run_cells([c for c in later if c.dataset != "fashion-mnist"], tmp_path, stream=DEVNULL)
    assert {k for k, o in outcomes.items() if o["status"] == "done"} == {c.key for c in done}
    assert all(o["source"] == "resumed" for o in outcomes.values() if o["status"] == "done")
    rest = [o for o in outcomes.values() if o["status"] != "done"]
    assert rest and all(o == {"status": "not run", "reason": "not run: --datasets fashion-mnist covers "
                              "Fashion-MNIST (extra) only", "path": None} for o in rest)
    text = report.cells_md(Results([c for c in later if c.dataset != "fashion-mnist"], outcomes), "", fashion)
    assert f"**Run: {len(done)} cells**" in text and f"**Not run: {len(rest)} cells** (data sets this run does not " \
        "cover; `--resume` over this folder naming them in --datasets fills them and keeps these results)" in text
    assert "**Not available: 0 cells**" in text


def test_an_out_that_holds_a_run_is_refused_with_the_command_that_continues_it(tmp_path):
    """The fix a refusal suggests works: same budget → --resume; another budget → that budget and --resume."""
    (tmp_path / "reproduce.json").write_text(json.dumps({"budget": "smoke"}))
    with pytest.raises(ValueError, match=r"\(budget smoke\): pass --resume to continue it, or choose another --out"):
        run.claim(tmp_path, "smoke", resume=False)
    with pytest.raises(ValueError, match=r"\(budget smoke\): pass --budget smoke --resume to continue it"):
        run.claim(tmp_path, "cpu", resume=False)
    with pytest.raises(ValueError, match=r"holds a smoke run: pass --budget smoke, or choose another --out"):
        run.claim(tmp_path, "cpu", resume=True)
    assert run.claim(tmp_path, "smoke", resume=True) is False  # the suggested command goes ahead


def test_the_reports_code_line_names_the_commit_and_what_git_could_not_say():
    from rcenp.reproduce.run import code_line

    assert code_line({"commit": "abc", "dirty": False}) == "commit abc"
    assert code_line({"commit": "abc", "dirty": True}) == "commit abc (uncommitted changes)"
    assert code_line({"commit": "abc", "dirty": None}) == "commit abc (uncommitted changes: git could not say)"
    assert code_line({}) == "not a git checkout (no commit to name)"


def test_the_partial_line_counts_the_pending_cells_by_part():
    """A run of --only table2 reported later with --report listed 28 pending cells and advised
    --resume for all of them, where Table 2 lacked 2: the line now counts them part by part."""
    from rcenp.reproduce.run import pending_by_part

    smoke = budgets.get_budget("smoke")
    planned = cells.plan(smoke, list(cells.PARTS))
    table2 = {c.key for c in cells.plan(smoke, ["table2"])}
    pending = [c for c in planned if c.key in table2][:2] + [c for c in planned if c.key not in table2][:3]
    outcomes = {c.key: {"status": "pending"} for c in pending}
    counts = pending_by_part(planned, outcomes)
    assert counts["table2"] == sum("table2" in c.parts for c in pending) >= 2
    assert list(counts) == [p for p in cells.PARTS if p in counts] and all(counts.values())
    assert sum(counts.values()) == sum(len(c.parts) for c in pending)
    line = report._by_part(counts)
    assert line == ("; by part: " + ", ".join(f"{p} {n}" for p, n in counts.items())
                    + " (a cell used by several counts in each), and with `--only PART` one part's alone")
    assert report._by_part({"table2": 2}) == report._by_part({}) == ""


def test_the_invocations_that_computed_cells_are_recorded_and_reported(tmp_path):
    """--report rewrote the header's command with its own and nothing said which commands had
    computed the numbers: reproduce.json keeps them, and REPORT.md lists them."""
    from rcenp.reproduce.run import claim, computed_by, record_invocation

    claim(tmp_path, "smoke", resume=False)
    assert computed_by(tmp_path) == [] and computed_by(tmp_path / "none") == []
    assert provenance.computed_by_line([]).startswith("- cells computed by: no invocation recorded")
    record_invocation(tmp_path, "rcenp reproduce --out x", "commit abc", 3, 12.34)
    record_invocation(tmp_path, "rcenp reproduce --out x --resume", "commit def", 1, 5.0)
    entries = computed_by(tmp_path)
    assert [(e["command"], e["code"], e["cells"], e["seconds"]) for e in entries] == [
        ("rcenp reproduce --out x", "commit abc", 3, 12.3), ("rcenp reproduce --out x --resume", "commit def", 1, 5.0)]
    assert json.loads((tmp_path / "reproduce.json").read_text())["budget"] == "smoke"   # the rest kept
    line = provenance.computed_by_line(entries)
    assert line.startswith("- cells computed by: `rcenp reproduce --out x` (commit abc, on cpu, 3 cells in 12 s, "
                           "finished ")
    assert "; `rcenp reproduce --out x --resume` (commit def, on cpu, 1 cell in 5 s, finished " in line
    gpu = {"device": "cuda", "gpu": "NVIDIA H200", "cupy": "14.2.0"}
    assert provenance._on(gpu) == ", on cuda (NVIDIA H200, CuPy 14.2.0)" and provenance._on(None) == ""
    assert "(commit abc, 3 cells in 12 s, finished " in provenance.computed_by_line([{**entries[0], "compute": None}])


def test_a_gpu_run_is_resumed_on_the_gpu_and_its_measured_rate_says_where_it_was_measured(tmp_path, monkeypatch):
    """The paper run's report said to resume it with a command that would run on the CPU (about
    1,531 h, against the GPU's 201), and --plan gave the H200's rate as if it were this host's."""
    from rcenp.reproduce import preview

    run.claim(tmp_path, "paper", resume=False)
    assert run.command_again(None, "paper", tmp_path) == f"rcenp reproduce --budget paper --out {tmp_path} --resume"
    assert preview.computed_on(tmp_path) == ""
    run.record_invocation(tmp_path, "rcenp reproduce --x", "commit abc", 3, 12.0, "cpu")
    assert "--device" not in run.command_again("rcenp reproduce --budget paper --out o --report", "paper", tmp_path)
    assert preview.computed_on(tmp_path) == " (computed on cpu)"
    gpu = {"device": "cuda", "gpu": "NVIDIA H200", "cupy": "14.2.0"}
    monkeypatch.setattr(run, "device_identity", lambda device: gpu)   # as on the H200
    run.record_invocation(tmp_path, "rcenp reproduce --x --device cuda", "commit abc", 3, 12.0, "cuda")
    assert run.command_again("rcenp reproduce --budget paper --out o --report", "paper", tmp_path) == (
        "rcenp reproduce --budget paper --out o --device cuda --resume")
    assert run.command_again("rcenp reproduce --out o --device=cuda --report", "paper", tmp_path) == (
        "rcenp reproduce --out o --device=cuda --resume")
    assert preview.computed_on(tmp_path) == " (computed on cpu and cuda: NVIDIA H200)"


def test_a_run_counts_the_cells_it_finished_from_an_earlier_run_s_snapshot(tmp_path, monkeypatch):
    """The cpu run that finished Fashion-MNIST's four C&W-wb cells, two of them from snapshots,
    printed 'all 4 cells computed' and recorded '2 cells': a continued cell was not counted."""
    sources = iter(["continued", "computed", "resumed", "continued"])

    def run_cells(cells, out_dir, *args, **kwargs):
        return {c.key: {"status": "done", "path": None, "source": next(sources, "resumed")} for c in cells}

    monkeypatch.setattr(run, "run_cells", run_cells)
    monkeypatch.setattr(run, "write_report", lambda *args: {"files": [], "sanity": [], "figures": {}})
    run.reproduce("smoke", out=tmp_path / "out", only="table2", stream=DEVNULL, command="rcenp reproduce --x")
    [entry] = run.computed_by(tmp_path / "out")
    assert (entry["command"], entry["cells"], entry.get("stopped")) == ("rcenp reproduce --x", 3, None)


def test_a_stopped_run_records_the_cells_it_finished_and_its_device(tmp_path, monkeypatch):
    """The GPU session's runs, each stopped at its time limit by SIGINT, left no record of
    themselves: the report said 'no invocation recorded' over 69 cells they had computed."""
    calls = []

    def run_cell(cell, cell_dir, *args):
        if calls:
            raise KeyboardInterrupt
        calls.append(cell.key)
        cell_dir.mkdir(parents=True)
        cells.result_file(cell_dir, cell.kind).write_text("{}")
        return {"status": "done", "path": str(cell_dir), "source": "computed"}

    monkeypatch.setattr(runner, "run_cell", run_cell)
    with pytest.raises(KeyboardInterrupt):
        run.reproduce("smoke", out=tmp_path / "out", only="table2", stream=DEVNULL, command="rcenp reproduce --x")
    [entry] = run.computed_by(tmp_path / "out")
    assert (entry["command"], entry["cells"], entry["compute"], entry["stopped"]) == (
        "rcenp reproduce --x", 1, {"device": "cpu"}, True)
    assert ", on cpu, 1 cell in " in provenance.computed_by_line([entry]) and ", stopped " in provenance.computed_by_line([entry])
    assert run.finished_since(run.plan(budgets.get_budget("smoke"), ["table2"]), tmp_path / "out",
                              json.loads((tmp_path / "out" / "timings.json").read_text())) == 0


def test_the_report_says_what_device_each_cell_recorded_and_which_ran_in_other_batches(tmp_path):
    """The GPU cells' report named no device beside the invocations (written afterwards from a log)
    and gave the budget's batches of 1,000 where its cells had run in batches of 100."""
    fgsm, bim, jsma = smoke_cell("fgsm"), smoke_cell("bim"), smoke_cell("jsma")
    software = {"cpu": {"device": "cpu"}, "gpu": {"device": "cuda", "gpu": "NVIDIA H200", "cupy": "14.2.0"}}
    outcomes = {}
    for cell, batch, where in ((fgsm, fgsm.batch_size, "gpu"), (bim, 7, "gpu"), (jsma, 7, "cpu")):
        folder = tmp_path / cell.key
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps({"settings": {"batch_size": batch}, "software": software[where]}))
        outcomes[cell.key] = {"status": "done", "path": str(folder)}
    res = Results([fgsm, bim, jsma], outcomes)
    assert provenance.devices_line(res) == ("- attack cells computed on (their summary.json): 2 on cuda "
                                            "(NVIDIA H200, CuPy 14.2.0), 1 on cpu")
    assert provenance.other_batches(res) == "; 2 of the finished attack cells ran in batches of 7, as they began"
    assert provenance.other_batches(Results([fgsm], outcomes)) == ""
    assert provenance.devices_line(Results([fgsm], {})) == "- attack cells computed on: none finished"
    # results/fig2a's GPU cells predate the GPU's name in summary.json: they say so, not just 'CuPy 14.2.0'
    (tmp_path / jsma.key / "summary.json").write_text(json.dumps({"software": {"device": "cuda", "cupy": "14.2.0"}}))
    assert provenance.devices_line(Results([fgsm, bim, jsma], outcomes)) == (
        "- attack cells computed on (their summary.json): 2 on cuda (NVIDIA H200, CuPy 14.2.0), "
        "1 on cuda (GPU not recorded, CuPy 14.2.0)")


def test_the_report_counts_the_cells_computed_before_the_record_of_invocations(tmp_path):
    """The cpu report listed invocations that computed 122 cells over 214 found finished in OUT,
    and did not say that the other 92 came from before the record was kept."""
    entries = [{"command": "rcenp reproduce --x", "code": "commit abc", "cells": 3, "seconds": 5.0,
                "finished": "2026-12-04 10:00:00 UTC"}]
    line = provenance.computed_by_line(entries, 5)
    assert line.endswith("finished 2026-12-04 10:00:00 UTC); at least 2 cells of OUT computed before the record was "
                         "kept (each attack cell's summary.json names the code that computed it)")
    assert "before the record" not in provenance.computed_by_line(entries, 3)
    assert "before the record" not in provenance.computed_by_line(entries, 2)   # recomputed stale cells
    assert provenance.computed_by_line([], 5).startswith("- cells computed by: no invocation recorded")


def test_fig2_counts_the_planned_cells_still_pending():
    """The paper run's Fig. 2 showed JSMA's RCE curve as one point and an empty C&W panel, with
    nothing saying the rest was pending."""
    from rcenp.reproduce import figures

    fgsm, bim = smoke_cell("fgsm"), smoke_cell("bim")
    res = Results([fgsm, bim], {fgsm.key: {"status": "done", "path": "x"},
                                bim.key: {"status": "pending", "reason": "pending: not computed yet", "path": None}})
    name = lambda cell: cell.key.split("/", 1)[1]  # noqa: E731
    places = [("mnist", "ce", name(fgsm)), ("mnist", "ce", name(bim)), ("mnist", "rce", name(bim))]
    assert figures._pending(res, places) == 1   # the RCE cell is not in this plan: not counted
