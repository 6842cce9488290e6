"""staclearn: STAC-native GeoAI.

Land-cover pixel classification, building-damage classification and change detection, from STAC
Items to published STAC Items with MLM model cards. One entry point per workflow sits here; the
steps live in one package per pipeline stage::

    staclearn.data        STAC search, cubes, labels, footprints, splits
    staclearn.chips       pixel / object chips, sampling, augmentation
    staclearn.models      segmentation, change and object-classifier networks, losses
    staclearn.training    the trainer, checkpoints, lr finder, device
    staclearn.inference   tiled prediction to COGs, Dask, ONNX, objects, vectorizing
    staclearn.evaluation  metrics, baselines, reports
    staclearn.stac        Items, model cards, catalogs, STAC API publishing, validation
    staclearn.workflows   landcover, damage, change: Config, Result, run_*
    staclearn.viz         figures and maps

Typical use::

    result = staclearn.run_landcover("catalogs/nc-landsat/catalog.json", "runs/nc")
    model = staclearn.load_model("runs/nc/model/model.json")
    staclearn.predict_to_cog(model, staclearn.load_cube(items, bands=...), "class_map.tif")

Importing ``staclearn`` imports none of torch, kornia, scikit-learn or matplotlib: every name
below loads its module on first use (``lazy_loader``).
"""

import lazy_loader as _lazy

from staclearn import _deprecated

__version__ = "0.2.0"

_getattr, __dir__, __all__ = _lazy.attach(
    __name__,
    submodules=[
        "chips", "cli", "data", "errors", "evaluation", "inference", "models", "openeo_processes",
        "stac", "training", "udf", "viz", "workflows",
    ],
    submod_attrs={
        "data.search": ["open_items"],
        "data.cube": ["load_cube"],
        "workflows.landcover": ["LandCoverConfig", "run_landcover"],
        "workflows.damage": ["DamageConfig", "run_damage"],
        "workflows.change": ["ChangeConfig", "run_change"],
        "data.pairs": ["load_pair"],
        "inference.change": ["predict_change"],
        "inference.raster": ["predict_class_map", "predict_to_cog"],
        "inference.dask": ["predict_dask"],
        "stac.modelcard": ["load_model", "model_card"],
        "stac.catalog": ["write_catalog"],
        "stac.api": ["publish_to_api"],
        "errors": ["StaclearnError"],
    },
)
__all__ = [n for n in __all__ if "." not in n and n not in {
    "chips", "cli", "data", "errors", "evaluation", "inference", "models", "openeo_processes",
    "stac", "training", "udf", "viz", "workflows"}]


def __getattr__(name: str):
    """Lazy public names; 0.1 names that moved resolve with a ``DeprecationWarning``."""
    try:
        return _getattr(name)
    except AttributeError:
        return _deprecated.top_level(name)


_deprecated.install()
