"""The test STAC API (tests/stac_api_server.py) behaves like a STAC API with Transactions."""

from __future__ import annotations

from datetime import UTC, datetime

import pystac
import pytest
import requests
from pystac_client import Client

API_RELS = {"self", "root", "parent", "collection", "items"}


def _collection(cid: str = "test-col") -> dict:
    extent = pystac.Extent(
        pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]),
        pystac.TemporalExtent([[datetime(2020, 1, 1, tzinfo=UTC), None]]),
    )
    col = pystac.Collection(cid, "A test collection", extent, license="CC-BY-4.0")
    return col.to_dict(include_self_link=False, transform_hrefs=False)


def _item(iid: str, lon: float, lat: float, when: datetime, cid: str = "test-col", **props) -> dict:
    item = pystac.Item(
        iid,
        {"type": "Point", "coordinates": [lon, lat]},
        [lon, lat, lon, lat],
        when,
        {"platform": "test", **props},
        collection=cid,
    )
    item.add_asset("data", pystac.Asset(f"s3://bucket/{iid}.tif", media_type=pystac.MediaType.COG, roles=["data"]))
    return item.to_dict(include_self_link=False, transform_hrefs=False)


def _strip_api_links(doc: dict) -> dict:
    return {**doc, "links": [ln for ln in doc.get("links", []) if ln["rel"] not in API_RELS]}


@pytest.fixture
def api_with_collection(transactions_api: str) -> str:  # noqa: F811
    r = requests.post(f"{transactions_api}/collections", json=_collection(), timeout=10)
    assert r.status_code == 201, r.text
    return transactions_api


def test_landing_page_advertises_transactions(transactions_api: str) -> None:  # noqa: F811
    landing = requests.get(transactions_api + "/", timeout=10).json()
    conforms = set(landing["conformsTo"])
    assert "https://api.stacspec.org/v1.0.0/ogcapi-features/extensions/transaction" in conforms
    assert "https://api.stacspec.org/v1.0.0/collections/extensions/transaction" in conforms
    assert "https://api.stacspec.org/v1.0.0/item-search" in conforms


def test_post_collection_then_get(transactions_api: str) -> None:  # noqa: F811
    col = _collection("c1")
    r = requests.post(f"{transactions_api}/collections", json=col, timeout=10)
    assert r.status_code == 201, r.text
    got = requests.get(f"{transactions_api}/collections/c1", timeout=10)
    assert got.status_code == 200
    assert _strip_api_links(got.json()) == col
    assert [c["id"] for c in requests.get(f"{transactions_api}/collections", timeout=10).json()["collections"]] == ["c1"]
    # duplicate collection -> 409; unknown collection -> 404
    assert requests.post(f"{transactions_api}/collections", json=col, timeout=10).status_code == 409
    assert requests.get(f"{transactions_api}/collections/nope", timeout=10).status_code == 404


def test_post_item_then_get_back_equal(api_with_collection: str) -> None:
    url = api_with_collection
    item = _item("i1", 10.0, 20.0, datetime(2024, 5, 1, 12, tzinfo=UTC), **{"eo:cloud_cover": 3.5})
    r = requests.post(f"{url}/collections/test-col/items", json=item, timeout=10)
    assert r.status_code == 201, r.text
    got = requests.get(f"{url}/collections/test-col/items/i1", timeout=10)
    assert got.status_code == 200
    body = got.json()
    assert _strip_api_links(body) == item
    self_link = next(ln for ln in body["links"] if ln["rel"] == "self")
    assert self_link["href"] == f"{url}/collections/test-col/items/i1"
    # and it reads as a pystac Item
    assert pystac.Item.from_dict(body).properties["eo:cloud_cover"] == 3.5


def test_post_duplicate_item_is_409(api_with_collection: str) -> None:
    url = api_with_collection
    item = _item("dup", 0.0, 0.0, datetime(2024, 1, 1, tzinfo=UTC))
    assert requests.post(f"{url}/collections/test-col/items", json=item, timeout=10).status_code == 201
    r = requests.post(f"{url}/collections/test-col/items", json=item, timeout=10)
    assert r.status_code == 409
    assert r.json()["code"] == "ConflictError"


def test_post_item_into_missing_collection_is_404(transactions_api: str) -> None:  # noqa: F811
    item = _item("x", 0.0, 0.0, datetime(2024, 1, 1, tzinfo=UTC), cid="missing")
    r = requests.post(f"{transactions_api}/collections/missing/items", json=item, timeout=10)
    assert r.status_code == 404
    assert r.json()["code"] == "NotFoundError"


def test_put_item_replaces(api_with_collection: str) -> None:
    url = api_with_collection
    when = datetime(2024, 1, 1, tzinfo=UTC)
    old = _item("p1", 1.0, 1.0, when, version="1", obsolete=True)
    assert requests.post(f"{url}/collections/test-col/items", json=old, timeout=10).status_code == 201
    new = _item("p1", 2.0, 2.0, when, version="2")
    r = requests.put(f"{url}/collections/test-col/items/p1", json=new, timeout=10)
    assert r.status_code == 200, r.text
    got = requests.get(f"{url}/collections/test-col/items/p1", timeout=10).json()
    assert _strip_api_links(got) == new
    assert "obsolete" not in got["properties"]  # replaced, not merged
    # PUT of an item that does not exist -> 404; id mismatch -> 400
    assert requests.put(f"{url}/collections/test-col/items/nope", json=_item("nope", 0, 0, when), timeout=10).status_code == 404
    assert requests.put(f"{url}/collections/test-col/items/p1", json=_item("other", 0, 0, when), timeout=10).status_code == 400


def test_post_feature_collection_and_delete(api_with_collection: str) -> None:
    url = api_with_collection
    when = datetime(2024, 1, 1, tzinfo=UTC)
    fc = {"type": "FeatureCollection", "features": [_item(f"b{i}", i, i, when) for i in range(3)]}
    r = requests.post(f"{url}/collections/test-col/items", json=fc, timeout=10)
    assert r.status_code == 201, r.text
    page = requests.get(f"{url}/collections/test-col/items", timeout=10).json()
    assert [f["id"] for f in page["features"]] == ["b0", "b1", "b2"]
    # a batch with one existing id is rejected as a whole
    fc2 = {"type": "FeatureCollection", "features": [_item("b9", 9, 9, when), _item("b0", 0, 0, when)]}
    assert requests.post(f"{url}/collections/test-col/items", json=fc2, timeout=10).status_code == 409
    assert requests.get(f"{url}/collections/test-col/items/b9", timeout=10).status_code == 404
    assert requests.delete(f"{url}/collections/test-col/items/b1", timeout=10).status_code in (200, 204)
    assert requests.get(f"{url}/collections/test-col/items/b1", timeout=10).status_code == 404


def test_pystac_client_search_filters(api_with_collection: str) -> None:
    url = api_with_collection
    other = _collection("other-col")
    assert requests.post(f"{url}/collections", json=other, timeout=10).status_code == 201
    items = [
        _item("paris-2023", 2.35, 48.85, datetime(2023, 6, 1, tzinfo=UTC)),
        _item("paris-2024", 2.30, 48.90, datetime(2024, 6, 1, tzinfo=UTC)),
        _item("nyc-2024", -74.0, 40.7, datetime(2024, 6, 1, tzinfo=UTC)),
        # same place and time as paris-2024, but in another collection
        _item("paris-2024-other", 2.30, 48.90, datetime(2024, 6, 1, tzinfo=UTC), cid="other-col"),
    ]
    for it in items:
        r = requests.post(f"{url}/collections/{it['collection']}/items", json=it, timeout=10)
        assert r.status_code == 201, r.text

    client = Client.open(url)
    france = [-5.0, 41.0, 10.0, 51.5]

    def ids(method: str, **kw) -> set[str]:
        return {i.id for i in client.search(method=method, **kw).items()}

    for method in ("GET", "POST"):
        assert ids(method, bbox=france, datetime="2024-01-01T00:00:00Z/2024-12-31T23:59:59Z",
                   collections=["test-col"]) == {"paris-2024"}
        assert ids(method, bbox=france, collections=["test-col"]) == {"paris-2023", "paris-2024"}
        assert ids(method, datetime="2024-01-01T00:00:00Z/..", collections=["test-col"]) == {"paris-2024", "nyc-2024"}
        assert ids(method, datetime="../2023-12-31T00:00:00Z") == {"paris-2023"}
        assert ids(method, datetime="2024-06-01T00:00:00Z") == {"paris-2024", "nyc-2024", "paris-2024-other"}
        assert ids(method, bbox=france, datetime="2024") == {"paris-2024", "paris-2024-other"}
        assert ids(method, ids=["nyc-2024", "paris-2023"]) == {"nyc-2024", "paris-2023"}
        assert ids(method, bbox=[100.0, -10.0, 110.0, 0.0]) == set()
        # paging: limit=1 still yields every match through "next" links
        assert ids(method, collections=["test-col"], limit=1) == {"paris-2023", "paris-2024", "nyc-2024"}
    assert client.search(collections=["test-col"], limit=1).matched() == 3
    # intersects (POST geometry)
    point = {"type": "Point", "coordinates": [-74.0, 40.7]}
    assert {i.id for i in client.search(intersects=point).items()} == {"nyc-2024"}
