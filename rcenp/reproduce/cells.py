"""The plan of ``rcenp reproduce``: a list of cells, each a saved unit of work.

A cell is one directory ``OUT/cells/<model>/<name>/``:
- an attack cell is one ``run_attack`` run (``summary.json``, ``samples.jsonl``,
  ``adversarial.npz``), named as ``scripts/attack_sweep.py`` names them (``bim-0.16``,
  ``jsma-0.1``) or ``cw``, ``cw-hc``, ``cw-wb``, ``cw-wb-detector``, ``bim-1`` (unbounded),
  ``cw-wb-from-<substitute>`` (Table 4's transfer);
- ``test-error/result.json``: Table 1's test error on the first ``n_test`` test images;
- ``features-<k>pc/features.npz``: Fig. 1's 64-d Z of the first k test images of each class.

A transfer cell's x* are those of its substitute's own C&W-wb cell (Table 3's, the same images,
targets and settings: ``rcenp.attacks.transfer``), so Table 4 plans that cell too, runs after it
and scores its images on the target instead of crafting them again (``Cell.crafted``); where that
cell is not finished, or not the run the transfer would craft, the transfer cell crafts its own.

The runner (``rcenp.reproduce.runner``) computes the cells; here is only what they are.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from rcenp.reproduce import budgets, lineup
from rcenp.reproduce.budgets import Budget
from rcenp.reproduce.costs import cell_cost

PARTS = ("table1", "table2", "table3", "table4", "fig1", "fig2", "fig3", "sanity")
EPS_ATTACKS = ("fgsm", "bim", "ilcm", "jsma")


@dataclasses.dataclass
class Cell:
    """One unit of work. key: ``<model>/<name>`` (the folder under OUT/cells); kind: "attack",
    "test-error" or "features"; model: the shipped model (None when not shipped: ``missing`` says
    why and ``missing_model`` names the model it waits for, this one or Table 4's substitute);
    dataset/depth/objective: its place in the tables; attack/options/n: run_attack's
    arguments, batch_size its checkpointed batch; eps: the ε-attack's ε (None otherwise);
    parts: the report parts that use it; crafted: a transfer cell's source of x*, the key of its
    substitute's own C&W-wb cell (module docstring); skipped: a cell of a shipped model on a data set
    this run does not cover (the budget's, or ``--datasets``), "not run" unless an earlier run finished
    it (an unshipped model's cell is "not available" whatever the run covers);
    cost: a relative cost (image-iterations) for the ETA."""

    key: str
    kind: str
    model: str | None
    dataset: str
    depth: int
    objective: str
    n: int | None
    attack: str | None = None
    options: dict | None = None
    eps: float | None = None
    substitute: str | None = None
    batch_size: int = 100
    missing: str | None = None
    missing_model: str | None = None
    parts: set = dataclasses.field(default_factory=set)
    crafted: str | None = None
    skipped: bool = False
    cost: float = 1.0


def plan(budget: Budget, parts) -> list[Cell]:
    """The cells that ``parts`` (a subset of ``PARTS``) need under ``budget``, in run order
    (cheap and widely used first), without duplicates."""
    cells: dict[str, Cell] = {}

    def add(part, dataset, depth, objective, name, kind, **fields):
        model = lineup.find_model(dataset, depth, objective)
        key = f"{model or lineup.expected_name(dataset, depth, objective)}/{name}"
        if key not in cells:
            skipped = budget.skips(dataset) and model is not None  # (not shipped: "not available", whatever covers it)
            if skipped:
                missing, missing_model = f"not run: {budget.datasets_by or f'the {budget.name} budget'} covers " + \
                    ", ".join(lineup.DATASET_TITLES[d] for d in budget.datasets) + " only", None
            else:
                missing = None if model else lineup.missing_reason(dataset, depth, objective)
                missing_model = None if model else lineup.expected_name(dataset, depth, objective)
            cells[key] = Cell(key, kind, model, dataset, depth, objective, missing=missing,
                              missing_model=missing_model, skipped=skipped, **fields)
            cells[key].cost = cell_cost(cells[key])
        cells[key].parts.add(part)
        return cells[key]

    def attack(part, dataset, objective, attack_name, name, options, n, depth=32, eps=None, substitute=None):
        return add(part, dataset, depth, objective, name, "attack", attack=attack_name, options=options, n=n,
                   eps=eps, substitute=substitute, batch_size=min(budget.batch_size, n))

    def eps_cell(part, dataset, objective, attack_name, eps):
        attack(part, dataset, objective, attack_name, f"{attack_name}-{eps:g}",
               budgets.eps_options(attack_name, eps, budget), budget.n_eps, eps=eps)

    def cw_cells(part, dataset, objective):
        for name in ("cw", "cw-hc"):
            attack(part, dataset, objective, name, name, budgets.cw_options(name, budget), budget.n_cw)

    def wb_cells(part, dataset, objective, depth=32, kernels=("attacker", "detector")):
        for kernel in kernels:
            name = "cw-wb" if kernel == "attacker" else f"cw-wb-{kernel}"
            attack(part, dataset, objective, "cw-wb", name, budgets.cw_wb_options(budget, kernel), budget.n_wb,
                   depth=depth)

    selected = [p for p in PARTS if p in set(parts)]
    for part in selected:
        for dataset in lineup.DATASETS:
            for objective in lineup.OBJECTIVES:
                if part == "table1":
                    for depth in lineup.DEPTHS:
                        add(part, dataset, depth, objective, "test-error", "test-error", n=budget.n_test)
                elif part == "fig1":
                    add(part, dataset, 32, objective, f"features-{budget.tsne_per_class}pc", "features",
                        n=budget.tsne_per_class)
                elif part == "table2":
                    for name in EPS_ATTACKS:
                        eps_cell(part, dataset, objective, name, budget.table_eps)
                    cw_cells(part, dataset, objective)
                elif part == "fig2":
                    for name in EPS_ATTACKS:
                        for eps in budget.eps_sweep:
                            eps_cell(part, dataset, objective, name, eps)
                    cw_cells(part, dataset, objective)
                elif part == "sanity":
                    for name in ("fgsm", "bim"):
                        for eps in budget.eps_sweep:
                            eps_cell(part, dataset, objective, name, eps)
                    attack(part, dataset, objective, "bim", f"bim-{budgets.UNBOUNDED_EPS:g}",
                           {"eps": budgets.UNBOUNDED_EPS, "steps": 10}, budget.n_eps, eps=budgets.UNBOUNDED_EPS)
                    cw_cells(part, dataset, objective)
                elif part == "table3":
                    wb_cells(part, dataset, objective)
                elif part == "fig3":
                    wb_cells(part, dataset, objective, kernels=("attacker",))
                elif part == "table4" and dataset != "fashion-mnist":
                    if "sanity" in selected:  # white-box on the target: only the sanity check uses it
                        wb_cells("sanity", dataset, objective, depth=56, kernels=("attacker",))
                    for substitute_objective in lineup.OBJECTIVES:
                        substitute = lineup.find_model(dataset, 32, substitute_objective)
                        sub_name = substitute or lineup.expected_name(dataset, 32, substitute_objective)
                        cell = attack(part, dataset, objective, "cw-wb", f"cw-wb-from-{sub_name}",
                                      budgets.cw_wb_options(budget, "attacker", sub_name), budget.n_wb, depth=56,
                                      substitute=sub_name)
                        if substitute is None and cell.missing is None:
                            cell.missing = lineup.missing_reason(dataset, 32, substitute_objective)
                            cell.missing_model = sub_name
                        if cell.missing is None:  # its x*: the substitute's own white-box cell's
                            crafted = attack(part, dataset, substitute_objective, "cw-wb", "cw-wb",
                                             budgets.cw_wb_options(budget, "attacker"), budget.n_wb)
                            cell.crafted, cell.cost = crafted.key, cell_cost(cell, crafted=True)
    order = {"test-error": 0, "features": 1, "attack": 2}
    return sorted(cells.values(), key=lambda c: (order[c.kind], c.crafted is not None, c.cost))  # transfer last


def result_file(cell_dir: Path, kind: str) -> Path:
    """The file whose presence marks a cell finished."""
    return cell_dir / {"attack": "summary.json", "test-error": "result.json", "features": "features.npz"}[kind]
