"""Where a ResNet eval forward, an eval input gradient and a training step spend their time, by operation.

Every ``rcenp.autograd.Function`` subclass's ``forward`` and ``backward`` is wrapped with a wall
clock (operations do not nest, so the times are exclusive); what is left of the pass is Python
and graph bookkeeping outside the operations (for the training step, also the SGD update).
Convolutions also report their GEMM arithmetic rate, per pass and per layer shape
(``conv_by_shape``: C->CO, stride, input H x W), to put them next to the machine's single-core
sgemm rate in the README. The flops of a pass are 2·N·OH·OW·KH·KW·C·CO for the forward, and that
once for each gradient a backward computes (dx, dw). Prints one JSON object; ``--json PATH`` also
writes it.

    python bench/profile_forward.py                          # ResNet-32, batch 128, 3x32x32
    python bench/profile_forward.py --batch 100 --shape 1x28x28
    python bench/profile_forward.py --depth 56 --shape 1x28x28 --passes train_step
"""
from __future__ import annotations

import argparse
import collections
import time

from bench_host import emit_report, exit_status, image_shape, resnet_depth  # puts this checkout's rcenp on the path
from rcenp.argtypes import count

PASSES = ("forward", "input_grad", "train_step")


def _conv_flops(conv, x, w) -> float:
    """2·N·OH·OW·KH·KW·C·CO: one correlation of x (N, C, H, W) with w (CO, C, KH, KW)."""
    (oh, ow), (co, c, kh, kw) = conv.out_hw, w.shape
    return 2.0 * x.shape[0] * oh * ow * kh * kw * c * co


def _conv_shape(conv, x, w) -> str:
    return f"{w.shape[1]}->{w.shape[0]} {w.shape[2]}x{w.shape[3]} stride {conv.stride[0]} on {x.shape[2]}x{x.shape[3]}"


def _instrument(totals, by_shape):
    """Wrap every Function subclass's forward and backward; returns a function that undoes it.
    totals[(op, phase)] = [seconds, calls]; by_shape[(conv shape, phase)] = [seconds, calls, flops]."""
    from rcenp.autograd import Function
    from rcenp.ops.conv import Conv2d

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    undo = []
    for cls in set(subclasses(Function)):
        for phase in ("forward", "backward"):
            original = cls.__dict__.get(phase)
            if original is None:
                continue

            def timed(self, *args, _original=original, _key=(cls.__name__, phase)):
                start = time.perf_counter()
                try:
                    return _original(self, *args)
                finally:
                    seconds = time.perf_counter() - start
                    totals[_key][0] += seconds
                    totals[_key][1] += 1
                    if isinstance(self, Conv2d):  # forward(x, w, ...); backward: the x, w it kept
                        x, w = (args[0], args[1]) if _key[1] == "forward" else (self.x, self.w)
                        times = 1 if _key[1] == "forward" else sum(map(bool, self.needs_input_grad[:2]))
                        entry = by_shape[(_conv_shape(self, x, w), _key[1])]
                        entry[0] += seconds
                        entry[1] += 1
                        entry[2] += times * _conv_flops(self, x, w)
            setattr(cls, phase, timed)
            undo.append((cls, phase, original))

    def restore():
        for cls, phase, original in undo:
            setattr(cls, phase, original)
    return restore


def profile(depth: int, batch: int, shape, repeats: int, passes=PASSES) -> dict:
    import numpy as np

    import rcenp
    from rcenp.models import resnet
    from rcenp.objectives import Classifier
    from rcenp.ops.layout import chunk_workers
    from rcenp.optim import SGD

    c, h, w = shape
    model = Classifier(resnet(depth, c), "ce").eval()
    optimizer = SGD(model.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 0.5, (batch, c, h, w)).astype(np.float32)
    y = rng.integers(0, 10, batch)

    def forward():
        model.eval()
        with rcenp.no_grad():
            model(x)

    def input_grad():
        model.eval()
        images = rcenp.Tensor(x, requires_grad=True)
        rcenp.grad(model.loss(images, y), images)

    def train_step():  # as rcenp.train's loop: batch statistics, then momentum SGD with weight decay
        model.train()
        loss = model.loss(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    report = {"benchmark": f"ResNet-{depth} batch {batch} {c}x{h}x{w}", "workers": chunk_workers(), "repeats": repeats}
    runs = {"forward": forward, "input_grad": input_grad, "train_step": train_step}
    for name in passes:
        fn = runs[name]
        for _ in range(2):
            fn()
        totals = collections.defaultdict(lambda: [0.0, 0])
        by_shape = collections.defaultdict(lambda: [0.0, 0, 0.0])
        restore = _instrument(totals, by_shape)
        try:
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            wall = (time.perf_counter() - start) / repeats
        finally:
            restore()
        flops = collections.defaultdict(float)  # per conv phase: the sum over layer shapes
        for (_, phase), entry in by_shape.items():
            flops[("Conv2d", phase)] += entry[2]
        ops = sorted(((f"{k[0]}.{k[1]}", v[0] / repeats, v[1] // repeats, flops.get(k, 0.0) / repeats)
                      for k, v in totals.items()), key=lambda r: -r[1])
        in_ops = sum(r[1] for r in ops)
        report[name] = {
            "wall_ms": wall * 1e3,
            "outside_operations_ms": (wall - in_ops) * 1e3,
            "operations": [{"op": op, "ms": ms * 1e3, "share": ms / wall, "calls": calls,
                            **({"gflop_per_s": fl / ms / 1e9} if fl else {})} for op, ms, calls, fl in ops],
            "conv_by_shape": [{"layer": layer, "phase": phase, "ms": v[0] / repeats * 1e3, "calls": v[1] // repeats,
                               "share": v[0] / repeats / wall, "gflop_per_s": v[2] / v[0] / 1e9}
                              for (layer, phase), v in sorted(by_shape.items(), key=lambda kv: -kv[1][0])],
        }
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=resnet_depth, default=32, help="ResNet depth, 6n+2")
    parser.add_argument("--batch", type=count, default=128)
    parser.add_argument("--shape", type=image_shape, default=(3, 32, 32), help="image shape CxHxW")
    parser.add_argument("--repeats", type=count, default=5)
    parser.add_argument("--passes", default=",".join(PASSES), help=f"comma-separated, from {', '.join(PASSES)}")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    passes = list(dict.fromkeys(p for p in args.passes.split(",") if p))  # each once, in the order given
    unknown = sorted(set(passes) - set(PASSES))
    if unknown or not passes:
        parser.error(f"unknown pass(es) {', '.join(unknown)}; choose from {', '.join(PASSES)}" if unknown else
                     f"--passes names none; choose from {', '.join(PASSES)}")
    report = profile(args.depth, args.batch, args.shape, args.repeats, passes)
    emit_report(report, args.json, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(exit_status(main))
