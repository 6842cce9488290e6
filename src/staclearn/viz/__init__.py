"""Figures and maps.

Names load lazily (``lazy_loader``): importing this package imports none of its modules
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submodules=['maps', 'plots'],
    submod_attrs={
        'maps': ['PredictionLayers', 'prediction_layers', 'plot_prediction', 'interactive_map', 'class_colors', 'percentile_stretch'],
        'plots': ['show_batch', 'show_results', 'class_colours', 'rgb_image'],
    },
)
