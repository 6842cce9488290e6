"""A small in-memory STAC API with the Transactions extension, for tests.

Built on stac-fastapi (``stac-fastapi.api``, ``stac-fastapi.types``,
``stac-fastapi.extensions``): the routing, request validation (stac-pydantic),
landing page, conformance and error handling are stac-fastapi's own; only the
storage is ours, plain dicts held by the app instance (``app.state.store``).

Endpoints: ``GET /``, ``/conformance``, ``/collections``,
``/collections/{cid}``, ``/collections/{cid}/items``,
``/collections/{cid}/items/{iid}``, ``GET|POST /search`` (``bbox``,
``intersects``, ``datetime`` instants and ranges with ``..``, ``collections``,
``ids``, ``limit`` and ``token`` paging), and the Transactions extension:
``POST /collections``, ``PUT|PATCH|DELETE /collections/{cid}``,
``POST /collections/{cid}/items`` (one Item or a FeatureCollection),
``PUT|PATCH|DELETE /collections/{cid}/items/{iid}``.

Errors: unknown collection or item -> 404 (``NotFoundError``), an id that
already exists -> 409 (``ConflictError``), an id in the body that disagrees
with the path -> 400.

Run it: ``python tests/stac_api_server.py --port 8081`` (binds 127.0.0.1 only).
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import attr
from fastapi import FastAPI, HTTPException
from shapely.geometry import box, shape
from stac_fastapi.api.app import StacApi
from stac_fastapi.api.models import (
    ItemCollectionUri,
    create_get_request_model,
    create_post_request_model,
    create_request_model,
)
from stac_fastapi.extensions import TokenPaginationExtension, TransactionExtension
from stac_fastapi.extensions.pagination.request import GETTokenPagination
from stac_fastapi.extensions.transaction.client import AsyncBaseTransactionsClient
from stac_fastapi.extensions.transaction.request import (
    PartialCollection,
    PartialItem,
    PatchMoveCopy,
    PatchOperation,
    PatchRemove,
)
from stac_fastapi.types.config import ApiSettings
from stac_fastapi.types.core import AsyncBaseCoreClient
from stac_fastapi.types.errors import (
    ConflictError,
    InvalidQueryParameter,
    NotFoundError,
)
from stac_fastapi.types.requests import get_base_url
from stac_fastapi.types.rfc3339 import str_to_interval
from stac_pydantic import Collection, Item, ItemCollection
from starlette.requests import Request

HOST = "127.0.0.1"
#: link relations the API owns: dropped from stored documents, regenerated on output
API_RELS = frozenset({"self", "root", "parent", "collection", "items"})


# ---------------------------------------------------------------------------- storage
@attr.s
class MemoryStore:
    """Collections and Items as JSON dicts; insertion order is the listing order."""

    collections: dict[str, dict[str, Any]] = attr.ib(factory=dict)
    #: collection id -> item id -> item
    items: dict[str, dict[str, dict[str, Any]]] = attr.ib(factory=dict)

    def collection(self, collection_id: str) -> dict[str, Any]:
        try:
            return self.collections[collection_id]
        except KeyError:
            raise NotFoundError(f"Collection {collection_id!r} not found") from None

    def item(self, collection_id: str, item_id: str) -> dict[str, Any]:
        self.collection(collection_id)
        try:
            return self.items[collection_id][item_id]
        except KeyError:
            raise NotFoundError(
                f"Item {item_id!r} not found in collection {collection_id!r}"
            ) from None


def _dump(model: Any) -> dict[str, Any]:
    """A validated stac-pydantic model back to JSON, keeping only what the client sent."""
    doc = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
    doc["links"] = [ln for ln in doc.get("links") or [] if ln.get("rel") not in API_RELS]
    return doc


def _bad_request(msg: str) -> HTTPException:
    return HTTPException(status_code=400, detail=msg)


# ---------------------------------------------------------------------------- links
def _root(request: Request) -> str:
    return get_base_url(request).rstrip("/")


def _collection_out(request: Request, doc: dict[str, Any]) -> dict[str, Any]:
    root, cid = _root(request), doc["id"]
    out = copy.deepcopy(doc)
    out["links"] = [
        *out.get("links", []),
        {"rel": "self", "type": "application/json", "href": f"{root}/collections/{cid}"},
        {"rel": "parent", "type": "application/json", "href": f"{root}/"},
        {"rel": "root", "type": "application/json", "href": f"{root}/"},
        {"rel": "items", "type": "application/geo+json", "href": f"{root}/collections/{cid}/items"},
    ]
    return out


def _item_out(request: Request, doc: dict[str, Any]) -> dict[str, Any]:
    root, cid, iid = _root(request), doc["collection"], doc["id"]
    out = copy.deepcopy(doc)
    out["links"] = [
        *out.get("links", []),
        {"rel": "self", "type": "application/geo+json", "href": f"{root}/collections/{cid}/items/{iid}"},
        {"rel": "parent", "type": "application/json", "href": f"{root}/collections/{cid}"},
        {"rel": "collection", "type": "application/json", "href": f"{root}/collections/{cid}"},
        {"rel": "root", "type": "application/json", "href": f"{root}/"},
    ]
    return out


# ---------------------------------------------------------------------------- filters
def _parse_dt(value: str | None) -> datetime | None:
    if value is None:
        return None
    dt = datetime.fromisoformat(value.replace("z", "Z"))  # 3.11 accepts a trailing "Z"
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _item_interval(item: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    props = item.get("properties") or {}
    if props.get("datetime"):
        instant = _parse_dt(props["datetime"])
        return instant, instant
    return _parse_dt(props.get("start_datetime")), _parse_dt(props.get("end_datetime"))


def _matches_datetime(item: dict[str, Any], query: Any) -> bool:
    """``query``: a datetime (instant) or a (start, end) tuple, either end None (``..``)."""
    start, end = _item_interval(item)
    if start is None and end is None:
        return False
    if isinstance(query, tuple):
        q_start, q_end = query
    else:
        q_start = q_end = query
    if q_end is not None and start is not None and start > q_end:
        return False
    if q_start is not None and end is not None and end < q_start:
        return False
    return True


def _spatial_filter(bbox: Any, intersects: Any):
    if bbox is not None and intersects is not None:
        raise _bad_request("bbox and intersects are mutually exclusive")
    if bbox is not None:
        b = [float(v) for v in bbox]
        if len(b) == 6:
            b = [b[0], b[1], b[3], b[4]]
        if len(b) != 4:
            raise _bad_request(f"bbox must have 4 or 6 numbers, got {len(b)}")
        return box(*b)
    if intersects is not None:
        if isinstance(intersects, str):
            try:
                intersects = json.loads(intersects)
            except json.JSONDecodeError as e:
                raise _bad_request(f"intersects is not GeoJSON: {e}") from None
        elif hasattr(intersects, "model_dump"):
            intersects = intersects.model_dump(mode="json", exclude_none=True)
        if intersects.get("type") == "Feature":
            intersects = intersects["geometry"]
        return shape(intersects)
    return None


def _as_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v for v in value.split(",") if v]
    return list(value)


# ---------------------------------------------------------------------------- clients
@attr.s
class MemoryCoreClient(AsyncBaseCoreClient):
    """Read side of the API (core, collections, features, item search)."""

    store: MemoryStore = attr.ib(factory=MemoryStore)

    async def all_collections(self, request: Request, **kwargs) -> dict[str, Any]:
        root = _root(request)
        cols = [_collection_out(request, c) for c in self.store.collections.values()]
        return {
            "collections": cols,
            "links": [
                {"rel": "root", "type": "application/json", "href": f"{root}/"},
                {"rel": "parent", "type": "application/json", "href": f"{root}/"},
                {"rel": "self", "type": "application/json", "href": f"{root}/collections"},
            ],
            "numberMatched": len(cols),
            "numberReturned": len(cols),
        }

    async def get_collection(self, collection_id: str, request: Request, **kwargs):
        return _collection_out(request, self.store.collection(collection_id))

    async def get_item(self, item_id: str, collection_id: str, request: Request, **kwargs):
        return _item_out(request, self.store.item(collection_id, item_id))

    async def item_collection(
        self,
        collection_id: str,
        request: Request,
        bbox: Any = None,
        datetime: str | None = None,
        limit: int | None = 10,
        token: str | None = None,
        **kwargs,
    ) -> dict[str, Any]:
        self.store.collection(collection_id)
        page = self._search(
            request, collections=[collection_id], bbox=bbox, datetime=datetime,
            limit=limit, token=token,
        )
        page["links"].append(
            {"rel": "collection", "type": "application/json",
             "href": f"{_root(request)}/collections/{collection_id}"}
        )
        return page

    async def get_search(
        self,
        request: Request,
        collections: list[str] | None = None,
        ids: list[str] | None = None,
        bbox: Any = None,
        intersects: str | None = None,
        datetime: str | None = None,
        limit: int | None = 10,
        token: str | None = None,
        **kwargs,
    ) -> dict[str, Any]:
        return self._search(
            request, collections=collections, ids=ids, bbox=bbox, intersects=intersects,
            datetime=datetime, limit=limit, token=token,
        )

    async def post_search(self, search_request: Any, request: Request, **kwargs) -> dict[str, Any]:
        s = search_request
        body = s.model_dump(mode="json", by_alias=True, exclude_none=True)
        return self._search(
            request, collections=s.collections, ids=s.ids, bbox=s.bbox,
            intersects=s.intersects, datetime=s.datetime, limit=s.limit,
            token=getattr(s, "token", None), post_body=body,
        )

    # -- the one search used by /search (GET and POST) and /collections/{cid}/items
    def _search(
        self,
        request: Request,
        *,
        collections: Iterable[str] | None = None,
        ids: Iterable[str] | None = None,
        bbox: Any = None,
        intersects: Any = None,
        datetime: str | None = None,
        limit: int | None = 10,
        token: str | None = None,
        post_body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        collections, ids = _as_list(collections), _as_list(ids)
        geom = _spatial_filter(bbox, intersects)
        when = str_to_interval(datetime) if datetime else None  # 400 on a bad interval
        limit = limit or 10
        try:
            offset = int(token) if token else 0
        except ValueError:
            raise InvalidQueryParameter(f"invalid token {token!r}") from None

        cids = collections if collections is not None else list(self.store.items)
        matched = []
        for cid in cids:
            for item in self.store.items.get(cid, {}).values():
                if ids is not None and item["id"] not in ids:
                    continue
                if geom is not None and (
                    not item.get("geometry") or not geom.intersects(shape(item["geometry"]))
                ):
                    continue
                if when is not None and not _matches_datetime(item, when):
                    continue
                matched.append(item)

        features = [_item_out(request, it) for it in matched[offset : offset + limit]]
        root = _root(request)
        links = [
            {"rel": "root", "type": "application/json", "href": f"{root}/"},
            {"rel": "self", "type": "application/geo+json", "href": str(request.url)},
        ]
        if offset + limit < len(matched):
            next_token = str(offset + limit)
            if post_body is None:
                href = str(request.url.include_query_params(token=next_token))
                links.append({"rel": "next", "type": "application/geo+json", "href": href})
            else:
                links.append({
                    "rel": "next", "type": "application/geo+json", "method": "POST",
                    "href": str(request.url), "body": {**post_body, "token": next_token},
                })
        return {
            "type": "FeatureCollection",
            "features": features,
            "links": links,
            "numberMatched": len(matched),
            "numberReturned": len(features),
        }


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise _bad_request(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json_patch(doc: dict[str, Any], ops: list[PatchOperation]) -> dict[str, Any]:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test)."""
    doc = copy.deepcopy(doc)

    def parent(parts: list[str]) -> tuple[Any, str]:
        if not parts:
            raise _bad_request("cannot patch the document root")
        node: Any = doc
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node[p]
        return node, parts[-1]

    def get(path: str) -> Any:
        node: Any = doc
        for p in _pointer(path):
            node = node[int(p)] if isinstance(node, list) else node[p]
        return node

    def remove(path: str) -> Any:
        node, key = parent(_pointer(path))
        return node.pop(int(key)) if isinstance(node, list) else node.pop(key)

    def add(path: str, value: Any) -> None:
        node, key = parent(_pointer(path))
        if isinstance(node, list):
            node.insert(len(node) if key == "-" else int(key), value)
        else:
            node[key] = value

    try:
        for op in ops:
            if isinstance(op, PatchRemove):
                remove(op.path)
            elif isinstance(op, PatchMoveCopy):
                value = copy.deepcopy(get(op.from_))
                if op.op == "move":
                    remove(op.from_)
                add(op.path, value)
            elif op.op == "test":
                if get(op.path) != op.value:
                    raise HTTPException(status_code=409, detail=f"test failed at {op.path}")
            elif op.op == "replace":
                remove(op.path)
                add(op.path, op.value)
            else:  # add
                node, key = parent(_pointer(op.path))
                if isinstance(node, dict) or key == "-":
                    add(op.path, op.value)
                else:
                    node.insert(int(key), op.value)
    except (KeyError, IndexError, ValueError, TypeError) as e:
        raise _bad_request(f"patch failed: {e!r}") from None
    return doc


@attr.s
class MemoryTransactionsClient(AsyncBaseTransactionsClient):
    """Write side: the STAC API Transactions extension (items and collections)."""

    store: MemoryStore = attr.ib()

    # -- collections
    async def create_collection(self, collection: Collection, request: Request, **kwargs):
        doc = _dump(collection)
        if doc["id"] in self.store.collections:
            raise ConflictError(f"Collection {doc['id']!r} already exists")
        self.store.collections[doc["id"]] = doc
        self.store.items[doc["id"]] = {}
        return _collection_out(request, doc)

    async def update_collection(
        self, collection_id: str, collection: Collection, request: Request, **kwargs
    ):
        self.store.collection(collection_id)
        doc = _dump(collection)
        if doc["id"] != collection_id:
            raise _bad_request(f"Collection id {doc['id']!r} does not match path {collection_id!r}")
        self.store.collections[collection_id] = doc
        return _collection_out(request, doc)

    async def patch_collection(
        self,
        collection_id: str,
        patch: PartialCollection | list[PatchOperation],
        request: Request,
        **kwargs,
    ):
        doc = self.store.collection(collection_id)
        if isinstance(patch, PartialCollection):
            new = _merge_patch(doc, patch.model_dump(mode="json", exclude_unset=True))
        else:
            new = _json_patch(doc, patch)
        if new.get("id") != collection_id:
            raise _bad_request("a patch cannot change the collection id")
        self.store.collections[collection_id] = _dump(Collection.model_validate(new))
        return _collection_out(request, self.store.collections[collection_id])

    async def delete_collection(self, collection_id: str, **kwargs) -> None:
        self.store.collection(collection_id)
        del self.store.collections[collection_id]
        self.store.items.pop(collection_id, None)
        # -> 204

    # -- items
    def _prepare_item(self, collection_id: str, item: Item) -> dict[str, Any]:
        doc = _dump(item)
        if doc.get("collection") is None:
            doc["collection"] = collection_id
        elif doc["collection"] != collection_id:
            raise _bad_request(
                f"Item {doc['id']!r} has collection {doc['collection']!r}, "
                f"but was sent to {collection_id!r}"
            )
        return doc

    async def create_item(
        self, collection_id: str, item: Item | ItemCollection, request: Request, **kwargs
    ):
        self.store.collection(collection_id)
        existing = self.store.items[collection_id]
        if isinstance(item, ItemCollection):
            docs = [self._prepare_item(collection_id, f) for f in item.features]
            seen: set[str] = set()
            for d in docs:  # all-or-nothing
                if d["id"] in existing or d["id"] in seen:
                    raise ConflictError(
                        f"Item {d['id']!r} already exists in collection {collection_id!r}"
                    )
                seen.add(d["id"])
            for d in docs:
                existing[d["id"]] = d
            return f"Successfully added {len(docs)} items."
        doc = self._prepare_item(collection_id, item)
        if doc["id"] in existing:
            raise ConflictError(f"Item {doc['id']!r} already exists in collection {collection_id!r}")
        existing[doc["id"]] = doc
        return _item_out(request, doc)

    async def update_item(
        self, collection_id: str, item_id: str, item: Item, request: Request, **kwargs
    ):
        self.store.item(collection_id, item_id)
        doc = self._prepare_item(collection_id, item)
        if doc["id"] != item_id:
            raise _bad_request(f"Item id {doc['id']!r} does not match path {item_id!r}")
        self.store.items[collection_id][item_id] = doc
        return _item_out(request, doc)

    async def patch_item(
        self,
        collection_id: str,
        item_id: str,
        patch: PartialItem | list[PatchOperation],
        request: Request,
        **kwargs,
    ):
        doc = self.store.item(collection_id, item_id)
        if isinstance(patch, PartialItem):
            new = _merge_patch(doc, patch.model_dump(mode="json", exclude_unset=True))
        else:
            new = _json_patch(doc, patch)
        if new.get("id") != item_id or new.get("collection") != collection_id:
            raise _bad_request("a patch cannot change the item id or collection")
        self.store.items[collection_id][item_id] = _dump(Item.model_validate(new))
        return _item_out(request, self.store.items[collection_id][item_id])

    async def delete_item(self, item_id: str, collection_id: str, **kwargs) -> None:
        self.store.item(collection_id, item_id)
        del self.store.items[collection_id][item_id]
        # -> 204


# ---------------------------------------------------------------------------- app
def make_app() -> FastAPI:
    """A fresh app with its own empty store (``app.state.store``)."""
    settings = ApiSettings(
        stac_fastapi_title="staclearn test STAC API",
        stac_fastapi_description="In-memory STAC API with transactions, for tests",
        stac_fastapi_landing_id="staclearn-test-api",
        stac_fastapi_version="0.1.0",
    )
    store = MemoryStore()
    extensions = [
        TransactionExtension(client=MemoryTransactionsClient(store=store), settings=settings),
        TokenPaginationExtension(),
    ]
    api = StacApi(
        settings=settings,
        # StacApi copies title/description into the client but not the landing id
        client=MemoryCoreClient(store=store, landing_page_id=settings.stac_fastapi_landing_id),
        extensions=extensions,
        search_get_request_model=create_get_request_model(extensions),
        search_post_request_model=create_post_request_model(extensions),
        items_get_request_model=create_request_model(
            "ItemCollectionUri", base_model=ItemCollectionUri, mixins=[GETTokenPagination],
            request_type="GET",
        ),
    )
    api.app.state.store = store
    return api.app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    uvicorn.run(make_app(), host=HOST, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
