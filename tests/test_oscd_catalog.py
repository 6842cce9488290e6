"""The committed OSCD catalog ``catalogs/oscd`` and ``scripts/build_oscd_catalog.py``."""

from __future__ import annotations

import importlib.util
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import numpy as np
import odc.stac
import pystac
import pytest
import rasterio
from conftest import REPO, SHARED_DIR

from staclearn.data.cube import load_cube
from staclearn.data.labels import classes_from_item
from staclearn.data.search import open_items
from staclearn.stac.validate import validate_catalog

CATALOG = REPO / "catalogs" / "oscd" / "catalog.json"
OSCD = SHARED_DIR / "data" / "change" / "oscd"
CITIES = ["aguasclaras", "beihai", "beirut", "bercy", "bordeaux", "cupertino", "nantes", "paris", "pisa", "rennes", "saclay_e"]
BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]
DATES = {  # dates.txt of each city
    "aguasclaras": ("20150916", "20171015"),
    "beihai": ("20161209", "20180309"),
    "beirut": ("20150820", "20171003"),
    "bercy": ("20161130", "20170829"),
    "bordeaux": ("20160504", "20171026"),
    "cupertino": ("20150918", "20180326"),
    "nantes": ("20150821", "20171014"),
    "paris": ("20161130", "20171107"),
    "pisa": ("20150704", "20180211"),
    "rennes": ("20150821", "20170621"),
    "saclay_e": ("20160315", "20170829"),
}


@pytest.fixture(scope="module")
def items() -> dict[str, pystac.Item]:
    return {i.id: i for i in pystac.Catalog.from_file(str(CATALOG)).get_items(recursive=True)}


@pytest.fixture(scope="module")
def oscd() -> Path:
    if not (OSCD / "bercy" / "dates.txt").is_file():
        pytest.skip("needs ../shared/data/change/oscd")
    return OSCD


def _builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_oscd_catalog", REPO / "scripts" / "build_oscd_catalog.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_item_per_city_and_date_and_one_label_item_per_city(items):
    expected = sorted([f"{c}-{d}" for c, ds in DATES.items() for d in ds] + [f"{c}-labels" for c in CITIES])
    assert sorted(items) == expected and len(items) == 33
    for city, (d1, d2) in DATES.items():
        before, after, labels = items[f"{city}-{d1}"], items[f"{city}-{d2}"], items[f"{city}-labels"]
        assert before.datetime == datetime.strptime(d1, "%Y%m%d").replace(tzinfo=UTC)
        assert {before.properties["staclearn:city"], after.properties["staclearn:city"], labels.properties["staclearn:city"]} == {city}
        assert sorted(before.assets) == sorted(after.assets) == sorted(BANDS)
        assert labels.common_metadata.start_datetime == before.common_metadata.start_datetime
        assert labels.common_metadata.end_datetime == after.common_metadata.end_datetime
        sources = sorted(Path(link.href).name for link in labels.get_links("source"))
        assert sources == sorted([f"{city}-{d1}.json", f"{city}-{d2}.json"])
    b02 = items["bercy-20161130"].assets["B02"].extra_fields
    assert b02["eo:bands"][0]["name"] == "B02" and b02["eo:bands"][0]["common_name"] == "blue"
    assert items["bercy-20161130"].assets["B8A"].extra_fields["eo:bands"][0]["common_name"] == "nir08"
    assert b02["proj:code"] == "EPSG:4326" and b02["proj:shape"] == [395, 360]
    assert items["bercy-20161130"].assets["B05"].extra_fields["proj:shape"] == [198, 180]
    assert items["bercy-20161130"].assets["B01"].extra_fields["proj:shape"] == [66, 60]
    classes = classes_from_item(items["bercy-labels"], "labels")
    assert [(c.value, c.name) for c in classes] == [(1, "no change"), (2, "change")]
    assert items["bercy-labels"].properties["label:type"] == "raster"
    for path in CATALOG.parent.rglob("*.json"):  # self-contained, relative hrefs into ../shared/data
        data = json.loads(path.read_text())
        assert not any(link["rel"] == "self" for link in data.get("links", []))
        for asset in data.get("assets", {}).values():
            assert not os.path.isabs(asset["href"]) and "/shared/data/change/oscd/" in asset["href"]


@pytest.mark.realdata
def test_proj_fields_are_those_of_the_files_and_the_catalog_validates(items, oscd):
    for item in items.values():
        for key, asset in item.assets.items():
            with rasterio.open(asset.get_absolute_href()) as src:
                assert asset.extra_fields["proj:shape"] == [src.height, src.width], (item.id, key)
                assert asset.extra_fields["proj:transform"] == list(src.transform)[:6], (item.id, key)
    assert validate_catalog(CATALOG, SHARED_DIR / "schemas") == 35  # catalog + collection + 33 Items


@pytest.mark.realdata
def test_committed_catalog_is_what_the_script_builds(items, oscd, tmp_path):
    rebuilt = _builder().build_catalog(oscd, tmp_path, relative_hrefs=False)
    again = {i.id: i for i in rebuilt.get_items(recursive=True)}
    assert sorted(again) == sorted(items)
    for item_id, item in items.items():
        built, committed = again[item_id].to_dict(transform_hrefs=False), item.to_dict(transform_hrefs=False)
        assert built["properties"] == committed["properties"] and built["bbox"] == committed["bbox"]
        for key, asset in committed["assets"].items():
            assert {k: v for k, v in built["assets"][key].items() if k != "href"} == {k: v for k, v in asset.items() if k != "href"}
            assert Path(built["assets"][key]["href"]) == Path(item.assets[key].get_absolute_href()).resolve()


@pytest.mark.realdata
def test_10_and_20_m_bands_load_onto_the_10_m_grid_of_b02(oscd):
    before = open_items(CATALOG, ids=["nantes-20150821"])
    b02_grid = odc.stac.parse_item(before[0]).geoboxes(["B02"])[0]
    cube = load_cube(before, bands=["B02", "B08", "B05", "B11"], geobox=b02_grid, resampling="nearest")
    assert cube.odc.geobox == b02_grid and cube.shape == (1, 4, 522, 582)
    with rasterio.open(before[0].assets["B02"].get_absolute_href()) as src:
        assert np.array_equal(cube.sel(band="B02").values[0], src.read(1))
    with rasterio.open(before[0].assets["B05"].get_absolute_href()) as src:
        b05 = src.read(1)  # 20 m: each source pixel covers 2 x 2 pixels of the 10 m grid
    resampled = cube.sel(band="B05").values[0]
    assert (resampled[: 2 * 260 : 2, : 2 * 290 : 2] == b05[:260, :290]).mean() > 0.95


def test_saclay_e_dates_keep_their_own_grids(items):
    """saclay_e's second date is on a slightly different grid (same bounds), as in the source."""
    first = items["saclay_e-20160315"].assets["B02"].extra_fields
    second = items["saclay_e-20170829"].assets["B02"].extra_fields
    assert first["proj:shape"] == [639, 688] and second["proj:shape"] == [631, 679]
    assert first["proj:bbox"] == pytest.approx(second["proj:bbox"], abs=1e-9)
    assert items["saclay_e-labels"].assets["labels"].extra_fields["proj:shape"] == [639, 688]


@pytest.mark.realdata
def test_saclay_e_pair_aligns_on_the_grid_of_its_first_date(items, oscd):
    from staclearn.data.pairs import load_pair

    before, after, labels = load_pair(
        [items["saclay_e-20160315"]], [items["saclay_e-20170829"]], bands=["B02"], label_item=items["saclay_e-labels"]
    )
    assert before.shape == after.shape == (1, 1, 639, 688) and labels.shape == (639, 688)
    assert not np.isnan(after.values).any()  # the second date covers the whole first grid
    assert int((labels.values == 1).sum()) == 4346


@pytest.mark.realdata
def test_the_builder_finds_all_eleven_cities_in_the_folder(oscd, tmp_path):
    assert _builder().find_cities(oscd) == CITIES
    # a new city folder is found without editing the script; a half-copied one is skipped
    for name in ("zzz_new", "half"):
        (tmp_path / name / "cm").mkdir(parents=True)
        (tmp_path / name / "dates.txt").write_text("date_1: 20200101\ndate_2: 20210101\n")
    for sub in ("imgs_1", "imgs_2"):
        (tmp_path / "zzz_new" / sub).mkdir()
    (tmp_path / "zzz_new" / "cm" / "zzz_new-cm_georef.tif").write_bytes(b"")
    (tmp_path / "readme").mkdir()
    assert _builder().find_cities(tmp_path) == ["zzz_new"]
