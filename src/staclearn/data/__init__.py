"""Reading inputs: STAC search, lazy cubes on one GeoBox, labels, building footprints and the train / validation / test split of regions.

Names load lazily (``lazy_loader``): importing this package imports none of its modules
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submodules=['cube', 'footprints', 'labels', 'pairs', 'search', 'splits', 'xbd'],
    submod_attrs={
        'cube': ['load_cube', 'band_names', 'valid_mask', 'read_pixels', 'find_unreadable_asset', 'naming_unreadable_assets'],
        'footprints': ['ID_FIELD', 'STATUS_OK', 'STATUS_EXCLUDED', 'STATUS_EMPTY', 'STATUS_OUTSIDE', 'ClassMap', 'XBD_BINARY', 'XBD_DESTROYED', 'XBD_FOUR', 'CLASS_MAPS', 'get_class_map', 'read_xbd_labels', 'read_footprints', 'ensure_footprint_ids', 'assign_classes'],
        'labels': ['split_label_items', 'IGNORE_INDEX', 'ClassInfo', 'classes_from_item', 'load_label_raster', 'rasterize_labels', 'values_to_indices', 'indices_to_values'],
        'pairs': ['DATE_PREFIXES', 'CHANGE_CLASSES', 'load_pair', 'load_png_pair', 'stack_pair', 'PairItems', 'group_pairs', 'load_pairs'],
        'search': ['open_items', 'item_time_range', 'bbox_intersects', 'api_retry', 'RETRY_STATUSES'],
        'splits': ['TRAIN', 'VALID', 'TEST', 'PART_NAMES', 'read_regions', 'regions_mask', 'part_counts', 'split_description', 'CitySplit', 'split_cities'],
        'xbd': ['XbdTile', 'find_xbd_tiles', 'tiles_from_catalog', 'split_tiles', 'tile_folds', 'tile_split_record'],
    },
)
