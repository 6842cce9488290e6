"""Applying a model: tiled raster prediction to COGs, Dask and ONNX engines, object classification and vectorizing.

Names load lazily (``lazy_loader``): importing this package imports none of its modules
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submodules=['cache', 'change', 'dask', 'engines', 'objects', 'raster', 'vectorize'],
    submod_attrs={
        'cache': ['MAX_MODELS', 'CacheInfo', 'cache_info', 'cached_model', 'clear_model_cache', 'file_digest', 'model_digest'],
        'change': ['ChangePrediction', 'predict_change', 'threshold_change'],
        'dask': ['predict_dask'],
        'engines': ['ENGINES', 'ONNX_ASSET', 'ONNX_ARTIFACT_TYPE', 'Engine', 'OnnxModel', 'activation_bytes_per_px', 'engine_of', 'export_onnx', 'load_onnx_model', 'onnxruntime_available', 'resolve_engine', 'tile_bytes_per_px', 'with_engine'],
        'objects': ['classify_objects', 'probability_column', 'write_objects'],
        'raster': ['CLASS_MAP_NODATA', 'COG_OPTIONS', 'DEFAULT_MEMORY_BUDGET_MB', 'StreamedPrediction', 'auto_tile_size', 'predict_class_map', 'predict_probabilities', 'predict_to_cog', 'write_cog'],
        'vectorize': ['vectorize', 'class_map_asset', 'probability_asset', 'POLYGON_COLUMNS'],
    },
)
