"""A PyTorch twin of rcenp's networks, for benchmarks: the same pre-activation ResNet in torch.nn,
loaded with the weights of any rcenp ``Classifier``, so that an attack can run on the same model
in PyTorch (and foolbox) and in rcenp. Bench-only: rcenp itself never imports torch.

The network is the authors' pre-activation ResNet (protocol §1.1, ``rcenp/models/resnet.py``):
depth 6n+2, a 3x3 stem conv, three stages of n units (widths 16/32/64, strides 1/2/2), each unit
BN → act → conv3x3(stride) → BN → act → conv3x3 plus the shortcut (the first unit of the network
activates before the split and its shortcut takes the activated input); where the width changes the
shortcut is 2x2 average pooling then zero channel padding (option A). Head: BN → act → global
average pool (Z, 64-d) → linear. Leaky ReLU 0.1 (or ReLU), BN eps 1e-3, 3x3 convs pad 1 on every
side, no conv biases.

The module and parameter names are rcenp's (``stem.weight``, ``stage{s}.unit{u}.bn1.weight``,
``bn.running_var``, ``fc.bias``, ...), and rcenp's layouts are PyTorch's: conv kernels
(CO, C, KH, KW) (rcenp stores activations channels-last, never kernels), linear weights (L, 64).
So ``state_dict()`` of an rcenp network loads key for key; PyTorch's extra
``num_batches_tracked`` buffers are left alone (they only matter for momentum=None).

In training mode PyTorch's BN updates its running variance with the unbiased batch variance,
rcenp (and the authors' TF code) with the biased one; the twin is meant for eval mode, where both
use the stored running statistics.

    from torch_twin import twin_of      # with bench/ on sys.path, as for the bench scripts
    model, manifest = rcenp.models.load("mnist-resnet32-rce")
    twin = twin_of(model)               # eval mode, float32
    logits = twin(torch.from_numpy(x))  # prediction logits (N, L): -s for RCE
"""
from __future__ import annotations

if __name__ == "__main__":  # a module, not a command; said before torch's import, which may fail
    import sys

    from bench_host import not_a_command
    sys.exit(not_a_command(__file__))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

WIDTHS = (16, 32, 64)
STRIDES = (1, 2, 2)
ACTIVATIONS = ("leaky_relu", "relu")


def _bn(channels):
    # PyTorch's momentum is 1 - decay: r <- 0.9 r + 0.1 batch_stat, as rcenp and the authors' TF code
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.1)


class PreActUnit(nn.Module):
    def __init__(self, in_channels, out_channels, stride, activate_before_residual, slope):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.activate_before_residual, self.slope = activate_before_residual, slope
        self.bn1 = _bn(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = _bn(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)

    def forward(self, x):
        a = F.leaky_relu(self.bn1(x), self.slope)
        shortcut = a if self.activate_before_residual else x
        h = self.conv2(F.leaky_relu(self.bn2(self.conv1(a)), self.slope))
        if self.in_channels != self.out_channels:
            extra = (self.out_channels - self.in_channels) // 2
            shortcut = F.pad(F.avg_pool2d(shortcut, self.stride), (0, 0, 0, 0, extra, extra))
        return h + shortcut


class ResNet(nn.Module):
    """The pre-activation ResNet-``depth`` on (N, C, H, W) float32 images in [-0.5, 0.5]; raw logits s (N, L)."""

    def __init__(self, depth=32, in_channels=3, num_classes=10, activation="leaky_relu", slope=0.1):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (20, 32, 56, ...), got {depth}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        n = (depth - 2) // 6
        self.depth, self.num_classes = depth, num_classes
        self.slope = slope if activation == "leaky_relu" else 0.0
        self.stem = nn.Conv2d(in_channels, WIDTHS[0], 3, 1, 1, bias=False)
        in_ch = WIDTHS[0]
        for s, (width, stride) in enumerate(zip(WIDTHS, STRIDES), start=1):
            stage = nn.Module()
            for u in range(n):
                stage.add_module(f"unit{u}", PreActUnit(in_ch, width, stride if u == 0 else 1, s == 1 and u == 0, self.slope))
                in_ch = width
            self.add_module(f"stage{s}", stage)
        self.bn = _bn(WIDTHS[-1])
        self.fc = nn.Linear(WIDTHS[-1], num_classes)

    def units(self):
        for s in range(1, len(WIDTHS) + 1):
            yield from getattr(self, f"stage{s}").children()

    def features(self, x):
        """Z (N, 64): final BN → activation → global average pool (the K-density feature)."""
        h = self.stem(x)
        for unit in self.units():
            h = unit(h)
        return F.leaky_relu(self.bn(h), self.slope).mean((2, 3))

    def forward(self, x):
        return self.fc(self.features(x))


class Twin(nn.Module):
    """An rcenp ``Classifier`` in PyTorch: ``forward`` gives the prediction logits (N, L), s for CE
    and -s for RCE (protocol §2, the "reverse logits"), which is what attacks and foolbox see."""

    def __init__(self, network: ResNet, objective: str):
        super().__init__()
        if objective not in ("ce", "rce"):
            raise ValueError(f"objective must be 'ce' or 'rce', got {objective!r}")
        self.network, self.objective = network, objective

    def raw_logits(self, x):
        """s (N, L), the network's own logits."""
        return self.network(x)

    def prediction_logits(self, x):
        """Prediction logits (N, L) of images x (N, C, H, W): s for CE, -s for RCE."""
        s = self.network(x)
        return -s if self.objective == "rce" else s

    forward = prediction_logits


def load_rcenp_state(network: ResNet, state) -> None:
    """Copy an rcenp ``state_dict()`` ({name: host array}) into ``network``, every key and shape
    checked; raises KeyError (names differ) or ValueError (a shape differs)."""
    own = {k: v for k, v in network.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise KeyError(f"state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, tensor in own.items():
            value = np.asarray(state[name])
            if tuple(value.shape) != tuple(tensor.shape):
                raise ValueError(f"{name}: shape {tuple(value.shape)} does not match {tuple(tensor.shape)}")
            tensor.copy_(torch.from_numpy(value.astype(np.float32)))


def twin_of(classifier) -> Twin:
    """The PyTorch twin (eval mode, float32, CPU) of an rcenp ``Classifier`` wrapping a ``ResNet``."""
    net = classifier.network
    in_channels = net.stem.weight.shape[1]
    network = ResNet(net.depth, in_channels, net.num_classes, net.activation, net.slope)
    load_rcenp_state(network, net.state_dict())
    return Twin(network, classifier.objective).eval()


def load_twin(name_or_path):
    """(rcenp Classifier, its PyTorch twin, manifest) for a shipped model name or a run directory."""
    import rcenp.models

    model, manifest = rcenp.models.load(name_or_path, device="cpu")
    return model, twin_of(model), manifest
