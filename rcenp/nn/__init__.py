"""Layers: ``Module`` (parameters and buffers in forward order), ``Conv2d``, ``BatchNorm2d``, ``Linear``."""
from rcenp.nn.layers import BatchNorm2d, Conv2d, Linear
from rcenp.nn.module import Module, Parameter

__all__ = ["Module", "Parameter", "Conv2d", "BatchNorm2d", "Linear"]
