"""Detection: the K-density score (paper §3.3), ROC/AUC under the authors' protocol, thresholds.

Conventions (protocol §4): higher score = more normal for every metric; normal examples are the
positive class of the ROC; the detector accepts an input when its score > T.
"""
from rcenp.detect.calibrate import calibrate_threshold, min_calibration_images, rejection_rate
from rcenp.detect.detector import METRICS, NOT_SURE, Detector, detector_stem, load_detector
from rcenp.detect.kde import (
    DEFAULT_SIGMA2,
    LogKernelDensity,
    kernel_point_indices,
    log_kernel_density,
    log_kernel_density_reference,
    select_kernel_points,
)
from rcenp.detect.roc import (
    authors_kd_auc,
    bootstrap_auc_ci,
    paper_pairs,
    paper_sample_rule,
    roc_auc,
    roc_curve,
    tpr_at_fpr,
)

__all__ = [
    "DEFAULT_SIGMA2", "LogKernelDensity", "log_kernel_density", "log_kernel_density_reference",
    "select_kernel_points", "kernel_point_indices", "roc_auc", "roc_curve", "tpr_at_fpr", "bootstrap_auc_ci", "authors_kd_auc",
    "paper_sample_rule", "paper_pairs", "calibrate_threshold", "min_calibration_images",
    "rejection_rate",
    "Detector", "NOT_SURE", "METRICS", "detector_stem", "load_detector",
]
