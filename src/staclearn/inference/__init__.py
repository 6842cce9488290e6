"""Applying a model: tiled raster prediction to COGs, Dask and ONNX engines, object classification and vectorizing.

Names load lazily (``lazy_loader``): importing this package imports none of its modules
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submodules=['dask', 'engines', 'raster', 'vectorize'],
    submod_attrs={
        'dask': ['predict_dask'],
        'engines': ['ENGINES', 'ONNX_ASSET', 'ONNX_ARTIFACT_TYPE', 'Engine', 'OnnxModel', 'add_onnx_artifact', 'export_onnx', 'load_onnx_model', 'onnxruntime_available', 'resolve_engine'],
        'raster': ['CLASS_MAP_NODATA', 'DEFAULT_MEMORY_BUDGET_MB', 'StreamedPrediction', 'auto_tile_size', 'predict_class_map', 'predict_probabilities', 'predict_to_cog', 'write_cog'],
        'vectorize': ['vectorize', 'vectorize_item', 'class_map_asset', 'probability_asset', 'POLYGON_COLUMNS'],
    },
)
