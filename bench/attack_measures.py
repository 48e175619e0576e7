"""What bench/bench_attacks.py measures of an attack run, shared by its BIM/JSMA comparison and its
C&W one (``cw_foolbox.py``): wall and CPU seconds taken in turns with the host's steal time,
distortion ||x* - x||_2/sqrt(d) on 0-255, success, work in image passes, and agreement between
two implementations' x*."""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from bench_host import steal_seconds

UNAVAILABLE = "rcenp.attacks not available"


def rcenp_attack(attacks_module, name):
    """``rcenp.attacks.<name>``, or the string saying why it is missing."""
    if attacks_module is None:
        return UNAVAILABLE
    fn = getattr(attacks_module, name, None)
    return fn if fn is not None else f"rcenp.attacks.{name} not available"


def host_array(result):
    """x* as a host float32 array, from an ``AttackResult`` (its ``adversarial``) or an array."""
    from rcenp.backend import as_numpy

    result = getattr(result, "adversarial", result)
    return np.asarray(as_numpy(result), dtype=np.float32)


def cpu_seconds():
    """This process's CPU seconds, all threads, plus those of its finished child processes and
    theirs (``rcenp attack --jobs``'s shards)."""
    times = os.times()
    return time.process_time() + times.children_user + times.children_system


def interleaved(runs, repeats, what="", warmup=0):
    """{name: (the last run's result, [(wall s, CPU s, steal s) of every run])} for ``runs``
    {name: fn}, taken in turns: ``warmup`` untimed runs of each, then ``repeats`` rounds of one
    timed run of each, in reversed order every other round. A slow phase of the machine (this VM's
    steal time reached 30% for minutes) then falls on every implementation alike instead of on
    whichever block of repeats it met; each run's steal time (``steal_seconds``) is recorded."""
    for name, fn in runs.items():
        for _ in range(warmup):
            fn()
    out = {name: (None, []) for name in runs}
    order = list(runs)
    for round_ in range(repeats):
        for name in (order if round_ % 2 == 0 else order[::-1]):
            steal, start, cpu = steal_seconds(), time.perf_counter(), cpu_seconds()
            result = runs[name]()
            wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
            steal = None if steal is None else steal_seconds() - steal
            out[name] = (result, out[name][1] + [(wall, cpu, steal)])
            print(f"bench_attacks: {what} {name}: {out[name][1][-1][0]:.2f} s", file=sys.stderr, flush=True)
    return out


def l2_255(x_adv, x):
    """||x* - x||_2 / sqrt(d) on the 0-255 scale, per image (N,)."""
    d = (x_adv - x).reshape(len(x), -1).astype(np.float64)
    return 255.0 * np.sqrt((d * d).mean(1))


def timing(x, seconds):
    """Median wall seconds, images/s and CPU seconds (all threads; on a shared machine, wall time
    counts waits for the cores and CPU time counts spinning threads), and each run's wall and
    host steal seconds where recorded."""
    wall = float(np.median([s[0] for s in seconds]))
    timing = {"seconds": wall, "images_per_s": len(x) / wall, "cpu_seconds": float(np.median([s[1] for s in seconds])),
              "seconds_all": [s[0] for s in seconds]}
    if all(len(s) > 2 and s[2] is not None for s in seconds):
        timing["host_steal_seconds_all"] = [round(s[2], 2) for s in seconds]
    return timing


def summary(x_adv, x, success, seconds):
    l2 = l2_255(x_adv, x)
    return {**timing(x, seconds),
            "success_rate": float(success.mean()),
            "median_l2_255_successful": float(np.median(l2[success])) if success.any() else None,
            "median_features_changed": float(np.median((x_adv != x).reshape(len(x), -1).sum(1)))}


def agreement(ours, theirs, pred_ours, pred_theirs):
    diff = np.abs(ours - theirs).reshape(len(ours), -1).max(1)
    return {"adv_prediction_agreement": float((pred_ours == pred_theirs).mean()),
            "identical_x_adv_fraction": float((diff <= 1e-6).mean()),
            "max_abs_x_adv_difference": float(diff.max())}


def passes(image_passes, seconds):
    """Work done, in images through the network (one forward, with its backward where the attack
    takes a gradient), and its rate over the median wall time."""
    wall = float(np.median([s[0] for s in seconds]))
    return {"image_passes": int(image_passes), "image_passes_per_s": image_passes / wall}


if __name__ == "__main__":
    from bench_host import not_a_command

    sys.exit(not_a_command(__file__))
