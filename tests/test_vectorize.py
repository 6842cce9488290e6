"""Polygons from real outputs: the NC Landsat class map of fixtures_nc_run.py (projected CRS,
with probabilities) and an OSCD change mask (EPSG:4326, areas in a local UTM zone)."""

from __future__ import annotations

import json
from datetime import datetime
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import pytest
import rasterio
from rasterio.features import rasterize
from shapely.geometry import box

from fixtures_nc_run import nc_run  # noqa: F401  (fixture)
from staclearn.errors import ConfigError
from staclearn.data.labels import ClassInfo
from staclearn.stac.catalog import write_catalog
from staclearn.inference.vectorize import vectorize
from staclearn.stac.items import vectorize_item

PIXEL_M2 = 28.5 * 28.5  # the NC grid, EPSG:32119 (metres)


def _class_areas(data: np.ndarray, pixel_m2: float, nodata: int = 255) -> dict[int, float]:
    values, counts = np.unique(data[data != nodata], return_counts=True)
    return {int(v): float(c) * pixel_m2 for v, c in zip(values, counts)}


def _burn(table: gpd.GeoDataFrame, like: str) -> np.ndarray:
    with rasterio.open(like) as src:
        return rasterize(
            zip(table.geometry, table.class_value), out_shape=(src.height, src.width), transform=src.transform, fill=255, dtype="uint8"
        )


def test_polygons_match_the_class_map_exactly(nc_run):
    item = pystac.Item.from_file(str(nc_run.item))
    table = vectorize(item)
    assert list(table.columns) == ["class_value", "class_name", "area_m2", "pixel_count", "mean_probability", "geometry"]
    assert table.crs.to_epsg() == 32119 and table.geometry.is_valid.all()
    assert set(table.class_name) <= {"developed", "agriculture", "forest"}
    # areas sum to the raster's class areas
    got = table.groupby("class_value").area_m2.sum().to_dict()
    want = _class_areas(nc_run.class_map, PIXEL_M2)
    assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k], rel=1e-9) for k in want)
    assert np.allclose(table.area_m2, table.pixel_count * PIXEL_M2, rtol=1e-9)
    # every polygon's class is the raster's class under it, pixel for pixel
    assert np.array_equal(_burn(table, str(nc_run.out / "class_map.tif")), nc_run.class_map)
    # mean probability: that of the polygon's class over its pixels
    with rasterio.open(nc_run.out / "probabilities.tif") as src:
        probs = src.read()
    big = table.loc[table.pixel_count.idxmax()]
    inside = rasterize([(big.geometry, 1)], out_shape=probs.shape[1:], transform=src.transform, fill=0).astype(bool)
    band = [1, 2, 5].index(int(big.class_value))
    assert big.mean_probability == pytest.approx(float(probs[band][inside].mean()), rel=1e-5)
    assert table.mean_probability.between(1 / 3, 1).all()  # argmax of 3 classes


def test_minimum_mapping_unit_and_simplification(nc_run):
    item = pystac.Item.from_file(str(nc_run.item))
    exact = vectorize(item)
    mmu = 10 * PIXEL_M2
    sieved = vectorize(item, min_area_m2=mmu)
    assert len(sieved) < len(exact) / 2 and (sieved.pixel_count >= 10).all()  # nothing below the mapping unit
    # the sieve relabels small regions: the polygons still tile the predicted area exactly
    want = _class_areas(nc_run.class_map, PIXEL_M2)
    assert sieved.area_m2.sum() == pytest.approx(sum(want.values()), rel=1e-9)
    assert np.allclose(sieved.area_m2, sieved.pixel_count * PIXEL_M2, rtol=1e-9)
    burnt = _burn(sieved, str(nc_run.out / "class_map.tif"))
    valid = nc_run.class_map != 255
    from rasterio.features import sieve

    assert np.array_equal(burnt, sieve(nc_run.class_map, size=10, connectivity=4, mask=valid))  # GDAL's sieve, pixel for pixel
    assert (burnt[valid] == nc_run.class_map[valid]).mean() > 0.7  # an untrained, salt-and-pepper map

    tol = 30.0  # about one pixel
    simple = vectorize(item, min_area_m2=mmu, simplify_m=tol)
    assert len(simple) == len(sieved) and simple.geometry.is_valid.all()
    # simplification error: Visvalingam-Whyatt cuts triangles of about tol**2 along the
    # outlines, so each class's area moves by less than a band of tol / 2 along its
    # perimeter (measured on this map: 0.03 to 0.05 of tol x perimeter)
    before = sieved.groupby("class_value").area_m2.sum()
    after = simple.groupby("class_value").area_m2.sum()
    perimeter = sieved.geometry.length.groupby(sieved.class_value).sum()
    assert ((after - before).abs() <= 0.5 * tol * perimeter).all()
    assert after.sum() == pytest.approx(before.sum(), rel=5e-3)
    # a coverage: no gap, no overlap between neighbours after simplification
    assert simple.geometry.union_all().area == pytest.approx(simple.area_m2.sum(), rel=1e-6)


def test_a_change_mask_in_degrees(shared_dir):
    """An OSCD reference change mask (values 1/2 in EPSG:4326) as a 0/1 change mask."""
    src_path = shared_dir / "data" / "change" / "oscd" / "bercy" / "cm" / "bercy-cm_georef.tif"
    if not src_path.exists():
        pytest.skip(f"needs {src_path}")
    import tempfile

    with rasterio.open(src_path) as src:
        mask = (src.read(1) == 2).astype("uint8")
        profile = {**src.profile, "dtype": "uint8", "nodata": 255, "count": 1}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "change.tif"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(mask, 1)
        classes = [ClassInfo(0, "no change"), ClassInfo(1, "change")]
        table = vectorize(path, classes=classes)
    assert table.crs.is_geographic and set(table.class_value) == {0, 1}
    assert table[table.class_value == 1].pixel_count.sum() == int(mask.sum())
    # areas in a local UTM zone: together they are the raster's footprint there
    with rasterio.open(src_path) as src:
        footprint = gpd.GeoSeries([box(*src.bounds)], crs=src.crs)
    assert table.area_m2.sum() == pytest.approx(float(footprint.to_crs(table.estimate_utm_crs()).area.iloc[0]), rel=1e-6)

    # as a change-mask Item with a change probability (one band): class 1 gets p, class 0 gets 1 - p
    with tempfile.TemporaryDirectory() as tmp:
        path, prob = Path(tmp) / "change.tif", Path(tmp) / "p.tif"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(mask, 1)
        with rasterio.open(prob, "w", **{**profile, "dtype": "float32", "nodata": None}) as dst:
            dst.write(np.where(mask == 1, 0.9, 0.2).astype("float32"), 1)
        item = pystac.Item("pair-change", None, None, datetime(2018, 1, 1), {})
        item.add_asset("change_mask", pystac.Asset(str(path), extra_fields={"classification:classes": [c.to_dict() for c in classes]}))
        item.add_asset("change_probability", pystac.Asset(str(prob)))
        table = vectorize(item)
    assert set(table.class_name) == {"no change", "change"}
    assert np.allclose(table.mean_probability, np.where(table.class_value == 1, 0.9, 0.8))


def test_vector_item_is_published_beside_the_raster(nc_run, tmp_path):
    item = pystac.Item.from_file(str(nc_run.item))
    item.make_asset_hrefs_absolute()
    raster = item.clone()
    raster.set_self_href(None)  # as a workflow has it: not saved yet
    raster.links = [link for link in raster.links if link.rel != "derived_from"]
    vec = vectorize_item(raster, nc_run.out / "class_map.tif", tmp_path / "work", min_area_m2=2 * PIXEL_M2)
    assert vec.id == "nc-class-map-polygons" and vec.properties["staclearn:min_area_m2"] == 2 * PIXEL_M2
    write_catalog([raster, vec], tmp_path / "cat", id="cat")
    d = json.loads((tmp_path / "cat/cat/nc-class-map-polygons/nc-class-map-polygons.json").read_text())
    assert [link["href"] for link in d["links"] if link["rel"] == "derived_from"] == ["../nc-class-map/nc-class-map.json"]
    asset = d["assets"]["polygons"]
    assert asset["type"] == "application/vnd.apache.parquet" and asset["href"] == "./polygons.parquet"
    table = gpd.read_parquet(tmp_path / "cat/cat/nc-class-map-polygons/polygons.parquet")
    assert asset["staclearn:row_count"] == len(table) and "mean_probability" in table
    assert {c["name"] for c in asset["classification:classes"]} == {"developed", "agriculture", "forest"}


def test_cli_vectorize(nc_run, tmp_path):
    out = tmp_path / "vec"
    proc = subprocess.run(
        [sys.executable, "-m", "staclearn.cli", "vectorize", "--item", str(nc_run.item), "--out", str(out),
         "--min-area-m2", "2000", "--simplify-m", "15"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    cat = pystac.Catalog.from_file(str(out / "catalog.json"))
    (vec,) = list(cat.get_items(recursive=True))
    table = gpd.read_parquet(vec.assets["polygons"].get_absolute_href())
    assert len(table) > 0 and (table.pixel_count * PIXEL_M2 >= 2000).all()
    derived = [link.get_absolute_href() for link in vec.links if link.rel == "derived_from"]
    assert [Path(h).resolve() for h in derived] == [nc_run.item.resolve()]


def test_bad_arguments_are_named_errors(nc_run):
    with pytest.raises(ConfigError, match="connectivity"):
        vectorize(nc_run.out / "class_map.tif", connectivity=6)
    with pytest.raises(ConfigError, match="bands for 2 classes"):
        vectorize(nc_run.out / "class_map.tif", classes=[ClassInfo(1, "a"), ClassInfo(2, "b")], probabilities=nc_run.out / "probabilities.tif")
