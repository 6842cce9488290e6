"""The README's Planetary Computer recipe (NAIP + Chesapeake land cover), run offline.

The real recipe searches https://planetarycomputer.microsoft.com/api/stac/v1 for ``naip`` and
``chesapeake-lc-13`` Items over Kent County, Delaware and signs them with
``planetary_computer.sign_inplace``. Here the same code runs against:

* recorded Item JSON shaped like those collections' Items (asset ``image``, 4 ``eo:bands``
  R/G/B/NIR, ``proj:epsg``, ``naip:*`` for NAIP; asset ``data`` with classification v1.0
  classes (``description`` + ``color-hint``), ``proj:wkt2`` Albers for Chesapeake), served
  by ``rustac serve`` on 127.0.0.1;
* their rasters served over HTTP on 127.0.0.1 by a server that, like Azure Blob Storage
  behind the Planetary Computer, answers 403 to requests without a SAS token;
* a stand-in for ``sign_inplace`` (same signature: modifies the Item in place) appending
  ``?st=...&sig=...`` to asset hrefs.

Data: the NAIP raster is a real 0.6 m NAIP crop (``../shared/data/landcover/naip_crops``,
California, 2020). No Chesapeake label overlaps any NAIP crop there, so the label raster is
a window of the real Chesapeake 13-class tile (``chesapeake_wv_labels``, West Virginia) whose
georeference is moved onto the NAIP crop's footprint (still in USA Albers, so it is
reprojected onto the NAIP grid like the real pair). The labels therefore do not describe
that imagery: the test checks the data path, not accuracy.
"""

from __future__ import annotations

import json
import threading
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pystac
import pytest
import rasterio
from rasterio.warp import transform_bounds

from conftest import SHARED_DIR
from test_publish import _free_port, rustac_serve  # noqa: F401  (fixture)

pytestmark = pytest.mark.realdata

NAIP = SHARED_DIR / "data" / "landcover" / "naip_crops" / "m_3211605_ne_11_060_20200415.tif"
LC13 = SHARED_DIR / "data" / "landcover" / "chesapeake_wv_labels" / "Baywide_13Class_20132014_E1300000_N1770000.tif"
LC13_ITEM = (
    SHARED_DIR / "data" / "stac" / "chesapeake_lulc_items" / "examples" / "chesapeake-lc-13"
    / "Baywide_13Class_20132014_E1300000_N1770000" / "Baywide_13Class_20132014_E1300000_N1770000.json"
)
TOKEN = "st=2030-01-01T00%3A00%3A00Z&se=2030-01-02T00%3A00%3A00Z&sp=rl&sv=2024-05-04&sr=c&sig=FAKE%2Bsignature%3D"


class _BlobHandler(SimpleHTTPRequestHandler):
    """Static files with HTTP Range support (GDAL's /vsicurl/ reads COGs by ranges); 403 without ``sig``."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def send_head(self):
        query = parse_qs(urlsplit(self.path).query)
        if "sig" not in query:
            self.send_error(HTTPStatus.FORBIDDEN, "Server failed to authenticate the request (no SAS token)")
            return None
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(HTTPStatus.NOT_FOUND)
            return None
        data = path.read_bytes()
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            start, end = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
            self.send_response(HTTPStatus.PARTIAL_CONTENT)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            body = data[start : end + 1]
        else:
            self.send_response(HTTPStatus.OK)
            body = data
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        import io

        return io.BytesIO(body)


def sign_inplace(obj):
    """Stand-in for ``planetary_computer.sign_inplace``: a SAS-like token on every http(s) asset.

    Like the real one it takes what pystac-client's ``modifier`` hook passes: an Item, an
    ItemCollection, or a page / Item as a dict, and modifies it in place.
    """

    def sign(href: str) -> str:
        return f"{href}?{TOKEN}" if href.startswith("http") and "sig=" not in href else href

    if isinstance(obj, pystac.Item):
        for asset in obj.assets.values():
            asset.href = sign(asset.href)
    elif isinstance(obj, pystac.ItemCollection):
        for item in obj:
            sign_inplace(item)
    elif isinstance(obj, dict):
        for feature in obj.get("features", [obj] if obj.get("type") == "Feature" else []):
            for asset in feature.get("assets", {}).values():
                asset["href"] = sign(asset["href"])
    return obj


@pytest.fixture
def pc(tmp_path, rustac_serve):  # noqa: F811
    if not (NAIP.exists() and LC13.exists() and LC13_ITEM.exists()):
        pytest.skip("needs ../shared/data/landcover/{naip_crops,chesapeake_wv_labels} and stac/chesapeake_lulc_items")
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "naip.tif").write_bytes(NAIP.read_bytes())
    with rasterio.open(NAIP) as src:
        naip_crs, naip_shape, naip_transform, naip_bounds = src.crs, src.shape, src.transform, src.bounds
    # the label window: a 200 x 200 m window of the real tile with several classes, moved onto the NAIP footprint
    with rasterio.open(LC13) as src:
        albers = src.crs
        window = rasterio.windows.Window(8000, 4400, 200, 200)  # col, row: fully labelled, 8 classes
        labels = src.read(1, window=window)
        w, s, e, n = transform_bounds(naip_crs, albers, *naip_bounds)
        cx, cy = (w + e) / 2, (s + n) / 2
        transform = rasterio.Affine(1.0, 0, round(cx) - 100, 0, -1.0, round(cy) + 100)
        profile = dict(driver="GTiff", height=200, width=200, count=1, dtype="uint8", crs=albers, transform=transform, nodata=0)
    with rasterio.open(blobs / "lc.tif", "w", **profile) as dst:
        dst.write(labels, 1)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_BlobHandler, directory=str(blobs)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    blob = f"http://127.0.0.1:{server.server_address[1]}"

    bbox = list(transform_bounds(naip_crs, "EPSG:4326", *naip_bounds))
    geom = {"type": "Polygon", "coordinates": [[[bbox[0], bbox[1]], [bbox[2], bbox[1]], [bbox[2], bbox[3]], [bbox[0], bbox[3]], [bbox[0], bbox[1]]]]}
    naip_item = {
        "type": "Feature", "stac_version": "1.0.0", "id": "ca_m_3211605_ne_11_060_20200415", "collection": "naip",
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.0.0/schema.json", "https://stac-extensions.github.io/projection/v1.0.0/schema.json"],
        "geometry": geom, "bbox": bbox,
        "properties": {
            "gsd": 0.6, "datetime": "2020-04-15T00:00:00Z", "naip:year": "2020", "naip:state": "ca",
            "proj:epsg": naip_crs.to_epsg(), "proj:shape": list(naip_shape), "proj:transform": list(naip_transform)[:6],
            "proj:bbox": list(naip_bounds),
        },
        "links": [],
        "assets": {
            "image": {
                "href": f"{blob}/naip.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "roles": ["data"], "title": "RGBIR COG tile",
                "eo:bands": [
                    {"name": "Red", "common_name": "red"}, {"name": "Green", "common_name": "green"},
                    {"name": "Blue", "common_name": "blue"}, {"name": "NIR", "common_name": "nir", "description": "near-infrared"},
                ],
            },
            "thumbnail": {"href": f"{blob}/naip_thumb.jpg", "type": "image/jpeg", "roles": ["thumbnail"], "title": "Thumbnail"},
        },
    }
    recorded = json.loads(LC13_ITEM.read_text())  # the real record: classes, proj:wkt2, time range
    lc_item = {
        **recorded,
        "id": "ca_1m_2020_synthetic-placement-landcover", "collection": "chesapeake-lc-13", "geometry": geom, "bbox": bbox,
        "links": [],
        "properties": {
            **recorded["properties"], "proj:shape": [200, 200], "proj:transform": list(transform)[:6],
        },
        "assets": {"data": {**recorded["assets"]["data"], "href": f"{blob}/lc.tif"}},
    }
    api_dir = tmp_path / "api"
    api_dir.mkdir()
    for cid, title in (("naip", "NAIP: National Agriculture Imagery Program"), ("chesapeake-lc-13", "Chesapeake Land Cover (13-class)")):
        col = {
            "type": "Collection", "stac_version": "1.0.0", "id": cid, "title": title, "description": title, "license": "proprietary",
            "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [["2013-01-01T00:00:00Z", "2020-12-31T23:59:59Z"]]}},
            "links": [],
        }
        (api_dir / f"{cid}.json").write_text(json.dumps(col))
    (api_dir / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": [naip_item, lc_item]}))
    port = _free_port()
    api = rustac_serve(api_dir, "naip.json", "chesapeake-lc-13.json", "items.json", port=port)
    yield {"api": api, "blob": blob, "bbox": bbox, "naip_crs": naip_crs, "naip_shape": naip_shape, "naip_transform": naip_transform, "labels": labels}
    server.shutdown()


def test_planetary_computer_recipe(pc, tmp_path):
    import requests

    from staclearn.chips.pixel import ChipDataset, band_statistics, block_split, export_chips
    from staclearn.data.cube import load_cube, valid_mask
    from staclearn.data.labels import IGNORE_INDEX, load_label_raster
    from staclearn.stac.modelcard import model_card
    from staclearn.models.segmentation import build_model, save_weights
    from staclearn.inference.raster import predict_class_map
    from staclearn.stac.items import class_map_item
    from staclearn.stac.catalog import write_catalog
    from staclearn.data.search import open_items
    from staclearn.training.segmentation import Trainer

    api, bbox = pc["api"], pc["bbox"]
    assert requests.get(f"{pc['blob']}/naip.tif", timeout=5).status_code == 403  # unsigned: refused

    # --- the recipe (README), with the local API and the stand-in signer
    naip = open_items(api, collections=["naip"], bbox=bbox, datetime="2020-01-01/2020-12-31", modifier=sign_inplace)
    lc = open_items(api, collections=["chesapeake-lc-13"], bbox=bbox, modifier=sign_inplace)
    cube = load_cube(naip, bands=["red", "green", "blue", "nir"])
    labels = load_label_raster(lc[0], cube.odc.geobox, asset="data")
    image = cube.isel(time=0).values.astype("float32")
    classes = labels.attrs["classes"]
    idx = np.where(valid_mask(image, cube.attrs["nodata"]), labels.values, IGNORE_INDEX).astype("uint8")
    split = block_split(idx, block_size=64, valid_fraction=0.3, seed=0)
    export_chips(image, idx, split, cube.odc.geobox, tmp_path / "chips", tile_size=64, stride=64, band_names=list(cube.band.values))
    mean, std = band_statistics(tmp_path / "chips" / "chips.parquet")
    model = build_model(list(cube.band.values), classes, mean=mean, std=std, encoder="resnet18", encoder_depth=3)
    index = tmp_path / "chips" / "chips.parquet"
    trainer = Trainer(model, ChipDataset(index, "train", fill=mean), ChipDataset(index, "valid", fill=mean), num_classes=len(classes), batch_size=4, seed=0)
    history = trainer.fit(1, 1e-3, progress=False)
    class_map = predict_class_map(model, cube, tile_size=128, padding=16, out_path=tmp_path / "class_map.tif")
    weights = save_weights(model, tmp_path / "model" / "weights.safetensors")
    card = model_card(model, str(weights), id="kent-naip-model", training_items=[*naip, *lc])
    pred = class_map_item(str(tmp_path / "class_map.tif"), class_map, id="kent-naip-landcover", classes=classes, source_items=naip, model_card=card)
    catalog = write_catalog([card, pred], tmp_path / "out", id="kent", description="NAIP land cover")

    # --- what it found and made
    assert [i.id for i in naip] == ["ca_m_3211605_ne_11_060_20200415"] and [i.id for i in lc] == ["ca_1m_2020_synthetic-placement-landcover"]
    assert "sig=" in naip[0].assets["image"].href and "sig=" in lc[0].assets["data"].href  # the modifier ran
    assert naip[0].get_self_href().startswith(f"{api}/collections/naip/items/")
    assert cube.shape == (1, 4, *pc["naip_shape"]) and [str(b) for b in cube.band.values] == ["red", "green", "blue", "nir"]
    assert cube.odc.geobox.crs.epsg == pc["naip_crs"].to_epsg() and cube.odc.geobox.affine.almost_equals(pc["naip_transform"])
    with rasterio.open(NAIP) as src:  # pixels read through the signed URL are NAIP's
        assert np.array_equal(cube.isel(time=0).values, src.read().astype("float32"))
    assert [c.value for c in classes] == list(range(1, 14))
    assert classes[2].name == "Tree Canopy" and classes[2].color_hint == "267300"
    present = set(np.unique(pc["labels"])) - {0}
    mapped = {classes[i].value for i in np.unique(labels.values) if i != IGNORE_INDEX}
    assert len(mapped) >= 3 and mapped <= present  # nearest-neighbour reprojection keeps class values
    assert len(history) == 1 and np.isfinite(history[0].train_loss)
    assert class_map.shape == tuple(pc["naip_shape"]) and set(np.unique(class_map.values)) <= {c.value for c in classes}
    written = [p.read_text() for p in (tmp_path / "out").rglob("*.json")]
    assert len(written) >= 3 and not any("sig=" in t or "st=2030" in t for t in written)  # no token published
    pred_d = next(json.loads(t) for t in written if '"id": "kent-naip-landcover"' in t)
    derived = [link["href"] for link in pred_d["links"] if link["rel"] == "derived_from"]
    assert f"{api}/collections/naip/items/ca_m_3211605_ne_11_060_20200415" in derived
    assert catalog.id == "kent" and {i.id for i in catalog.get_items(recursive=True)} == {"kent-naip-model", "kent-naip-landcover"}
