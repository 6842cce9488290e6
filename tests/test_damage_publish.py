"""Building damage from the committed xBD STAC catalog to published STAC Items (real data)."""

from __future__ import annotations

import json
import subprocess
import sys

import geopandas as gpd
import pystac
import pytest

from conftest import REPO, SHARED_DIR
from staclearn.workflows.damage import DamageConfig, run_damage
from staclearn.data.xbd import tiles_from_catalog
from staclearn.stac.validate import validate, validate_catalog

XBD_CATALOG = REPO / "catalogs" / "xbd-santarosa" / "catalog.json"
pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def xbd_catalog():
    if not (SHARED_DIR / "data" / "damage" / "xbd_santarosa" / "images").is_dir():
        pytest.skip("needs ../shared/data/damage/xbd_santarosa (the xBD Santa Rosa tiles)")
    return XBD_CATALOG


def test_tiles_resolve_from_stac(xbd_catalog):
    found, items = tiles_from_catalog(xbd_catalog)
    assert len(found) == 33 and all(t.pre_image is not None and t.post_image.exists() for t in found.values())
    assert {k for g in items.values() for k in g} == {"pre", "post", "labels"}
    one, _ = tiles_from_catalog(xbd_catalog, ["00000021"])
    assert list(one) == ["santa-rosa-wildfire_00000021"]


def test_run_from_stac_publishes_card_and_buildings(xbd_catalog, tmp_path):
    out = tmp_path / "dmg"
    config = DamageConfig(chip_size=32, epochs=1, batch_size=32, test_tiles=("00000021",), valid_tiles=("00000212",), seed=0, device="cpu")
    r = run_damage(xbd_catalog, out, config, tiles=["00000021", "00000066", "00000212"], log=lambda _: None)
    assert r.catalog == out / "catalog.json"
    n = validate_catalog(r.catalog, SHARED_DIR / "schemas")
    assert n == 4  # catalog, collection, card, buildings Item
    cat = pystac.Catalog.from_file(str(r.catalog))
    items = {i.id: i for i in cat.get_items(recursive=True)}
    card, bld = items["dmg-model"], items["dmg-buildings"]
    assert card.properties["mlm:tasks"] == ["classification"]
    assert card.properties["mlm:input"][0]["bands"] == list(r.spec.bands) and len(r.spec.bands) == 6  # post + pre RGB
    card_json = json.loads(open(card.get_self_href()).read())
    assert "https://stac-extensions.github.io/mlm/v1.5.2/schema.json" in validate(card_json, SHARED_DIR / "schemas").validated
    derived = {link.title for link in bld.links if link.rel == "derived_from"}
    assert derived == {f"source: santa-rosa-wildfire_{t}-{w}" for t in ("00000021", "00000212") for w in ("pre", "post")} | {"model card: dmg-model"}
    asset = bld.assets["footprints"]
    table = gpd.read_parquet(asset.get_absolute_href())
    # every building of test tile 21 and validation tile 212, none dropped
    assert len(table) == asset.extra_fields["staclearn:row_count"] == 13 + 8
    assert table.groupby("part")["tile"].unique().map(list).to_dict() == {
        "test": ["santa-rosa-wildfire_00000021"], "valid": ["santa-rosa-wildfire_00000212"]}  # fmt: skip
    # test and validation figures apart, on the card and the Item, with the split record
    report = json.loads(r.evaluation_json.read_text())
    for item in (card, bld):
        metrics = item.properties["staclearn:metrics"]
        assert metrics["test"]["resnet18"]["n_samples"] == 11 == metrics["test"]["hist_gradient_boosting"]["n_samples"]
        assert metrics["validation"]["resnet18"]["n_samples"] == 8 and set(metrics["validation"]) == {"resnet18"}
        assert metrics["test"]["resnet18"]["macro_f1"] == pytest.approx(r.test_metrics.macro_f1)
        assert metrics["validation"]["resnet18"]["f1"] == report["validation"]["models"]["resnet18"]["f1"]
        assert item.properties["staclearn:split"] == report["split"] == r.split
    assert r.split["counts"]["test"] == {"undamaged": 5, "damaged": 6} and r.split["counts"]["valid"] == {"undamaged": 2, "damaged": 6}
    assert r.split["tiles"] == {"train": ["santa-rosa-wildfire_00000066"], "valid": ["santa-rosa-wildfire_00000212"],
                                "test": ["santa-rosa-wildfire_00000021"]}  # fmt: skip
    assert set(table.columns) >= {"footprint_id", "class_value", "class_name", "confidence", "geometry"}
    assert table["confidence"].between(0.5, 1.0).all()  # softmax of the chosen class, 2 classes
    # the card's training data are tile 66's Items
    train_links = {link.title for link in card.links if link.rel == "derived_from"}
    assert "training data: santa-rosa-wildfire_00000066-post" in train_links
    assert not any("00000021" in (t or "") or "00000212" in (t or "") for t in train_links)  # test / validation tiles


def test_cli_damage_run(xbd_catalog, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "staclearn.cli", "damage", "run", "--catalog", str(xbd_catalog), "--out", str(tmp_path / "d"),
         "--tile", "00000021", "--tile", "00000066", "--tile", "00000212", "--test-tile", "00000021", "--split-seed", "5",
         "--chip-size", "32", "--epochs", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "d" / "buildings.parquet").exists() and "catalog" in proc.stdout
    split = json.loads((tmp_path / "d" / "split.json").read_text())
    assert split["tiles"]["test"] == ["santa-rosa-wildfire_00000021"] and split["split_seed"] == 5
    report = json.loads((tmp_path / "d" / "evaluation.json").read_text())
    assert set(report) == {"test", "validation", "split"} and "test F1" in proc.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "staclearn.cli", "damage", "run", "--catalog", str(xbd_catalog), "--out", str(tmp_path / "e"),
         "--tile", "00000021", "--tile", "00000066", "--tile", "00000212", "--test-tile", "00000999"],
        capture_output=True, text=True, timeout=600,
    )
    assert bad.returncode != 0 and "Test tile '00000999' matches no tile" in bad.stderr
