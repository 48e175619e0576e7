"""``rcenp attack`` as a library call: one attack over a data set's test images, in checkpointed
batches, with per-sample audit files.

    summary = run_attack("mnist-resnet32-rce", "bim", "runs/bim", {"eps": 0.1}, n=1000)

Files in ``out_dir`` (each written through a temporary file and a rename):
- ``adversarial.npz``: ``clean`` and ``adversarial`` images (N, C, H, W) float32, ``labels``
  (true), ``indices`` (positions in the test split);
- ``samples.jsonl``: one line per image (``rcenp.attacks.audit.sample_record``);
- ``summary.json``: settings (as asked) and ``effective_options`` (every option of the attack,
  defaults filled in: C&W's κ and c₀ too), counts, rates, distortions, detection figures when the
  model has a fitted detector, throughput, software versions and the data's identity;
- ``run.json`` (what was asked, the weights' SHA-256 and the detector's identity included, checked on
  ``resume``),
  ``attack.log`` (progress), and while the run is under way ``partial/batch-NNNNN.{npz,jsonl,
  code.json}`` per finished batch (the code that computed it: ``rcenp.attacks.runfiles``) and,
  for the C&W attacks, ``partial/batch-NNNNN-state*.npz``, the snapshot of the batch in work
  (``rcenp.attacks.cw_snapshot``: a batch killed mid-way resumes where it was, every 5 minutes).

With ``png_dir``, each adversarial image also goes there as ``NNNNN.png`` (16-bit, its test index),
beside ``png-run.json``, which names the run (``rcenp.attacks.runfiles.check_png_dir``): a folder
holding PNG files of another run, or of other settings, is refused, so that it never mixes two
runs' images; the same run resumed goes on in it.

A batch's result depends only on its images, so a run killed and resumed, or split into
``shard=(k, K)`` runs over contiguous batch-aligned slices, gives the same samples as one
uninterrupted run (``summary.json``'s ``timing`` differs, nothing else) as long as the code is
the same; ``code_by_batch`` says which code computed which batch.

C&W-wb's η_t (``rcenp.attacks.cw_wb``) is computed from the training features of the attacked
(or, for transfer, the substitute) model where the training images found are that model's
(``rcenp.attacks.wb_features``), else from cw_wb's biased-loose approximation (the embedded MNIST
sample holds test images only); run.json's ``eta`` says which and why.

Black-box transfer (paper §4.5, protocol §6): ``options["substitute"]`` names a second model of the
same data set. The attack is crafted on the substitute (cw-wb against the substitute's own
detector), and every audited figure is the target's (``model_ref``): its predictions, its
detector's scores and AUCs. A sample "succeeds" when the target misclassifies it (the paper's
transfer criterion); the substitute's own outcome is kept per sample (``substitute_success``,
``substitute_prediction``, ``substitute_clean_prediction``), and ``target_hit`` says whether the
target predicts the attack's target class. The attack's own per-sample entries (C&W's c, steps,
``stop_reason``, ``final_margin``; C&W-wb's ``f2``, ``neg_log_kd``, ``eta_t``) stay the
substitute's, as the attack computed them. ``summary.json`` gains a ``transfer`` block. With
``crafted=DIR``, the substitute's own finished run of the same attack and settings, its x* are
taken instead of crafted again (``rcenp.attacks.transfer``).
"""
from __future__ import annotations

import functools
import json
import math
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from rcenp import checkpoint
from rcenp.attacks import runfiles, transfer
from rcenp.attacks.audit import attack_and_audit
from rcenp.attacks.cw_snapshot import Snapshot
from rcenp.attacks.cw_wb import EtaApproximationWarning
from rcenp.attacks.wb_features import eta_training_split, training_features
from rcenp.checks import check_count
from rcenp.progress import Progress, counter, duration, plural

EPS_ATTACKS = ("fgsm", "bim", "ilcm", "jsma")
CW_ATTACKS = ("cw", "cw-hc", "cw-wb")
ATTACKS = EPS_ATTACKS + CW_ATTACKS


def _without_warning(fn, category):
    """``fn`` with warnings of ``category`` ignored during each call."""
    def call(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category)
            return fn(*args, **kwargs)
    return call


def attack_function(name: str, detector=None):
    """``fn(model, images, batch_size=..., **options) -> AttackResult`` for attack ``name``:
    ``rcenp.attacks.<name>``; cw and cw-hc are ``cw_l2`` (the caller's options carry κ); cw-wb is
    ``cw_wb`` against ``detector``. Raises ValueError for an unknown name or cw-wb without a detector."""
    import rcenp.attacks as attacks

    if name in EPS_ATTACKS:
        return getattr(attacks, name)
    if name in ("cw", "cw-hc"):
        return attacks.cw_l2
    if name == "cw-wb":
        if detector is None:
            raise ValueError("cw-wb attacks the K-density detector: this model has none fitted "
                             "(run `rcenp detect MODEL --fit` first)")
        return functools.partial(attacks.cw_wb, detector=detector)
    raise ValueError(f"unknown attack {name!r}: expected one of {', '.join(ATTACKS)}")


def random_targets(true_labels, seed: int, num_classes: int = 10) -> np.ndarray:
    """The C&W targets of the authors' code (protocol §5.3; the paper does not say how they are drawn): for image i of the run, a class drawn uniformly
    among those ≠ its true label, from one ``default_rng(seed)`` stream over the run's n images,
    so a sample's target depends on its index, never on batching, sharding or resuming."""
    offsets = np.random.default_rng(int(seed)).integers(1, num_classes, size=len(true_labels))
    return (np.asarray(true_labels) + offsets) % num_classes


def shard_indices(n: int, batch_size: int, shard=(1, 1)) -> np.ndarray:
    """The image indices of shard k of K: a contiguous run of whole batches (1-based k).

    Raises ValueError unless 1 <= k <= K and there are at least K batches (every shard gets one)."""
    k, count = shard
    if not 1 <= k <= count:
        raise ValueError(f"shard must be k/K with 1 <= k <= K, got {k}/{count}")
    batches = math.ceil(n / batch_size)
    if batches < count:
        raise ValueError(f"{count} shards need at least {count} batches; {n} images in batches of {batch_size} "
                         f"make {batches}: use fewer shards or a smaller batch size")
    first, last = (k - 1) * batches // count, k * batches // count
    return np.arange(first * batch_size, min(last * batch_size, n))


def attacked_split(dataset: str, n: int, data_dir=None):
    """The test split whose first ``n`` images a run attacks: from ``data_dir`` or ``$RCENP_DATA``
    when named (they must hold it), else MNIST's embedded sample. Raises DataError when there is
    none, ValueError when it has fewer than ``n`` images."""
    from rcenp.data import DataError, find_test_split

    test, why = find_test_split(dataset, data_dir, strict=True)
    if test is None:
        raise DataError(why)
    if not 1 <= n <= len(test.labels):
        raise ValueError(f"--n {n} (n in Python): must be from 1 to the {len(test.labels):,} test images here "
                         f"({test.describe()})")
    return test


def run_attack(model_ref, attack: str, out_dir, options: dict, n: int = 1000, seed: int = 0,
               batch_size: int = 100, resume: bool = False, shard=(1, 1), data_dir=None, device=None,
               png_dir=None, stream=None, merge=None, crafted=None) -> dict:
    """Attack the first ``n`` test images of ``model_ref``'s data set (see the module docstring).

    ``options`` are the attack's keyword arguments (``eps``, ``steps``, ...). ``merge``: instead of
    attacking, write the run from the folders of its finished shards (``rcenp.attacks.shards``;
    with ``resume``, also over an interrupted merge of the same run). ``crafted``: for a transfer
    run, the folder of the substitute's own finished run of this attack and these settings, whose x*
    are scored instead of crafting them again (``rcenp.attacks.transfer``; ValueError when it is
    not that run).
    Progress lines go to ``stream`` (default: ``sys.stderr`` at the time of the call). Raises
    ValueError for bad settings (``n`` and ``batch_size`` are integers from 1 to 2**63 - 1; a
    batch_size beyond ``n`` makes one batch of n), a run directory holding a different run, a
    ``png_dir`` holding PNG files of another run (``runfiles.check_png_dir``), ``n`` beyond the
    test split, or shards that are not this run's; all before anything is written.
    """
    from rcenp.models.registry import load as load_model

    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}: expected one of {', '.join(ATTACKS)}")
    n = check_count("n (--n)", n)                      # before any folder is made
    batch_size = check_count("batch_size (--batch-size)", batch_size)  # beyond n: one batch of n
    stream = sys.stderr if stream is None else stream
    checkpoint.check_folder(out_dir, "--out")
    if png_dir is not None:
        checkpoint.check_folder(png_dir, "--png")
        if not merge:  # a merge writes no image
            runfiles.check_png_dir(png_dir, out_dir, {"model": str(model_ref), "attack": attack, "options": options,
                                                      "n": n, "seed": seed, "batch_size": batch_size}, resume)
    model, manifest = load_model(model_ref, device)
    dataset = manifest["config"]["dataset"]
    test = attacked_split(dataset, n, data_dir)
    indices = shard_indices(n, batch_size, shard)
    out_dir = Path(out_dir)
    detector = fitted_detector(model, model_ref)
    crafter, crafter_detector, crafter_manifest = model, detector, manifest
    if options.get("substitute") is not None:
        crafter, crafter_detector, crafter_manifest = load_substitute(options["substitute"], manifest, device)
    fn = attack_function(attack, crafter_detector)
    asked = {"model": str(model_ref), "attack": attack, "options": options, "n": n, "seed": seed,
             "batch_size": batch_size, "shard": list(shard), "data": test.identity, "png": bool(png_dir),
             "model_step": manifest.get("step"), "objective": model.objective, "dataset": dataset,
             "detector": runfiles.detector_identity(model_ref), "model_sha256": manifest.get("arrays_sha256")}
    if options.get("substitute") is not None:
        asked["substitute_detector"] = runfiles.detector_identity(options["substitute"])
        asked["substitute_sha256"] = crafter_manifest.get("arrays_sha256")
    train = None
    if merge:
        if tuple(shard) != (1, 1):
            raise ValueError("--merge writes the whole run from its shards: leave out --shard")
        from rcenp.attacks.shards import merge_shards, shards_eta

        if attack == "cw-wb":  # the shards' own η record, whatever training data is here
            asked["eta"] = shards_eta(merge)
    elif attack == "cw-wb" and crafter_detector is not None:  # η_t: module docstring
        train, asked["eta"] = eta_training_split(crafter_manifest, crafter_detector, data_dir)
    if crafted is not None:
        source = transfer.checked(crafted, asked, crafter, crafter_manifest.get("step"), batch_size)
        asked["crafted"] = source.record()
        fn, train = source.function(), None  # no attack, so no η pass
    if merge:
        return merge_shards(asked, merge, out_dir, detector, lambda folder, a: runfiles.claim(folder, a, resume))
    made_dir = not out_dir.exists()
    claimed = runfiles.claim(out_dir, asked, resume)
    if not claimed:  # resumed: the options as the run first recorded them (a default may be named now, or not)
        asked["options"] = json.loads((out_dir / "run.json").read_text())["options"]
    code = runfiles.code_record(model.device)  # the code this process loaded (not the tree's at its end), and where
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    if (out_dir / "summary.json").is_file():  # a finished run, resumed: nothing to recompute
        progress = Progress(out_dir / "attack.log", len(batches), stream=stream, unit="batch")
        progress.message(f"already finished: {len(batches)} of {plural(len(batches), 'batch', 'batches')}; "
                         f"nothing to do ({out_dir / 'summary.json'})")
        progress.close()
        return json.loads((out_dir / "summary.json").read_text())
    crafter_ref = options.get("substitute") or model_ref
    options = {k: v for k, v in options.items() if k != "substitute"}
    per_sample = {}
    if attack in CW_ATTACKS and options.get("targets", "random") == "random":
        # the paper's random target != the TRUE label, drawn once over the run's n images
        options = {k: v for k, v in options.items() if k != "targets"}
        per_sample = {"targets": random_targets(test.labels[:n], seed, model.network.num_classes),
                      "labels": test.labels[:n]}
    if crafted is not None:
        per_sample["crafted_index"] = np.arange(n)
    partial = out_dir / "partial"
    partial.mkdir(exist_ok=True)
    lock = runfiles.lock_run(partial)  # held until this call returns or the process ends
    progress = made_png = None  # set below; the except clause undoes what was made
    try:
        stems = [partial / f"batch-{index[0] // batch_size:05d}" for index in batches]
        finished = [stem.with_suffix(".jsonl").is_file() for stem in stems]
        progress = Progress(out_dir / "attack.log", len(batches), stream=stream, unit="batch")
        span = f"image {indices[0]}" if len(indices) == 1 else f"images {indices[0]}-{indices[-1]}"
        progress.message(f"{attack} {runfiles.format_options(options)} on {model_ref} ({model.objective.upper()}), "
                         f"{span} of {test.describe()}, "
                         + (f"{len(batches)} batches of {batch_size}" if len(batches) > 1 else "1 batch"))
        if crafted is not None:
            progress.message(f"crafted: the adversarial images of {asked['crafted']['path']} ({crafter_ref}'s own "
                             "run), scored here")
        if resume and claimed:
            progress.message(f"--resume: no run in {out_dir} yet, so this starts one")  # a mistyped --out shows here
        if any(finished):
            progress.message(f"resuming: {sum(finished)} of {plural(len(batches), 'batch', 'batches')} done")
            earlier = runfiles.earlier_code(stems)
            elsewhere = sorted({c["device"] for c in earlier if c.get("device") not in (None, model.device)})
            if elsewhere:  # float32 results differ in the last bits between devices
                progress.message(f"note: earlier batches ran on {', '.join(elsewhere)}, these on {model.device}: "
                                 "summary.json's code_by_batch names the device of each")
            other = [c for c in earlier if c.get("source_sha256") != code["source_sha256"]]
            if other:
                progress.message("note: earlier batches were computed with other library code ("
                                 + ", ".join(f"commit {c.get('commit', 'unrecorded')[:12]}"
                                             f"{' with uncommitted changes' if c.get('dirty') else ''}, "
                                             f"source {str(c.get('source_sha256'))[:12]}" for c in other)
                                 + f"; now commit {code.get('commit', 'no git')[:12]}"
                                 f"{' with uncommitted changes' if code.get('dirty') else ''}, source "
                                 f"{code['source_sha256'][:12]}): summary.json's code_by_batch lists each, and its "
                                 "code is null")
        t0, timed, done_images, resumed_images = time.monotonic(), 0, 0, 0
        if png_dir is not None and not all(finished):  # the folder's images are this run's from now on
            made_png = runfiles.claim_png(png_dir, out_dir, asked)
        if attack == "cw-wb" and crafted is None and not all(finished):  # η: once per process, when there is work
            if train is not None:
                progress.message(f"η for C&W-wb: the training features of {crafter_ref}")
                started, bar, computed = time.monotonic(), counter("training images", "features for η",
                                                                   stream=progress.stream), []

                def count(done, total):  # never called for features kept from an earlier pass
                    computed.append(done)
                    return bar(done, total)
                features, labels = training_features(crafter_detector, crafter_ref, train, progress=count)
                progress.message(f"η for C&W-wb: {len(labels):,} training features "
                                 + (f"in {duration(time.monotonic() - started)} (not in the img/s below)"
                                    if computed else "kept from an earlier pass (the feature cache)"))
                options, train = dict(options, train_features=features, train_labels=labels), None
            else:
                progress.message(f"η for C&W-wb: {asked['eta']['why']}, so the biased-loose approximation "
                                 "from the detector's kernel points (rcenp.attacks.cw_wb)")
                fn = _without_warning(fn, EtaApproximationWarning)  # said once above, not once per batch
        for b, (index, stem) in enumerate(zip(batches, stems)):
            if finished[b] and b + 1 < len(batches):
                continue  # done by an earlier process: no progress line, no rate from it
            if not finished[b]:
                start = time.monotonic()
                batch_options = dict(options, **{k: v[index] for k, v in per_sample.items()})
                snapshot = Snapshot(stem.with_name(f"{stem.name}-state.npz"), code=code)
                call = fn if attack not in CW_ATTACKS else functools.partial(  # C&W: status within a batch,
                    fn, snapshot=snapshot,                                      # and its snapshots
                    progress=lambda text: progress.message(f"  batch {b + 1}/{len(batches)}: {text}"))
                result, records = attack_and_audit(call, model, detector, test.images[index], test.labels[index], index,
                                                   batch_options, batch_size, png_dir,
                                                   substitute=None if crafter is model else crafter)
                checkpoint.atomic_write_npz(stem.with_suffix(".npz"), adversarial=result.adversarial)
                runfiles.write_batch_code(stem, dict(code, earlier=snapshot.earlier) if snapshot.earlier else code)
                checkpoint.atomic_write_text(stem.with_suffix(".jsonl"), "".join(json.dumps(r) + "\n" for r in records))
                snapshot.remove()
                if not snapshot.resumed:  # a batch resumed mid-way would make the rate too high
                    timed += time.monotonic() - start
                    done_images += len(index)
                else:
                    resumed_images += len(index)
            rate = done_images / timed if timed > 0 else None  # of this process's own work only
            left = sum(len(i) for i, done in zip(batches[b + 1:], finished[b + 1:]) if not done)
            progress.update(b + 1, plural(sum(len(i) for i in batches[:b + 1]), "image", "images") + "  "
                            + (f"{rate:.2f} img/s" if rate else "? img/s (resumed mid-batch: not timed)"
                               if resumed_images else "? img/s"),
                            0.0 if not left else left / rate if rate else float("inf"), force=b + 1 == len(batches))
        summary = _assemble(out_dir, partial, batches, batch_size, test, model, detector, asked,
                            runfiles.code_by_batch(stems))
        summary["timing"] = {"seconds_this_run": time.monotonic() - t0, "attack_seconds_this_run": timed,
                             "images_this_run": done_images, "images_finished_from_a_snapshot": resumed_images,
                             "images_per_s": done_images / timed if timed else None}
        checkpoint.atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        shutil.rmtree(partial)
        criterion = success_criterion(summary["settings"]).removesuffix("; ")
        progress.message(f"done: success {summary['success_rate']:.1%}" + (f" ({criterion})" if criterion else "")
                         + ", accuracy under attack "
                         f"{summary['accuracy_under_attack']:.1%} on "
                         f"{plural(summary['counts']['n'], 'image', 'images')}; {out_dir}")
        return summary
    except BaseException as exc:
        kept = any(partial.glob("*.jsonl")) or any(partial.glob("*-state*.npz"))
        if claimed and not kept and not (out_dir / "summary.json").is_file():
            # nothing done (no finished batch, no C&W snapshot): leave no run behind to block --out
            if progress is not None:
                progress.close()
            runfiles.unclaim(out_dir, partial, made_dir)
            if made_png is not None:
                runfiles.unclaim_png(png_dir, made_png)
        elif isinstance(exc, (KeyboardInterrupt, SystemExit)) and kept and progress is not None:
            progress.message(f"interrupted ({type(exc).__name__}): the finished batches and any snapshot of the batch "
                             "in work are kept; run again with --resume to go on"
                             + (" (a shard that --jobs started: run the --jobs command again with --resume)"
                                if tuple(shard) != (1, 1) else ""))
        raise
    finally:
        if progress is not None:
            progress.close()
        if lock is not None:
            lock.close()


def load_substitute(substitute_ref, target_manifest: dict, device=None):
    """The substitute model of a transfer run, its fitted detector and its manifest. Raises ValueError when it is
    trained on another data set than the target, or (cw-wb's need) has no detector."""
    from rcenp.models.registry import load as load_model

    substitute, manifest = load_model(substitute_ref, device)
    if manifest["config"]["dataset"] != target_manifest["config"]["dataset"]:
        raise ValueError(f"substitute {substitute_ref} is trained on {manifest['config']['dataset']}, "
                         f"the target on {target_manifest['config']['dataset']}: transfer needs one data set")
    return substitute, fitted_detector(substitute, substitute_ref), manifest


def fitted_detector(model, model_ref):
    """The model's saved detector (``rcenp detect --fit``), or None."""
    from rcenp.detect.detector import detector_stem, load_detector
    from rcenp.models.registry import resolve

    fitted = detector_stem(resolve(model_ref)).with_suffix(".json").is_file()
    return load_detector(model_ref, model) if fitted else None


def success_criterion(settings: dict) -> str:
    """What 'attack success' counts, when it is not plain misclassification: 'reached target; '
    for the targeted attacks (JSMA, C&W with random targets, C&W-wb), 'reached least likely; '
    for ILCM; '' for FGSM, BIM, untargeted C&W and transfer runs (there: the target misclassifies)."""
    options = settings["options"]
    if options.get("substitute"):
        return ""
    if settings["attack"] == "ilcm":
        return "reached least likely; "
    if settings["attack"] in ("jsma", "cw-wb") or (settings["attack"] in ("cw", "cw-hc")
                                                   and options.get("targets", "random") == "random"):
        return "reached target; "
    return ""


def _assemble(out_dir, partial, batches, batch_size, test, model, detector, asked, code_groups) -> dict:
    """Write adversarial.npz and samples.jsonl from the partial batches; return the summary."""
    index = np.concatenate(batches)
    adversarial = np.concatenate([np.load(partial / f"batch-{b[0] // batch_size:05d}.npz")["adversarial"]
                                  for b in batches])
    lines = [(partial / f"batch-{b[0] // batch_size:05d}.jsonl").read_text() for b in batches]
    records = [json.loads(line) for text in lines for line in text.splitlines()]
    checkpoint.atomic_write_npz(out_dir / "adversarial.npz", clean=test.images[index], adversarial=adversarial,
                                labels=test.labels[index], indices=index)
    checkpoint.atomic_write_text(out_dir / "samples.jsonl", "".join(lines))
    from rcenp.attacks.summary import summarize

    summary = summarize(records, detector)
    summary.update(settings=asked, effective_options=runfiles.effective_options(asked["attack"], asked["options"]),
                   test_set=test.describe(), software=_software(model),
                   code=runfiles.summary_code(code_groups), code_by_batch=code_groups)
    return summary


def _software(model) -> dict:
    import scipy

    from rcenp import __version__

    from rcenp.backend import device_identity

    return {"rcenp": __version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "python": platform.python_version(), **device_identity(model.device)}  # device, and gpu and cupy there
