"""The three workflows, each a Config, a Result and a run_* that composes the steps below it.

Names load lazily (``lazy_loader``): importing this package imports none of its modules
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submodules=['change', 'damage', 'landcover'],
    submod_attrs={
        'change': ['CHANGE_CLASSES', 'DATE_PREFIXES', 'FUSIONS', 'pair_band_names', 'load_pair', 'load_png_pair', 'stack_pair', 'export_change_chips', 'SiameseDiffUnet', 'build_change_model', 'load_change_model', 'ChangeLoss', 'ChangeAugmentation', 'ChangePrediction', 'predict_change', 'change_vector_magnitude', 'fit_cva_threshold', 'fit_change_threshold', 'precision_recall_table', 'cva_mask', 'ChangeConfig', 'PairItems', 'CitySplit', 'split_cities', 'ChangeResult', 'run_change', 'change_mask_item'],
        'damage': ['XbdTile', 'find_xbd_tiles', 'tiles_from_catalog', 'split_tiles', 'tile_folds', 'DamageConfig', 'DamageResult', 'run_damage', 'BASELINE_NAME'],
        'landcover': ['LandCoverConfig', 'LandCoverResult', 'run_landcover', 'split_label_items'],
    },
)
