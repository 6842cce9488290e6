"""Acceptance: the whole land-cover workflow on the real NC Landsat-7 scene (../shared/data).

Small model and few epochs so it runs in CI on 2 CPU cores; the figures asserted are those
of the real run (held-out blocks), not hard-coded results.
"""

from __future__ import annotations

import json
import subprocess
import sys

import geopandas as gpd
import numpy as np
import pystac
import pytest
import rasterio

from staclearn.workflows.landcover import LandCoverConfig, run_landcover
from staclearn.stac.validate import validate, validate_catalog

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def nc_run(tmp_path_factory, request):
    from conftest import NC_CATALOG, SHARED_DIR

    if not (SHARED_DIR / "data" / "landcover" / "nc_landsat7" / "landsat_multiband.tif").exists():
        pytest.skip("needs ../shared/data/landcover/nc_landsat7 (the NC Landsat-7 scene)")
    out = tmp_path_factory.mktemp("nc") / "nc"
    config = LandCoverConfig(bands=("b1", "b2", "b3", "b4", "b5"), epochs=4, members=2, batch_size=16, rf_estimators=50, seed=0)
    result = run_landcover(NC_CATALOG, out, config, progress=False, log=lambda _: None)
    return result, SHARED_DIR


def test_class_map_cog(nc_run):
    result, shared = nc_run
    src_path = shared / "data" / "landcover" / "nc_landsat7" / "landsat_multiband.tif"
    with rasterio.open(result.class_map) as cm, rasterio.open(src_path) as img:
        assert cm.crs.to_epsg() == 32119 and cm.shape == (443, 489) == img.shape
        assert cm.transform == img.transform and cm.dtypes[0] == "uint8" and cm.nodata == 255
        assert cm.profile["tiled"] and cm.block_shapes[0][0] % 16 == 0  # tiled (COG) layout
        values = cm.read(1)
        nodata_in = (img.read() == img.nodata).any(0)
    assert set(np.unique(values)) <= {1, 2, 3, 4, 5, 6, 7, 255}
    assert ((values == 255) == nodata_in).all()  # nodata exactly where the input is nodata
    assert len(set(np.unique(values[~nodata_in]))) >= 3  # a real map, not one class


def test_metrics_json_keeps_test_and_validation_apart(nc_run):
    result, _ = nc_run
    report = json.loads((result.out_dir / "evaluation.json").read_text())
    assert set(report) == {"test", "validation", "split"}
    unet, rf = report["test"]["models"]["model"], report["test"]["models"]["random_forest"]
    counts = report["split"]["counts"]
    # the test figures are scored on exactly the labelled pixels of the test part
    assert sum(unet["support"].values()) == unet["n_samples"] == rf["n_samples"] == sum(counts["test"].values()) > 300
    assert unet["support"] == counts["test"]
    assert report["validation"]["models"]["model"]["support"] == counts["valid"]
    index = gpd.read_parquet(result.out_dir / "chips" / "chips.parquet")
    assert set(index.split) == {"train", "valid"}  # no chip of the test part
    support = {k: v for k, v in unet["support"].items() if v > 0}
    assert len(support) >= 4
    for m in (unet, rf):
        cm = np.asarray(m["confusion"])
        assert m["overall_accuracy"] == pytest.approx(np.trace(cm) / m["n_samples"])
        assert set(m["f1"]) >= set(support) and set(m["precision"]) >= set(support)
        assert 0 <= m["miou"] <= 1 and -1 <= m["kappa"] <= 1
    # the per-pixel RandomForest is a real baseline on these spectra
    assert rf["overall_accuracy"] > 0.55
    assert (result.out_dir / "evaluation_confusion.png").stat().st_size > 10_000
    assert (result.out_dir / "evaluation_validation_confusion.png").stat().st_size > 10_000
    hist = json.loads((result.out_dir / "history.json").read_text())
    # two ensemble members (seeds 0 and 1), each trained 4 epochs; the last epoch is kept
    assert [m["seed"] for m in hist["members"]] == [0, 1] and hist["epoch_selection"].startswith("last epoch")
    for member in hist["members"]:
        assert len(member["epochs"]) == 4 and member["epochs"][-1]["train_loss"] < member["epochs"][0]["train_loss"]


def test_published_items_load_and_validate(nc_run):
    result, shared = nc_run
    cat = pystac.Catalog.from_file(str(result.catalog))
    items = {i.id: i for i in cat.get_items(recursive=True)}
    card = items["nc-model"]
    pred = items["nc-class-map"]
    assert card.properties["mlm:input"][0]["bands"] == ["b1", "b2", "b3", "b4", "b5"]
    assert len(card.properties["mlm:input"][0]["value_scaling"]) == 5
    assert [c["name"] for c in card.properties["mlm:output"][0]["classification:classes"]][:2] == ["developed", "agriculture"]
    assert card.assets["weights"].get_absolute_href().endswith("weights.safetensors")
    assert pred.assets["class_map"].href == "../../class_map.tif"  # relative href
    assert pred.collection_id == card.collection_id == "nc"
    # the card's time is that of its training data (MLM best practice), not the training run
    assert card.datetime is None and card.properties["start_datetime"].startswith("1996-")  # labels
    assert card.properties["end_datetime"].startswith("2000-")  # imagery
    chips = cat.get_child("nc-chips")
    n_chips = len(gpd.read_parquet(result.out_dir / "chips" / "chips.parquet"))
    assert chips.summaries.get_list("staclearn:chip_count") == [n_chips]
    assert chips.assets["index"].href == "../chips/chips.parquet"
    derived = [link.get_absolute_href() for link in pred.links if link.rel == "derived_from"]
    assert any(h.endswith("nc-landsat7-2000.json") for h in derived)
    assert any(h.endswith("nc-model.json") for h in derived)
    assert pred.properties["proj:code"] == "EPSG:32119" and pred.properties["proj:shape"] == [443, 489]
    n = validate_catalog(result.catalog, shared / "schemas")
    assert n == 6  # catalog, run collection, chips collection, card, prediction, polygons
    polygons = items["nc-class-map-polygons"]
    assert any(link.rel == "derived_from" and link.get_absolute_href().endswith("nc-class-map.json") for link in polygons.links)
    table = gpd.read_parquet(polygons.assets["polygons"].get_absolute_href())
    with rasterio.open(result.class_map) as cm:
        values = cm.read(1)
        pixel_area = abs(cm.transform.a * cm.transform.e)
    for value in np.unique(values[values != 255]):  # polygons tile the class map exactly
        assert table.loc[table.class_value == value, "area_m2"].sum() == pytest.approx((values == value).sum() * pixel_area, rel=1e-6)
    # validate the JSON as written (pystac migrates classification v1.1.0 -> v2.0.0 on read)
    report = validate(json.loads(open(card.get_self_href()).read()), shared / "schemas")
    assert "https://stac-extensions.github.io/mlm/v1.5.2/schema.json" in report.validated
    report = validate(json.loads(open(pred.get_self_href()).read()), shared / "schemas")
    assert "https://stac-extensions.github.io/classification/v1.1.0/schema.json" in report.validated


def test_cli_reports_bad_catalog_with_a_named_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "staclearn.cli", "landcover", "run", "--catalog", str(tmp_path / "nope.json"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "CatalogNotFoundError" in proc.stderr and "nope.json" in proc.stderr
    helped = subprocess.run([sys.executable, "-m", "staclearn.cli", "landcover", "run", "--help"], capture_output=True, text=True, timeout=120)
    assert "pixels" in helped.stdout and "degrees" in helped.stdout


def test_predict_from_the_model_card_alone(nc_run, tmp_path):
    """train -> publish -> keep only the card and its weights -> predict -> identical class map."""
    import shutil

    from conftest import NC_CATALOG

    result, _shared = nc_run
    card_src = result.out_dir / "nc" / "nc-model" / "nc-model.json"
    shutil.copy(card_src, tmp_path / "card.json")
    card = json.loads(card_src.read_text())
    weights = (card_src.parent / card["assets"]["weights"]["href"]).resolve()
    (tmp_path / "w").mkdir()
    shutil.copy(weights, tmp_path / "w" / "weights.safetensors")
    card["assets"]["weights"]["href"] = "w/weights.safetensors"
    (tmp_path / "card.json").write_text(json.dumps(card))
    out = tmp_path / "pred"
    proc = subprocess.run(
        [sys.executable, "-m", "staclearn.cli", "predict", "--model", str(tmp_path / "card.json"),
         "--catalog", str(NC_CATALOG), "--out", str(out), "--tile-size", "256", "--padding", "32"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    with rasterio.open(out / "class_map.tif") as a, rasterio.open(result.class_map) as b:
        assert np.array_equal(a.read(1), b.read(1))
    item = pystac.Item.from_file(str(out / "pred" / "pred-class-map" / "pred-class-map.json"))
    assert any(link.rel == "derived_from" and link.href.endswith("card.json") for link in item.links)
    assert validate_catalog(out / "catalog.json", _shared / "schemas") == 3  # catalog, collection, prediction


def test_pickle_weights_in_a_card_are_refused(nc_run, tmp_path):
    from staclearn.errors import UnsafeWeightsError
    from staclearn.stac.modelcard import load_model

    result, _ = nc_run
    card = json.loads((result.out_dir / "nc" / "nc-model" / "nc-model.json").read_text())
    import pickle

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    from staclearn.errors import WeightsChecksumError

    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Payload()))
    card["assets"]["weights"]["href"] = "evil.pt"
    (tmp_path / "card.json").write_text(json.dumps(card))
    # the card records the SHA-256 of its weights: a swapped file is refused before it is read
    with pytest.raises(WeightsChecksumError):
        load_model(tmp_path / "card.json")
    assert not (tmp_path / "pwned").exists()
    # a card without the checksum (edited along with the file): the pickle is still never loaded
    del card["assets"]["weights"]["file:checksum"]
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(UnsafeWeightsError):
        load_model(tmp_path / "card.json")
    assert not (tmp_path / "pwned").exists()


def test_threaded_warps_print_no_stray_georef_warning(nc_catalog):
    """The stray ``NotGeoreferencedWarning`` (rasterio ``warp.py:387``) of land-cover, change and
    predict runs: rasterio hides the warning of its own scratch MEM dataset inside
    ``warnings.catch_warnings()``, which is not thread-safe, so odc-stac's warps in dask threads
    let it escape. ``load_cube`` filters that one message; warping from four threads at once
    (as odc-stac does for bands off the cube's grid) then prints nothing."""
    import threading
    import warnings

    from affine import Affine
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.warp import Resampling, reproject

    from staclearn.data.cube import load_cube
    from staclearn.data.search import open_items
    from staclearn.data.labels import split_label_items

    shown: list[tuple[type, str]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = lambda message, category, *a, **k: shown.append((category, str(message)))
        imagery, _ = split_label_items(open_items(nc_catalog))
        load_cube(imagery, bands=["b1"])  # installs the filter, as every cube load does
        src = np.random.default_rng(0).random((64, 64), dtype=np.float32)

        def warp() -> None:
            for _ in range(150):
                dst = np.empty((128, 128), np.float32)
                reproject(
                    src, dst, src_transform=Affine(20, 0, 500000, 0, -20, 4000000), src_crs="EPSG:32631",
                    dst_transform=Affine(10, 0, 500000, 0, -10, 4000000), dst_crs="EPSG:32631", resampling=Resampling.bilinear,
                )  # fmt: skip

        threads = [threading.Thread(target=warp) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # the message as rasterio emits it, deterministically: filtered as well
        warnings.warn_explicit(
            "Dataset has no geotransform, gcps, or rpcs. The identity matrix will be returned.",
            NotGeoreferencedWarning, rasterio.warp.__file__, 387, module="rasterio.warp",
        )  # fmt: skip
    assert not [m for c, m in shown if issubclass(c, NotGeoreferencedWarning)], shown
