"""Batch normalisation over (N, H, W) per channel of x (N, C, H, W), or over N for x (N, C).

As the authors' TensorFlow code (protocol §1.1): batch statistics with the biased variance in
training; running averages r <- decay*r + (1 - decay)*batch_stat with decay 0.9 (TF's zero-debias
correction of the first steps is not reproduced); eps = 1e-3 inside the square root. Eval mode
uses the running statistics, which are then constants: its backward is a per-channel scale.
"""
from __future__ import annotations

from rcenp.autograd import Function, Tensor
from rcenp.backend import get_array_module


def _axes(x):
    return (0,) if x.ndim == 2 else (0, 2, 3)


def _per_channel(v, ndim):
    return v if ndim == 2 else v[:, None, None]


def _rows(x):
    """x as a (M, C) matrix view when its memory is channels-last (or x is 2-D), else None."""
    if x.ndim == 2:
        return x if x.flags.c_contiguous else None
    nhwc = x.transpose(0, 2, 3, 1)
    return nhwc.reshape(-1, x.shape[1]) if nhwc.flags.c_contiguous else None


def _channel_sum(x):
    """Σ over (N, H, W) per channel; one GEMV on the (M, C) view when there is one."""
    rows = _rows(x)
    if rows is None:
        return x.sum(axis=_axes(x))
    xp = get_array_module(x)
    return xp.ones(rows.shape[0], x.dtype) @ rows


def _channel_dot(a, b):
    """Σ over (N, H, W) of a*b per channel: the diagonal of a (C, C) GEMM, no (M, C) temporary."""
    ra, rb = _rows(a), _rows(b)
    if ra is None or rb is None:
        return (a * b).sum(axis=_axes(a))
    return (ra.T @ rb).diagonal().copy()


class BatchNorm(Function):
    def __init__(self, running_mean, running_var, training, decay=0.9, eps=1e-3):
        self.running_mean, self.running_var = running_mean, running_var
        self.training, self.decay, self.eps = training, decay, eps

    def forward(self, x, gamma, beta):
        xp = get_array_module(x)
        nd = x.ndim
        if self.training:
            m = x.size // x.shape[1]
            mean = _channel_sum(x) / m
            centred = x - _per_channel(mean, nd)
            var = _channel_dot(centred, centred) / m  # two-pass: no E[x²] - E[x]² cancellation
            if self.running_mean is not None:
                d = self.decay
                self.running_mean *= d
                self.running_mean += (1 - d) * mean
                self.running_var *= d
                self.running_var += (1 - d) * var
        else:
            mean, var = self.running_mean, self.running_var
            centred = x - _per_channel(mean, nd)
        inv_std = (1.0 / xp.sqrt(var + self.eps)).astype(x.dtype, copy=False)
        scale = (gamma * inv_std).astype(x.dtype, copy=False)
        self.x, self.mean, self.inv_std, self.scale = x, mean, inv_std, scale
        centred *= _per_channel(scale, nd)
        centred += _per_channel(beta.astype(x.dtype, copy=False), nd)
        return centred

    def backward(self, gy):
        x, mean, inv_std, scale = self.x, self.mean, self.inv_std, self.scale
        nd = x.ndim
        g_beta = _channel_sum(gy)
        # Σ gy * x_hat with x_hat = (x - mean) * inv_std, without materialising x_hat
        g_gamma = (_channel_dot(gy, x) - mean * g_beta) * inv_std
        gx = None
        if self.needs_input_grad[0]:
            gx = gy * _per_channel(scale, nd)
            if self.training:
                m = x.size // x.shape[1]
                # gx = scale * (gy - g_beta/m - x_hat * g_gamma/m), written as gy*scale + x*b + c
                b = (-scale * g_gamma * inv_std / m).astype(x.dtype, copy=False)
                c = (-scale * g_beta / m - b * mean).astype(x.dtype, copy=False)
                x_b = x * _per_channel(b, nd)
                x_b += _per_channel(c, nd)
                gx += x_b
        return (gx,
                g_gamma if self.needs_input_grad[1] else None,
                g_beta if self.needs_input_grad[2] else None)


def batch_norm(x, gamma, beta, running_mean=None, running_var=None, training=True,
               decay=0.9, eps=1e-3) -> Tensor:
    """Normalise x (N, C, H, W) or (N, C) per channel, then scale by gamma and shift by beta (C,).

    Training mode uses batch statistics and updates ``running_mean``/``running_var`` in place
    (when given); eval mode (``training=False``) uses them and needs both.
    """
    if not training and (running_mean is None or running_var is None):
        raise ValueError("batch_norm in eval mode needs running_mean and running_var")
    return BatchNorm(running_mean, running_var, training, decay, eps)(x, gamma, beta)
