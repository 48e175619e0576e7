"""Networks: ``resnet(depth, in_channels, num_classes, activation)``."""
from rcenp.models.resnet import ResNet, resnet

__all__ = ["ResNet", "resnet"]
