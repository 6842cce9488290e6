"""Publishing into a real pgstac database (PostgreSQL + PostGIS) through stac-fastapi-pgstac.

The run is the NC Landsat-7 one of fixtures_nc_run.py; the database and API come from
fixtures_pgstac.py (a private cluster, ``pypgstac migrate``, Transactions on 127.0.0.1).
``staclearn publish --api`` posts the run; pystac-client finds it again by bbox, datetime,
collection and CQL2 filters on model-card properties; ``pypgstac load`` takes the ndjson of
``staclearn publish --ndjson``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pystac
import rasterio
import requests
from pystac_client import Client

from fixtures_nc_run import nc_run  # noqa: F401  (fixture)
from fixtures_pgstac import _script, pgstac_api  # noqa: F401  (fixture)
from staclearn.stac.modelcard import load_model
from staclearn.stac.api import publish_to_api

NC_BBOX = [-78.77, 35.69, -78.61, 35.81]


def _publish(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "staclearn.cli", "publish", *args], capture_output=True, text=True, timeout=300)


def test_publish_into_pgstac_and_search(nc_run, pgstac_api, tmp_path):
    api = pgstac_api.url
    print("versions:", pgstac_api.versions)
    proc = _publish("--catalog", str(nc_run.out / "catalog.json"), "--api", api)
    assert proc.returncode == 0, proc.stderr
    assert f"{api}/collections/nc-run/items/nc-class-map" in proc.stdout
    items = list(pystac.Catalog.from_file(str(nc_run.out / "catalog.json")).get_items(recursive=True))
    for item in items:
        item.make_asset_hrefs_absolute()
    assert len(publish_to_api(items, api, "nc-run")) == 2  # existing Items: replaced (409 -> PUT)

    client = Client.open(api)
    assert "nc-run" in [c.id for c in client.get_collections()]
    ids = lambda search: sorted(i.id for i in search.items())  # noqa: E731
    assert ids(client.search(collections=["nc-run"], bbox=NC_BBOX)) == ["nc-class-map", "nc-pixelconv"]
    assert ids(client.search(collections=["nc-run"], bbox=[10.0, 45.0, 10.1, 45.1])) == []
    assert ids(client.search(collections=["nc-run"], datetime="2000-06-01/2000-06-30")) == ["nc-class-map", "nc-pixelconv"]
    assert ids(client.search(collections=["nc-run"], datetime="2010-01-01/2010-12-31")) == []
    # CQL2 on model-card properties: the cards of an architecture, every class map of a model
    cards = client.search(collections=["nc-run"], filter={"op": "=", "args": [{"property": "mlm:architecture"}, "PixelConvNet"]})
    assert ids(cards) == ["nc-pixelconv"]
    made_by = {"op": "=", "args": [{"property": "staclearn:model_card"}, "nc-pixelconv"]}
    assert ids(client.search(collections=["nc-run"], bbox=NC_BBOX, filter=made_by)) == ["nc-class-map"]
    assert ids(client.search(filter="\"staclearn:model_card\" = 'nc-pixelconv'", filter_lang="cql2-text", method="GET")) == ["nc-class-map"]
    assert ids(client.search(filter={"op": "=", "args": [{"property": "staclearn:model_card"}, "another-model"]})) == []

    # the class map found in the API: its asset is readable and its card predicts it again
    pred = next(client.search(ids=["nc-class-map"], collections=["nc-run"]).items())
    with rasterio.open(pred.assets["class_map"].href) as src:
        assert np.array_equal(src.read(1), nc_run.class_map)
    card_href = next(link.href for link in pred.links if link.rel == "derived_from" and "model card" in (link.title or ""))
    assert card_href == f"{api}/collections/nc-run/items/nc-pixelconv"
    model = load_model(card_href)
    assert model.spec.architecture == "PixelConvNet"


def test_pypgstac_load_from_publish_ndjson(nc_run, pgstac_api, tmp_path):
    ndjson = tmp_path / "items.ndjson"
    proc = _publish("--catalog", str(nc_run.out / "catalog.json"), "--ndjson", str(ndjson), "--collection", "nc-loaded")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in ndjson.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ["nc-class-map", "nc-pixelconv"] and {r["collection"] for r in rows} == {"nc-loaded"}
    col = json.loads((nc_run.out / "nc-run" / "collection.json").read_text())
    col.update(id="nc-loaded", links=[])
    (tmp_path / "collection.json").write_text(json.dumps(col))
    for kind, path in (("collections", tmp_path / "collection.json"), ("items", ndjson)):
        load = subprocess.run(
            [_script("pypgstac"), "load", kind, str(path), "--dsn", pgstac_api.dsn, "--method", "upsert"],
            capture_output=True, text=True, timeout=300,
        )
        assert load.returncode == 0, load.stderr
    got = requests.get(f"{pgstac_api.url}/collections/nc-loaded/items", timeout=30).json()
    assert sorted(f["id"] for f in got["features"]) == ["nc-class-map", "nc-pixelconv"]
    found = list(Client.open(pgstac_api.url).search(collections=["nc-loaded"], bbox=NC_BBOX, datetime="2000").items())
    assert len(found) == 2
