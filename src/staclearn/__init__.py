"""staclearn: STAC-native GeoAI.

Land-cover pixel classification, building-damage classification and change detection from
STAC Items to published STAC Items with MLM model cards. The public API::

    items = staclearn.open_items("catalogs/nc-landsat/catalog.json")
    cube = staclearn.load_cube(imagery, bands=["b1", "b2", "b3", "b4", "b5"])
    labels = staclearn.load_label_raster(label_item, cube.odc.geobox)
    ...
    result = staclearn.run_landcover("catalogs/nc-landsat/catalog.json", "runs/nc")
    before, after, labels = staclearn.load_pair(before_items, after_items, bands=["B02", "B03"], label_item=label_item)
    result = staclearn.run_change("catalogs/oscd/catalog.json", "runs/oscd", staclearn.ChangeConfig(valid_cities=("bercy",)))
"""

from staclearn.augment import Augmentation
from staclearn.change import ChangeConfig, load_pair, predict_change, run_change
from staclearn.chips import ChipDataset, band_statistics, block_split, chip_windows, export_chips
from staclearn.cube import load_cube
from staclearn.errors import StaclearnError
from staclearn.evaluate import ClassificationMetrics, compute_metrics, random_forest_baseline, write_report
from staclearn.labels import ClassInfo, load_label_raster, rasterize_labels
from staclearn.landcover import LandCoverConfig, run_landcover
from staclearn.modelcard import load_model, model_card
from staclearn.models import build_model
from staclearn.distributed import predict_dask
from staclearn.predict import predict_class_map, predict_probabilities, predict_to_cog
from staclearn.publish import class_map_item, publish_to_api, write_catalog
from staclearn.search import open_items
from staclearn.train import Trainer

__all__ = [
    "open_items",
    "load_cube",
    "ClassInfo",
    "load_label_raster",
    "rasterize_labels",
    "chip_windows",
    "block_split",
    "export_chips",
    "ChipDataset",
    "band_statistics",
    "Augmentation",
    "build_model",
    "Trainer",
    "predict_class_map",
    "predict_probabilities",
    "predict_to_cog",
    "predict_dask",
    "ClassificationMetrics",
    "compute_metrics",
    "random_forest_baseline",
    "write_report",
    "model_card",
    "load_model",
    "class_map_item",
    "write_catalog",
    "publish_to_api",
    "LandCoverConfig",
    "run_landcover",
    "load_pair",
    "predict_change",
    "ChangeConfig",
    "run_change",
    "StaclearnError",
]

__version__ = "0.1.0"
