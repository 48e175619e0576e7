"""Networks: ``resnet(depth, in_channels, num_classes, activation)``; ``load(name or run dir)``."""
from rcenp.models.resnet import ResNet, resnet


def load(name_or_path, device=None):
    """A trained ``Classifier`` (eval mode) and its manifest, by shipped name or run directory."""
    from rcenp.models.registry import load as _load  # imports training code, so only on demand

    return _load(name_or_path, device)


__all__ = ["ResNet", "resnet", "load"]
