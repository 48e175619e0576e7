"""Which model plays which part: data sets, depths, objectives, and the shipped model for each.

A model is found in the registry by its data set, depth and objective (so a model trained later
under any name is picked up); a missing one is named by the name it is expected to ship under
(``mnist-resnet56-rce``, ``cifar10subset-resnet32-ce``, ...) in the "not available" reason;
``train_command`` and ``HOW_TO_ADD`` say how to train and ship it from an rcenp checkout.
"""
from __future__ import annotations

import functools
import json

DATASETS = ("mnist", "cifar10", "fashion-mnist")  # the paper's two, then Fashion-MNIST as an extra
DATASET_TITLES = {"mnist": "MNIST", "cifar10": "CIFAR-10 (subset)", "fashion-mnist": "Fashion-MNIST (extra)"}
NAME_PREFIX = {"mnist": "mnist", "cifar10": "cifar10subset", "fashion-mnist": "fashion-mnist"}
OBJECTIVES = ("ce", "rce")
DEPTHS = (32, 56)
TRAIN_PRESET = {"mnist": "paper", "cifar10": "subset", "fashion-mnist": "quick"}  # as scripts/runs.py trains them


def expected_name(dataset: str, depth: int, objective: str) -> str:
    """The name the model is expected to ship under, e.g. ``cifar10subset-resnet56-rce``."""
    return f"{NAME_PREFIX[dataset]}-resnet{depth}-{objective}"


@functools.lru_cache(maxsize=None)
def _listing() -> tuple:
    """(the shipped models' ``model_info`` dicts, {name: why its manifest cannot be read})."""
    from rcenp.models.registry import model_info, shipped_models

    infos, unreadable = [], {}
    for name in shipped_models():
        try:
            infos.append(model_info(name))
        except Exception as exc:  # any fault of a manifest: the model is absent, and the reason says why
            unreadable[name] = f"{type(exc).__name__}: {exc}"
    return tuple(infos), unreadable


def _shipped() -> tuple:
    return _listing()[0]


def unreadable(name: str) -> str | None:
    """Why model ``name``'s shipped manifest cannot be read (the error's text), or None."""
    return _listing()[1].get(name)


def refresh() -> None:
    """Forget the cached registry listing (tests that add or hide models call it)."""
    _listing.cache_clear()


def shipped_of(dataset: str) -> list[dict]:
    """The ``rcenp.models.registry.model_info`` of every readable shipped model of ``dataset``."""
    return [info for info in _shipped() if info["dataset"] == dataset]


def find_model(dataset: str, depth: int, objective: str) -> str | None:
    """The shipped model for (data set, depth, objective): the expected name when shipped, else
    the first shipped model whose manifest matches; None when there is none."""
    infos = _shipped()
    wanted = expected_name(dataset, depth, objective)
    for info in infos:
        if info["name"] == wanted:
            return wanted
    for info in infos:
        if (info["dataset"], info["depth"], info["objective"]) == (dataset, depth, objective):
            return info["name"]
    return None


def missing_reason(dataset: str, depth: int, objective: str) -> str:
    """``not available: model X is not shipped in this version`` (``HOW_TO_ADD`` says what to do), or
    ``not available: model X ships with a manifest that cannot be read (<error>)``."""
    name = expected_name(dataset, depth, objective)
    why = unreadable(name)
    if why is not None:
        return f"not available: model {name} ships with a manifest that cannot be read ({why})"
    return f"not available: model {name} is not shipped in this version"


HOW_TO_ADD = ("To fill a missing model's cells, from an rcenp checkout: get its data set (`rcenp data fetch "
              "DATASET`), train it with the command shown, ship it into the registry (`python "
              "scripts/ship_model.py runs/NAME NAME`), fit its detector (`rcenp detect NAME --fit`; add "
              "`--per-class 475` on the CIFAR-10 subset, whose smallest class has 475 training images), then "
              "rerun this command with --resume: the cells already finished are kept.")


def train_command(name: str) -> str:
    """The ``rcenp train`` command line for expected model ``name`` (``expected_name``'s form), with
    the preset the project trains that data set with; '' for any other name."""
    place = next(((d, depth, o) for d in DATASETS for depth in DEPTHS for o in OBJECTIVES
                  if expected_name(d, depth, o) == name), None)
    if place is None:
        return ""
    dataset, depth, objective = place
    return (f"rcenp train --dataset {dataset} --objective {objective} --depth {depth} "
            f"--preset {TRAIN_PRESET[dataset]} --out runs/{name}")


def has_detector(name: str) -> bool:
    """Whether a fitted K-density detector ships beside model ``name``."""
    return any(info["name"] == name and info["detector"] for info in _shipped())


def detector_info(name: str) -> dict | None:
    """The ``info`` its fitted detector records for model ``name`` (``kernel_per_class``,
    ``fitted_on``, ``calibration``, ``target_fpr``, ...), or None without a readable one."""
    from rcenp.checkpoint import CheckpointError
    from rcenp.detect.detector import detector_stem
    from rcenp.models.registry import resolve

    try:
        return json.loads(detector_stem(resolve(name)).with_suffix(".json").read_text()).get("info") or {}
    except (OSError, ValueError, AttributeError, CheckpointError):
        return None
