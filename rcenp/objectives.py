"""A network together with its training objective, and the logits every later step uses.

For a CE network the prediction logits are s; for an RCE network they are -s, the "reverse
logits" of §3.2 (F_R(x) = softmax(-s)). Confidence, non-ME, predictions and every attack loss use
these prediction logits; the training loss uses s itself (paper eq. 4 acts on softmax(s)).
"""
from __future__ import annotations

import numpy as np

from rcenp import functional as F
from rcenp.autograd import Tensor
from rcenp.backend import cupy_ndarray, get_array_module, to_device
from rcenp.checks import check_steps
from rcenp.grad_mode import no_grad
from rcenp.nn import Module
from rcenp.nn.module import check_images, eval_mode

OBJECTIVES = ("ce", "rce")


class Classifier(Module):
    """A network and its training objective. ``weights_sha256``: the SHA-256 of the checkpoint
    arrays it was loaded from (``rcenp.models.load``; None otherwise), which a fitted detector
    records and checks. ``image_shape``: (C, H, W) of the data set it was trained on, set by
    ``rcenp.models.load``, which ``predict``, the attacks and the detector then require (a ResNet
    computes on any H, W divisible by 4, so a 32x32 image would pass an MNIST model silently);
    None (the default) lets any size the network takes through."""

    def __init__(self, network: Module, objective: str):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.network = network
        self.objective = objective
        self.weights_sha256 = None
        self.image_shape = None

    def __repr__(self) -> str:
        net = self.network
        name = f"ResNet-{net.depth}" if hasattr(net, "depth") else type(net).__name__
        dtype = self.network.parameters()[0].data.dtype
        return (f"Classifier({name}, objective={self.objective!r}, classes={getattr(net, 'num_classes', '?')}, "
                f"{dtype}, {self.device}, {'training' if self.training else 'eval'} mode)")

    def _checked(self, x):
        """x, after refusing (ValueError) images whose (C, H, W) is not ``image_shape`` (when set),
        and (TypeError) anything but a Tensor or a NumPy/CuPy array."""
        if not isinstance(x, (Tensor, np.ndarray, cupy_ndarray)):
            raise TypeError(f"images must be a Tensor or an array (N, C, H, W), got {type(x).__name__}; for a "
                            "nested list of pixels pass np.asarray(x, np.float32)")
        shape = getattr(x, "shape", None)
        if self.image_shape is not None and shape is not None and len(shape) == 4 \
                and tuple(shape[1:]) != tuple(self.image_shape):
            raise ValueError("images are {}x{}x{} (C x H x W); this model was trained on {}x{}x{} images".format(
                *shape[1:], *self.image_shape))
        return x

    def raw_logits(self, x) -> Tensor:
        """s = the network's own logits (N, L)."""
        return self.network(self._checked(x))

    def forward(self, x) -> Tensor:
        """Prediction logits (N, L): s for CE, -s for RCE, of images x (N, C, H, W). The ResNet
        checks shape and dtype, and a loaded model the image size (ValueError), but not values: NaN
        or pixels outside [-0.5, 0.5] are the caller's to keep out (``predict``, the attacks and the
        detector check them)."""
        return self.prediction_logits(self.network(self._checked(x)))

    def prediction_logits(self, s):
        """Raw logits s (Tensor or array) → prediction logits: s for CE, -s for RCE (§3.2)."""
        return -s if self.objective == "rce" else s

    def features(self, x) -> Tensor:
        """Z (N, D), the penultimate feature (unaffected by the reversal)."""
        return self.network.features(self._checked(x))

    def loss(self, x, labels) -> Tensor:
        """The training objective on raw logits: CE or RCE (eq. 4), batch mean."""
        return self.loss_from_logits(self.network(self._checked(x)), labels)

    def loss_from_logits(self, s, labels) -> Tensor:
        """CE or RCE (eq. 4) of raw logits s (N, L), batch mean."""
        if self.objective == "rce":
            return F.reverse_cross_entropy(s, labels)
        return F.cross_entropy(s, labels)

    def predict_logits(self, images, batch_size=500):
        """Prediction logits (N, L) of a host or device image array (N, C, H, W), in batches, without
        a graph, with inference BN (running statistics) whatever the model's mode, which it keeps.

        Raises ValueError unless ``images`` are finite pixels in [-0.5, 0.5] (x / 255 - 0.5) of the
        model's channel count and dtype (``rcenp.nn.module.check_images``: images in [0, 1] or
        0-255 would otherwise be classified, wrongly, without a word) and ``batch_size`` is a
        positive integer (``rcenp.checks.check_steps``). The graph-building calls (``model(x)``,
        ``features``, ``raw_logits``) check shape and dtype but not the pixel range, which
        gradient checks step outside.
        """
        batch_size = check_steps("batch_size", batch_size)
        images = check_images(self, images)
        xp = get_array_module(self.network.parameters()[0].data)
        outputs = []
        with no_grad(), eval_mode(self):
            for start in range(0, len(images), batch_size):
                batch = to_device(images[start:start + batch_size], self.device)
                outputs.append(self(batch).data)
        return xp.concatenate(outputs) if outputs else xp.zeros((0, self.network.num_classes))

    def predict(self, images, batch_size=500):
        """Predicted labels (N,) by argmax of the prediction logits (argmin of s for RCE) of images
        (N, C, H, W) in [-0.5, 0.5]; the errors of ``predict_logits``."""
        return self.predict_logits(images, batch_size).argmax(axis=1)
