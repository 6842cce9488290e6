"""Pytest fixture: a published staclearn run on the real NC Landsat-7 scene.

``nc_run`` loads the committed catalog ``catalogs/nc-landsat`` (the scene lies in
``../shared/data``), builds a small seeded :class:`~staclearn.models.segmentation.PixelConvNet`
(3 layers of 3x3 convolutions: a receptive field of 7 px, so tiles with 3 px of overlap or
more predict exactly what the whole scene predicts), writes its class map and probabilities
with :func:`~staclearn.inference.raster.predict_to_cog` and publishes card + class-map Item with
:func:`~staclearn.stac.catalog.write_catalog`. Untrained weights: these tests are about the
engines around the model, not its accuracy. Shared by the tests of one session (the
tests must not modify it; copy it first).

Import it in a test module::

    from fixtures_nc_run import nc_run  # noqa: F401
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pystac
import pytest

from conftest import NC_CATALOG, SHARED_DIR

BANDS = ["b1", "b2", "b3", "b4", "b5"]
TILE, PADDING = 128, 16


@dataclass(frozen=True)
class NcRun:
    """What ``nc_run`` published."""

    out: Path
    """run folder: ``catalog.json``, ``class_map.tif``, ``probabilities.tif``, ``model/``."""
    card: Path
    """the MLM card Item JSON inside the run."""
    item: Path
    """the class-map Item JSON inside the run."""
    source: pystac.Item
    """the NC Landsat Item of the committed catalog."""
    class_map: np.ndarray
    """``(y, x) uint8`` class map written by predict_to_cog (255 nodata)."""


def nc_source_item() -> pystac.Item:
    from staclearn.data.labels import split_label_items
    from staclearn.data.search import open_items

    imagery, _ = split_label_items(open_items(str(NC_CATALOG)))
    return imagery[0]


@pytest.fixture(scope="session")
def nc_run(tmp_path_factory: pytest.TempPathFactory) -> NcRun:
    if not (SHARED_DIR / "data" / "landcover" / "nc_landsat7" / "landsat_multiband.tif").exists():
        pytest.skip("needs ../shared/data/landcover/nc_landsat7 (the NC Landsat-7 scene)")
    import rasterio
    import torch

    from staclearn.data.cube import load_cube
    from staclearn.data.labels import ClassInfo
    from staclearn.stac.modelcard import model_card
    from staclearn.models.segmentation import build_model, save_weights
    from staclearn.inference.raster import predict_to_cog
    from staclearn.stac.items import class_map_item
    from staclearn.stac.catalog import write_catalog

    source = nc_source_item()
    cube = load_cube([source], bands=BANDS)
    values = cube.isel(time=0).values.reshape(len(BANDS), -1)
    values = np.where(values == cube.attrs.get("nodata", -99999), np.nan, values)
    mean = np.nanmean(values, 1).tolist()
    std = np.nanstd(values, 1).tolist()
    classes = [ClassInfo(1, "developed", "ff0000"), ClassInfo(2, "agriculture", "ffff00"), ClassInfo(5, "forest", "00aa00")]
    torch.manual_seed(2)
    model = build_model(
        BANDS, classes, mean=mean, std=std, architecture="PixelConvNet", encoder_depth=0,
        extra={"width": 8, "layers": 3, "kernel": 3, "dropout": 0.0},
    ).eval()
    with torch.no_grad():  # He-normal weights: the three classes each cover a good part of the scene
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight)
                if module.bias is not None:
                    module.bias.zero_()
    out = tmp_path_factory.mktemp("published") / "run"
    weights = save_weights(model, out / "model" / "weights.safetensors")
    card = model_card(model, str(weights), id="nc-pixelconv", tile_size=TILE, training_items=[source], hyperparameters={"epochs": 0})
    done = predict_to_cog(
        model, cube, out / "class_map.tif", probabilities_path=out / "probabilities.tif",
        tile_size=TILE, padding=PADDING, batch_size=4, device="cpu",
    )
    import rioxarray

    cmap = rioxarray.open_rasterio(done.class_map).squeeze("band", drop=True)
    cmap = cmap.odc.assign_crs(cmap.rio.crs.to_wkt())
    item = class_map_item(str(done.class_map), cmap, id="nc-class-map", classes=classes, source_items=[source], model_card=card)
    item.add_asset(
        "probabilities",
        pystac.Asset(str(done.probabilities), media_type=pystac.MediaType.COG, roles=["data"], title="Class probabilities"),
    )
    write_catalog([card, item], out, id="nc-run", description="staclearn run on the NC Landsat-7 scene")
    with rasterio.open(done.class_map) as src:
        class_map = src.read(1)
    return NcRun(
        out=out,
        card=out / "nc-run" / "nc-pixelconv" / "nc-pixelconv.json",
        item=out / "nc-run" / "nc-class-map" / "nc-class-map.json",
        source=source,
        class_map=class_map,
    )
