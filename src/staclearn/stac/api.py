"""Publish STAC Items into a STAC API (Transactions extension).

:func:`api_items` turns Items into the JSON a STAC API stores (absolute, unsigned hrefs; no
structural links); :func:`publish_to_api` creates the Collection if needed and POSTs (or PUTs)
each Item.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pystac

from staclearn._io import absolute_href, same_href
from staclearn.errors import PublishError
from staclearn.stac.items import unsigned_href

__all__ = ["api_items", "publish_to_api"]


def api_items(
    items: Sequence[pystac.Item],
    collection_id: str,
    *,
    api_url: str | None = None,
) -> list[dict[str, Any]]:
    """Item dicts ready for a STAC API: absolute, unsigned hrefs and no structural links.

    Asset and link hrefs are made absolute against each Item's self href, local files as
    ``file://`` URIs (publish assets to a place API users can reach first, e.g. with
    :func:`write_catalog` to ``s3://...``). ``self``/``root``/``parent``/``collection``
    links are dropped (the API writes its own). ``derived_from`` links between Items of
    ``items`` point to ``{api_url}/collections/{collection_id}/items/{id}`` when
    ``api_url`` is given, so a prediction's model card resolves through the API.

    Args:
        items: Items (e.g. from :func:`write_catalog` or ``pystac.Item.from_file``).
        collection_id: Collection the Items go into.
        api_url: root URL of the STAC API they will be served from, if known.

    Returns:
        One JSON-ready dict per Item, in order (write them as ndjson for ``pypgstac load``).
    """
    ids = {i.id for i in items}
    out = []
    for item in items:
        d = item.to_dict(include_self_link=False, transform_hrefs=True)
        self_href = item.get_self_href()
        for asset in d.get("assets", {}).values():
            asset["href"] = unsigned_href(absolute_href(asset["href"], self_href))
        links = []
        for link in d.get("links", []):
            if link.get("rel") in ("self", "root", "parent", "collection", "child", "item"):
                continue
            href = unsigned_href(absolute_href(link["href"], self_href))
            if link.get("rel") == "derived_from" and api_url:
                target = next((i for i in items if i.get_self_href() and same_href(i.get_self_href(), href)), None)
                if target is not None and target.id in ids:
                    href = f"{api_url.rstrip('/')}/collections/{collection_id}/items/{target.id}"
            links.append({**link, "href": href})
        d["links"] = links
        d["collection"] = collection_id
        out.append(d)
    return out



def publish_to_api(
    items: Sequence[pystac.Item],
    api_url: str,
    collection: pystac.Collection | str,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> list[str]:
    """Publish Items into a STAC API that implements the Transactions extension.

    Creates the Collection when the API does not have it (``POST /collections``), then
    ``POST /collections/{id}/items`` each Item; an Item that already exists (HTTP 409) is
    replaced with ``PUT /collections/{id}/items/{item id}``. Works with stac-fastapi based
    APIs (stac-fastapi-pgstac with ``ENABLE_TRANSACTIONS_EXTENSIONS=TRUE``,
    stac-fastapi-elasticsearch-opensearch) and any server following the extension
    (https://github.com/stac-api-extensions/transaction). Hrefs are made absolute and
    unsigned by :func:`api_items`.

    Args:
        items: Items to publish; their asset hrefs must be reachable by the API's users.
        api_url: STAC API root URL.
        collection: the Collection to create if missing, or the id of an existing one.
        headers: extra HTTP headers (e.g. ``{"Authorization": "Bearer ..."}``).
        timeout: seconds per request.

    Returns:
        The URL of each published Item in the API.

    Raises:
        PublishError: the API refuses a request (message with status and the API's answer),
            cannot be reached, or lacks the Collection when only its id is given.
    """
    import requests

    root = api_url.rstrip("/")
    hdrs = {"Content-Type": "application/json", **dict(headers or {})}
    cid = collection if isinstance(collection, str) else collection.id

    def call(method: str, url: str, body: dict[str, Any] | None = None) -> requests.Response:
        try:
            return requests.request(method, url, json=body, headers=hdrs, timeout=timeout)
        except requests.RequestException as err:
            raise PublishError(f"STAC API {root} cannot be reached ({err}); check the URL and that it is running.") from err

    def check(resp: requests.Response, what: str) -> None:
        if resp.status_code >= 400:
            hint = " The API does not accept writes: enable its Transactions extension." if resp.status_code == 405 else ""
            raise PublishError(f"STAC API {root} refused {what}: HTTP {resp.status_code} {resp.text[:300]}{hint}")

    if call("GET", f"{root}/collections/{cid}").status_code == 404:
        if isinstance(collection, str):
            raise PublishError(
                f"STAC API {root} has no collection {cid!r}; pass a pystac.Collection to create it."
            )
        body = collection.to_dict(include_self_link=False, transform_hrefs=False)
        body["links"] = [link for link in body.get("links", []) if link.get("rel") not in ("self", "root", "parent", "child", "item")]
        check(call("POST", f"{root}/collections", body), f"creating collection {cid!r}")
    urls = []
    for body in api_items(items, cid, api_url=root):
        url = f"{root}/collections/{cid}/items"
        resp = call("POST", url, body)
        if resp.status_code == 409:
            resp = call("PUT", f"{url}/{body['id']}", body)
        check(resp, f"item {body['id']!r} into collection {cid!r}")
        urls.append(f"{url}/{body['id']}")
    return urls
