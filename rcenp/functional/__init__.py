"""The differentiable operations, imported as ``F`` (``from rcenp import functional as F``).

Every function takes Tensors or arrays and returns a Tensor; see each op's module for its maths.
"""
from rcenp.ops.activation import leaky_relu, log_softmax, logsumexp, relu, softmax
from rcenp.ops.conv import conv2d
from rcenp.ops.elementwise import add, clip, div, exp, log, maximum, mul, neg, power, sub, tanh, where
from rcenp.ops.linalg import linear, matmul
from rcenp.ops.loss import cross_entropy, reverse_cross_entropy, smoothed_cross_entropy
from rcenp.ops.norm import batch_norm
from rcenp.ops.pool import avg_pool2d, global_avg_pool2d
from rcenp.ops.reduction import max, mean, sum  # noqa: A004 - mirror numpy's names
from rcenp.ops.shape import concatenate, getitem, pad, reshape, transpose

__all__ = [
    "add", "sub", "mul", "div", "neg", "power", "exp", "log", "tanh", "clip", "where", "maximum",
    "sum", "mean", "max", "reshape", "transpose", "getitem", "concatenate", "pad", "matmul",
    "linear", "conv2d", "batch_norm", "relu", "leaky_relu", "avg_pool2d", "global_avg_pool2d",
    "softmax", "log_softmax", "logsumexp", "cross_entropy", "reverse_cross_entropy",
    "smoothed_cross_entropy",
]
