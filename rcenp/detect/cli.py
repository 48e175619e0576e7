"""``rcenp detect``: fit a model's detector, or score image files with it (label or NOT SURE)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from rcenp.argtypes import count, integer, nonnegative, real
from rcenp.backend import DEVICE_HELP
from rcenp.checkpoint import CheckpointError
from rcenp.data.datasets import DATA_DIR_DEFAULT, IMAGE_SHAPES, class_name
from rcenp.data.images import SUFFIXES as IMAGE_SUFFIXES
from rcenp.data.images import read_image, read_npz
from rcenp.progress import counter

CALIBRATION_SETS = ("test", "train")
FIT_DEFAULTS = {"overwrite": False, "metric": "kd", "fpr": 0.05, "per_class": 1000, "calibrate_on": "test",
                "kernel_from": None, "seed": 0, "data_dir": None}  # the options only --fit uses, and their defaults


def _rate(text):
    value = real(text)
    if not 0.0 < value <= 1.0:  # as Detector.calibrate's target_fpr
        raise argparse.ArgumentTypeError(f"a rate must lie in (0, 1] (0.05 is 5%), got {text}")
    return value


def add_parser(sub) -> None:
    d = sub.add_parser("detect", help="score images with a model's detector (label or NOT SURE), or fit it",
                       description="Score images (an .npz batch under key 'images' or holding one array, the "
                       "'adversarial' images of an `rcenp attack` run's adversarial.npz, or image files) with the "
                       "model's thresholding detector, one JSON line per image, or fit and calibrate that detector "
                       "with --fit.")
    d.add_argument("model", help="run directory or shipped model name")
    d.add_argument("--images", nargs="+", metavar="FILE", help=".npz batches or image files (PNG, JPEG, ...)")
    d.add_argument("--fit", action="store_true", help="fit the kernel points and calibrate T (needs the data)")
    d.add_argument("--overwrite", action="store_true",
                   help="let --fit replace the model's fitted detector (a shipped model's too)")
    d.add_argument("--metric", choices=["kd", "confidence", "non_me"],
                   help="--fit: the detector's score: kd = kernel density (the paper's), confidence or non_me "
                   "(default kd)")
    d.add_argument("--fpr", type=_rate, help="target false-positive rate on clean data (--fit; default 0.05)")
    d.add_argument("--per-class", type=nonnegative(integer),
                   help="kernel points per class (--fit; default 1000; 0 = every training image (per_class=None in "
                   "Detector.fit), which needs equal "
                   "class counts, as Fashion-MNIST's, not MNIST's)")
    d.add_argument("--calibrate-on", choices=CALIBRATION_SETS,
                   help="held-out clean images for T (--fit): 'test' = a seeded random half of the test split, "
                   "which the model never trained on (the other half stays for measuring the false-positive "
                   "rate); 'train' = the training images after --kernel-from (biased: the model fits them "
                   "better than unseen images, so more clean test images get rejected than the target; "
                   "default test)")
    d.add_argument("--kernel-from", type=count,
                   help="kernel points come from the first N training images (default: the run's "
                   "--train-subset where it had one, else all of them with --calibrate-on test and 50,000 "
                   "with --calibrate-on train)")
    d.add_argument("--seed", type=nonnegative(integer),
                   help="--fit: seeds the choice of kernel points per class and the random half of the test "
                   "split that calibrates T (default 0)")
    d.add_argument("--data-dir", help=f"data root for --fit ({DATA_DIR_DEFAULT})")
    d.add_argument("--device", choices=["cpu", "cuda"], help=DEVICE_HELP)


def read_images(path: Path, shape) -> np.ndarray:
    """Images (N, C, H, W) float32 in [-0.5, 0.5] from an .npz batch (its array 'images', else
    'adversarial' as ``rcenp attack`` writes, else its only array: uint8 pixels 0..255, or floats
    in the box) or one image file (:func:`rcenp.data.images.read_image`: 16-bit files in full,
    alpha dropped, colour to luma). Raises ValueError naming the file for any other dtype (an int64
    array could hold either), a wrong shape, non-finite or out-of-box values."""
    c, h, w = shape
    if path.is_dir():
        raise ValueError(f"{path}: a folder; --images takes files (a shell glob such as {path}/*.png names them all)")
    if path.suffix.lower() == ".npz":
        array = read_npz(path, ("images", "adversarial"))
        if array.size == 0:
            raise ValueError(f"{path}: no images in it (shape {tuple(array.shape)})")
        given = tuple(array.shape)
        if array.ndim == 3 and c == 1:
            array = array[:, None]
        if array.ndim != 4 or tuple(array.shape[1:]) != (c, h, w):
            raise ValueError(f"{path}: images of shape {given}; this model takes (N, {c}, {h}, {w})"
                             + (f" or (N, {h}, {w})" if c == 1 else ""))
        if array.dtype == np.uint8:
            return array.astype(np.float32) / np.float32(255) - np.float32(0.5)
        if array.dtype.kind != "f":  # int64 0..255 is pixels or box values? Refuse rather than guess
            raise ValueError(f"{path}: images of dtype {array.dtype}; pass uint8 pixels (0..255) or floats in "
                             "[-0.5, 0.5]")
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise ValueError(f"{path}: {int((~np.isfinite(array)).sum())} pixel values are NaN or infinite")
        if array.min() < -0.5 or array.max() > 0.5:
            raise ValueError(f"{path}: float images must lie in [-0.5, 0.5] (or pass uint8 pixels); "
                             f"these hold {array.min():g}..{array.max():g}")
        return array
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return read_image(path, c, (h, w))[None]
    raise ValueError(f"{path}: unsupported file type (use .npz or an image: {', '.join(IMAGE_SUFFIXES)})")


def held_out_split(n_test: int, seed: int = 0):
    """(held-out, calibration) indices: a seeded random half of the test split each.

    Random, not the first and second halves: those are not exchangeable in MNIST (its test set was
    assembled from two NIST sources in two blocks of 5,000). A T calibrated on the second half
    rejected 9.3% (CE) and 8.7% (RCE) of the first half's clean images instead of 5% with the
    shipped ResNet-32s.
    """
    order = np.random.default_rng(seed).permutation(n_test)
    return np.sort(order[:n_test // 2]), np.sort(order[n_test // 2:])


def fit_detector(model, dataset, data_dir=None, metric="kd", fpr=0.05, per_class=1000, calibrate_on="test",
                 kernel_from=None, seed=0, progress=None, trained_on=None):
    """Fit kernel points on training images (``metric`` "kd" only: confidence and non-ME use none,
    so ``per_class`` is not checked against the class counts there) and calibrate T on held-out
    clean images.

    Returns the detector and the indices of the test images it was not calibrated on, on which its
    false-positive rate is measured: with ``calibrate_on="test"`` T comes from a seeded random half
    of the test split (``held_out_split``) and the other half is returned; with ``"train"`` T comes
    from the training images after ``kernel_from`` and every test index is returned.
    ``trained_on``: the number of first training images the model was trained on (a run's
    ``--train-subset``); where ``kernel_from`` is None and that is fewer than the split's, the
    kernel points come from those images only. Otherwise, with ``calibrate_on="test"``, they come
    from the whole training split (MNIST: 60,000); the authors drew them, and C&W-wb's η, from the
    first 50,000 (protocol §3.1, §5.4: their feature dump), as ``kernel_from=50000`` does.
    ``progress(done, total)``, if given, follows the features of the training images (the long part).
    """
    from rcenp.data import load as load_data
    from rcenp.detect.detector import Detector

    if calibrate_on not in CALIBRATION_SETS:
        raise ValueError(f"calibrate_on must be one of {CALIBRATION_SETS}, got {calibrate_on!r}")
    train, test = load_data(dataset, "train", data_dir), load_data(dataset, "test", data_dir)
    n_train, n_test = len(train.labels), len(test.labels)
    if kernel_from is None and trained_on is not None and 0 < trained_on < n_train:
        kernel_from = trained_on  # the images the model was trained on, not the whole split
    if kernel_from is None:
        kernel_from = n_train if calibrate_on == "test" else min(50_000, n_train - 1)
    if not 0 < kernel_from <= n_train or (calibrate_on == "train" and kernel_from >= n_train):
        raise ValueError(f"--kernel-from {kernel_from}: the training split has {n_train} images"
                         + (" and calibration needs some of them" if calibrate_on == "train" else ""))
    held_out, calibration = held_out_split(n_test, seed)
    n_calibration = len(calibration) if calibrate_on == "test" else n_train - kernel_from
    # calibrate_threshold's k = 0 (T = -inf, which Detector.save refuses), found before the long pass
    if n_calibration == 0 or (fpr * n_calibration < 1 and 1 / n_calibration > fpr):
        least = f" (at least 1/{n_calibration} = {1 / n_calibration:.2g})" if n_calibration else ""
        raise ValueError(f"at a false-positive rate of {fpr} the calibration would reject none of its {n_calibration} "
                         "clean images (fewer than one image), so the detector would accept every input; raise the "
                         f"rate{least}")
    det = Detector(model, metric)
    if metric == "kd":  # confidence and non-ME need no kernel points, so no pass over the training images
        det.fit(train.images[:kernel_from], train.labels[:kernel_from], per_class=per_class, seed=seed,
                progress=progress)
        det.info.update(kernel_from=f"first {kernel_from} training images")  # calibrate keeps it
    if calibrate_on == "test":
        det.calibrate(test.images[calibration], fpr)
        det.info.update(calibration=f"{len(calibration)} test images, a random half of the test split "
                        f"(rcenp.detect.cli.held_out_split({n_test}, seed={seed}))")
    else:
        det.calibrate(train.images[kernel_from:], fpr)
        det.info.update(calibration=f"training images {kernel_from}-{n_train - 1}")
        held_out = np.arange(n_test)
    det.info.update(data=f"training: {train.describe()}; test: {test.describe()}")  # both splits, whichever T used
    return det, held_out


def check_fit_options(args) -> None:
    """ValueError naming the first --fit-only option given without --fit; then fills in the defaults
    of those not given (they are parsed as None, so that an option given at its default value counts)."""
    for dest, default in FIT_DEFAULTS.items():
        given = getattr(args, dest, None)
        if given is None or given is False:
            setattr(args, dest, default)
        elif not args.fit:
            raise ValueError(f"--{dest.replace('_', '-')} applies only with --fit (it sets how the detector is "
                             "fitted; scoring uses the fitted detector's own settings)")


def cmd_detect(args) -> int:
    from rcenp.detect.detector import NOT_SURE, Detector, detector_stem
    from rcenp.models.registry import load, resolve, unfinished

    path = resolve(args.model)  # an unknown model is the news, before a misplaced option
    check_fit_options(args)
    model, manifest = load(args.model, args.device)
    stem = detector_stem(path)
    if not args.images and not args.fit:
        raise ValueError("nothing to do: pass --images FILE... (or --fit)")
    if not args.fit and not stem.with_suffix(".json").is_file():
        raise CheckpointError(f"{args.model}: no fitted detector ({stem.with_suffix('.json')}); run with --fit first")
    dataset = manifest["config"]["dataset"]
    batches = [(name, read_images(Path(name), IMAGE_SHAPES[dataset])) for name in args.images or ()]  # all, first
    if args.fit:
        if stem.with_suffix(".json").is_file() and not args.overwrite:
            raise CheckpointError(f"{args.model} already has a fitted detector ({stem.with_suffix('.json')}); "
                                  "pass --overwrite to replace it")
        subset = manifest["config"].get("train_subset")
        det, _ = fit_detector(model, dataset, args.data_dir, args.metric, args.fpr,
                              args.per_class or None, args.calibrate_on, args.kernel_from, args.seed,
                              progress=counter("training images", "features for the kernel points"),
                              trained_on=subset)
        det.save(stem)
        print(f"detector written: {stem.with_suffix('.json')} and .npz", file=sys.stderr)
        if args.kernel_from is None and det.info.get("kernel_from") == f"first {subset} training images":
            print(f"kernel points from the first {subset:,} training images, the run's --train-subset "
                  "(--kernel-from to choose)", file=sys.stderr)
        if note := unfinished(args.model, manifest):
            print(f"note: {note}; the detector is fitted for these weights", file=sys.stderr)
        print(det.describe())
        if not args.images:
            return 0
    det = Detector.load(stem, model)
    for name, images in batches:
        labels, scores = det.predict(images)
        for i, label in enumerate(labels):
            where = name if len(labels) == 1 else f"{name}[{i}]"
            answer = "NOT SURE" if label == NOT_SURE else f"label {int(label)}"
            predicted = int(scores["prediction"][i])
            print(json.dumps({"image": where, "answer": answer, "predicted": predicted,
                              "class_name": class_name(dataset, predicted),  # of predicted: "sneaker"; MNIST "7"
                              "confidence": float(scores["confidence"][i]), "non_me": float(scores["non_me"][i]),
                              "log_kd": float(scores["kd"][i]) if "kd" in scores else None,
                              "metric": det.metric, "threshold": det.threshold}))
    return 0
