"""Evaluation: metrics over saved predictions (ACC, UF1, UAR, macro-F1) and reports."""

from merkit.eval.metrics import (
    accuracy,
    compute_metrics,
    confusion_matrix,
    evaluate_run,
    macro_f1_hm,
    per_class_accuracy,
    read_predictions,
    unweighted_average_recall,
    unweighted_f1,
)
from merkit.eval.reports import format_results, plot_confusion_matrix

__all__ = [
    "accuracy",
    "compute_metrics",
    "confusion_matrix",
    "evaluate_run",
    "format_results",
    "macro_f1_hm",
    "per_class_accuracy",
    "plot_confusion_matrix",
    "read_predictions",
    "unweighted_average_recall",
    "unweighted_f1",
]
