"""Scoring: metrics (overall accuracy, mIoU, precision / recall / F1), classical baselines and reports.

Names load lazily (``lazy_loader``): importing this package imports none of its modules
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submodules=['baselines', 'metrics', 'reports'],
    submod_attrs={
        'baselines': ['random_forest_baseline'],
        'metrics': ['ClassificationMetrics', 'compute_metrics', 'summary'],
        'reports': ['write_report', 'write_evaluation', 'plot_confusion_matrix'],
    },
)
