"""Publishing: class-map, change-mask and vector Items, the MLM model card, catalogs, STAC API publishing and validation.

Names load lazily (``lazy_loader``): importing this package imports none of its modules
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submodules=['api', 'catalog', 'change', 'items', 'modelcard', 'objects', 'onnx', 'validate'],
    submod_attrs={
        'api': ['api_items', 'publish_to_api'],
        'catalog': ['write_catalog'],
        'change': ['change_mask_item', 'change_model_card'],
        'items': ['vectorize_item', 'unsigned_href', 'geobox_geometry', 'class_map_item', 'chips_collection', 'vector_item'],
        'modelcard': ['MLM_SCHEMA', 'CLASSIFICATION_SCHEMA', 'model_card', 'spec_from_card', 'read_card', 'check_weights', 'load_model', 'WEIGHTS_ASSET'],
        'objects': ['object_catalog'],
        'onnx': ['add_onnx_artifact'],
        'validate': ['SCHEMA_DIR_ENV', 'ValidationReport', 'OfflineSTACValidator', 'validate', 'validate_catalog'],
    },
)
