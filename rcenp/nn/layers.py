"""Layers holding parameters: convolution, batch normalisation, fully connected."""
from __future__ import annotations

import numpy as np

from rcenp import functional as F
from rcenp.backend import DEFAULT_DTYPE, make_rng
from rcenp.checks import check_positive, check_real
from rcenp.checks import check_steps as check_size
from rcenp.nn.module import Module, Parameter


class Conv2d(Module):
    """2-D convolution (cross-correlation) with a square kernel: (N, C, H, W) → (N, CO, OH, OW),
    OH = (H + 2*padding - KH) // stride + 1 (likewise OW; ``stride`` and ``padding`` may also be
    (H, W) pairs, as ``F.conv2d`` takes them).

    Weight (CO, C, KH, KW) with KH = KW = ``kernel_size``, drawn from N(0, sqrt(2 / (KH*KW*CO)))
    by ``rng`` (a NumPy Generator; None: seed 0) and marked for weight decay; bias (CO,) zeros, off
    by default (protocol §1.1: the authors' convs have none). Raises ValueError unless C, CO and
    KH are positive integers (``stride`` and ``padding`` are checked by ``F.conv2d``).
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False, rng=None):
        super().__init__()
        in_channels, out_channels = check_size("in_channels", in_channels), check_size("out_channels", out_channels)
        k = check_size("kernel_size", kernel_size)
        rng = rng if rng is not None else make_rng(0)
        std = np.sqrt(2.0 / (k * k * out_channels))
        self.stride, self.padding = stride, padding
        self.weight = Parameter(rng.normal(0.0, std, (out_channels, in_channels, k, k)).astype(DEFAULT_DTYPE), decay=True)
        self.bias = Parameter(np.zeros(out_channels, DEFAULT_DTYPE)) if bias else None

    def forward(self, x, residual=None):
        """conv(x) (+ bias) for x (N, C, H, W) → (N, CO, OH, OW); with ``residual`` (broadcasting
        to the output), conv(x) + residual in one pass (a ResNet unit's sum).

        Raises ValueError for a channel count other than C, a wrong number of dimensions or a
        residual that does not fit (``F.conv2d``).
        """
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding, residual=residual)


class BatchNorm2d(Module):
    """Per-channel batch normalisation of (N, C, H, W) or (N, C), the authors' settings: decay 0.9,
    eps 1e-3, gamma (``weight``, C) 1, beta (``bias``, C) 0 (protocol §1.1).

    y = gamma * (x - mean) / sqrt(var + eps) + beta, with the batch's per-channel mean and biased
    variance in training mode (which updates the running averages in place:
    r <- decay*r + (1 - decay)*batch_stat) and the ``running_mean``/``running_var`` buffers (C,)
    in eval mode. Neither parameter takes weight decay. Raises ValueError unless C is a positive
    integer, decay in [0, 1] and eps finite and > 0.
    """

    def __init__(self, channels, decay=0.9, eps=1e-3):
        super().__init__()
        channels = check_size("channels", channels)
        decay, eps = check_real("decay", decay), check_positive("eps", eps)
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must lie in [0, 1], got {decay}")
        self.decay, self.eps = decay, eps
        self.weight = Parameter(np.ones(channels, DEFAULT_DTYPE))
        self.bias = Parameter(np.zeros(channels, DEFAULT_DTYPE))
        self.register_buffer("running_mean", np.zeros(channels, DEFAULT_DTYPE))
        self.register_buffer("running_var", np.ones(channels, DEFAULT_DTYPE))

    def forward(self, x, slope=None):
        """BN(x), of x's shape; with ``slope`` in [0, 1), leaky_relu(BN(x), slope) fused into the
        same passes (0: ReLU).

        Raises ValueError for a channel count other than C or a slope out of range (``F.batch_norm``).
        """
        return F.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                            training=self.training, decay=self.decay, eps=self.eps, slope=slope)


class Linear(Module):
    """Fully connected layer: x (N, D) → x Wᵀ + b, (N, OUT), with D = ``in_features``.

    Weight (OUT, D) ~ U(±sqrt(3 / D)) (TF uniform_unit_scaling, factor 1), drawn by ``rng`` (a
    NumPy Generator; None: seed 0) and marked for weight decay; bias (OUT,) zeros. Raises
    ValueError unless D and OUT are positive integers.
    """

    def __init__(self, in_features, out_features, rng=None):
        super().__init__()
        in_features, out_features = check_size("in_features", in_features), check_size("out_features", out_features)
        rng = rng if rng is not None else make_rng(0)
        limit = np.sqrt(3.0 / in_features)
        self.weight = Parameter(rng.uniform(-limit, limit, (out_features, in_features)).astype(DEFAULT_DTYPE), decay=True)
        self.bias = Parameter(np.zeros(out_features, DEFAULT_DTYPE))

    def forward(self, x):
        """x (N, D) → (N, OUT). Raises ValueError when x's last axis is not D (``F.linear``)."""
        return F.linear(x, self.weight, self.bias)
