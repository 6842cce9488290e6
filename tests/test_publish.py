"""Model cards and published Items that stand on their own.

A tiny U-Net is built on a seeded synthetic scene, published (card + weights + class map),
and then re-used from the published card alone: from a local catalog, from an fsspec
``memory://`` catalog, through a STAC API with Transactions (tests/stac_api_server.py) and
through ``rustac serve``. Nothing is mocked: the servers are real HTTP servers on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import fsspec
import numpy as np
import pystac
import pytest
import rasterio
import requests
from affine import Affine
from pystac_client import Client

from conftest import SHARED_DIR, make_item
from staclearn.data.cube import load_cube
from staclearn.errors import BandMismatchError, ModelCardError, PublishError
from staclearn.data.labels import ClassInfo
from staclearn.stac.modelcard import load_model, model_card
from staclearn.models.segmentation import build_model, save_weights
from staclearn.inference.raster import predict_class_map, write_cog
from staclearn._io import FsspecStacIO
from staclearn.stac.api import api_items, publish_to_api
from staclearn.stac.items import class_map_item
from staclearn.stac.catalog import write_catalog
from staclearn.stac.validate import validate, validate_catalog

BANDS = ["red", "green", "blue", "nir"]
CLASSES = [ClassInfo(1, "water", "0000ff"), ClassInfo(2, "forest", "00aa00"), ClassInfo(5, "built", "ff0000")]
SECRET = "sig=SECRET%2Btoken"
SCHEMAS = SHARED_DIR / "schemas"


def _schemas() -> Path | None:
    return SCHEMAS if SCHEMAS.is_dir() else None


@pytest.fixture
def scene(tmp_path):
    """A 4-band 96 x 128 scene in UTM with a nodata strip on its left 32 columns."""
    rng = np.random.default_rng(7)
    data = rng.uniform(0, 3000, size=(4, 96, 128)).astype(np.float32)
    data[:, :, :32] = -9999
    item = make_item(
        tmp_path, "scene-2021", data, crs="EPSG:32633", transform=Affine(10, 0, 500_000, 0, -10, 4_100_000),
        nodata=-9999, band_names=BANDS,
    )
    return item


@pytest.fixture
def run(tmp_path, scene):
    """Publish a (randomly initialised) model and its class map into ``tmp_path/run``."""
    out = tmp_path / "run"
    torch_seed = 0
    import torch

    torch.manual_seed(torch_seed)
    model = build_model(BANDS, CLASSES, mean=[1500.0] * 4, std=[860.0] * 4, encoder="resnet18", encoder_depth=3).eval()
    weights = save_weights(model, out / "model" / "weights.safetensors")
    card = model_card(model, str(weights), id="toy-model", tile_size=64, training_items=[scene], hyperparameters={"epochs": 0})
    cube = load_cube([scene], bands=BANDS)
    cmap = predict_class_map(model, cube, tile_size=64, padding=8, batch_size=4, device="cpu", out_path=out / "class_map.tif")
    pred = class_map_item(str(out / "class_map.tif"), cmap, id="toy-class-map", classes=CLASSES, source_items=[scene], model_card=card)
    write_catalog([card, pred], out, id="toy", description="toy run")
    return out, cube, cmap.values


def _card_path(out: Path) -> Path:
    return out / "toy" / "toy-model" / "toy-model.json"


def _pred_path(out: Path) -> Path:
    return out / "toy" / "toy-class-map" / "toy-class-map.json"


def test_card_alone_rebuilds_the_model_and_predicts_the_same_map(run, tmp_path):
    """train -> publish -> delete everything but the card and its weights -> predict -> identical."""
    out, cube, expected = run
    keep = tmp_path / "kept"
    keep.mkdir()
    shutil.copy(_card_path(out), keep / "toy-model.json")
    card = json.loads(_card_path(out).read_text())
    shutil.copy((_card_path(out).parent / card["assets"]["weights"]["href"]).resolve(), keep / "w.safetensors")
    card["assets"]["weights"]["href"] = "w.safetensors"
    (keep / "toy-model.json").write_text(json.dumps(card))
    shutil.rmtree(out)

    model = load_model(keep / "toy-model.json")
    assert list(model.spec.bands) == BANDS
    assert [c.value for c in model.spec.classes] == [1, 2, 5] and model.spec.classes[2].color_hint == "FF0000"
    assert model.spec.mean == (1500.0,) * 4 and model.spec.std == (860.0,) * 4
    assert model.spec.encoder == "resnet18" and model.spec.encoder_depth == 3
    again = predict_class_map(model, cube, tile_size=64, padding=8, batch_size=4, device="cpu")
    assert np.array_equal(again.values, expected)


def test_band_mismatch_names_missing_and_extra_bands(run, scene):
    out, _, _ = run
    model = load_model(_card_path(out))
    wrong = load_cube([scene], bands=BANDS).assign_coords(band=["red", "green", "blue", "swir16"])
    with pytest.raises(BandMismatchError, match=r"missing \['nir'\], extra \['swir16'\]"):
        predict_class_map(model, wrong, tile_size=64, padding=8)


def test_unreadable_card_is_a_named_error(tmp_path):
    with pytest.raises(ModelCardError, match="nope.json"):
        load_model(tmp_path / "nope.json")
    (tmp_path / "card.json").write_text(json.dumps({**_minimal_item("c"), "properties": {"datetime": "2020-01-01T00:00:00Z"}}))
    with pytest.raises(ModelCardError, match="mlm:input"):
        load_model(tmp_path / "card.json")


def _minimal_item(id: str) -> dict:
    return {
        "type": "Feature", "stac_version": "1.1.0", "id": id, "geometry": None,
        "properties": {"datetime": "2020-01-01T00:00:00Z"}, "links": [], "assets": {},
    }


def test_provenance_of_the_prediction_item(run, scene):
    out, _, expected = run
    d = json.loads(_pred_path(out).read_text())
    props = d["properties"]
    from importlib.metadata import version

    try:
        assert props["processing:software"] == {"staclearn": version("staclearn")}
    except Exception:  # running from a source tree without an installed distribution
        assert set(props["processing:software"]) == {"staclearn"}
    assert "derived_from" in props["processing:lineage"]
    assert props["start_datetime"] == props["end_datetime"] == "2021-06-01T00:00:00Z"  # the source's time
    derived = {Path(link["href"]).name for link in d["links"] if link["rel"] == "derived_from"}
    assert derived == {"scene-2021.json", "toy-model.json"}
    # the geometry is the predicted area (columns 32..127 are valid), not the whole scene
    predicted = (expected != 255).any(0)
    assert not predicted[:32].any() and predicted[32:].all()
    from pyproj import Transformer

    to_wgs = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    west_valid, _ = to_wgs.transform(500_000 + 32 * 10, 4_100_000 - 480)
    west_scene, _ = to_wgs.transform(500_000, 4_100_000 - 480)
    assert d["bbox"][0] == pytest.approx(west_valid, abs=2e-5) and d["bbox"][0] > west_scene + 1e-3
    assert d["properties"]["proj:shape"] == [96, 128]  # the raster itself covers the source grid


def test_every_written_item_validates_offline(run):
    out, _, _ = run
    if _schemas() is None:
        pytest.skip(f"needs the extension schemas in {SCHEMAS}")
    assert validate_catalog(out / "catalog.json", SCHEMAS) == 4  # catalog, collection, card, prediction
    card = validate(json.loads(_card_path(out).read_text()), SCHEMAS)
    assert "https://stac-extensions.github.io/mlm/v1.5.2/schema.json" in card.validated
    # the weights' file:checksum (issue 17) declares the file extension; every other schema
    # is checked, and the file schema too once ../shared/schemas holds it
    file_schema = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
    assert card.skipped == (() if file_schema in card.validated else (file_schema,))
    pred = validate(json.loads(_pred_path(out).read_text()), SCHEMAS)
    assert "https://stac-extensions.github.io/classification/v1.1.0/schema.json" in pred.validated
    assert "https://stac-extensions.github.io/processing/v1.2.0/schema.json" in pred.validated


def test_signed_hrefs_never_leak(tmp_path, scene):
    """Planetary-Computer-style SAS tokens on source hrefs are stripped from everything written."""
    signed = scene.clone()
    signed.set_self_href(f"https://planetarycomputer.microsoft.com/api/stac/v1/collections/naip/items/scene-2021?st=2026&{SECRET}")
    signed.assets["image"].href = f"https://naipeuwest.blob.core.windows.net/naip/scene.tif?st=2026&se=2027&{SECRET}"
    model = build_model(BANDS, CLASSES, mean=[0.0] * 4, std=[1.0] * 4, encoder_depth=3)
    weights = save_weights(model, tmp_path / "w.safetensors")
    card = model_card(model, str(weights), id="m", training_items=[signed])
    cube = load_cube([scene], bands=BANDS)
    cmap = predict_class_map(model.eval(), cube, tile_size=64, padding=8, out_path=tmp_path / "cm.tif")
    pred = class_map_item(str(tmp_path / "cm.tif"), cmap, id="p", classes=CLASSES, source_items=[signed], model_card=card)
    pred.add_asset("source_preview", pystac.Asset(f"https://example.com/preview.png?{SECRET}"))
    write_catalog([card, pred], tmp_path / "out", id="out")
    texts = [p.read_text() for p in (tmp_path / "out").rglob("*.json")]
    assert len(texts) == 4 and not any("SECRET" in t or "sig=" in t for t in texts)
    links = [link["href"] for t in texts for link in json.loads(t)["links"] if link["rel"] == "derived_from"]
    assert "https://planetarycomputer.microsoft.com/api/stac/v1/collections/naip/items/scene-2021" in links
    for d in api_items([card, pred], "c"):
        assert "SECRET" not in json.dumps(d)


def test_publish_to_an_fsspec_url(run):
    """memory:// target: JSON and asset files land there, validate, and the card works from there."""
    out, cube, expected = run
    card = pystac.Item.from_file(str(_card_path(out)))
    pred = pystac.Item.from_file(str(_pred_path(out)))
    target = "memory://published/toy"
    write_catalog([card, pred], target, id="toy", asset_root=out)
    fs = fsspec.filesystem("memory")
    assert fs.exists("/published/toy/catalog.json") and fs.exists("/published/toy/class_map.tif")
    assert fs.size("/published/toy/model/weights.safetensors") == (out / "model" / "weights.safetensors").stat().st_size
    if _schemas() is not None:
        assert validate_catalog(f"{target}/catalog.json", SCHEMAS) == 4
    model = load_model(f"{target}/toy/toy-model/toy-model.json")  # weights read back from memory://
    assert np.array_equal(predict_class_map(model, cube, tile_size=64, padding=8).values, expected)
    cat = pystac.Catalog.from_file(f"{target}/catalog.json", stac_io=FsspecStacIO())
    assert {i.id for i in cat.get_items(recursive=True)} == {"toy-model", "toy-class-map"}
    fs.rm("/published", recursive=True)


def test_publish_to_a_file_url_copies_assets_outside_the_catalog(run, tmp_path):
    out, _, _ = run
    card = pystac.Item.from_file(str(_card_path(out)))
    dest = tmp_path / "elsewhere"
    write_catalog([card], dest.as_uri(), id="cards")  # file:// URL; weights are outside -> copied
    copied = dest / "cards" / "toy-model" / "weights.safetensors"
    assert copied.read_bytes() == (out / "model" / "weights.safetensors").read_bytes()
    written = json.loads((dest / "cards" / "toy-model" / "toy-model.json").read_text())
    assert written["assets"]["weights"]["href"] == "./weights.safetensors"


def test_http_target_is_refused(run):
    out, _, _ = run
    with pytest.raises(PublishError, match="publish_to_api"):
        write_catalog([pystac.Item.from_file(str(_card_path(out)))], "https://example.com/stac", id="x")


def test_interrupted_writes_leave_no_complete_looking_output(tmp_path, monkeypatch, scene):
    """A COG and an Item JSON are written to a temporary name and renamed: fail the rename
    and no file with the final name exists."""
    cube = load_cube([scene], bands=BANDS).isel(time=0, band=0)

    def boom(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        write_cog(cube, tmp_path / "map.tif")
    assert not (tmp_path / "map.tif").exists()
    with pytest.raises(KeyboardInterrupt):
        FsspecStacIO().write_text_to_href(str(tmp_path / "item.json"), "{}")
    assert not (tmp_path / "item.json").exists()


# --- STAC APIs -------------------------------------------------------------------------------


def test_publish_into_a_stac_api_with_transactions(run, transactions_api):
    out, cube, expected = run
    items = [pystac.Item.from_file(str(_card_path(out))), pystac.Item.from_file(str(_pred_path(out)))]
    col = pystac.Collection.from_file(str(out / "toy" / "collection.json"))
    urls = publish_to_api(items, transactions_api, col)
    assert urls == [f"{transactions_api}/collections/toy/items/toy-model", f"{transactions_api}/collections/toy/items/toy-class-map"]
    assert publish_to_api(items, transactions_api, "toy") == urls  # again: 409 -> replaced with PUT
    client = Client.open(transactions_api)
    found = list(client.search(collections=["toy"], bbox=items[1].bbox, datetime="2021-06-01/2021-06-02").items())
    assert {i.id for i in found} == {"toy-class-map", "toy-model"}
    pred = next(i for i in found if i.id == "toy-class-map")
    card_href = next(link.href for link in pred.links if link.rel == "derived_from" and "model" in (link.title or ""))
    assert card_href == f"{transactions_api}/collections/toy/items/toy-model"
    model = load_model(card_href)  # card over HTTP, weights at their absolute href
    assert np.array_equal(predict_class_map(model, cube, tile_size=64, padding=8).values, expected)
    with pytest.raises(PublishError, match="no collection 'missing'"):
        publish_to_api(items, transactions_api, "missing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def rustac_serve(tmp_path):
    """``start(folder, *files, port=...)`` runs ``rustac serve`` on 127.0.0.1 with the files
    of ``folder`` loaded and returns its URL; every server is stopped at teardown."""
    exe = shutil.which("rustac") or str(Path(sys.executable).with_name("rustac"))
    if not Path(exe).exists():
        pytest.skip("rustac is not installed (pip install -e '.[dev]')")
    procs = []

    def start(folder: Path, *files: str, port: int) -> str:
        url = f"http://127.0.0.1:{port}"
        log_path = tmp_path / f"rustac-{port}.log"
        with open(log_path, "w") as log:
            # rustac resolves relative hrefs against its working directory: run it in the folder
            proc = subprocess.Popen([exe, "serve", "--addr", f"127.0.0.1:{port}", *files], cwd=folder, stdout=log, stderr=log)
        procs.append(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"rustac serve exited: {log_path.read_text()}")
            try:
                if requests.get(url, timeout=1).ok:
                    return url
            except requests.ConnectionError:
                time.sleep(0.2)
        pytest.fail(f"rustac serve did not answer within 30 s: {log_path.read_text()}")

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def test_round_trip_through_rustac_serve(run, rustac_serve, tmp_path):
    """Published collection served by rustac; found by bbox/datetime/collection; card resolvable."""
    out, cube, expected = run
    folder = tmp_path / "api"
    folder.mkdir()
    col = pystac.Collection.from_file(str(out / "toy" / "collection.json"))
    items = [pystac.Item.from_file(str(_card_path(out))), pystac.Item.from_file(str(_pred_path(out)))]
    # the API's URL is known before it starts, so the prediction's derived_from link can
    # point at the card as served by the API
    port = _free_port()
    api = f"http://127.0.0.1:{port}"
    col_d = col.to_dict(include_self_link=False, transform_hrefs=False)
    col_d["links"] = []
    (folder / "collection.json").write_text(json.dumps(col_d))
    fc = {"type": "FeatureCollection", "features": api_items(items, "toy", api_url=api)}
    (folder / "items.json").write_text(json.dumps(fc))
    assert rustac_serve(folder, "collection.json", "items.json", port=port) == api

    client = Client.open(api)
    assert [c.id for c in client.get_collections()] == ["toy"]
    bbox = items[1].bbox
    hits = list(client.search(collections=["toy"], bbox=bbox, datetime="2021-06-01T00:00:00Z/2021-06-01T23:59:59Z").items())
    assert {i.id for i in hits} == {"toy-class-map", "toy-model"}
    elsewhere = [bbox[0] + 10, bbox[1], bbox[2] + 10, bbox[3]]
    assert list(client.search(collections=["toy"], bbox=elsewhere).items()) == []
    assert list(client.search(collections=["toy"], datetime="2022-01-01/2022-12-31").items()) == []
    pred = next(i for i in hits if i.id == "toy-class-map")
    assert pred.assets["class_map"].href == (out / "class_map.tif").as_uri()  # absolute: usable from the API
    card_href = next(link.href for link in pred.links if link.rel == "derived_from" and "model" in (link.title or ""))
    assert card_href == f"{api}/collections/toy/items/toy-model"
    model = load_model(card_href)  # the card over HTTP from rustac, then its weights
    assert np.array_equal(predict_class_map(model, cube, tile_size=64, padding=8).values, expected)
    with rasterio.open(pred.assets["class_map"].href) as src:
        assert np.array_equal(src.read(1), expected)


def test_card_time_range_is_the_training_data(run):
    out, _, _ = run
    d = json.loads(_card_path(out).read_text())
    assert d["properties"]["datetime"] is None
    assert d["properties"]["start_datetime"] == d["properties"]["end_datetime"] == "2021-06-01T00:00:00Z"
    assert datetime.fromisoformat(d["properties"]["start_datetime"]) == datetime(2021, 6, 1, tzinfo=timezone.utc)


def test_cli_publish_copies_and_posts(run, transactions_api, tmp_path):
    """`staclearn publish`: a static copy elsewhere, ndjson for pypgstac, and the Items in an API."""
    out, _, _ = run
    dest = tmp_path / "copy"
    proc = subprocess.run(
        [sys.executable, "-m", "staclearn.cli", "publish", "--catalog", str(out / "catalog.json"),
         "--to", str(dest), "--api", transactions_api, "--ndjson", str(tmp_path / "items.ndjson")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (dest / "class_map.tif").read_bytes() == (out / "class_map.tif").read_bytes()
    assert (dest / "model" / "weights.safetensors").exists()
    if _schemas() is not None:
        assert validate_catalog(dest / "catalog.json", SCHEMAS) == 4
    rows = [json.loads(line) for line in (tmp_path / "items.ndjson").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["toy-model", "toy-class-map"] and all(r["collection"] == "toy" for r in rows)
    # the copy is what gets registered: asset hrefs point into it
    assert rows[1]["assets"]["class_map"]["href"] == (dest / "class_map.tif").as_uri()
    got = requests.get(f"{transactions_api}/collections/toy/items/toy-class-map", timeout=10).json()
    assert got["assets"]["class_map"]["href"] == (dest / "class_map.tif").as_uri()
    bad = subprocess.run(
        [sys.executable, "-m", "staclearn.cli", "publish", "--catalog", str(out / "catalog.json"), "--to", "https://example.com/x"],
        capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2 and "PublishError" in bad.stderr and "publish_to_api" in bad.stderr


def test_classifier_card_round_trip(tmp_path, scene):
    """A timm object classifier's card (task classification) validates and rebuilds the model."""
    import torch

    from staclearn.models.classifier import build_classifier

    torch.manual_seed(0)
    clf = build_classifier(["r", "g", "b"], CLASSES[:2], mean=[90.0] * 3, std=[40.0] * 3, chip_size=32, buffer_m=5.0).eval()
    weights = save_weights(clf, tmp_path / "clf.safetensors")
    card = model_card(clf, str(weights), id="clf", training_items=[scene])
    props = card.properties
    assert props["mlm:tasks"] == ["classification"] and props["mlm:output"][0]["result"]["shape"] == [-1, 2]
    assert props["mlm:input"][0]["input"]["shape"] == [-1, 3, 32, 32]
    write_catalog([card], tmp_path / "cat", id="cat")
    path = tmp_path / "cat" / "cat" / "clf" / "clf.json"
    if _schemas() is not None:
        report = validate(json.loads(path.read_text()), SCHEMAS)
        assert "https://stac-extensions.github.io/mlm/v1.5.2/schema.json" in report.validated
    again = load_model(path)
    assert type(again).__name__ == "ObjectClassifier" and again.spec.buffer_m == 5.0 and again.spec.chip_size == 32
    x = torch.rand(2, 3, 32, 32) * 255
    with torch.no_grad():
        assert torch.equal(clf(x), again(x))


def test_vector_item_for_classified_footprints(tmp_path, scene):
    import geopandas as gpd
    from shapely.geometry import box

    from staclearn.stac.items import vector_item

    gdf = gpd.GeoDataFrame(
        {"footprint_id": ["a", "b", "c"], "class_value": [0, 1, None], "confidence": [0.9, 0.8, None]},
        geometry=[box(500_400, 4_099_500, 500_420, 4_099_520), box(500_600, 4_099_300, 500_630, 4_099_330), box(0, 0, 0, 0).buffer(0)],
        crs="EPSG:32633",
    )
    gdf.to_parquet(tmp_path / "buildings.parquet")
    item = vector_item(str(tmp_path / "buildings.parquet"), gdf, id="dmg", classes=CLASSES[:2], source_items=[scene])
    asset = item.assets["footprints"]
    assert asset.media_type == "application/vnd.apache.parquet"
    assert asset.extra_fields["staclearn:row_count"] == 3 and asset.extra_fields["staclearn:class_counts"] == {"0": 1, "1": 1}
    west, south, east, north = item.bbox
    hull = gdf.iloc[:2].to_crs("EPSG:4326").total_bounds
    assert (west, south, east, north) == pytest.approx(tuple(hull))  # the empty geometry is left out of the hull
    write_catalog([item], tmp_path / "cat", id="cat")
    if _schemas() is not None:
        assert validate_catalog(tmp_path / "cat" / "catalog.json", SCHEMAS) == 3
    with pytest.raises(PublishError, match="no CRS"):
        vector_item("x.parquet", gdf.set_crs(None, allow_override=True), id="x", classes=CLASSES, source_items=[])


# --- weights checksum (issue 17) ---------------------------------------------------------------


def test_card_records_the_weights_sha256_and_load_checks_it(run):
    """The card's weights asset carries ``file:checksum`` (multihash ``1220`` + SHA-256 hex);
    load_model refuses weights altered by one byte, naming the card, the href, both
    checksums and the fix; a card without a checksum (written before 0.2) still loads."""
    import hashlib

    from staclearn.errors import WeightsChecksumError

    out, _, _ = run
    card_path = _card_path(out)
    d = json.loads(card_path.read_text())
    asset = d["assets"]["weights"]
    weights = (card_path.parent / asset["href"]).resolve()
    good = weights.read_bytes()
    expected = "1220" + hashlib.sha256(good).hexdigest()
    assert asset["file:checksum"] == expected
    assert "https://stac-extensions.github.io/file/v2.1.0/schema.json" in d["stac_extensions"]
    load_model(card_path)  # matches

    bad = bytearray(good)
    bad[-1] ^= 0x01  # one byte of the last tensor: still a valid safetensors file
    weights.write_bytes(bytes(bad))
    found = "1220" + hashlib.sha256(bytes(bad)).hexdigest()
    with pytest.raises(WeightsChecksumError) as info:
        load_model(card_path)
    msg = str(info.value)
    assert "'toy-model'" in msg and str(weights) in msg and expected in msg and found in msg
    assert "re-download" in msg and "re-export" in msg
    assert isinstance(info.value, ModelCardError) and "\n" not in msg

    # an older card (no file:checksum, no file extension) loads the weights unchecked
    del asset["file:checksum"]
    d["stac_extensions"] = [u for u in d["stac_extensions"] if "/file/" not in u]
    card_path.write_text(json.dumps(d))
    assert list(load_model(card_path).spec.bands) == BANDS


# --- http(s) reads retried (issue 17) ----------------------------------------------------------


@pytest.fixture
def flaky_http(tmp_path):
    """``make(doc, fail_first, status)`` serves ``doc`` as JSON on 127.0.0.1 after answering
    the first ``fail_first`` requests with ``status``; returns (url, request counter)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    servers = []

    def make(doc: dict, fail_first: int, status: int = 503):
        state = {"requests": 0}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                state["requests"] += 1
                failing = state["requests"] <= fail_first
                body = b'{"code": "unavailable"}' if failing else json.dumps(doc).encode()
                self.send_response(status if failing else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/item.json", state

    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


def _item_doc(item_id: str = "remote") -> dict:
    return {
        "type": "Feature", "stac_version": "1.1.0", "id": item_id, "properties": {"datetime": "2021-06-01T00:00:00Z"},
        "geometry": {"type": "Point", "coordinates": [0.0, 0.0]}, "bbox": [0.0, 0.0, 0.0, 0.0], "links": [], "assets": {},
    }  # fmt: skip


@pytest.mark.parametrize("status", [503, 429, 502])
def test_http_read_failing_then_succeeding_is_retried(flaky_http, status):
    url, state = flaky_http(_item_doc(), fail_first=2, status=status)
    item = pystac.Item.from_file(url, stac_io=FsspecStacIO(retries=3, backoff=0.01))
    assert item.id == "remote" and state["requests"] == 3


def test_http_read_that_always_fails_raises_stac_api_error_with_the_status(flaky_http):
    from staclearn.errors import StacApiError

    url, state = flaky_http(_item_doc(), fail_first=10_000, status=503)
    with pytest.raises(StacApiError, match="HTTP 503 on 3 attempts") as info:
        FsspecStacIO(retries=2, backoff=0.01).read_text(url)
    assert info.value.status_code == 503 and info.value.url == url
    assert state["requests"] == 3  # bounded: 1 + 2 retries


def test_http_404_is_not_retried(flaky_http):
    from staclearn.errors import CatalogNotFoundError

    url, state = flaky_http(_item_doc(), fail_first=10_000, status=404)
    with pytest.raises(CatalogNotFoundError, match="HTTP 404"):
        FsspecStacIO(retries=3, backoff=0.01).read_text(url)
    assert state["requests"] == 1


def test_unreachable_http_is_a_stac_api_error():
    from staclearn.errors import StacApiError

    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StacApiError, match="Could not reach") as info:
        FsspecStacIO(retries=1, backoff=0.01).read_text(f"http://127.0.0.1:{port}/item.json")
    assert info.value.status_code is None


def test_read_card_over_http_retries_then_keeps_the_status(flaky_http, run, monkeypatch):
    from staclearn.errors import StacApiError
    from staclearn.stac.modelcard import read_card

    out, _, _ = run
    card = json.loads(_card_path(out).read_text())
    monkeypatch.setattr("staclearn._io.HTTP_RETRIES", 2)
    monkeypatch.setattr("staclearn._io.HTTP_BACKOFF", 0.01)
    url, state = flaky_http(card, fail_first=2)
    assert read_card(url).id == "toy-model" and state["requests"] == 3
    url, state = flaky_http(card, fail_first=10_000, status=500)
    with pytest.raises(StacApiError) as info:
        read_card(url)
    assert info.value.status_code == 500 and state["requests"] == 3
