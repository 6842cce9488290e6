"""STAC in, labels aligned: static catalogs, ItemCollections, filters, errors, CRS alignment."""

from __future__ import annotations

import json

import numpy as np
import pystac
import pytest
from affine import Affine
from odc.geo.geobox import GeoBox

from conftest import make_item
from staclearn.data.cube import load_cube
from staclearn.errors import (
    AssetNotFoundError,
    AssetReadError,
    CatalogNotFoundError,
    ConfigError,
    LabelError,
    NoItemsFoundError,
    NoOverlapError,
    StaclearnError,
)
from staclearn.data.labels import IGNORE_INDEX, ClassInfo, load_label_raster, rasterize_labels
from staclearn.data.search import open_items

UTM = "EPSG:32617"
T = Affine(30, 0, 600000, 0, -30, 4000000)  # 30 m pixels, UTM 17N (North Carolina)


@pytest.fixture
def catalog(tmp_path):
    rng = np.random.default_rng(0)
    items = []
    for i, (x0, day) in enumerate([(600000, 1), (700000, 15)]):
        data = rng.normal(100, 5, (3, 40, 50)).astype(np.float32)
        item = make_item(tmp_path, f"scene-{i}", data, crs=UTM, transform=Affine(30, 0, x0, 0, -30, 4000000), nodata=-1.0)
        item.datetime = item.datetime.replace(day=day)
        item.collection_id = "synthetic"
        items.append(item)
    cat = pystac.Catalog("cat", "synthetic")
    for item in items:
        cat.add_item(item)
    cat.normalize_hrefs(str(tmp_path / "catalog"))
    cat.make_all_asset_hrefs_absolute()
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    return tmp_path / "catalog" / "catalog.json", items


def test_open_static_catalog_with_filters(catalog):
    path, items = catalog
    assert [i.id for i in open_items(path)] == ["scene-0", "scene-1"]
    west = items[0].bbox
    assert [i.id for i in open_items(path, bbox=west)] == ["scene-0"]
    assert [i.id for i in open_items(path, datetime="2021-06-10/..")] == ["scene-1"]
    assert [i.id for i in open_items(path, datetime="2021-06-01")] == ["scene-0"]
    assert len(open_items(path, collections=["synthetic"])) == 2
    seen = []
    open_items(path, modifier=lambda item: seen.append(item.id))
    assert seen == ["scene-0", "scene-1"]


def test_open_itemcollection_file(catalog, tmp_path):
    path, _ = catalog
    ic = open_items(path)
    ic_path = tmp_path / "items.json"
    ic_path.write_text(json.dumps(ic.to_dict()))
    assert [i.id for i in open_items(ic_path, ids=["scene-1"])] == ["scene-1"]


def test_search_errors_are_named(catalog, tmp_path):
    path, _ = catalog
    with pytest.raises(CatalogNotFoundError, match="does not exist"):
        open_items(tmp_path / "nope" / "catalog.json")
    with pytest.raises(NoItemsFoundError, match="bbox"):
        open_items(path, bbox=[10, 10, 11, 11])
    with pytest.raises(NoItemsFoundError, match="collections"):
        open_items(path, collections=["sentinel-2-l2a"])
    # the errors are also the matching built-ins
    with pytest.raises(FileNotFoundError):
        open_items(tmp_path / "missing.json")
    with pytest.raises(LookupError):
        open_items(path, datetime="1999-01-01/1999-12-31")
    # arguments and paths that used to escape as ValueError / IsADirectoryError
    for kwargs in ({"bbox": [1, 2, 3]}, {"bbox": ["a", 1, 2, 3]}, {"datetime": "a/b/c"}, {"datetime": "June"}):
        with pytest.raises(ConfigError):
            open_items(path, **kwargs)
    with pytest.raises(CatalogNotFoundError, match="is a folder; pass .*catalog.json"):
        open_items(path.parent)
    not_stac = tmp_path / "list.json"
    not_stac.write_text("[1, 2]")
    with pytest.raises(StaclearnError):
        open_items(not_stac)


def test_cube_and_band_errors(catalog):
    path, items = catalog
    cube = load_cube(items[:1], bands=["b3", "b1"])
    assert cube.dims == ("time", "band", "y", "x") and list(cube.band.values) == ["b3", "b1"]
    assert cube.shape == (1, 2, 40, 50) and cube.attrs["nodata"] == -1.0
    assert cube.odc.geobox.crs.epsg == 32617 and cube.odc.geobox.resolution.x == 30
    assert np.allclose(cube.isel(time=0, band=1).values.mean(), 100, atol=1)
    with pytest.raises(AssetNotFoundError, match="b9"):
        load_cube(items[:1], bands=["b9"])
    with pytest.raises(NoOverlapError):
        load_cube(items[:1], bbox=[10, 10, 11, 11])
    bad_arguments = (
        {"engine": "gdal"}, {"bbox": [1, 2, 3]}, {"crs": "EPSG:999999"}, {"crs": "nonsense"}, {"resolution": 0},
        {"dtype": "floatish"}, {"resampling": "nope"}, {"chunks": {"x": 0, "y": 64}},
        {"engine": "stackstac", "crs": "nonsense"},
    )
    for kwargs in bad_arguments:
        with pytest.raises(ConfigError):
            load_cube(items[:1], **kwargs)
    with pytest.raises(ConfigError, match="pystac.Item"):
        load_cube(["scene-0.json"])
    bare = items[0].clone()  # no proj: metadata and no crs / resolution: odc-stac cannot guess a grid
    for d in (bare.properties, *(a.extra_fields for a in bare.assets.values())):
        for k in [k for k in d if k.startswith("proj:")]:
            del d[k]
    with pytest.raises(ConfigError, match="crs= and resolution="):
        load_cube([bare])
    assert isinstance(AssetNotFoundError("x"), StaclearnError)


def _quadrant_labels(gbox: GeoBox) -> np.ndarray:
    """Label by easting/northing: class 1 west of x0, 2 east; +2 south of y0."""
    xs = np.asarray(gbox.coordinates["x"].values)
    ys = np.asarray(gbox.coordinates["y"].values)
    x0, y0 = 600000 + 25 * 30, 4000000 - 20 * 30
    return (1 + (xs[None, :] > x0) + 2 * (ys[:, None] < y0)).astype(np.uint8)


def test_label_raster_in_another_crs_is_aligned(tmp_path):
    target = GeoBox((40, 50), T, UTM)
    # the label raster is in WGS84 degrees at ~10 m: reprojected with nearest resampling
    fine = GeoBox.from_bbox(target.extent.to_crs("EPSG:4326").boundingbox, "EPSG:4326", resolution=0.0001)
    xy = fine.coordinates
    lon, lat = np.meshgrid(xy["longitude"].values, xy["latitude"].values)
    from pyproj import Transformer

    e, n = Transformer.from_crs("EPSG:4326", UTM, always_xy=True).transform(lon, lat)
    x0, y0 = 600000 + 25 * 30, 4000000 - 20 * 30
    lab = (1 + (e > x0) + 2 * (n < y0)).astype(np.float32)
    lab[:5] = -99999  # nodata strip
    item = make_item(tmp_path, "labels", lab[None], crs="EPSG:4326", transform=fine.affine, nodata=-99999.0, asset="labels")
    item.assets["labels"].extra_fields["classification:classes"] = [{"value": v, "name": f"c{v}"} for v in (1, 2, 3, 4)]
    aligned = load_label_raster(item, target, asset="labels")
    assert aligned.shape == (40, 50) and aligned.dtype == np.uint8
    expected = _quadrant_labels(target) - 1  # class value v -> index v-1
    ok = aligned.values != IGNORE_INDEX
    assert ok.mean() > 0.9
    # away from the class boundaries every labelled pixel matches
    assert (aligned.values[ok] == expected[ok]).mean() > 0.97
    assert [c.name for c in aligned.attrs["classes"]] == ["c1", "c2", "c3", "c4"]


def test_label_raster_errors(tmp_path):
    target = GeoBox((40, 50), T, UTM)
    far = make_item(tmp_path, "far", np.ones((1, 10, 10), np.float32), crs=UTM, transform=Affine(30, 0, 200000, 0, -30, 3000000), asset="labels")
    far.assets["labels"].extra_fields["classification:classes"] = [{"value": 1, "name": "a"}]
    with pytest.raises(NoOverlapError, match="far"):
        load_label_raster(far, target, asset="labels")
    with pytest.raises(AssetNotFoundError, match="has no asset 'mask'"):
        load_label_raster(far, target, asset="mask")
    with pytest.raises(LabelError, match="declares no classes"):
        load_label_raster(make_item(tmp_path, "nocls", np.ones((1, 40, 50), np.float32), crs=UTM, transform=T, asset="labels"), target, asset="labels")
    bad = make_item(tmp_path, "badcls", np.ones((1, 40, 50), np.float32), crs=UTM, transform=T, asset="labels")
    bad.assets["labels"].extra_fields["classification:classes"] = [{"name": "no value"}]
    with pytest.raises(LabelError, match="malformed 'classification:classes'"):
        load_label_raster(bad, target, asset="labels")
    # a truncated label raster: a named AssetReadError (Item, asset, href), not a rasterio traceback
    cut = make_item(tmp_path, "cut", np.ones((1, 400, 500), np.float32), crs=UTM, transform=Affine(3, 0, 600000, 0, -3, 4000000), asset="labels")
    cut.assets["labels"].extra_fields["classification:classes"] = [{"value": 1, "name": "a"}]
    tif = tmp_path / "cut.tif"
    tif.write_bytes(tif.read_bytes()[: tif.stat().st_size // 3])
    with pytest.raises(AssetReadError) as info:
        load_label_raster(cut, target, asset="labels")
    assert info.value.item_id == "cut" and info.value.asset == "labels" and info.value.href.endswith("cut.tif")


def test_rasterize_vector_labels_in_another_crs():
    import geopandas as gpd
    from shapely.geometry import box

    target = GeoBox((40, 50), T, UTM)
    polys = gpd.GeoDataFrame(
        {"label": ["forest", "water"]},
        geometry=[box(600000, 4000000 - 600, 600000 + 600, 4000000), box(600900, 4000000 - 900, 601200, 4000000 - 600)],
        crs=UTM,
    ).to_crs("EPSG:4326")
    classes = [ClassInfo(5, "forest"), ClassInfo(6, "water")]
    out = rasterize_labels(polys, target, class_field="label", classes=classes)
    assert int((out.values == 0).sum()) == pytest.approx(400, abs=25)  # 600 m / 30 m = 20 px square
    assert int((out.values == 1).sum()) == pytest.approx(100, abs=15)
    assert out.values[0, 0] == 0 and out.values[25, 35] == 1 and out.values[39, 0] == IGNORE_INDEX
    with pytest.raises(LabelError, match="class_name"):
        rasterize_labels(polys, target, class_field="class_name", classes=classes)
    with pytest.raises(LabelError, match="'water'"):
        rasterize_labels(polys, target, class_field="label", classes=classes[:1])
    with pytest.raises(LabelError, match="Cannot read vector labels"):
        rasterize_labels("/nonexistent/labels.geojson", target, class_field="label", classes=classes)
    with pytest.raises(LabelError, match="no CRS"):
        rasterize_labels(polys.set_crs(None, allow_override=True), target, class_field="label", classes=classes)


def test_stackstac_engine_matches_odc(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.normal(100, 5, (1, 40, 50)).astype(np.float32)
    item = make_item(tmp_path, "single", data, crs=UTM, transform=T, asset="red", band_names=["red"])
    a = load_cube([item], bands=["red"], engine="odc")
    b = load_cube([item], bands=["red"], engine="stackstac")
    assert a.dims == b.dims == ("time", "band", "y", "x")
    assert b.odc.geobox.crs.epsg == 32617 and b.shape == a.shape == (1, 1, 40, 50)
    assert np.allclose(a.values, data[None]) and np.allclose(b.values, data[None])
    with pytest.raises(AssetNotFoundError):
        load_cube([item], bands=["nir"], engine="stackstac")


def test_indices_and_values_round_trip():
    from staclearn.data.labels import indices_to_values, values_to_indices

    classes = [ClassInfo(1, "a"), ClassInfo(5, "b"), ClassInfo(7, "c")]
    raw = np.array([[1, 5, 7], [-99999, 3, 5]], dtype=np.float32)
    idx = values_to_indices(raw, classes, nodata=-99999)
    assert idx.tolist() == [[0, 1, 2], [IGNORE_INDEX, IGNORE_INDEX, 1]]
    assert indices_to_values(idx, classes).tolist() == [[1, 5, 7], [255, 255, 5]]
    assert indices_to_values(idx, classes, nodata=0).tolist() == [[1, 5, 7], [0, 0, 5]]
