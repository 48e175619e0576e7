"""Copy a finished training run into the package's shipped models.

    python scripts/ship_model.py RUN_DIR NAME     # e.g. runs/paper-mnist-rce mnist-resnet32-rce

Writes rcenp/models/pretrained/NAME.{npz,json}: the weights and BN statistics only (no
optimiser state), with a manifest recording the exact command, commit, seed, data identity,
step and the run's test error from metrics.json. The run must have finished (metrics.json).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's rcenp

from rcenp import checkpoint  # noqa: E402
from rcenp.models.registry import PRETRAINED_DIR  # noqa: E402


def ship(run_dir: Path, name: str) -> Path:
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise SystemExit(f"{run_dir}: no metrics.json, so the run has not finished")
    manifest, model_state, _ = checkpoint.load(run_dir / "checkpoint")
    metrics = json.loads(metrics_path.read_text())
    config_file = json.loads((run_dir / "config.json").read_text())
    if manifest["step"] != manifest["config"]["steps"]:
        raise SystemExit(f"{run_dir}: checkpoint at step {manifest['step']} of {manifest['config']['steps']}")
    shipped = {key: manifest[key] for key in ("config", "step", "data", "objective", "kind")}
    shipped.update(command=config_file.get("command"), trained_with=manifest.get("environment"),
                   test_error=metrics["test_error"], n_test=metrics["n_test"], test_set=metrics.get("test_set"),
                   train_seconds=metrics.get("train_seconds_total"), name=name)
    return checkpoint.save(PRETRAINED_DIR / name, model_state, None, shipped)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[2])
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run's folder, e.g. runs/paper-mnist-rce")
    parser.add_argument("name", metavar="NAME", help="the shipped model's name, e.g. mnist-resnet32-rce")
    args = parser.parse_args(argv)
    print(ship(args.run_dir, args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
