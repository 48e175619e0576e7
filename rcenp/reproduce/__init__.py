"""``rcenp reproduce``: the paper's Tables 1-4 and Figures 1-3 from one resumable command, each
number beside the paper's, with the sanity checks and detection figures the paper lacks.

Modules, one concern each: ``paper`` (the published values, typed once), ``budgets`` (smoke, cpu,
paper), ``lineup`` (which shipped model fills which place), ``cells`` (the plan and its runner),
``results`` (reading finished cells), ``tables``, ``sanity``, ``figures`` (optional matplotlib /
scikit-learn), ``differences`` (the values that differ from the paper's), ``report`` (REPORT.md,
CSV, JSON), ``run`` (the whole command), ``cli``.
"""
from rcenp.reproduce.cells import PARTS
from rcenp.reproduce.run import reproduce

__all__ = ["PARTS", "reproduce"]
