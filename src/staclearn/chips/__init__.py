"""Training samples: pixel chips (one or two dates), object chips around footprints, sampling and kornia augmentation.

Names load lazily (``lazy_loader``): importing this package imports none of its modules
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submodules=['augment', 'object_dataset', 'objects', 'pairs', 'pixel', 'sampling'],
    submod_attrs={
        'augment': ['Augmentation', 'RadiometricJitter'],
        'object_dataset': ['FootprintChipDataset', 'chip_band_statistics', 'chip_features'],
        'objects': ['ImageSource', 'Imagery', 'image_href', 'chip_geobox', 'FootprintChipReader', 'export_footprint_chips'],
        'pairs': ['export_change_chips', 'ChangeAugmentation'],
        'pixel': ['chip_windows', 'block_split', 'export_chips', 'ChipDataset', 'band_statistics', 'TRAIN', 'VALID', 'TEST'],
        'sampling': ['class_presence', 'targets_presence', 'sample_weights', 'balanced_sampler'],
    },
)
