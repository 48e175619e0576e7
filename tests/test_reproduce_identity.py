"""A ``rcenp reproduce`` cell is tied to the weights it was computed on: a model retrained under its
shipped name makes its finished test-error, features and attack cells stale (set aside, computed
afresh), through the weights' SHA-256 where the cell records it and the training step where an
older attack run records only that."""
import json

import numpy as np

from rcenp.attacks.runfiles import weights_identity
from rcenp.reproduce import budgets, cells, reuse, runner
from tests.reproduce_fakes import DEVNULL, fake_published, fake_run_attack, smoke_cell


def _planned(key):
    return next(c for c in cells.plan(budgets.get_budget("smoke"), ["table1", "fig1"]) if c.key == key)


def test_weights_identity_is_the_manifests_sha256_and_step():
    sha256, step = weights_identity("mnist-resnet32-ce")
    assert len(sha256) == 64 and int(sha256, 16) >= 0 and step == 20000
    assert weights_identity("mnist-resnet32-rce")[0] != sha256
    assert weights_identity("no-such-model") == (None, None)


def test_test_error_and_features_cells_record_their_weights_and_are_recomputed_for_others(tmp_path, monkeypatch):
    """Computed here, each cell records the weights' SHA-256 and is kept on resuming; a cell of
    other weights, or one from before the SHA-256 was recorded, is set aside and computed again."""
    error, features = _planned("mnist-resnet32-ce/test-error"), _planned("mnist-resnet32-ce/features-20pc")
    out = tmp_path / "out"
    first = runner.run_cells([error, features], out, stream=DEVNULL)
    assert {o["source"] for o in first.values()} == {"computed"}
    sha256, step = weights_identity(error.model)
    result_path = out / "cells" / error.key / "result.json"
    result = json.loads(result_path.read_text())
    assert (result["model_sha256"], result["model_step"], result["first_n"]) == (sha256, step, 200)
    identity = json.loads((out / "cells" / features.key / "cell.json").read_text())
    assert identity == {"model": features.model, "model_sha256": sha256, "model_step": step}
    again = runner.run_cells([error, features], out, stream=DEVNULL)
    assert {o["source"] for o in again.values()} == {"resumed"}

    result_path.write_text(json.dumps(dict(result, model_sha256="0" * 64)))   # another model's cell
    legacy = json.loads((out / "cells" / features.key / "cell.json").read_text())
    (out / "cells" / features.key / "cell.json").unlink()                      # a cell from before cell.json
    np.savez(out / "cells" / features.key / "tsne.npz", marker=np.zeros(1))   # the t-SNE of the old features
    notes = runner.sort_out([error, features], out, dry_run=True)[2]
    assert notes == [f"{error.key}: computed on other weights (model_sha256: 000000000000… there, {sha256[:12]}… now "
                     "(a retrained model)); would be set aside and computed afresh",
                     f"{features.key}: computed on other weights (model_sha256: (none) there, computed before the "
                     "weights' SHA-256 was recorded); would be set aside and computed afresh"]
    third = runner.run_cells([error, features], out, stream=DEVNULL)
    assert {o["source"] for o in third.values()} == {"computed"}
    assert json.loads(result_path.read_text())["model_sha256"] == sha256
    assert json.loads((out / "cells" / features.key / "cell.json").read_text()) == legacy
    assert not (out / "cells" / features.key / "tsne.npz").exists()        # went aside with its features
    aside = out / "cells" / "mnist-resnet32-ce"
    assert json.loads((aside / "test-error.stale-1" / "result.json").read_text())["model_sha256"] == "0" * 64
    assert (aside / "features-20pc.stale-1" / "tsne.npz").is_file()


def test_an_attack_cell_of_other_weights_is_stale(tmp_path, monkeypatch):
    """The weights' SHA-256 where the run records it; else its training step (the runs from before
    it, e.g. results/fig2a); an unfinished run without it is computed afresh, since resuming it
    would be refused."""
    fgsm = smoke_cell("fgsm")
    sha256, step = weights_identity(fgsm.model)
    cases = {"same": dict(model_sha256=sha256, model_step=step), "legacy": dict(model_step=step),
             "retrained": dict(model_sha256="f" * 64, model_step=step), "other step": dict(model_step=step - 1)}
    for name, record in cases.items():
        fake_published(tmp_path / name, fgsm, **record)
    assert reuse.reusable(fgsm, [tmp_path / "same"]) == tmp_path / "same" / fgsm.key
    assert reuse.reusable(fgsm, [tmp_path / "legacy"]) == tmp_path / "legacy" / fgsm.key
    assert reuse.reusable(fgsm, [tmp_path / "retrained"]) is None
    assert reuse.reusable(fgsm, [tmp_path / "other step"]) is None
    asked = {name: reuse.recorded(tmp_path / name / fgsm.key) for name in cases}
    assert reuse.stale(fgsm, asked["other step"]) == f"model_step: {step - 1} there, {step} now"
    assert reuse.stale(fgsm, asked["retrained"]).startswith('model_sha256: "ffff')
    assert reuse.stale(fgsm, asked["legacy"], finished=False) == \
        "model_sha256: (none) there, an unfinished run from before the weights' SHA-256 was recorded"
    assert reuse.stale(fgsm, asked["same"], finished=False) is None

    from rcenp.attacks import run as attack_run

    out = tmp_path / "out"
    unfinished = out / "cells" / fgsm.key
    unfinished.mkdir(parents=True)
    (unfinished / "run.json").write_text(json.dumps({"model": fgsm.model, "attack": fgsm.attack,
                                                     "options": fgsm.options, "n": fgsm.n, "seed": 0,
                                                     "model_step": step}))
    calls = []
    monkeypatch.setattr(attack_run, "run_attack", fake_run_attack(calls))
    outcome = runner.run_cells([fgsm], out, stream=DEVNULL)[fgsm.key]
    assert outcome["source"] == "computed" and calls == [unfinished]
    assert (out / "cells" / "mnist-resnet32-ce" / "fgsm-0.08.stale-1" / "run.json").is_file()


def test_an_attack_run_records_the_weights_and_resumes_a_finished_run_from_before(tmp_path):
    """run.json names the weights' SHA-256; a finished run whose run.json predates that key resumes
    (nothing to recompute), an unfinished one is refused with the key named."""
    from rcenp.attacks.run import run_attack

    out = tmp_path / "fgsm"
    run_attack("mnist-resnet32-ce", "fgsm", out, {"eps": 0.1}, n=4, batch_size=4, stream=DEVNULL)
    asked = json.loads((out / "run.json").read_text())
    assert asked["model_sha256"] == weights_identity("mnist-resnet32-ce")[0]
    del asked["model_sha256"]
    (out / "run.json").write_text(json.dumps(asked))
    summary = run_attack("mnist-resnet32-ce", "fgsm", out, {"eps": 0.1}, n=4, batch_size=4, resume=True,
                         stream=DEVNULL)
    assert summary["settings"]["n"] == 4
    (out / "summary.json").unlink()
    try:
        run_attack("mnist-resnet32-ce", "fgsm", out, {"eps": 0.1}, n=4, batch_size=4, resume=True, stream=DEVNULL)
    except ValueError as exc:
        assert "--resume with other settings than the run there: model_sha256" in str(exc)
    else:
        raise AssertionError("an unfinished run without the weights' SHA-256 was resumed")
