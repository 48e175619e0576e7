"""Detection figures for a trained model: metric distributions, noise AUCs, calibrated detector.

    python scripts/detection_report.py MODEL [--per-class N] [--data-dir DIR] [--json OUT]

MODEL is a run directory or a shipped model name. The script fits the K-density detector as
``rcenp detect MODEL --fit --per-class N`` does: kernel points N per class (default 1,000) by true
label (seeded) from all training images, T calibrated to 5% FPR on a seeded random half of the
test split. Then it reports:
- median and quartiles of confidence, non-ME and log KD on the clean test images;
- AUCs of clean test images against the protocol's 'random' perturbation, x + U(-ε, ε) clipped to
  [-0.5, 0.5], at ε = 0.1 and 0.2. Normal is the positive class and ties count half. Each AUC is
  given over all pairs and under the paper's sample rule (clean correct, perturbed misclassified),
  with n and a 95% paired bootstrap interval;
- the calibrated T and the false-positive rate it gives on the other half of the test split
  (clean images used neither for training nor for T);
- for comparison, the same with T calibrated on the last sixth of the training images (MNIST:
  50,000-59,999; kernel points from the rest, at most as many per class as the smallest class
  there has): the model fits images it trained on better than unseen ones, so that T rejects
  more than 5% of clean test images.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's rcenp


def quartiles(values):
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return {"q1": float(q1), "median": float(med), "q3": float(q3)}


def auc_entry(normal, perturbed, mask):
    from rcenp.detect import bootstrap_auc_ci, roc_auc

    entry = {"all_pairs": {"n": int(len(normal)), "auc": roc_auc(normal, perturbed),
                           "ci95": list(bootstrap_auc_ci(normal, perturbed, n_boot=500, paired=True))}}
    n = int(mask.sum())
    entry["paper_rule"] = {"n": n}
    if n >= 2:
        entry["paper_rule"].update(auc=roc_auc(normal[mask], perturbed[mask]),
                                   ci95=list(bootstrap_auc_ci(normal[mask], perturbed[mask], n_boot=500, paired=True)))
    return entry


def report(model_name, data_dir=None, seed=0, per_class=1000):
    from rcenp.data import load
    from rcenp.detect import paper_sample_rule, rejection_rate
    from rcenp.detect.cli import fit_detector
    from rcenp.models import load as load_model

    model, manifest = load_model(model_name)
    dataset = manifest["config"]["dataset"]
    test = load(dataset, "test", data_dir)
    train_labels = load(dataset, "train", data_dir).labels
    start = time.perf_counter()
    det, held_out = fit_detector(model, dataset, data_dir, "kd", 0.05, per_class, "test", seed=seed)
    clean = det.scores(test.images)
    out = {"model": model_name, "objective": model.objective, "trained_steps": manifest["step"],
           "test_set": test.describe(), "sigma2": det.sigma2, "kernel_points_per_class": int(det.kernel_points.shape[1]),
           "test_error": float(np.mean(clean["prediction"] != test.labels)),
           "clean_quartiles": {k: quartiles(clean[k]) for k in ("confidence", "non_me", "kd")},
           "detector": {"metric": "kd", "threshold": det.threshold, "target_fpr": 0.05,
                        "kernel_points_from": det.info["kernel_from"], "calibrated_on": det.info["calibration"],
                        "calibration_rejection_rate": det.info["calibration_rejection_rate"],
                        "held_out_images": len(held_out),
                        "held_out_false_positive_rate": float(rejection_rate(clean["kd"][held_out], det.threshold))},
           "noise": {}}
    # the alternative: T from training images (which the model fits better than unseen ones)
    kernel_from = len(train_labels) * 5 // 6
    biased_per_class = min(per_class, int(np.bincount(train_labels[:kernel_from], minlength=10).min()))
    biased, _ = fit_detector(model, dataset, data_dir, "kd", 0.05, biased_per_class, "train", kernel_from, seed=seed)
    biased_kd = biased.scores(test.images)["kd"]
    out["detector_calibrated_on_training_images"] = {
        "threshold": biased.threshold, "kernel_points_from": biased.info["kernel_from"],
        "kernel_points_per_class": int(biased.kernel_points.shape[1]),
        "calibrated_on": biased.info["calibration"],
        "calibration_rejection_rate": biased.info["calibration_rejection_rate"],
        "test_false_positive_rate": float(rejection_rate(biased_kd, biased.threshold)),
        "held_out_false_positive_rate": float(rejection_rate(biased_kd[held_out], biased.threshold))}
    rng = np.random.default_rng(seed)
    for eps in (0.1, 0.2):
        noisy_images = np.clip(test.images + rng.uniform(-eps, eps, test.images.shape).astype(np.float32), -0.5, 0.5)
        noisy = det.scores(noisy_images)
        mask = paper_sample_rule(test.labels, clean["prediction"], noisy["prediction"])
        out["noise"][f"eps={eps}"] = {
            metric: auc_entry(clean[metric], noisy[metric], mask) for metric in ("confidence", "non_me", "kd")}
        out["noise"][f"eps={eps}"]["noisy_error"] = float(np.mean(noisy["prediction"] != test.labels))
    out["seconds"] = time.perf_counter() - start
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--data-dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=1000, help="kernel points per class (as rcenp detect)")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    result = report(args.model, args.data_dir, args.seed, args.per_class)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        from rcenp.checkpoint import atomic_write_text

        atomic_write_text(args.json, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
