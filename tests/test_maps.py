"""Maps of a published prediction on the real NC Landsat-7 scene: colours, legend, PNG, folium."""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pystac
import pytest
import rasterio
import torch

from staclearn.data.cube import load_cube
from staclearn.errors import (
    AssetNotFoundError,
    ConfigError,
    ImageryNotFoundError,
    MalformedStacError,
    MissingDependencyError,
)
from staclearn.data.labels import classes_from_item
from staclearn.viz.maps import class_colors, interactive_map, plot_prediction, prediction_layers
from staclearn.stac.modelcard import model_card
from staclearn.models.segmentation import build_model, save_weights
from staclearn.inference.raster import predict_class_map
from staclearn.stac.items import class_map_item
from staclearn.data.search import open_items

pytestmark = pytest.mark.realdata

BANDS = ["b1", "b2", "b3", "b4", "b5"]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A prediction Item as staclearn publishes it: COG, card and source Item linked."""
    from conftest import NC_CATALOG, SHARED_DIR

    scene = SHARED_DIR / "data" / "landcover" / "nc_landsat7" / "landsat_multiband.tif"
    if not scene.exists():
        pytest.skip("needs ../shared/data/landcover/nc_landsat7 (the NC Landsat-7 scene)")
    items = open_items(NC_CATALOG)
    imagery = [i for i in items if i.id == "nc-landsat7-2000"]
    classes = classes_from_item(next(i for i in items if i.id == "nc-landsat7-labels"), "labels")
    cube = load_cube(imagery, bands=BANDS).compute()
    values = cube.isel(time=0).values
    ok = (values != cube.attrs["nodata"]).all(0)
    torch.manual_seed(0)
    model = build_model(BANDS, classes, mean=values[:, ok].mean(1), std=values[:, ok].std(1), encoder_depth=3)
    out = tmp_path_factory.mktemp("maps")
    card = model_card(model, str(save_weights(model, out / "w.safetensors")), id="nc-untrained")
    card.set_self_href(str(out / "card.json"))
    (out / "card.json").write_text(json.dumps(card.to_dict(include_self_link=False)))
    class_map = predict_class_map(model, cube, tile_size=256, padding=32, out_path=out / "class_map.tif")
    item = class_map_item(str(out / "class_map.tif"), class_map, id="nc-map", classes=classes, source_items=imagery, model_card=card)
    item_path = out / "item.json"
    item.set_self_href(str(item_path))
    item_path.write_text(json.dumps(item.to_dict(include_self_link=False)))
    return item_path, scene, classes, class_map.values


def _expected_rgb(scene) -> np.ndarray:
    """Independent stretch: red, green, blue = b3, b2, b1, each cut at its 2nd and 98th percentile."""
    with rasterio.open(scene) as src:
        img = src.read([3, 2, 1]).astype(np.float32)
        img[img == src.nodata] = np.nan
    out = np.empty(img.shape[1:] + (3,), np.float32)
    for b in range(3):
        lo, hi = np.nanpercentile(img[b], [2, 98])
        out[..., b] = np.clip((img[b] - lo) / (hi - lo), 0, 1)
    return out


def test_plot_prediction_colours_legend_and_png(published, tmp_path):
    import matplotlib.pyplot as plt

    item_path, scene, classes, class_map = published
    ax = plot_prediction(str(item_path), alpha=0.4, path=tmp_path / "map.png")
    rgba = np.asarray(ax.images[0].get_array())
    assert rgba.shape == (443, 489, 4)
    rgb = np.nan_to_num(_expected_rgb(scene))
    colours = class_colors(classes)
    # every class has its card colour hint; each predicted pixel is its blended class colour
    for c in classes:
        assert colours[c.value] == tuple(int(c.color_hint[i : i + 2], 16) / 255 for i in (0, 2, 4))
    predicted = set(np.unique(class_map)) - {255}
    assert len(predicted) >= 2
    for k in predicted:
        hit = class_map == k
        want = 0.6 * rgb[hit] + 0.4 * np.asarray(colours[k], np.float32)
        np.testing.assert_allclose(rgba[hit, :3], want, atol=1e-5)
    nodata = class_map == 255
    assert (rgba[nodata, 3] == 0).all() and (rgba[~nodata, 3] == 1).all()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [c.name for c in classes]
    b = ax.images[0].get_extent()
    with rasterio.open(scene) as src:
        assert b == pytest.approx([src.bounds.left, src.bounds.right, src.bounds.bottom, src.bounds.top])
    png = plt.imread(tmp_path / "map.png")
    assert png.ndim == 3 and png.shape[0] > 400 and png.shape[1] > 400
    plt.close(ax.figure)


def test_layers_from_item_or_cube_agree(published):
    item_path, _scene, classes, class_map = published
    from conftest import NC_CATALOG

    item = pystac.Item.from_file(str(item_path))
    from_links = prediction_layers(item)
    assert from_links.card is not None and from_links.card.id == "nc-untrained"
    assert [c.name for c in from_links.classes] == [c.name for c in classes]
    assert np.array_equal(from_links.class_map, class_map)
    imagery = [i for i in open_items(NC_CATALOG) if i.id == "nc-landsat7-2000"]
    cube = load_cube(imagery, bands=["red", "green", "blue"]).compute()
    from_cube = prediction_layers(item, imagery=cube)
    np.testing.assert_allclose(from_cube.rgb, from_links.rgb, atol=1e-6, equal_nan=True)
    with pytest.raises(AssetNotFoundError, match="nope"):
        prediction_layers(item, asset="nope")
    # bad input: named errors (a missing file, a Catalog where an Item is expected, alpha out of range)
    with pytest.raises(ImageryNotFoundError, match="cannot be read"):
        prediction_layers(item_path.parent / "missing.json")
    with pytest.raises(MalformedStacError, match="not a STAC Item"):
        prediction_layers(NC_CATALOG)
    with pytest.raises(ConfigError, match="alpha"):
        plot_prediction(item, alpha=2)


def test_interactive_map(published, tmp_path, monkeypatch):
    pytest.importorskip("folium", reason="folium is not installed (pip install -e '.[dev]')")
    item_path, _scene, classes, _ = published
    fmap = interactive_map(str(item_path), tiles=None)
    fmap.save(str(tmp_path / "map.html"))
    html = (tmp_path / "map.html").read_text()
    assert html.count("L.imageOverlay") == 2  # imagery + classes
    assert all(c.name in html for c in classes)
    import re

    bbox = pystac.Item.from_file(str(item_path)).bbox
    fit = re.search(r"fitBounds\(\s*\[\[([-\d.e]+), ([-\d.e]+)\], \[([-\d.e]+), ([-\d.e]+)\]\]", html)
    south, west, north, east = (float(v) for v in fit.groups())
    # the whole scene's footprint contains the predicted area's bbox
    assert west <= bbox[0] + 1e-6 and south <= bbox[1] + 1e-6 and east >= bbox[2] - 1e-6 and north >= bbox[3] - 1e-6
    assert east - west < 0.2 and north - south < 0.2  # ~14 km x 13 km at 36 N
    monkeypatch.setitem(sys.modules, "folium", None)
    with pytest.raises(MissingDependencyError, match="pip install folium") as err:
        interactive_map(str(item_path))
    assert isinstance(err.value, ImportError)
