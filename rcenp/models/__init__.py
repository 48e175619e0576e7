"""Networks and the trained models that ship with rcenp.

``resnet(depth, in_channels, num_classes, activation)`` builds the authors' pre-activation ResNet;
``load(name or run dir)`` gives a trained ``Classifier`` and its manifest; ``shipped_models()``
names the shipped ones (``rcenp models`` prints them with data set, depth, objective and test
error).
"""
from rcenp.models.registry import load, shipped_models
from rcenp.models.resnet import ResNet, resnet

__all__ = ["ResNet", "resnet", "load", "shipped_models"]
