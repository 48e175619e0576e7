"""Where a ResNet eval forward (and an eval input gradient) spends its time, by operation.

Every ``rcenp.autograd.Function`` subclass's ``forward`` and ``backward`` is wrapped with a wall
clock (operations do not nest, so the times are exclusive); what is left of the pass is Python
and graph bookkeeping outside the operations. Convolutions also report their GEMM arithmetic rate
(2·N·OH·OW·KH·KW·C·CO flops per pass), to put them next to the machine's single-core sgemm rate in
the README. Prints one JSON object; ``--json PATH`` also writes it.

    python bench/profile_forward.py                          # ResNet-32, batch 128, 3x32x32
    python bench/profile_forward.py --batch 100 --shape 1x28x28
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _shape(text):
    c, h, w = (int(v) for v in text.lower().split("x"))
    return c, h, w


def _instrument(totals, flops):
    """Wrap every Function subclass's forward and backward; returns a function that undoes it."""
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
                    totals[_key][0] += time.perf_counter() - start
                    totals[_key][1] += 1
                    if isinstance(self, Conv2d) and _key[1] == "forward":  # x (N, C, H, W), w (CO, C, KH, KW)
                        n, (oh, ow), w = args[0].shape[0], self.out_hw, args[1]
                        flops[_key] += 2.0 * n * oh * ow * w.shape[1] * w.shape[2] * w.shape[3] * w.shape[0]
            setattr(cls, phase, timed)
            undo.append((cls, phase, original))

    def restore():
        for cls, phase, original in undo:
            setattr(cls, phase, original)
    return restore


def profile(depth: int, batch: int, shape, repeats: int) -> dict:
    sys.path.insert(0, ROOT)
    import numpy as np

    import rcenp
    from rcenp.models import resnet
    from rcenp.objectives import Classifier
    from rcenp.ops.layout import chunk_workers

    c, h, w = shape
    model = Classifier(resnet(depth, c), "ce").eval()
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 0.5, (batch, c, h, w)).astype(np.float32)
    y = rng.integers(0, 10, batch)

    def forward():
        with rcenp.no_grad():
            model(x)

    def input_grad():
        images = rcenp.Tensor(x, requires_grad=True)
        rcenp.grad(model.loss(images, y), images)

    report = {"benchmark": f"ResNet-{depth} batch {batch} {c}x{h}x{w}", "workers": chunk_workers(), "repeats": repeats}
    for name, fn in (("forward", forward), ("input_grad", input_grad)):
        for _ in range(2):
            fn()
        totals, flops = collections.defaultdict(lambda: [0.0, 0]), collections.defaultdict(float)
        restore = _instrument(totals, flops)
        try:
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            wall = (time.perf_counter() - start) / repeats
        finally:
            restore()
        ops = sorted(((f"{k[0]}.{k[1]}", v[0] / repeats, v[1] // repeats, flops.get(k, 0.0) / repeats)
                      for k, v in totals.items()), key=lambda r: -r[1])
        in_ops = sum(r[1] for r in ops)
        report[name] = {
            "wall_ms": wall * 1e3,
            "outside_operations_ms": (wall - in_ops) * 1e3,
            "operations": [{"op": op, "ms": ms * 1e3, "share": ms / wall, "calls": calls,
                            **({"gflop_per_s": fl / ms / 1e9} if fl else {})} for op, ms, calls, fl in ops],
        }
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--shape", type=_shape, default=(3, 32, 32))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    report = profile(args.depth, args.batch, args.shape, args.repeats)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        sys.path.insert(0, ROOT)
        from rcenp.checkpoint import atomic_write_text

        atomic_write_text(args.json, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
