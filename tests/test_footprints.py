"""Footprints: xBD reader on the real Santa Rosa labels, vector formats, ids, class maps."""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import pytest
from shapely.geometry import Polygon, box

from staclearn.errors import (
    AssetNotFoundError,
    ConfigError,
    DuplicateIdError,
    EmptyDataError,
    FieldNotFoundError,
    FootprintsNotFoundError,
    FootprintWarning,
    LabelError,
    StaclearnError,
)
from staclearn.data.footprints import (
    XBD_BINARY,
    XBD_DESTROYED,
    XBD_FOUR,
    ClassMap,
    assign_classes,
    get_class_map,
    read_footprints,
    read_xbd_labels,
)
from staclearn.data.labels import ClassInfo

XBD = Path("data") / "damage" / "xbd_santarosa"
#: the first 6 of the 33 tiles (883 buildings); the counts below are theirs
TILES = ["00000012", "00000021", "00000066", "00000074", "00000089", "00000141"]


@pytest.fixture
def xbd_dir(shared_dir: Path) -> Path:
    d = shared_dir / XBD
    if not d.is_dir():
        pytest.skip(f"needs {d}")
    return d


def _post_labels(xbd_dir: Path) -> list[Path]:
    """The post label files of the 6 tiles of :data:`TILES`."""
    return [xbd_dir / "labels" / f"santa-rosa-wildfire_{t}_post_disaster.json" for t in TILES]


def _raw_uids(paths: list[Path], subtype: str) -> list[str]:
    """uids of a subtype read straight from the JSON files (independent of the reader)."""
    out = []
    for p in paths:
        for f in json.loads(p.read_text())["features"]["lng_lat"]:
            if f["properties"].get("subtype") == subtype:
                out.append(f["properties"]["uid"])
    return out


def test_read_xbd_labels_counts_real(xbd_dir):
    gdf = read_xbd_labels(_post_labels(xbd_dir))
    assert len(gdf) == 883 and gdf.crs.to_epsg() == 4326
    assert gdf["subtype"].value_counts().to_dict() == {
        "no-damage": 486, "destroyed": 388, "minor-damage": 3, "major-damage": 3, "un-classified": 3,
    }  # fmt: skip
    assert sorted(gdf["tile"].unique()) == [f"santa-rosa-wildfire_{t}" for t in TILES]
    assert set(gdf["phase"]) == {"post"} and set(gdf["feature_type"]) == {"building"}
    assert gdf["uid"].is_unique and gdf.geometry.geom_type.eq("Polygon").all()
    # tile 00000021 has 13 buildings; the first polygon of tile 00000012 is where the JSON says
    assert (gdf["tile"] == "santa-rosa-wildfire_00000021").sum() == 13
    first = json.loads(_post_labels(xbd_dir)[0].read_text())["features"]["lng_lat"][0]
    assert gdf.iloc[0]["uid"] == first["properties"]["uid"]
    assert gdf.geometry.iloc[0].exterior.coords[0] == pytest.approx((-122.7464577678534, 38.50146591617974))
    # pre files have no subtype; reading pre and post together repeats the uids
    pre = read_xbd_labels(xbd_dir / "labels" / "santa-rosa-wildfire_00000021_pre_disaster.json")
    assert len(pre) == 13 and pre["subtype"].isna().all() and set(pre["phase"]) == {"pre"}
    both = read_xbd_labels(sorted((xbd_dir / "labels").glob("santa-rosa-wildfire_00000021_*.json")))
    with pytest.raises(DuplicateIdError, match="not unique"):
        read_footprints(both)


def test_read_xbd_labels_all_33_tiles(xbd_dir):
    every = read_xbd_labels(sorted((xbd_dir / "labels").glob("*_post_disaster.json")))
    assert len(every) == 2365 and every["tile"].nunique() == 33 and every["uid"].is_unique
    assert every["subtype"].value_counts().to_dict() == {
        "no-damage": 1838, "destroyed": 509, "minor-damage": 7, "major-damage": 4, "un-classified": 7,
    }  # fmt: skip


def test_read_footprints_xbd_json_real(xbd_dir):
    gdf = read_footprints(xbd_dir / "labels" / "santa-rosa-wildfire_00000021_post_disaster.json")
    assert len(gdf) == 13 and (gdf["footprint_id"] == gdf["uid"]).all()


def test_assign_classes_presets_real(xbd_dir):
    paths = _post_labels(xbd_dir)
    gdf = read_footprints(read_xbd_labels(paths))
    unclassified = sorted(_raw_uids(paths, "un-classified"))
    binary, report = assign_classes(gdf, "subtype", XBD_BINARY)
    assert binary["class_value"].value_counts().to_dict() == {0: 486, 1: 394, -1: 3}
    assert sorted(report["un-classified"]) == unclassified and list(report) == ["un-classified"]
    assert binary.loc[binary["class_value"] == -1, "status"].eq("excluded").all()
    assert binary.loc[binary["class_value"] >= 0, "status"].eq("ok").all()
    assert binary.loc[binary["subtype"] == "minor-damage", "class_name"].eq("damaged").all()
    assert len(binary) == 883  # nothing dropped
    destroyed, _ = assign_classes(gdf, "subtype", "xbd_destroyed")
    assert destroyed["class_value"].value_counts().to_dict() == {0: 492, 1: 388, -1: 3}
    four, _ = assign_classes(gdf, "subtype", XBD_FOUR)
    assert four["class_value"].value_counts().to_dict() == {0: 486, 3: 388, 1: 3, 2: 3, -1: 3}
    assert [c.name for c in XBD_FOUR.classes] == ["no damage", "minor damage", "major damage", "destroyed"]
    assert [c.value for c in XBD_DESTROYED.classes] == [0, 1]


def test_missing_class_field_names_field_and_columns(xbd_dir):
    gdf = read_xbd_labels(_post_labels(xbd_dir)[:1])
    with pytest.raises(FieldNotFoundError) as err:
        assign_classes(gdf, "damage", "xbd_binary")
    msg = str(err.value)
    assert "'damage'" in msg and "subtype" in msg and "uid" in msg
    assert isinstance(err.value, KeyError) and isinstance(err.value, StaclearnError)


def _synthetic(n: int = 5, seed: int = 0) -> gpd.GeoDataFrame:
    rng = np.random.default_rng(seed)
    x0 = -122.74 + rng.uniform(0, 0.002, n)
    y0 = 38.48 + rng.uniform(0, 0.002, n)
    return gpd.GeoDataFrame(
        {
            "bid": [f"b{i}" for i in range(n)],
            "damage": ["no-damage", "destroyed", "destroyed", "no-damage", "minor-damage"][:n],
            "height": rng.uniform(3, 9, n),
        },
        geometry=[box(x, y, x + 1e-4, y + 1e-4) for x, y in zip(x0, y0, strict=True)],
        crs="EPSG:4326",
    )


def test_unknown_values_name_ids_and_empty_geometries_are_kept():
    gdf = _synthetic()
    gdf.loc[3, "damage"] = "flooded"
    gdf.loc[4, "damage"] = "flooded"
    with pytest.raises(LabelError) as err:
        assign_classes(gdf, "damage", "xbd_binary", exclude=())
    assert "'flooded'" in str(err.value) and "['3', '4']" in str(err.value)
    gdf = _synthetic()
    gdf.loc[2, "geometry"] = Polygon()
    gdf.loc[1, "geometry"] = None
    with pytest.warns(FootprintWarning, match=r"2 footprints have an empty geometry.*'b1', 'b2'"):
        out, report = assign_classes(read_footprints(gdf, id_field="bid"), "damage", "xbd_binary")
    assert len(out) == 5 and report == {"empty_geometry": ["b1", "b2"]}
    assert out["status"].tolist() == ["ok", "empty_geometry", "empty_geometry", "ok", "ok"]
    assert out["class_value"].tolist() == [0, -1, -1, 0, 1]
    # nulls are unknown unless excluded
    gdf = _synthetic()
    gdf.loc[0, "damage"] = None
    with pytest.raises(LabelError, match=r"None: 1 footprints, e.g. \['0'\]"):
        assign_classes(gdf, "damage", "xbd_binary")
    out, report = assign_classes(gdf, "damage", "xbd_binary", exclude=(None,))
    assert report == {"None": ["0"]} and out["class_value"].iloc[0] == -1


def test_read_footprints_vector_formats_and_ids(tmp_path):
    gdf = _synthetic().to_crs("EPSG:32610")
    gdf.to_file(tmp_path / "f.geojson", driver="GeoJSON")
    gdf.to_parquet(tmp_path / "f.parquet")
    gdf.to_file(tmp_path / "f.gpkg", layer="buildings", driver="GPKG")
    gdf.to_file(tmp_path / "f.gpkg", layer="other", driver="GPKG")
    gj = read_footprints(tmp_path / "f.geojson", id_field="bid")
    assert gj["footprint_id"].tolist() == ["b0", "b1", "b2", "b3", "b4"]
    pq = read_footprints(tmp_path / "f.parquet")
    assert pq.crs.to_epsg() == 32610 and pq["footprint_id"].tolist() == ["0", "1", "2", "3", "4"]
    gp = read_footprints(tmp_path / "f.gpkg", layer="buildings", id_field="bid")
    assert gp.crs.to_epsg() == 32610 and np.allclose(gp["height"], gdf["height"])
    assert gp.geometry.iloc[0].equals_exact(gdf.geometry.iloc[0], 1e-6)
    with pytest.raises(FootprintsNotFoundError, match="nope.gpkg") as err:
        read_footprints(tmp_path / "nope.gpkg")
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(FieldNotFoundError, match=r"'building_id'.*\['bid', 'damage', 'height'\]"):
        read_footprints(tmp_path / "f.parquet", id_field="building_id")
    dup = gdf.assign(bid=["a", "b", "a", "c", "c"])
    with pytest.raises(DuplicateIdError, match=r"2 footprint ids .*\['a', 'c'\]"):
        read_footprints(dup, id_field="bid")
    with pytest.raises(LabelError, match="no CRS"):
        read_footprints(gdf.set_crs(None, allow_override=True))


def _item(assets: dict[str, pystac.Asset]) -> pystac.Item:
    item = pystac.Item("fp", box(0, 0, 1, 1).__geo_interface__, [0, 0, 1, 1], datetime(2017, 10, 11, tzinfo=UTC), {})
    for k, a in assets.items():
        item.add_asset(k, a)
    return item


def test_read_footprints_from_stac_item(tmp_path):
    gdf = _synthetic()
    gdf.to_parquet(tmp_path / "f.parquet")
    gdf.to_file(tmp_path / "g.geojson", driver="GeoJSON")
    thumb = pystac.Asset(str(tmp_path / "t.png"), media_type=pystac.MediaType.PNG, roles=["thumbnail"])
    by_type = _item({"thumb": thumb, "footprints": pystac.Asset(str(tmp_path / "f.parquet"), media_type="application/vnd.apache.parquet")})
    assert read_footprints(by_type, id_field="bid")["footprint_id"].tolist() == [f"b{i}" for i in range(5)]
    by_role = _item({"thumb": thumb, "labels": pystac.Asset(str(tmp_path / "g.geojson"), roles=["labels"])})
    assert len(read_footprints(by_role)) == 5
    with pytest.raises(AssetNotFoundError, match=r"Item 'fp' has no footprint asset.*\['thumb'\]"):
        read_footprints(_item({"thumb": thumb}))


def test_class_map_validation():
    with pytest.raises(ConfigError, match="two names"):
        ClassMap("bad", {"a": ClassInfo(0, "x"), "b": ClassInfo(0, "y")})
    with pytest.raises(ConfigError, match="presets are"):
        get_class_map("xbd_nine")
    custom = get_class_map({1: ClassInfo(0, "low"), 2: ClassInfo(1, "high"), 3: ClassInfo(1, "high")})
    assert [c.name for c in custom.classes] == ["low", "high"] and custom.lookup("3") == ClassInfo(1, "high")
    assert XBD_BINARY.to_dict()["mapping"] == {"no-damage": 0, "minor-damage": 1, "major-damage": 1, "destroyed": 1}
    gdf = _synthetic().assign(level=[1, 2, 3, 1, 2])
    out, report = assign_classes(gdf, "level", custom, exclude=())
    assert out["class_value"].tolist() == [0, 1, 1, 0, 1] and report == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when nothing is empty
        assign_classes(gdf, "level", custom, exclude=())


# ----------------------------------------------------------------------------- empty files (issue 17)


def test_empty_xbd_label_file_is_named(xbd_dir, tmp_path):
    """A real xBD label file with its polygons removed: one named error, not a failure further on."""
    src = _post_labels(xbd_dir)[0]
    doc = json.loads(src.read_text())
    assert doc["features"]["lng_lat"]  # the real file has buildings
    doc["features"]["lng_lat"] = []
    empty = tmp_path / src.name
    empty.write_text(json.dumps(doc))
    for read in (read_xbd_labels, read_footprints):
        with pytest.raises(EmptyDataError, match=rf"xBD label file .*{empty.name} holds no building polygon.*leave that tile out"):
            read(empty)
    # one empty tile among good ones is named too
    with pytest.raises(EmptyDataError, match=empty.name) as err:
        read_xbd_labels([_post_labels(xbd_dir)[1], empty])
    assert isinstance(err.value, StaclearnError)


@pytest.mark.parametrize("suffix", [".geojson", ".parquet"])
def test_empty_footprint_file_is_named(xbd_dir, tmp_path, suffix):
    """Real footprints written as GeoJSON / GeoParquet, then emptied: EmptyDataError naming the file."""
    real = read_xbd_labels(_post_labels(xbd_dir)[:1])
    path = tmp_path / f"footprints{suffix}"
    empty = real.iloc[:0]
    empty.to_parquet(path) if suffix == ".parquet" else empty.to_file(path, driver="GeoJSON")
    with pytest.raises(EmptyDataError, match=rf"Footprint file .*footprints\{suffix} holds no feature: point to the file"):
        read_footprints(path)
    item = _item({"fp": pystac.Asset(str(path), media_type="application/geo+json" if suffix == ".geojson" else "application/x-parquet")})
    with pytest.raises(EmptyDataError, match=r"Footprint asset .* of Item 'fp' holds no feature"):
        read_footprints(item)
    assert len(read_footprints(real.iloc[:0])) == 0  # an empty GeoDataFrame given in code stays allowed

