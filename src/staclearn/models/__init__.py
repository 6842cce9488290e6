"""Networks: segmentation models (smp and the per-pixel conv net), the two-date change model, the object classifier and losses.

Names load lazily (``lazy_loader``): importing this package imports none of its modules
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submodules=['change', 'classifier', 'segmentation'],
    submod_attrs={
        'change': ['build_change_model', 'load_change_model', 'ChangeLoss'],
        'classifier': ['ClassifierSpec', 'ObjectClassifier', 'build_classifier'],
        'segmentation': ['ModelSpec', 'SegmentationModel', 'PixelConvNet', 'SegmentationEnsemble', 'SpectralIndices', 'SPECTRAL_INDICES', 'LANDSAT_ETM_BANDS', 'spectral_index_statistics', 'member_spec', 'PIXEL_CONV', 'SiameseDiffUnet', 'FUSIONS', 'DATE_PREFIXES', 'pair_band_names', 'model_from_spec', 'build_model', 'save_weights', 'load_weights'],
    },
)
