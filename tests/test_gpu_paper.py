"""scripts/gpu_paper.py: a run slimmed for the device keeps what a resumed run needs, and the
device's cells merged back replace the partial work they finished."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_paper.py"
spec = importlib.util.spec_from_file_location("gpu_paper", SCRIPT)
gpu_paper = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_paper)


def write(path: Path, text: str = "{}") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def make_run(root: Path) -> Path:
    write(root / "reproduce.json", json.dumps({"budget": "paper"}))
    write(root / "timings.json", json.dumps({"m/bim-0.1": 4.0}))
    done = root / "cells" / "m" / "bim-0.1"
    for name in ("run.json", "summary.json", "attack.log", "samples.jsonl", "adversarial.npz"):
        write(done / name, name)
    begun = root / "cells" / "m" / "jsma-0.16"
    for name in ("run.json", "attack.log", "partial/batch-00000.npz", "partial/batch-00000.jsonl"):
        write(begun / name, name)
    write(root / "cells" / "m" / "test-error" / "result.json")
    for name in ("run.json", "summary.json", "samples.jsonl", "adversarial.npz"):   # a transfer's source
        write(root / "cells" / "m" / "cw-wb" / name, name)
    return root


def test_slim_drops_only_the_finished_cells_per_image_records(tmp_path):
    run = make_run(tmp_path / "run")
    gpu_paper.slim(run, tmp_path / "slim")
    kept = {str(p.relative_to(tmp_path / "slim")) for p in (tmp_path / "slim").rglob("*") if p.is_file()}
    assert kept == {"reproduce.json", "timings.json", "cells/m/bim-0.1/run.json", "cells/m/bim-0.1/summary.json",
                    "cells/m/bim-0.1/attack.log", "cells/m/jsma-0.16/run.json", "cells/m/jsma-0.16/attack.log",
                    "cells/m/jsma-0.16/partial/batch-00000.npz", "cells/m/jsma-0.16/partial/batch-00000.jsonl",
                    "cells/m/test-error/result.json"} | {f"cells/m/cw-wb/{name}" for name in (
                        "run.json", "summary.json", "samples.jsonl", "adversarial.npz")}
    with pytest.raises(ValueError, match="exists already"):
        gpu_paper.slim(run, tmp_path / "slim")


def test_merge_brings_the_new_cells_and_drops_the_partial_work_they_finished(tmp_path):
    run = make_run(tmp_path / "run")
    gpu_paper.slim(run, tmp_path / "back")
    back = tmp_path / "back" / "cells" / "m" / "jsma-0.16"   # the device finished jsma-0.16 and a new cell
    shutil.rmtree(back / "partial")
    for name in ("summary.json", "samples.jsonl"):
        write(back / name, "device")
    write(tmp_path / "back" / "cells" / "m" / "fgsm-0.1" / "summary.json", "device")
    write(tmp_path / "back" / "timings.json", json.dumps({"m/bim-0.1": 4.0, "m/jsma-0.16": 30.0}))
    assert gpu_paper.merge(tmp_path / "back", run) == (2, 1)
    jsma = run / "cells" / "m" / "jsma-0.16"
    assert not (jsma / "partial").exists() and (jsma / "samples.jsonl").read_text() == "device"
    assert (run / "cells" / "m" / "bim-0.1" / "samples.jsonl").read_text() == "samples.jsonl"   # kept
    assert json.loads((run / "timings.json").read_text())["m/jsma-0.16"] == 30.0


def test_bad_folders_are_one_line_and_exit_2(tmp_path, capsys):
    """A trial merged a cpu run into a paper run (exit 0, the paper run's record overwritten),
    merged a run into itself (100 KB of copytree's error list) and slimmed a run into itself."""
    def refused(*argv):
        assert gpu_paper.main(list(map(str, argv))) == 2
        err = capsys.readouterr().err
        assert err.startswith("gpu_paper.py: ") and err.count("\n") == 1
        return err

    (tmp_path / "empty").mkdir()
    assert refused("slim", tmp_path / "empty", tmp_path / "slim") == (
        f"gpu_paper.py: {tmp_path / 'empty'}: no rcenp reproduce run there (no readable reproduce.json)\n")
    paper = make_run(tmp_path / "paper")
    cpu = make_run(tmp_path / "cpu")
    write(cpu / "reproduce.json", json.dumps({"budget": "cpu"}))
    assert "holds a cpu run" in refused("merge", cpu, paper)
    assert json.loads((paper / "reproduce.json").read_text())["budget"] == "paper"
    assert "the same run twice" in refused("merge", paper, tmp_path / "paper" / "." / "")
    assert "inside the run it would copy" in refused("slim", paper, paper / "inner")
    assert not (paper / "inner").exists()
