"""Scoring: metrics (overall accuracy, mIoU, precision / recall / F1), classical baselines and reports.

Names load lazily (``lazy_loader``): importing this package imports none of its modules
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submodules=['baselines', 'change', 'cva', 'metrics', 'reports'],
    submod_attrs={
        'baselines': ['random_forest_baseline', 'hist_gradient_boosting_baseline'],
        'change': ['fit_change_threshold', 'precision_recall_table', 'plot_precision_recall', 'ChangeScores', 'score_change', 'change_figures', 'write_change_evaluation'],
        'cva': ['change_vector_magnitude', 'fit_cva_threshold', 'cva_mask'],
        'metrics': ['ClassificationMetrics', 'compute_metrics', 'summary'],
        'reports': ['write_report', 'write_evaluation', 'plot_confusion_matrix'],
    },
)
