"""C&W-L2 in bench/bench_attacks.py (``--cw``): foolbox 3.3.4's ``L2CarliniWagnerAttack`` on the
PyTorch twin against ``rcenp.attacks.cw_l2`` on the same weights, images and targets, compared by
outcome (success, distortion) and by work (image passes/s), the two taking turns
(``attack_measures.interleaved``: each run's wall, CPU and host steal seconds), each on all its
images in one batch."""
from __future__ import annotations

import sys

import numpy as np

from attack_measures import agreement, host_array, interleaved, l2_255, passes, rcenp_attack, timing


def draw_targets(labels, seed):
    """(N,) targets uniform over the 9 classes != labels (10 classes)."""
    rng = np.random.default_rng(seed)
    return (labels + rng.integers(1, 10, len(labels))) % 10


def outcome(x_adv, x, adv_pred, targets, correct, seconds):
    success = adv_pred == targets
    kept = success & correct  # the authors' efficient_index: clean-correct and successful
    l2 = l2_255(x_adv, x)
    return {**timing(x, seconds),
            "success_rate": float(success.mean()),
            "median_l2_255_correct_and_successful": float(np.median(l2[kept])) if kept.any() else None,
            "mean_l2_255_correct_and_successful": float(l2[kept].mean()) if kept.any() else None}


def bench_cw(model, twin, x, labels, clean, args, attacks_module, predict_rcenp):
    """C&W-L2, foolbox 3.3.4 on the twin against ``rcenp.attacks.cw_l2``, on the first
    ``args.cw_n`` images of x (N, C, H, W). Both targeted, the same targets: uniform among the 9
    classes != the true label (protocol §5.3). foolbox's ``PyTorchModel`` sees the twin's prediction
    logits (-s for RCE), as the authors' ``models_carlini`` wrapper does. The two optimisers differ
    in details (foolbox's tanh mapping, abort-early rule and best-iterate bookkeeping are its own),
    so they are compared by outcome: success and distortion. The two take turns, ``args.repeats``
    timed runs each and no warm-up; rcenp's ``batch_size`` is n, as foolbox takes the whole batch."""
    import torch

    n = min(args.cw_n, len(x))
    x, labels, clean = x[:n], labels[:n], clean[:n]
    targets = draw_targets(labels, args.seed)
    correct = clean == labels
    settings = {"n": n, "binary_steps": args.cw_binary_steps, "max_iterations": args.cw_steps,
                "initial_const": args.cw_c0, "learning_rate": args.cw_lr, "kappa": args.cw_kappa,
                "abort_early": args.cw_abort_early == "on", "batch_size": n,
                "targets": f"uniform over the 9 classes != true label, seed {args.seed}"}
    entry = {"settings": settings}
    runs, hook = {}, None
    try:
        import foolbox as fb
    except ImportError:
        entry["foolbox"] = "foolbox not installed"
    else:
        fmodel = fb.PyTorchModel(twin, bounds=(-0.5, 0.5), device="cpu")
        attack = fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=args.cw_binary_steps, steps=args.cw_steps, stepsize=args.cw_lr,
            confidence=args.cw_kappa, initial_const=args.cw_c0,
            abort_early=args.cw_abort_early == "on")
        criterion = fb.criteria.TargetedMisclassification(torch.from_numpy(targets))
        xt = torch.from_numpy(x)

        sentinel, forwarded = [], []
        # foolbox runs one forward and one backward of the whole batch per iteration (no compaction):
        # count the images through the twin's forward, per run
        hook = twin.register_forward_hook(lambda module, inputs, output: forwarded.append(inputs[0].shape[0]))

        def run_foolbox():
            forwarded.clear()
            # Where its search found nothing, foolbox returns an all-zero image (landscape §2.6), and
            # its criterion then re-judges that image: a uniform grey the network happens to call the
            # target counts as a "success" at ||delta|| ~ 122 on 0-255. Those are failures; the
            # protocol returns the clean image for a failure.
            raw, clipped, success = attack(fmodel, xt, criterion, epsilons=None)
            found = raw.flatten(1).abs().amax(1) > 0
            sentinel.append(int((success & ~found).sum()))
            return torch.where((success & found).view(-1, 1, 1, 1), clipped, xt).detach().numpy()

        runs["foolbox"] = run_foolbox
    ours = rcenp_attack(attacks_module, "cw_l2")
    results = []
    if not isinstance(ours, str):
        def run_rcenp():
            results.append(ours(model, x, targets=targets, labels=labels, binary_steps=args.cw_binary_steps,
                                max_iterations=args.cw_steps, initial_const=args.cw_c0, learning_rate=args.cw_lr,
                                kappa=args.cw_kappa, abort_early=args.cw_abort_early == "on", batch_size=n))
            return host_array(results[-1])

        runs["rcenp"] = run_rcenp
    try:
        timed = interleaved(runs, args.repeats, "cw_l2") if runs else {}
    finally:
        if hook is not None:
            hook.remove()
    if "foolbox" in timed:
        x_fb, seconds = timed["foolbox"]
        fb_passes = sum(forwarded)  # those of foolbox's last run, as x_fb is its last run's
        with torch.no_grad():
            pred_fb = twin(torch.from_numpy(x_fb)).argmax(1).numpy()
        entry["foolbox"] = {"version": fb.__version__, **outcome(x_fb, x, pred_fb, targets, correct, seconds),
                            "all_zero_failure_images_judged_successful": sentinel[-1],
                            "success_rate_as_foolbox_reports_it": float((pred_fb == targets).mean())
                            + sentinel[-1] / n, **passes(fb_passes, seconds)}
    if isinstance(ours, str):
        entry["rcenp"] = ours
        return entry
    x_r, seconds = timed["rcenp"]
    pred_r = predict_rcenp(x_r)
    # one forward + backward per unfinished image and iteration, plus the clean and final forwards
    entry["rcenp"] = {**outcome(x_r, x, pred_r, targets, correct, seconds),
                      **passes(int(results[-1].iterations.sum()) + 2 * n, seconds)}
    if isinstance(entry["foolbox"], dict):
        entry["agreement"] = {"success_agreement": float(((pred_r == targets) == (pred_fb == targets)).mean()),
                              **agreement(x_r, x_fb, pred_r, pred_fb)}
        entry["seconds_rcenp_over_foolbox"] = entry["rcenp"]["seconds"] / entry["foolbox"]["seconds"]
        # the engines alone: foolbox runs every image every iteration (its abort-early tests the batch's
        # summed loss), rcenp drops finished images, so wall time also measures the algorithm
        entry["passes_per_s_foolbox_over_rcenp"] = \
            entry["foolbox"]["image_passes_per_s"] / entry["rcenp"]["image_passes_per_s"]
        # the images whose success differs, with rcenp's per-sample audit (c of each binary step, ...)
        l2_r, l2_fb = l2_255(x_r, x), l2_255(x_fb, x)
        both = correct & (pred_r == targets) & (pred_fb == targets)  # the rule: images both break
        entry["both_successful"] = {
            "n": int(both.sum()),
            "median_l2_255_rcenp": float(np.median(l2_r[both])) if both.any() else None,
            "median_l2_255_foolbox": float(np.median(l2_fb[both])) if both.any() else None,
            "median_ratio_rcenp_over_foolbox": float(np.median(l2_r[both]) / np.median(l2_fb[both]))
            if both.any() else None}
        details = getattr(results[-1], "details", None) or [{}] * len(x)
        entry["disagreements"] = [
            {"index": int(i), "label": int(labels[i]), "target": int(targets[i]),
             "foolbox": {"success": bool(pred_fb[i] == targets[i]), "l2_255": float(l2_fb[i])},
             "rcenp": {"success": bool(pred_r[i] == targets[i]), "l2_255": float(l2_r[i]),
                       **{k: details[i][k] for k in ("c", "step_success", "step_iterations", "step_stop")
                          if k in details[i]}}}
            for i in np.flatnonzero((pred_r == targets) != (pred_fb == targets))]
    return entry


if __name__ == "__main__":
    from bench_host import not_a_command

    sys.exit(not_a_command(__file__))
