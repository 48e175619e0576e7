"""Layers holding parameters: convolution, batch normalisation, fully connected."""
from __future__ import annotations

import numpy as np

from rcenp import functional as F
from rcenp.backend import DEFAULT_DTYPE, make_rng
from rcenp.nn.module import Module, Parameter


class Conv2d(Module):
    """Weight (CO, C, KH, KW), no bias by default; init N(0, sqrt(2 / (KH*KW*CO))) (protocol §1.1)."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False, rng=None):
        super().__init__()
        rng = rng if rng is not None else make_rng(0)
        k = kernel_size
        std = np.sqrt(2.0 / (k * k * out_channels))
        self.stride, self.padding = stride, padding
        self.weight = Parameter(rng.normal(0.0, std, (out_channels, in_channels, k, k)).astype(DEFAULT_DTYPE), decay=True)
        self.bias = Parameter(np.zeros(out_channels, DEFAULT_DTYPE)) if bias else None

    def forward(self, x, residual=None):
        """conv(x) (+ bias); with ``residual``, conv(x) + residual in one pass (a ResNet unit's sum)."""
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding, residual=residual)


class BatchNorm2d(Module):
    """Per-channel BN with the authors' settings: decay 0.9, eps 1e-3, gamma 1, beta 0 (protocol §1.1)."""

    def __init__(self, channels, decay=0.9, eps=1e-3):
        super().__init__()
        self.decay, self.eps = decay, eps
        self.weight = Parameter(np.ones(channels, DEFAULT_DTYPE))
        self.bias = Parameter(np.zeros(channels, DEFAULT_DTYPE))
        self.register_buffer("running_mean", np.zeros(channels, DEFAULT_DTYPE))
        self.register_buffer("running_var", np.ones(channels, DEFAULT_DTYPE))

    def forward(self, x, slope=None):
        """BN(x); with ``slope``, leaky_relu(BN(x), slope) fused into the same passes (0: ReLU)."""
        return F.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                            training=self.training, decay=self.decay, eps=self.eps, slope=slope)


class Linear(Module):
    """Weight (OUT, IN) ~ U(±sqrt(3 / IN)) (TF uniform_unit_scaling, factor 1), bias 0."""

    def __init__(self, in_features, out_features, rng=None):
        super().__init__()
        rng = rng if rng is not None else make_rng(0)
        limit = np.sqrt(3.0 / in_features)
        self.weight = Parameter(rng.uniform(-limit, limit, (out_features, in_features)).astype(DEFAULT_DTYPE), decay=True)
        self.bias = Parameter(np.zeros(out_features, DEFAULT_DTYPE))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)
