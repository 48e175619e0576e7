"""``rcenp.reproduce`` planning: budgets, missing and newly shipped models, reuse of published cells,
the Table 4 transfer path, figures without the report extra."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from rcenp.reproduce import budgets, cells, costs, lineup, reuse, run, runner
from tests.reproduce_fakes import fake_published


def test_budgets_and_eps_options_match_the_sweep_script(load_script):
    sweep = load_script("attack_sweep")
    cpu = budgets.get_budget("cpu")
    assert cpu.eps_sweep == sweep.EPSILONS
    for attack in ("fgsm", "bim", "ilcm", "jsma"):
        for eps in sweep.EPSILONS:
            assert budgets.eps_options(attack, eps, cpu) == sweep.OPTIONS[attack](eps)
    paper_budget = budgets.get_budget("paper")
    assert paper_budget.n_cw == paper_budget.n_wb == 1000 and paper_budget.cw["max_iterations"] == 10000
    assert paper_budget.cw["binary_steps"] == 9 and paper_budget.full_cw_budget
    with pytest.raises(ValueError, match="unknown budget"):
        budgets.get_budget("fast")


def test_missing_models_are_named_and_planned_as_not_available(monkeypatch):
    """A model absent from the registry is named, with the reason, under every budget (the two
    models are hidden here, so the test does not depend on which models a version ships)."""
    hidden = ("mnist-resnet56-rce", "cifar10subset-resnet32-ce")
    infos = tuple(i for i in lineup._shipped() if i["name"] not in hidden)
    monkeypatch.setattr(lineup, "_shipped", lambda: infos)
    planned = cells.plan(budgets.get_budget("smoke"), ["table1"])
    by_key = {c.key: c for c in planned}
    assert len(planned) == 12
    missing = by_key["mnist-resnet56-rce/test-error"]
    assert missing.model is None
    assert missing.missing == "not available: model mnist-resnet56-rce is not shipped in this version"
    assert missing.missing_model == "mnist-resnet56-rce"
    cpu = {c.key: c for c in cells.plan(budgets.get_budget("cpu"), ["table1"])}
    assert cpu["cifar10subset-resnet32-ce/test-error"].missing == \
        "not available: model cifar10subset-resnet32-ce is not shipped in this version"
    assert by_key["mnist-resnet32-ce/test-error"].model == "mnist-resnet32-ce"
    shipped = by_key["mnist-resnet32-ce/test-error"]
    assert shipped.missing is None and shipped.missing_model is None
    assert not any("issue" in c.missing for c in planned if c.missing)


def test_the_smoke_budget_runs_mnist_only_and_says_so_for_the_rest(monkeypatch):
    """A shipped model of another data set is 'not run' under smoke and planned under cpu; one not
    shipped is 'not available' under either (smoke's report called it 'not run', as if a run
    covering its data set could fill it)."""
    infos = lineup._shipped() + ({"name": "fashion-mnist-resnet32-ce", "dataset": "fashion-mnist", "depth": 32,
                                  "objective": "ce", "detector": True},)
    monkeypatch.setattr(lineup, "_shipped", lambda: infos)
    smoke = cells.plan(budgets.get_budget("smoke"), cells.PARTS)
    cpu = {c.key: c for c in cells.plan(budgets.get_budget("cpu"), cells.PARTS)}
    assert any(c.dataset == "mnist" and c.missing is None for c in smoke)
    others = [c for c in smoke if c.dataset != "mnist" and c.model is not None]
    assert others and all(c.missing == "not run: the smoke budget covers MNIST only" and c.missing_model is None
                          and c.skipped for c in others)
    unshipped = [c for c in smoke if c.dataset != "mnist" and c.model is None]
    assert unshipped and all(c.missing.endswith("is not shipped in this version") and c.missing_model
                             and not c.skipped for c in unshipped)
    fashion = [c for c in others if c.model == "fashion-mnist-resnet32-ce"]
    common = [c for c in fashion if c.key in cpu]  # the same cell under cpu (smoke's n and ε differ for some)
    assert common and all(cpu[c.key].missing is None for c in common)
    assert not any(c.missing and c.missing.startswith("not run") for c in cpu.values())


def test_the_train_command_for_a_missing_model_parses():
    """Each missing model's ``rcenp train`` line is a valid command for that model's place."""
    from rcenp.cli import build_parser

    for dataset in lineup.DATASETS:
        for depth in lineup.DEPTHS:
            for objective in lineup.OBJECTIVES:
                name = lineup.expected_name(dataset, depth, objective)
                argv = lineup.train_command(name).split()
                assert argv[0] == "rcenp"
                args = build_parser().parse_args(argv[1:])
                assert (args.command, args.dataset, args.depth, args.objective, args.out) == \
                    ("train", dataset, depth, objective, f"runs/{name}")
    assert lineup.train_command("not-a-model") == ""
    assert lineup.train_command("cifar10subset-resnet56-rce").endswith(
        "--preset subset --out runs/cifar10subset-resnet56-rce")
    for command in ("rcenp data fetch", "scripts/ship_model.py", "rcenp detect NAME --fit", "--resume"):
        assert command in lineup.HOW_TO_ADD
    assert "issue" not in lineup.HOW_TO_ADD


def test_a_newly_shipped_model_is_picked_up(monkeypatch):
    infos = tuple(i for i in lineup._shipped() if i["name"] != "mnist-resnet56-rce") + (  # as before it shipped
        {"name": "mnist-r56-later", "dataset": "mnist", "depth": 56, "objective": "rce", "detector": True},)
    monkeypatch.setattr(lineup, "_shipped", lambda: infos)
    assert lineup.find_model("mnist", 56, "rce") == "mnist-r56-later"
    planned = {c.key: c for c in cells.plan(budgets.get_budget("smoke"), ["table4"])}
    assert planned["mnist-r56-later/cw-wb-from-mnist-resnet32-ce"].missing is None
    assert planned["mnist-r56-later/cw-wb-from-mnist-resnet32-ce"].options["substitute"] == "mnist-resnet32-ce"


def test_a_missing_substitute_is_the_missing_model(monkeypatch):
    """Table 4's transfer from an unshipped substitute waits for the substitute, and says so."""
    infos = tuple(i for i in lineup._shipped() if i["name"] != "mnist-resnet32-rce") + (
        {"name": "mnist-resnet56-ce", "dataset": "mnist", "depth": 56, "objective": "ce", "detector": True},)
    monkeypatch.setattr(lineup, "_shipped", lambda: infos)
    planned = {c.key: c for c in cells.plan(budgets.get_budget("smoke"), ["table4"])}
    cell = planned["mnist-resnet56-ce/cw-wb-from-mnist-resnet32-rce"]
    assert cell.model == "mnist-resnet56-ce" and cell.missing_model == "mnist-resnet32-rce"
    assert cell.missing == "not available: model mnist-resnet32-rce is not shipped in this version"
    assert planned["mnist-resnet56-ce/cw-wb-from-mnist-resnet32-ce"].missing is None


def test_published_cells_are_reused_in_place(tmp_path, monkeypatch):
    cpu = budgets.get_budget("cpu")
    planned = [c for c in cells.plan(cpu, ["fig2"]) if c.model == "mnist-resnet32-ce" and c.attack == "bim"]
    same = fake_published(tmp_path / "published", planned[0])
    fake_published(tmp_path / "published", planned[1], options={"eps": planned[1].eps, "steps": 5})  # other settings
    assert reuse.reusable(planned[0], [tmp_path / "published"]) == same
    assert reuse.reusable(planned[1], [tmp_path / "published"]) is None

    def must_not_run(*args, **kwargs):
        raise AssertionError("a reusable cell was recomputed")

    from rcenp.attacks import run as attack_run

    monkeypatch.setattr(attack_run, "run_attack", must_not_run)
    outcomes = runner.run_cells(planned[:1], tmp_path / "out", cells_from=[tmp_path / "published"],
                               stream=open(os.devnull, "w"))
    assert outcomes[planned[0].key] == {"status": "done", "path": str(same), "source": "reused", "seconds": 0.0}


def test_the_plan_lists_the_work_and_computes_writes_and_moves_nothing(tmp_path, capsys):
    from rcenp.cli import main

    cpu = budgets.get_budget("cpu")
    planned = [c for c in cells.plan(cpu, ["fig2"]) if c.model == "mnist-resnet32-ce" and c.attack == "bim"]
    fake_published(tmp_path / "published", planned[0])
    fake_published(tmp_path / "out" / "cells", planned[1], options={"eps": planned[1].eps, "steps": 5})  # stale
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["reproduce", "--budget", "cpu", "--only", "fig2", "--datasets", "mnist", "--out", str(tmp_path / "out"),
                 "--cells-from", str(tmp_path / "published"), "--plan"]) == 0
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"reproduce (cpu) into {tmp_path / 'out'}: ") and lines[0].endswith("; this plan computes and writes nothing")
    computed = [line.split()[0] for line in lines if line.startswith("  mnist-") and "%" in line]
    assert planned[1].key in computed and planned[0].key not in computed
    assert f"finished, kept: 1 cell (1 from {tmp_path / 'published'})" in lines
    assert f"  {planned[1].key}: asked for other settings (options.steps: 5 there, 10 now); would be set aside " \
           "and computed afresh" in lines
    assert "set aside by a run: 1 cell in OUT (its folder kept as NAME.stale-K)" in lines
    assert any(line.startswith("not run: ") for line in lines)
    assert any(line.startswith("to compute: ") and " h at 4.0 ms per unit on one free core" in line for line in lines)
    (tmp_path / "typo").mkdir()
    assert main(["reproduce", "--budget", "cpu", "--only", "fig2", "--datasets", "mnist", "--out", str(tmp_path / "out"),
                 "--cells-from", str(tmp_path / "published"), "--cells-from", str(tmp_path / "typo"), "--plan"]) == 0
    assert any(line.startswith(f"--cells-from {tmp_path / 'typo'}: none of this run's")
               for line in capsys.readouterr().out.splitlines())
    (tmp_path / "out" / "reproduce.json").write_text(json.dumps({"budget": "smoke"}))  # a smoke run is there
    for extra in ([], ["--resume"]):
        assert main(["reproduce", "--budget", "cpu", "--out", str(tmp_path / "out"), "--plan"] + extra) == 2
        assert "smoke" in capsys.readouterr().err
    total = int(next(line for line in lines if line.startswith("to compute: ")).split()[4].replace(",", ""))
    assert total == round(sum(costs.cell_cost(c) for c in cells.plan(cpu, ["fig2"])
                              if c.dataset == "mnist" and c.model is not None and c.key != planned[0].key))


def test_the_plan_gives_the_free_core_estimate_beside_a_measured_rate_far_from_it(tmp_path, capsys):
    """Cells computed beside other work measured 12.7 ms per unit where a free core takes 4: the
    plan's 44.7 h alone overstated what the rest takes on free cores."""
    from rcenp.cli import main
    from rcenp.reproduce.costs import SECONDS_PER_UNIT

    cpu = budgets.get_budget("cpu")
    planned = [c for c in cells.plan(cpu, ["fig2"]) if c.model == "mnist-resnet32-ce" and c.attack == "bim"]
    argv = ["reproduce", "--budget", "cpu", "--only", "fig2", "--datasets", "mnist", "--out", str(tmp_path / "out"),
            "--plan"]
    (tmp_path / "out").mkdir()
    for factor, free_core in ((3.0, True), (1.2, False)):
        timings = {planned[0].key: factor * SECONDS_PER_UNIT * costs.cell_cost(planned[0])}
        (tmp_path / "out" / "timings.json").write_text(json.dumps(timings))
        assert main(argv) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("to compute: "))
        units = float(line.split()[4].replace(",", ""))
        assert f" at {1e3 * factor * SECONDS_PER_UNIT:.1f} ms per unit, measured on 1 earlier cell in OUT" in line
        assert line.endswith(f" (at 4.0 ms per unit, one free core's: about {units * SECONDS_PER_UNIT / 3600:.1f} h)") \
            == free_core
    assert main(argv + ["--jobs", "2"]) == 0
    jobs_line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("  with --jobs 2: "))
    assert jobs_line.endswith(" h at that rate, 2 cells at a time on 2 cores (no sooner than the largest cell)")


def test_the_plan_measures_its_rate_on_no_transfer_cell(tmp_path, capsys):
    """Four transfer cells that scored their substitutes' images in 9 s, costed as crafting their
    own (the substitutes' data set outside --datasets), made the plan call 2.67 M units "1 min".
    A transfer cell's time says nothing of a unit's, whichever way it is costed."""
    from rcenp.cli import main

    cpu = budgets.get_budget("cpu")
    transfer = [c for c in cells.plan(cpu, ["table4"]) if c.substitute is not None and c.dataset == "mnist"]
    assert transfer
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "timings.json").write_text(json.dumps({c.key: 2.0 for c in transfer}))
    runs = ["mnist"] + ["fashion-mnist"] * bool(reuse.split_identity("fashion-mnist", None))
    for datasets in runs:  # the transfers costed as scoring, then as crafting (where Fashion-MNIST is here)
        assert main(["reproduce", "--budget", "cpu", "--only", "table3,table4", "--datasets", datasets, "--out",
                     str(tmp_path / "out"), "--plan"]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("to compute: "))
        assert line.endswith(" at 4.0 ms per unit on one free core (other work on the cores stretches it)"), line


def test_the_plan_says_a_run_is_at_work_on_out_and_which_cells_it_computes(tmp_path, capsys):
    """A plan made while a run computed in OUT listed that run's cells as to compute and never
    said a run was there."""
    from rcenp.cli import main
    from rcenp.reproduce.workers import cell_lock, run_lock

    cpu = budgets.get_budget("cpu")
    planned = [c for c in cells.plan(cpu, ["fig2"]) if c.model == "mnist-resnet32-ce" and c.attack == "bim"]
    argv = ["reproduce", "--budget", "cpu", "--only", "fig2", "--datasets", "mnist", "--out", str(tmp_path / "out"),
            "--resume", "--plan"]
    run.claim(tmp_path / "out", "cpu", resume=False)
    assert main(argv) == 0
    quiet = capsys.readouterr().out
    assert "a run is at work" not in quiet and " in work" not in quiet
    with run_lock(tmp_path / "out"), cell_lock(tmp_path / "out", planned[2].key):
        assert main(argv) == 0
        lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith(f"a run is at work on {tmp_path / 'out'} now (a second one would be refused)")
    assert "the 1 cell it computes now, marked 'in work'" in lines[1]
    marked = [line.split()[0] for line in lines if line.endswith("  in work")]
    assert marked == [planned[2].key]
    assert not (tmp_path / "out" / "locks").exists()  # the run's lock files went with it; the plan made none


def test_a_run_remembers_its_cells_from(tmp_path, capsys, monkeypatch):
    """A --resume, --plan or --report naming no --cells-from uses the run's (a forgotten one made
    a report of 92 pending cells where 8 were, and its resume would have recomputed the rest)."""
    from rcenp.cli import main
    from rcenp.reproduce.run import claim

    cpu = budgets.get_budget("cpu")
    planned = [c for c in cells.plan(cpu, ["fig2"]) if c.model == "mnist-resnet32-ce" and c.attack == "bim"]
    fake_published(tmp_path / "published", planned[0])
    out = tmp_path / "runs" / "out"
    claim(out, "cpu", resume=False)
    reuse.remember_cells_from(out, [tmp_path / "published"])
    reuse.remember_cells_from(out, [tmp_path / "published"])          # once only
    assert json.loads((out / "reproduce.json").read_text())["cells_from"] == ["../../published"]   # holds in a clone
    monkeypatch.chdir(tmp_path / "runs")
    assert reuse.remembered_cells_from(Path("out")) == ["../published"]  # from the current folder
    assert reuse.remembered_cells_from(out) == [str(tmp_path / "published")]  # or absolute, as OUT is given
    assert main(["reproduce", "--budget", "cpu", "--only", "fig2", "--datasets", "mnist", "--out", "out", "--resume",
                 "--plan"]) == 0
    captured = capsys.readouterr()
    assert "--cells-from ../published: as this run recorded" in captured.err
    assert "finished, kept: 1 cell (1 from ../published)" in captured.out.splitlines()
    assert main(["reproduce", "--budget", "cpu", "--out", "out", "--report", "--only", "table1"]) == 2
    assert "it goes without --only" in capsys.readouterr().err


def test_published_cells_with_another_detector_or_an_unrecorded_eta_are_not_reused(tmp_path):
    from rcenp.attacks.runfiles import detector_identity

    cpu = budgets.get_budget("cpu")
    bim = next(c for c in cells.plan(cpu, ["fig2"]) if c.model == "mnist-resnet32-ce" and c.attack == "bim")
    current = detector_identity("mnist-resnet32-ce")
    assert current is not None
    fake_published(tmp_path / "now", bim, detector=current)
    fake_published(tmp_path / "refit", bim, detector=dict(current, threshold=current["threshold"] + 1))
    assert reuse.reusable(bim, [tmp_path / "now"]) == tmp_path / "now" / bim.key
    assert reuse.reusable(bim, [tmp_path / "refit"]) is None
    wb = next(c for c in cells.plan(cpu, ["table3"]) if c.attack == "cw-wb" and c.model == "mnist-resnet32-ce")
    fake_published(tmp_path / "old", wb)
    fake_published(tmp_path / "new", wb, eta="exact: training features")
    assert reuse.reusable(wb, [tmp_path / "old"]) is None
    assert reuse.reusable(wb, [tmp_path / "new"]) == tmp_path / "new" / wb.key


def test_transfer_cell_runs_on_the_target_with_the_substitute(tmp_path, monkeypatch):
    """A real run_attack call with the substitute option: the cell finishes with a transfer block.
    With no data root (the embedded test sample; η from the detector's points), so that the η
    pass over 60,000 training images, tested elsewhere, does not cost minutes here."""
    smoke = budgets.get_budget("smoke")
    options = budgets.cw_wb_options(smoke, "attacker", "mnist-resnet32-rce")
    options["stage1"] = {"binary_steps": 1, "max_iterations": 2}
    options["stage2"] = {"binary_steps": 1, "max_iterations": 2}
    cell = cells.Cell("mnist-resnet32-ce/cw-wb-from-mnist-resnet32-rce", "attack", "mnist-resnet32-ce", "mnist", 32,
                      "ce", 2, attack="cw-wb", options=options, substitute="mnist-resnet32-rce", batch_size=2)
    monkeypatch.delenv("RCENP_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no data in the per-user cache either
    outcome = runner.run_cell(cell, tmp_path / cell.key, stream=open(os.devnull, "w"))
    assert outcome["status"] == "done"
    summary = json.loads((tmp_path / cell.key / "summary.json").read_text())
    assert summary["settings"]["data"]["n"] == 1000 and summary["settings"]["eta"]["rule"].startswith("approximation")
    assert summary["transfer"]["n_eligible"] <= 2 and summary["settings"]["options"]["substitute"] == "mnist-resnet32-rce"


def test_figures_without_the_report_extra(monkeypatch, tmp_path):
    """Without matplotlib or scikit-learn every figure is skipped with the install hint and no file
    is written (CI installs the report extra, so this path is checked here)."""
    from rcenp.reproduce import figures

    assert figures.missing_libraries(("numpy", "rcenp_no_such_module")) == ["rcenp_no_such_module"]
    monkeypatch.setattr(figures, "missing_libraries", lambda needs: [n for n in needs if n == "sklearn"])
    hint = "pip install -e '.[report]' in the rcenp checkout"  # rcenp is not on PyPI: install the extra from a clone
    assert figures.INSTALL_HINT == hint
    assert figures.draw(None, None, tmp_path, ["fig1"]) == {"fig1": {"skipped": f"sklearn not installed ({hint})"}}
    monkeypatch.setattr(figures, "missing_libraries", lambda needs: list(needs))
    drawn = figures.draw(None, None, tmp_path, figures.FIGURES)
    assert drawn["fig1"] == {"skipped": f"matplotlib, sklearn not installed ({hint})"}
    assert drawn["fig2"] == drawn["fig3"] == {"skipped": f"matplotlib not installed ({hint})"}
    assert not any(tmp_path.iterdir())


def test_the_command_help_gives_the_install_hint_from_a_clone():
    from rcenp.cli import build_parser
    from rcenp.reproduce import figures

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and "reproduce" in a.choices)
    description = subparsers.choices["reproduce"].description
    assert figures.INSTALL_HINT in description and "rcenp[report]" not in description


def test_the_plan_leaves_cells_without_test_data_out_of_its_estimate(tmp_path, capsys):
    """A data root without CIFAR-10: its cells are listed apart, not in 'to compute' or its hours."""
    from rcenp.cli import main

    (tmp_path / "empty-root").mkdir()
    assert main(["reproduce", "--budget", "cpu", "--only", "table1", "--datasets", "cifar10", "--out",
                 str(tmp_path / "out"), "--data-dir", str(tmp_path / "empty-root"), "--plan"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "to compute: nothing" in lines
    at = next(i for i, line in enumerate(lines) if line.startswith("no test data here, so not counted above: "))
    n = int(lines[at].split(": ")[1].split()[0])   # one table-1 cell per shipped CIFAR model
    assert n >= 2 and lines[at + 1].startswith(f"  {n} × CIFAR-10 (subset): none found (a run marks them not available")
    assert not any(line.startswith("  cifar10subset-") for line in lines)


def test_fig1_names_the_classes_with_fewer_images_than_asked():
    """The CIFAR-10 subset's test split has 93, 92 and 87 images of classes 1, 4 and 5: its Fig. 1
    showed 972 images, not 1,000, and did not say why."""
    from rcenp.reproduce import figures

    labels = np.repeat(np.arange(10), [100, 93, 100, 100, 92, 87, 100, 100, 100, 100])
    assert figures.fewer_than(labels, 100) == "class 1 (93), class 4 (92), class 5 (87)"
    assert figures.fewer_than(labels, 87) == ""
    assert figures.fewer_than(np.zeros(5, np.int64), 1) == ", ".join(f"class {c} (0)" for c in range(1, 10))


def test_figure_3_draws_every_data_set_from_table_3_s_cells():
    """Fig. 3 left out Fashion-MNIST, whose C&W-wb cells Table 3 computes anyway: its grid is
    drawn from those same cells, one per data set and objective, with nothing computed for it."""
    cpu = cells.plan(budgets.get_budget("cpu"), ["fig3", "table3"])
    fig3 = [c for c in cpu if "fig3" in c.parts]
    assert sorted((c.dataset, c.objective) for c in fig3) == sorted(
        (d, o) for d in lineup.DATASETS for o in lineup.OBJECTIVES)
    assert all(c.attack == "cw-wb" and "table3" in c.parts for c in fig3)
    table3 = {c.key for c in cells.plan(budgets.get_budget("cpu"), ["table3"])}
    assert {c.key for c in fig3} < table3   # Table 3's attacker-kernel cells, not its detector-kernel ones
