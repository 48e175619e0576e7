"""Figures 1-3 as PNG files, with matplotlib and scikit-learn (the optional ``report`` extra).

Nothing here is imported by the core package; ``draw`` imports matplotlib (Agg) and sklearn only
when called and, without them, returns the reason and the install hint instead of files.
- Fig. 1: t-SNE of Z (64-d) of ``tsne_per_class`` test images per class, CE beside RCE, coloured
  by class: PCA to 60 dimensions, then ``sklearn.manifold.TSNE`` with perplexity 30 (protocol
  §7.14), random_state 0. The embedding is cached beside the features (``tsne.npz``).
- Fig. 2: (a) accuracy under FGSM/BIM/ILCM against ε and JSMA against θ (its per-feature step),
  CE and RCE per attack; (b) C&W and C&W-hc mean minimal distortion, CE against RCE ("n/a" in
  place of a bar without a finished cell or without a successfully attacked image).
- Fig. 3: clean images and their C&W-wb adversarial examples on CE and RCE (first 8 images
  classified correctly by both models whose attack returned an image classified as the target),
  each titled with its distortion, in red with "flagged" where it does not evade the detector.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from rcenp import checkpoint
from rcenp.reproduce import lineup
from rcenp.reproduce.budgets import Budget
from rcenp.reproduce.results import Results

INSTALL_HINT = "pip install -e '.[report]' in the rcenp checkout"  # rcenp is installed from a clone, not PyPI
FIGURES = ("fig1", "fig2", "fig3")


def missing_libraries(names=("matplotlib", "sklearn")) -> list[str]:
    """The report extra's libraries that cannot be imported here."""
    import importlib.util

    return [n for n in names if importlib.util.find_spec(n) is None]


def draw(res: Results, budget: Budget, out_dir: Path, which) -> dict:
    """Draw the figures in ``which`` into ``out_dir`` → {figure: {"files": [...], "notes": [...]}}
    or {figure: {"skipped": reason}}."""
    out = {}
    for name in which:
        needs = ("matplotlib", "sklearn") if name == "fig1" else ("matplotlib",)
        missing = missing_libraries(needs)
        if missing:
            out[name] = {"skipped": f"{', '.join(missing)} not installed ({INSTALL_HINT})"}
            continue
        import matplotlib

        matplotlib.use("Agg")
        out[name] = {"fig1": fig1, "fig2": fig2, "fig3": fig3}[name](res, budget, Path(out_dir))
    return out


def fewer_than(labels: np.ndarray, per_class: int) -> str:
    """The classes (0-9) of which ``labels`` has fewer than ``per_class``, with their counts, as
    Fig. 1's caption names them ("class 1 (93), class 5 (87)"); "" when none has."""
    counts = np.bincount(labels, minlength=10)
    return ", ".join(f"class {c} ({n})" for c, n in enumerate(counts) if n < per_class)


def _tsne(cell_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    cache = cell_dir / "tsne.npz"
    with np.load(cell_dir / "features.npz") as data:
        z, labels = data["z"].astype(np.float64), data["labels"]
    if cache.is_file():
        with np.load(cache) as data:
            return data["embedding"], labels
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    # one OpenMP/BLAS thread: on a busy 2-core machine, spinning OpenMP workers made a 1 s fit take 45 s
    with threadpool_limits(limits=1):
        reduced = PCA(n_components=min(60, z.shape[1], len(z)), random_state=0).fit_transform(z)
        embedding = TSNE(n_components=2, perplexity=min(30.0, (len(z) - 1) / 3.0), init="pca",
                         random_state=0).fit_transform(reduced)
    checkpoint.atomic_write_npz(cache, embedding=embedding)
    return embedding, labels


def fig1(res: Results, budget: Budget, out_dir: Path) -> dict:
    import matplotlib.pyplot as plt

    files, notes = [], []
    for dataset in lineup.DATASETS:
        cells = [res.get(dataset, 32, obj, f"features-{budget.tsne_per_class}pc") for obj in lineup.OBJECTIVES]
        reasons = [res.status(c) for c in cells]
        if any(reasons):
            notes.append(f"{lineup.DATASET_TITLES[dataset]}: {next(r for r in reasons if r)}")
            continue
        fig, axes = plt.subplots(1, 2, figsize=(11, 5))
        short = ""
        for ax, cell, obj in zip(axes, cells, lineup.OBJECTIVES):
            embedding, labels = _tsne(res.path(cell))
            short = fewer_than(labels, budget.tsne_per_class)
            scatter = ax.scatter(embedding[:, 0], embedding[:, 1], c=labels, cmap="tab10", s=6, vmin=-0.5, vmax=9.5)
            ax.set_title(f"{obj.upper()}: {cell.model}, {len(labels)} test images", fontsize=9)
            ax.set_xticks([]), ax.set_yticks([])
        if short:  # room for the caption's second line above the panels' titles (before the colorbar takes its share)
            fig.subplots_adjust(top=0.84)
        fig.colorbar(scatter, ax=axes, ticks=range(10), label="class")
        fig.suptitle(f"Fig. 1: t-SNE of Z, {lineup.DATASET_TITLES[dataset]}" + _smoke(budget)
                     + (f"\nthe first {budget.tsne_per_class} test images of each class; the split has "
                        f"fewer of {short}" if short else ""))
        path = out_dir / f"fig1_tsne_{dataset}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path.name)
    return {"files": files, "notes": notes}


def _pending(res: Results, places) -> int:
    """How many of the cells at ``places`` ((dataset, objective, name) of the ResNet-32s) the run
    planned and has not finished yet (their reason says 'pending')."""
    planned = [cell for cell in (res.get(d, 32, obj, name) for d, obj, name in places) if cell is not None]
    return sum("pending" in (res.status(cell) or "") for cell in planned)


def _smoke(budget: Budget) -> str:
    return " [SMOKE]" if budget.name == "smoke" else ""


def fig2(res: Results, budget: Budget, out_dir: Path) -> dict:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    files, notes = [], []
    attacks = ("fgsm", "bim", "ilcm", "jsma")
    for dataset in lineup.DATASETS:
        curves = {}
        for obj in lineup.OBJECTIVES:
            for attack in attacks:
                pts = [(eps, res.summary(res.get(dataset, 32, obj, f"{attack}-{eps:g}"))) for eps in budget.eps_sweep]
                pts = [(e, s["accuracy_under_attack"]) for e, s in pts if s is not None]
                if pts:
                    curves[(obj, attack)] = pts
        bars = {}
        for obj in lineup.OBJECTIVES:
            for attack in ("cw", "cw-hc"):
                s = res.summary(res.get(dataset, 32, obj, attack))
                if s is not None and s["distortion"]["l2_paper"]["efficient"]["n"]:
                    bars[(obj, attack)] = (s["distortion"]["l2_paper"]["efficient"]["mean"],
                                           s["distortion"]["l2_paper"]["efficient"]["n"])
        if not curves and not bars:  # why, as the cells say (not run, pending, ...)
            why = next((r for obj in lineup.OBJECTIVES if (r := res.status(res.get(dataset, 32, obj, "cw")))),
                       "no finished cells")
            notes.append(f"{lineup.DATASET_TITLES[dataset]}: {why}")
            continue
        fig, axes = plt.subplots(1, 5, figsize=(19, 3.8))
        lo, hi = min(budget.eps_sweep), max(budget.eps_sweep)
        sweep_range = (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))  # every panel's, however few points are done
        pending_sweeps = 0
        for ax, attack in zip(axes, attacks):
            for obj, style, size in zip(lineup.OBJECTIVES, ("o--", "s-"), (8, 4)):
                if (obj, attack) in curves:  # big hollow circles under small squares: equal curves stay visible
                    e, a = zip(*curves[(obj, attack)])
                    ax.plot(e, [100 * v for v in a], style, label=obj.upper(), markersize=size,
                            fillstyle="none" if size == 8 else "full")
            pending = _pending(res, [(dataset, obj, f"{attack}-{eps:g}") for obj in lineup.OBJECTIVES
                                     for eps in budget.eps_sweep])
            pending_sweeps += pending
            ax.set_title(attack.upper() + (f" ({pending} cells pending)" if pending else ""))
            ax.set_xlabel("θ (per-feature step, box units)" if attack == "jsma" else "ε (box units)")
            ax.set_ylabel("accuracy under attack (%)")
            ax.set_ylim(0, 100)
            ax.set_xlim(*sweep_range)
            if ax.get_legend_handles_labels()[0]:   # no curve (cells pending or not run): no empty legend
                ax.legend()
            else:
                ax.text(0.5, 0.5, "no finished cell", transform=ax.transAxes, ha="center", va="center",
                        color="0.4")
        ax = axes[4]
        width = 0.35
        for k, obj in enumerate(lineup.OBJECTIVES):
            places = [(i + (k - 0.5) * width, bars.get((obj, a))) for i, a in enumerate(("cw", "cw-hc"))]
            drawn = [(x, b) for x, b in places if b is not None]
            ax.bar([x for x, _ in drawn], [b[0] for _, b in drawn], width, color=f"C{k}", label=obj.upper())
            for x, bar in places:
                if bar is None:  # no finished cell, or no image it attacked: no zero-height bar
                    ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=8)
                else:  # over how many successful images the mean is
                    ax.text(x, bar[0], f"n =\n{bar[1]}", ha="center", va="bottom", fontsize=7, linespacing=1.0)
        ax.set_xticks(range(2), ["C&W", "C&W-hc"])
        ax.set_xlim(-0.7, 1.7)  # the n/a labels' places too
        ax.set_ylim(0, 1.35 * max((b[0] for b in bars.values()), default=1.0))  # headroom for the legend
        ax.set_ylabel("mean minimal ‖δ‖₂/√d (0-255)")
        pending_cw = _pending(res, [(dataset, obj, a) for obj in lineup.OBJECTIVES for a in ("cw", "cw-hc")])
        ax.set_title("(b) C&W distortion" + (f" ({pending_cw} cells pending)" if pending_cw else ""))
        if bars:  # handles of their own: an objective without a bar (n/a twice) would get a default-coloured one
            ax.legend(handles=[Patch(color=f"C{k}", label=obj.upper()) for k, obj in enumerate(lineup.OBJECTIVES)],
                      loc="upper center", ncol=2)
        else:
            ax.text(0.5, 0.5, "no finished cell", transform=ax.transAxes, ha="center", va="center", color="0.4")
        fig.suptitle(f"Fig. 2: (a) accuracy against ε (JSMA: θ), (b) C&W distortion, {lineup.DATASET_TITLES[dataset]}"
                     + _smoke(budget) + (" [PARTIAL: some cells pending]" if pending_cw or pending_sweeps else ""))
        fig.tight_layout()
        path = out_dir / f"fig2_{dataset}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files.append(path.name)
    return {"files": files, "notes": notes}


def fig3(res: Results, budget: Budget, out_dir: Path, count: int = 8) -> dict:
    import matplotlib.pyplot as plt

    files, notes = [], []
    for dataset in lineup.DATASETS:
        cells = [res.get(dataset, 32, obj, "cw-wb") for obj in lineup.OBJECTIVES]
        reasons = [res.status(c) for c in cells]
        if any(reasons):
            notes.append(f"{lineup.DATASET_TITLES[dataset]}: {next(r for r in reasons if r)}")
            continue
        arrays = [res.path(c) / "adversarial.npz" for c in cells]
        if not all(p.is_file() for p in arrays):
            notes.append(f"{lineup.DATASET_TITLES[dataset]}: adversarial images not kept in a reused cell")
            continue
        loaded = [dict(np.load(p)) for p in arrays]
        records = [res.samples(c) for c in cells]
        good = [i for i in range(len(records[0]))
                if all(r[i]["clean_prediction"] == r[i]["true_label"] and r[i]["stop_reason"] in ("success", "f2 > 0")
                       for r in records)][:count]
        if not good:
            notes.append(f"{lineup.DATASET_TITLES[dataset]}: no image attacked on both models")
            continue
        rows = [("Normal", loaded[0]["clean"])] + [(o.upper(), d["adversarial"]) for o, d in zip(lineup.OBJECTIVES, loaded)]
        width = max(4.5, 1.3 * len(good))
        flagged_shown = any(records[k][i]["stop_reason"] != "success" for k in range(len(records)) for i in good)
        caption = textwrap.wrap(f"Fig. 3: C&W-wb (attacker kernel), {lineup.DATASET_TITLES[dataset]}" + _smoke(budget),
                                int(10 * width)) + textwrap.wrap(
            "(under each adversarial image: its ‖δ‖₂/√d, 0-255" + ("; 'flagged': no iterate evaded the K-density "
            "detector, so the one at the target with the least f₂ is shown)" if flagged_shown else ")"),
            int(13 * width))      # characters a line at font size 8
        height = 1.5 * len(rows) + 0.2 + 0.15 * len(caption)
        fig, axes = plt.subplots(len(rows), len(good), figsize=(width, height), squeeze=False)
        for r, (label, images) in enumerate(rows):
            for c, i in enumerate(good):
                image = images[i] + 0.5
                image = image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))
                axes[r][c].imshow(np.clip(image, 0, 1), cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
                axes[r][c].set_xticks([]), axes[r][c].set_yticks([])
                if c == 0:
                    axes[r][c].set_ylabel(label)
                if r > 0:
                    record = records[r - 1][i]
                    flagged = record["stop_reason"] != "success"
                    axes[r][c].set_xlabel(f"{record['l2_paper']:.1f}" + (" flagged" if flagged else ""), fontsize=7,
                                          color="tab:red" if flagged else "black", labelpad=2)  # under its image
        fig.suptitle("\n".join(caption), fontsize=8)
        fig.tight_layout(rect=(0, 0, 1, 1 - (0.15 * len(caption) + 0.05) / height))  # the caption above the grid
        path = out_dir / f"fig3_cwwb_{dataset}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path.name)
    return {"files": files, "notes": notes}
