"""What the ETA of ``rcenp reproduce`` divides by its measured rate: each cell's relative cost, in
image-iterations (``rcenp.reproduce.cells.Cell``: kind, attack, options, n, dataset, model)."""
from __future__ import annotations

CELL_OVERHEAD = 60.0  # a cell's fixed cost (loading the model, data and detector; its files), in image-iterations
ETA_PASS_PER_IMAGE = 0.25  # C&W-wb's η pass: a forward per training image in batches of 500


def cell_cost(cell, crafted: bool = False) -> float:
    """Image-iterations of MNIST ResNet-32 (``model_factor``), roughly: what the ETA divides by
    the measured rate, and what ``--plan`` multiplies by ``SECONDS_PER_UNIT``. The constants come
    from a smoke run's timings.json (2026-12-02, batches of 20): about 0.6 s per cell whatever its
    size, and 7-10 ms per image-iteration of an attack on one MNIST image, about 13 ms for
    C&W-wb's, and 80 s for η's pass over 60,000 training images; at the cpu budget's batches of
    100 on a free core an image-iteration takes about 4 ms (``SECONDS_PER_UNIT``). ``crafted``: a
    transfer cell that scores its substitute's finished x* (``Cell.crafted``) instead of
    attacking, about one iteration per image."""
    return CELL_OVERHEAD + (model_factor(cell) * (cell.n or 10000) if crafted else _work(cell))


PIXELS = {"mnist": 28 * 28, "fashion-mnist": 28 * 28, "cifar10": 32 * 32}  # H·W of each data set's images
SECONDS_PER_UNIT = 0.004  # one free core, MNIST ResNet-32: C&W 5 × 100 on 100 images, 3.7-4.1 ms per pass (bench/)


def model_factor(cell) -> float:
    """A forward-backward of ``cell``'s network on one image against MNIST ResNet-32's: its
    convolutions' work grows with the residual units ((depth - 2) / 6 per stage) and with H·W."""
    return (cell.depth - 2) / 30 * PIXELS.get(cell.dataset, 28 * 28) / (28 * 28)


def _work(cell) -> float:
    return model_factor(cell) * _image_iterations(cell)


def _image_iterations(cell) -> float:
    n = cell.n or 10000
    if cell.kind == "features":  # n per class, 10 classes; a forward only
        return 0.3 * 10 * n
    if cell.kind != "attack":
        return 0.3 * n
    o = cell.options
    if cell.attack == "fgsm":
        return n
    if cell.attack in ("bim", "ilcm"):
        return n * o["steps"]
    if cell.attack == "jsma":
        return n * 0.6 * o.get("max_iterations", 100)
    if cell.attack in ("cw", "cw-hc"):
        return n * 0.5 * o["binary_steps"] * o["max_iterations"]
    stages = (o["stage1"], o["stage2"])  # an iteration also differentiates the K-density term
    return n * 1.5 * sum(s["binary_steps"] * s["max_iterations"] for s in stages)


def add_eta_costs(todo: list, data_dir=None) -> None:
    """C&W-wb's η needs the crafting model's training features, a forward over its training split
    that ``run_attack`` makes once per model and process: add its cost (``ETA_PASS_PER_IMAGE`` per
    image) to the first cell to compute of each crafting model, where that split is found. (A
    pass kept on disk by an earlier process, ``wb_features.disk_cache_file``, costs nothing; the
    ETA then errs high until the first such cell is done.)"""
    from rcenp.data import DataError, load

    sizes, seen = {}, set()
    for cell in todo:
        crafter = (cell.options or {}).get("substitute") or cell.model
        if cell.attack != "cw-wb" or crafter in seen or cell.crafted is not None:  # scoring alone: no η
            continue
        seen.add(crafter)
        if cell.dataset not in sizes:
            try:
                sizes[cell.dataset] = len(load(cell.dataset, "train", data_dir).labels)
            except DataError:  # no training split: η is the approximation, no such pass
                sizes[cell.dataset] = 0
        cell.cost += ETA_PASS_PER_IMAGE * sizes[cell.dataset]
