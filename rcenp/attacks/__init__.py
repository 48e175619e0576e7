"""Adversarial attacks on a ``Classifier``'s prediction logits (paper §4, protocol §5).

    from rcenp import attacks
    result = attacks.bim(model, x, eps=0.1)        # AttackResult: adversarial, success, distortions, ...

Every attack runs in eval mode, batched, on the model's device, inside the [-0.5, 0.5] box, and
never touches a parameter's ``.grad``. ``rcenp.attacks.run`` drives an attack over a data set
with checkpoints, shards and the files of ``rcenp attack``.
"""
from rcenp.attacks.core import AttackResult, distortions
from rcenp.attacks.cw import cw_l2
from rcenp.attacks.cw_wb import EtaApproximationWarning, cw_wb
from rcenp.attacks.jsma import jsma
from rcenp.attacks.sign import bim, fgsm, ilcm

__all__ = ["AttackResult", "distortions", "fgsm", "bim", "ilcm", "jsma", "cw_l2", "cw_wb", "EtaApproximationWarning"]
