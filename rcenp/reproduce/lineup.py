"""Which model plays which part: data sets, depths, objectives, and the shipped model for each.

A model is found in the registry by its data set, depth and objective (so a model trained later
under any name is picked up); a missing one is named by the name it is expected to ship under
(``mnist-resnet56-rce``, ``cifar10subset-resnet32-ce``, ...) in the "not available" reason;
``train_command`` and ``HOW_TO_ADD`` say how to train and ship it from an rcenp checkout.
"""
from __future__ import annotations

import functools

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
def _shipped() -> tuple:
    from rcenp.models.registry import model_info, shipped_models

    infos = []
    for name in shipped_models():
        try:
            infos.append(model_info(name))
        except Exception:  # a broken manifest is the registry's business; treat the model as absent
            continue
    return tuple(infos)


def refresh() -> None:
    """Forget the cached registry listing (tests that add or hide models call it)."""
    _shipped.cache_clear()


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
    """``not available: model X is not shipped in this version`` (``how_to_add`` says what to do)."""
    return f"not available: model {expected_name(dataset, depth, objective)} is not shipped in this version"


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
