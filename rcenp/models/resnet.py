"""The authors' pre-activation ResNet (protocol §1.1; He et al. 2016, "identity mappings").

Depth 6n+2: a 3x3 stem conv (16 filters, no BN after it), three stages of n units with widths
16/32/64 and strides 1/2/2, then BN → activation → global average pool, which gives the 64-d
feature Z (the K-density feature), and a linear layer to the logits.

A unit is BN → act → conv3x3(stride) → BN → act → conv3x3, added to the shortcut. The first
unit of the network activates before the split, so its shortcut takes the activated input; every
other shortcut takes the raw input. Where the width changes, the shortcut is 2x2 average pooling
followed by zero channel padding (option A, no projection).

Differences from the TensorFlow original, by design: 3x3 convs pad 1 on every side (TF's 'SAME'
pads asymmetrically at stride 2), and BN's running averages skip TF's zero-debias correction.

``state_dict()`` keys, in forward order:
    stem.weight                                   (16, C_in, 3, 3)
    stage{s}.unit{u}.bn1.{weight,bias,running_mean,running_var}
    stage{s}.unit{u}.conv1.weight                 (CO, C, 3, 3)
    stage{s}.unit{u}.bn2.{weight,bias,running_mean,running_var}
    stage{s}.unit{u}.conv2.weight
    bn.{weight,bias,running_mean,running_var}     (64,)
    fc.weight (L, 64), fc.bias (L,)
with s in 1..3 and u in 0..n-1.
"""
from __future__ import annotations

from numbers import Integral

from rcenp import functional as F
from rcenp.backend import make_rng
from rcenp.nn import BatchNorm2d, Conv2d, Linear, Module
from rcenp.nn.module import check_input_dtype
from rcenp.ops.activation import check_slope

WIDTHS = (16, 32, 64)
STRIDES = (1, 2, 2)
ACTIVATIONS = ("leaky_relu", "relu")


def _activation_slope(activation, slope):
    """The slope of the activation after every BN, which BN applies fused (0 for ReLU)."""
    return slope if activation == "leaky_relu" else 0.0


class PreActUnit(Module):
    """One pre-activation residual unit (module docstring): x (N, C, H, W) → (N, CO, H/stride,
    W/stride), C = ``in_channels``, CO = ``out_channels``; built by ``ResNet``, arguments unchecked.
    """

    def __init__(self, in_channels, out_channels, stride, activate_before_residual, activation, slope, rng):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.activate_before_residual = activate_before_residual
        self.activation, self.slope = activation, slope
        self.bn1 = BatchNorm2d(in_channels)
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride, 1, rng=rng)
        self.bn2 = BatchNorm2d(out_channels)
        self.conv2 = Conv2d(out_channels, out_channels, 3, 1, 1, rng=rng)

    def forward(self, x):
        """conv2(act(bn2(conv1(act(bn1(x)))))) + shortcut, act the leaky ReLU or ReLU; the shortcut
        is x, or act(bn1(x)) in the network's first unit, pooled and zero-padded where the width
        changes."""
        slope = _activation_slope(self.activation, self.slope)
        if self.activate_before_residual:
            x = self.bn1(x, slope)
            shortcut, h = x, x
        else:
            shortcut, h = x, self.bn1(x, slope)
        h = self.bn2(self.conv1(h), slope)
        if self.in_channels != self.out_channels:
            shortcut = F.avg_pool2d(shortcut, self.stride, self.stride)
            extra = (self.out_channels - self.in_channels) // 2
            shortcut = F.pad(shortcut, ((0, 0), (extra, extra), (0, 0), (0, 0)))
        return self.conv2(h, residual=shortcut)  # conv2(h) + shortcut, summed as conv2 writes


class ResNet(Module):
    """The authors' pre-activation ResNet-``depth`` (module docstring): images x (N, C, H, W) →
    logits s (N, L), with the feature Z (N, 64) from ``features``.

    depth: 6n+2 with n >= 1 (8, 14, 20, 32, 56, ...; 32 and 56 in the paper); in_channels: C,
    1 for MNIST and 3 for CIFAR-10; num_classes: L >= 2; activation: "leaky_relu" (the authors',
    with ``slope``, 0.1) or "relu"; seed: the initialisation's generator seed (``Conv2d``, ``Linear``), so equal
    arguments give equal weights. Raises ValueError for a depth that is not an integer 6n+2 (32.0
    and "32" are not), an unknown activation, a leaky_relu slope outside [0, 1), or an in_channels
    or num_classes that is not an integer of at least 1 and 2 (a bool is not one).
    """

    def __init__(self, depth=32, in_channels=3, num_classes=10, activation="leaky_relu", slope=0.1, seed=0):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, Integral) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 with n >= 1, an integer (8, 14, 20, 32, 56, ...), got {depth!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if activation == "leaky_relu":
            check_slope(slope)
        for name, value, least in (("in_channels", in_channels, 1), ("num_classes", num_classes, 2)):
            if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        depth, in_channels, num_classes = int(depth), int(in_channels), int(num_classes)
        n = (depth - 2) // 6
        rng = make_rng(seed)
        self.depth, self.num_classes, self.activation, self.slope = depth, num_classes, activation, slope
        self.in_channels = in_channels
        self.stem = Conv2d(in_channels, WIDTHS[0], 3, 1, 1, rng=rng)
        in_ch = WIDTHS[0]
        self.units = []
        for s, (width, stride) in enumerate(zip(WIDTHS, STRIDES), start=1):
            stage = Module()
            for u in range(n):
                unit = PreActUnit(in_ch, width, stride if u == 0 else 1, s == 1 and u == 0, activation, slope, rng)
                setattr(stage, f"unit{u}", unit)
                self.units.append(unit)
                in_ch = width
            setattr(self, f"stage{s}", stage)
        self.bn = BatchNorm2d(WIDTHS[-1])
        self.fc = Linear(WIDTHS[-1], num_classes, rng=rng)

    def __repr__(self) -> str:
        """``ResNet(depth=..., in_channels=..., num_classes=..., activation=...)``."""
        activation = f"leaky_relu({self.slope})" if self.activation == "leaky_relu" else self.activation
        return (f"ResNet(depth={self.depth}, in_channels={self.in_channels}, num_classes={self.num_classes}, "
                f"activation={activation})")

    def features(self, x):
        """Z (N, 64): final BN → activation → global average pool (the K-density feature).

        Raises ValueError when ``x`` is not (N, C_in, H, W) with H and W multiples of 4 (the two
        stride-2 stages halve them; an odd size leaves the conv path and the 2x2-pooled shortcut
        one pixel apart), or its dtype is not the parameters' (float32 unless cast).
        """
        shape = tuple(x.shape)
        if len(shape) != 4 or shape[1] != self.in_channels:
            raise ValueError(f"images must have shape (N, {self.in_channels}, H, W) for this network, got {shape}")
        if shape[2] % 4 or shape[3] % 4 or min(shape[2:]) < 4:
            raise ValueError(f"image height and width must be multiples of 4 (28x28 MNIST, 32x32 CIFAR-10), "
                             f"got {shape[2]}x{shape[3]}")
        check_input_dtype(x, self.stem.weight)
        h = self.stem(x)
        for unit in self.units:
            h = unit(h)
        return F.global_avg_pool2d(self.bn(h, _activation_slope(self.activation, self.slope)))

    def forward(self, x):
        """Logits s (N, L) = fc(Z) for images x (N, C, H, W); errors as ``features``."""
        return self.fc(self.features(x))


def resnet(depth=32, in_channels=3, num_classes=10, activation="leaky_relu", seed=0) -> ResNet:
    """The authors' pre-activation ResNet-``depth`` (32 → n=5, 56 → n=9), seeded initialisation:
    ``ResNet(depth, in_channels, num_classes, activation, seed=seed)`` with the default slope 0.1
    (arguments and errors as ``ResNet``)."""
    return ResNet(depth, in_channels, num_classes, activation, seed=seed)
