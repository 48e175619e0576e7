"""The main job: evaluate every shipped model (Table 1's quantity) and its detector; the reports
of ``rcenp demo`` and ``rcenp eval``.

Each model is tested on its own data set's test split (the manifest's ``config.dataset``), read
from the data root (``--data-dir``, else ``$RCENP_DATA``, else the per-user cache that
``rcenp data fetch`` fills). MNIST falls back to the embedded 1,000-image sample, so a fresh
machine evaluates the MNIST models; a model whose data is nowhere is skipped, with the reason.
Then the paper's point in one attack (``attack_showcase``): BIM at eps = 0.1 on the first 200
correctly classified test images of each MNIST model that has a detector: accuracy under attack
without the detector, the share answered correctly or NOT SURE with it, and the K-density AUC.
People get tables; ``--json`` gives one JSON line per evaluated model (keys: ``RECORD_KEYS``),
then one per attacked model (``"kind": "attack"``, keys: ``ATTACK_KEYS``); a model skipped for
want of data gets ``{"kind": "skipped", "model", "reason"}`` in place of its record. Where no model is
shipped, ``engine_demo`` trains a ResNet-32 on random data for a few steps instead.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from rcenp.tables import format_table

RECORD_KEYS = ("model", "objective", "test_error_percent", "errors", "n", "trained_steps",
               "detector", "clean_score_quartiles")  # the last two only for a model with a detector
ATTACK_KEYS = ("kind", "model", "attack", "eps", "steps", "n", "accuracy_under_attack", "correct_or_not_sure",
               "auc_log_kd", "n_pairs")
SHOWCASE = {"attack": "bim", "eps": 0.1, "steps": 10, "n": 200}
SCORES = (("confidence", "confidence", 4), ("non_me", "non-ME", 3), ("kd", "log KD", 3))  # key, label, decimals


def model_dataset(name) -> str | None:
    """The data set a shipped model (or run directory) was trained on, from its manifest only."""
    from rcenp.models.registry import resolve

    manifest = json.loads(resolve(name).with_suffix(".json").read_text())
    return manifest.get("config", {}).get("dataset")


def evaluate_model(name, test, device=None, err=None) -> dict:
    """Test error of a shipped model on ``test``, and its detector on the clean images if it has one:
    the ``RECORD_KEYS`` record (percentages in %, quartiles of each clean score). Progress lines with
    an ETA go to ``err`` (default sys.stderr)."""
    from rcenp.detect.detector import Detector, detector_stem
    from rcenp.models.registry import load as load_model
    from rcenp.models.registry import resolve
    from rcenp.progress import counter
    from rcenp.train import count_errors, evaluate

    model, manifest = load_model(name, device)
    stem = detector_stem(resolve(name))
    det = Detector.load(stem, model) if stem.with_suffix(".json").is_file() else None
    progress = counter("test images", f"evaluating {name}", stream=err)
    if det is None:
        result = evaluate(model, test.images, test.labels, progress=progress)
    else:  # one forward pass: the detector's scores carry the model's predictions
        labels, scores = det.predict(test.images, progress=progress)
        result = count_errors(scores["prediction"], test.labels)
    record = {"model": name, "objective": model.objective, "test_error_percent": round(100 * result["test_error"], 3),
              "errors": result["errors"], "n": result["n_test"], "trained_steps": manifest["step"]}
    if det is not None:
        record["detector"] = {"metric": det.metric, "threshold": det.threshold,
                              "clean_rejected_percent": round(100 * float(np.mean(labels == -1)), 2)}
        record["clean_score_quartiles"] = {k: [round(float(q), 4) for q in np.percentile(scores[k], [25, 50, 75])]
                                           for k, _, _ in SCORES if k in scores}
    return record


def run_demo(names, data_dir=None, device=None, as_json=False, out=None, err=None) -> int:
    """Evaluate ``names`` (shipped models), printing tables to ``out``, or with ``as_json`` one JSON
    line per model as it finishes (or a ``"kind": "skipped"`` line; test-set lines and skips in
    words then go to ``err``). Returns 0."""
    from rcenp.data import find_test_split

    out, err = out or sys.stdout, err or sys.stderr
    notes = err if as_json else out
    test_sets, records, skipped = {}, [], []
    for name in names:
        dataset = model_dataset(name)
        if dataset not in test_sets:
            test, why = find_test_split(dataset, data_dir) if dataset else (None, "its manifest names no data set")
            if test is not None:
                print(f"test images: {test.describe()}" + (f" ({why})" if why else ""), file=notes, flush=True)
            test_sets[dataset] = test, why
        test, why = test_sets[dataset]
        if test is None:
            skipped.append(f"{name}: skipped, {why}")
            if as_json:
                print(skipped[-1], file=err, flush=True)
                print(json.dumps({"kind": "skipped", "model": name, "reason": why}), file=out, flush=True)
        elif as_json:
            records.append(evaluate_model(name, test, device, err))
            print(json.dumps(records[-1]), file=out, flush=True)
        else:
            print(f"evaluating {name} on {len(test):,} images ...", file=err, flush=True)
            records.append(evaluate_model(name, test, device, err))
    showcase = []
    for record in records:
        if "detector" in record and test_sets.get("mnist", (None,))[0] is not None and \
                model_dataset(record["model"]) == "mnist":
            if not as_json:
                print(f"attacking {record['model']}: BIM, eps {SHOWCASE['eps']}, {SHOWCASE['n']} images ...",
                      file=err, flush=True)
            showcase.append(attack_showcase(record["model"], test_sets["mnist"][0], device))
            if as_json:
                print(json.dumps(showcase[-1]), file=out, flush=True)
    if not as_json:
        print("\n" + demo_table(records), file=out)
        if any("detector" in r for r in records):
            print("(clean NOT SURE includes the half of the test split that T was set on, where the detector "
                  "rejects 5% by construction)", file=out)
        if showcase:
            print(f"\nBIM (eps {SHOWCASE['eps']} = {255 * SHOWCASE['eps']:.1f}/255, {SHOWCASE['steps']} steps) on the "
                  f"first {SHOWCASE['n']} correctly classified test images:\n" + attack_table(showcase), file=out)
        if any("clean_score_quartiles" in r for r in records):
            print("\nclean test images, median (q1 to q3) of each score (higher = more normal):\n"
                  + scores_table(records), file=out)
        if skipped:
            print("\n" + "\n".join(skipped), file=out)
    return 0


def attack_showcase(name, test, device=None) -> dict:
    """BIM (``SHOWCASE``) on the first n test images that ``name`` classifies correctly, scored by its
    detector → an ``ATTACK_KEYS`` record (rates as fractions; AUC under the paper's pair rule)."""
    from rcenp.attacks.audit import attack_and_audit
    from rcenp.attacks.run import attack_function, fitted_detector
    from rcenp.attacks.summary import summarize
    from rcenp.backend import as_numpy
    from rcenp.models.registry import load as load_model

    model, _ = load_model(name, device)
    detector = fitted_detector(model, name)
    n = SHOWCASE["n"]
    head = min(len(test), 2 * n)
    correct = np.flatnonzero(as_numpy(model.predict(test.images[:head])) == test.labels[:head])
    while len(correct) < n and head < len(test):   # a weak model: look further
        head = min(len(test), 2 * head)
        correct = np.flatnonzero(as_numpy(model.predict(test.images[:head])) == test.labels[:head])
    index = correct[:n]
    _, records = attack_and_audit(attack_function(SHOWCASE["attack"]), model, detector, test.images[index],
                                  test.labels[index], index, {"eps": SHOWCASE["eps"], "steps": SHOWCASE["steps"]},
                                  batch_size=100)
    summary = summarize(records, detector)
    kd = summary["detection"]["log_kd"]
    return {"kind": "attack", "model": name, "attack": SHOWCASE["attack"], "eps": SHOWCASE["eps"],
            "steps": SHOWCASE["steps"], "n": len(index), "accuracy_under_attack": summary["accuracy_under_attack"],
            "correct_or_not_sure": summary["detection"]["threshold"]["detection_aware_accuracy"],
            "auc_log_kd": kd.get("auc"), "n_pairs": kd["n_pairs"]}


def attack_table(records) -> str:
    """Attacked models × (accuracy without the detector, correct or NOT SURE with it, KD AUC)."""
    rows = [[r["model"], f"{100 * r['accuracy_under_attack']:.1f}%", f"{100 * r['correct_or_not_sure']:.1f}%",
             "" if r["auc_log_kd"] is None else f"{r['auc_log_kd']:.3f} (n = {r['n_pairs']})"] for r in records]
    return format_table(["model", "accuracy, no detector", "correct or NOT SURE", "K-density AUC"], rows,
                        align="lrrr")


def demo_table(records) -> str:
    """Models × (objective, test error, errors, steps, detector threshold, clean NOT SURE), each
    figure formatted once from the record (the test error from the counts: 9 of 1,017 is 0.88%)."""
    rows = []
    for r in records:
        det = r.get("detector")
        rows.append([r["model"], r["objective"], f"{100 * r['errors'] / r['n']:.2f}%", f"{r['errors']:,} / {r['n']:,}",
                     f"{r['trained_steps']:,}", f"{det['metric']} > {det['threshold']:.3f}" if det else "none",
                     f"{det['clean_rejected_percent']:.2f}%" if det else ""])
    return format_table(["model", "objective", "test error", "errors", "trained steps", "detector accepts",
                         "clean NOT SURE"], rows, align="llrrrlr")


def scores_table(records) -> str:
    """Models × clean-score quartiles, ``median (q1 to q3)``, for the models with a detector."""
    rows = []
    for r in records:
        quartiles = r.get("clean_score_quartiles")
        if quartiles:
            rows.append([r["model"]] + [_quartiles(quartiles.get(k), d) for k, _, d in SCORES])
    return format_table(["model"] + [label for _, label, _ in SCORES], rows, align="lrrr")


def _quartiles(q, decimals) -> str:
    return "" if q is None else f"{q[1]:.{decimals}f} ({q[0]:.{decimals}f} to {q[2]:.{decimals}f})"


def eval_table(result) -> str:
    """The ``rcenp eval`` result (``train.evaluate`` plus ``model`` and ``test_set``) for a person."""
    table = format_table(["model", "test error", "errors"],
                         [[result["model"], f"{100 * result['test_error']:.2f}%",
                           f"{result['errors']:,} / {result['n_test']:,}"]], align="lrr")
    return f"test images: {result['test_set']}\n\n{table}"


def engine_demo(steps, device) -> int:
    """Train ResNet-32 on random CIFAR-shaped data for a few steps, printing loss and speed."""
    from rcenp.backend import default_device, synchronize, to_device
    from rcenp.models import resnet
    from rcenp.objectives import Classifier
    from rcenp.optim import SGD

    device = device or default_device()
    rng = np.random.default_rng(0)
    model = Classifier(resnet(32, 3), "rce").to(device)
    opt = SGD(model.parameters(), lr=0.1)
    x = to_device(rng.uniform(-0.5, 0.5, (128, 3, 32, 32)).astype(np.float32), device)
    y = to_device(rng.integers(0, 10, 128), device)
    print(f"no shipped models yet: ResNet-32 (RCE) on random 3x32x32 data, batch 128, {steps} SGD steps on {device}")
    for step in range(steps):
        start = time.perf_counter()
        opt.zero_grad()
        loss = model.loss(x, y)
        loss.backward()
        opt.step()
        synchronize(device)  # on the GPU, the step's work, not its launch
        seconds = time.perf_counter() - start
        print(f"step {step + 1}: loss {float(loss.data):.4f}  {seconds * 1000:.0f} ms  {128 / seconds:.0f} images/s")
    return 0
