"""Find STAC Items: static catalogs, ItemCollection files and STAC APIs.

One entry point, :func:`open_items`, turns any of the places Items live into a
:class:`pystac.ItemCollection`, filtered by bbox, datetime and collections the same way a
STAC API ``/search`` does, and passed through an optional ``modifier`` (the pystac-client
hook, e.g. ``planetary_computer.sign_inplace``) so asset hrefs can be signed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime as _dt
from datetime import timezone
from pathlib import Path
from typing import Any

import pystac
from pystac.utils import str_to_datetime

from staclearn._io import HTTP_RETRY_STATUSES, http_retry, is_url
from staclearn.errors import (
    CatalogNotFoundError,
    ConfigError,
    MalformedStacError,
    NoItemsFoundError,
    StacApiError,
    StaclearnError,
)

__all__ = ["open_items", "item_time_range", "bbox_intersects", "api_retry", "RETRY_STATUSES"]

Modifier = Callable[[Any], Any]
BBox = tuple[float, float, float, float]

#: HTTP statuses worth retrying (429 rate limiting, 5xx server failures): the one policy of every
#: HTTP read, STAC API requests here and fsspec / requests reads in :mod:`staclearn._io`.
RETRY_STATUSES = HTTP_RETRY_STATUSES
#: ``api_retry(retries=4, backoff=0.5)``: the urllib3 ``Retry`` given to pystac-client's ``StacApiIO``.
api_retry = http_retry


def _http_status(err: BaseException | None) -> int | None:
    """The HTTP status behind an exception (its own, or one in its cause / context chain):
    pystac-client's ``APIError.status_code``, urllib's ``HTTPError.code``, requests'
    ``response.status_code``; ``None`` when no HTTP answer came."""
    seen = 0
    while err is not None and seen < 6:
        for value in (
            getattr(err, "status_code", None),
            getattr(err, "code", None),
            getattr(getattr(err, "response", None), "status_code", None),
        ):
            if isinstance(value, int) and 100 <= value < 600:
                return value
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def _unreadable_url(url: str, err: BaseException) -> CatalogNotFoundError:
    status = _http_status(err)
    answer = f"HTTP {status}" if status is not None else type(err).__name__
    return CatalogNotFoundError(
        f"STAC file {url!r} cannot be read ({answer}: {str(err)[:200]}). Check the URL, your network "
        "and, for signed hrefs, the token.",
        url=url,
        status_code=status,
    )


def _read_json(source: str) -> dict[str, Any]:
    if is_url(source):
        try:
            return pystac.StacIO.default().read_json(source)
        except json.JSONDecodeError as err:
            raise MalformedStacError(f"{source!r} is not JSON ({err}); expected a STAC catalog, collection, "
                                     "Item or ItemCollection file.") from err
        except Exception as err:  # noqa: BLE001 - urllib / urllib3 / requests failures alike
            raise _unreadable_url(source, err) from err
    path = Path(source).expanduser()
    if not path.exists():
        raise CatalogNotFoundError(
            f"STAC source {source!r} does not exist. Pass the path of a catalog.json, "
            "collection.json or ItemCollection (.json/.geojson) file, or the URL of a STAC API."
        )
    if path.is_dir():
        inside = [n for n in ("catalog.json", "collection.json") if (path / n).exists()]
        raise CatalogNotFoundError(
            f"STAC source {source!r} is a folder; pass "
            + (f"{str(path / inside[0])!r}." if inside else "the path of its catalog.json or ItemCollection file.")
        )
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError) as err:
        raise CatalogNotFoundError(f"STAC source {source!r} cannot be read ({err}); check its permissions.") from err
    except json.JSONDecodeError as err:
        raise MalformedStacError(
            f"{source!r} is not JSON ({err}); expected a STAC catalog, collection, Item or "
            "ItemCollection file."
        ) from err


def _parse_datetime_range(datetime: str | None) -> tuple[_dt | None, _dt | None]:
    if datetime is None:
        return None, None
    parts = datetime.split("/") if "/" in datetime else [datetime, datetime]
    if len(parts) != 2:
        raise ConfigError(f"datetime {datetime!r} is not 'start/end' or a single RFC 3339 instant")

    def parse(s: str, end: bool) -> _dt | None:
        if s in ("", ".."):
            return None
        if len(s) == 10:  # a bare date covers the whole day
            s = s + ("T23:59:59.999999Z" if end else "T00:00:00Z")
        try:
            d = str_to_datetime(s)
        except (ValueError, OverflowError) as err:
            raise ConfigError(
                f"datetime {datetime!r}: {s!r} is not an RFC 3339 date or instant ({err}); write e.g. "
                "'2021-06-01' or '2021-06-01T10:00:00Z', and '..' for an open end."
            ) from err
        return d if d.tzinfo else d.replace(tzinfo=timezone.utc)

    return parse(parts[0], False), parse(parts[1], True)


def item_time_range(item: pystac.Item) -> tuple[_dt, _dt]:
    """Start and end of an Item's acquisition (``start_datetime``/``end_datetime`` or ``datetime``).

    Args:
        item: a STAC Item.

    Returns:
        ``(start, end)`` timezone-aware datetimes; equal when the Item has a single ``datetime``.

    Raises:
        NoItemsFoundError: the Item has neither ``datetime`` nor a start/end range
            (invalid per the STAC spec).
    """
    common = item.common_metadata
    start = common.start_datetime or item.datetime
    end = common.end_datetime or item.datetime
    if start is None or end is None:
        raise NoItemsFoundError(f"Item {item.id!r} has no datetime nor start/end_datetime")
    return start, end


def bbox_intersects(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two ``(west, south, east, north)`` boxes intersect (edges touching counts)."""
    return not (a[0] > b[2] or a[2] < b[0] or a[1] > b[3] or a[3] < b[1])


def _matches(
    item: pystac.Item,
    bbox: BBox | None,
    time_range: tuple[_dt | None, _dt | None],
    collections: Sequence[str] | None,
    ids: Sequence[str] | None,
) -> bool:
    if collections is not None and item.collection_id not in collections:
        return False
    if ids is not None and item.id not in ids:
        return False
    if bbox is not None:
        if item.bbox is None:
            return False
        if not bbox_intersects(item.bbox, bbox):
            return False
    start, end = time_range
    if start is not None or end is not None:
        istart, iend = item_time_range(item)
        if start is not None and iend < start:
            return False
        if end is not None and istart > end:
            return False
    return True


def _describe(
    source: str,
    bbox: BBox | None,
    datetime: str | None,
    collections: Sequence[str] | None,
    ids: Sequence[str] | None,
) -> str:
    filters = [
        f"{k}={v!r}"
        for k, v in (("bbox", bbox), ("datetime", datetime), ("collections", collections), ("ids", ids))
        if v is not None
    ]
    return f"{source!r}" + (f" with {', '.join(filters)}" if filters else "")


def open_items(
    source: str | os.PathLike[str] | pystac.Catalog | pystac.ItemCollection | Iterable[pystac.Item],
    *,
    bbox: Sequence[float] | None = None,
    datetime: str | None = None,
    collections: Sequence[str] | str | None = None,
    ids: Sequence[str] | None = None,
    max_items: int | None = None,
    modifier: Modifier | None = None,
    retries: int = 4,
    backoff: float = 0.5,
) -> pystac.ItemCollection:
    """Open STAC Items from a static catalog, an ItemCollection file or a STAC API.

    What ``source`` is decides how Items are found:

    * a ``catalog.json`` / ``collection.json`` path or URL: every Item below it (pystac walk);
    * an ItemCollection (``"type": "FeatureCollection"``) or single Item JSON file;
    * an ``http(s)`` URL that is not a ``.json`` file: a STAC API root, searched with
      pystac-client (``/search`` with bbox, datetime, collections, ids);
    * an already open :class:`pystac.Catalog`, :class:`pystac.ItemCollection` or Items.

    Static sources are filtered locally with the same semantics as the STAC API Item Search
    (bbox intersects the Item bbox; datetime interval intersects the Item's time range).

    Args:
        source: where the Items are (see above).
        bbox: ``(west, south, east, north)`` in WGS84 degrees (EPSG:4326), as in STAC.
        datetime: RFC 3339 instant or interval ``"start/end"``; ``".."`` for an open end;
            bare dates (``2021-06-01``) cover the whole day.
        collections: keep only Items of these collection ids.
        ids: keep only Items with these ids.
        max_items: stop after this many Items.
        modifier: called on every Item (in place) before it is returned, e.g.
            ``planetary_computer.sign_inplace`` to sign asset hrefs (pystac-client's hook).
        retries: STAC API requests are retried this many times on HTTP 429 / 5xx and
            connection errors (:func:`api_retry`).
        backoff: base of the exponential wait between retries, seconds.

    Returns:
        The matching Items, in catalog / API order.

    Raises:
        CatalogNotFoundError: the path does not exist, is not JSON, or the URL is not a STAC
            API (e.g. HTTP 404 on its root).
        StacApiError: the API kept answering 429 / 5xx, or could not be reached, after the
            retries; ``status_code`` holds the last HTTP status.
        NoItemsFoundError: nothing matched; the message lists the filters to relax.
        MalformedStacError: a file below a static catalog is not JSON or not valid STAC.
        ConfigError: ``bbox`` is not four numbers or ``datetime`` is not RFC 3339.
    """
    if isinstance(collections, str):
        collections = [collections]
    bbox_t = _check_bbox(bbox)
    time_range = _parse_datetime_range(datetime)
    label = source if isinstance(source, str) else os.fspath(source) if isinstance(source, os.PathLike) else type(source).__name__

    items: list[pystac.Item]
    if isinstance(source, (str, os.PathLike)):
        src = os.fspath(source)
        if is_url(src) and not src.split("?")[0].endswith((".json", ".geojson")):
            items = _search_api(src, bbox_t, datetime, collections, ids, max_items, modifier, api_retry(retries, backoff))
            modifier = None  # pystac-client already applied it
        else:
            items = list(_iter_static(src))
    elif isinstance(source, pystac.Catalog):
        items = list(source.get_items(recursive=True))
    else:
        items = list(source)

    found: list[pystac.Item] = []
    for item in items:
        if _matches(item, bbox_t, time_range, collections, ids):
            found.append(item)
            if max_items is not None and len(found) >= max_items:
                break
    if not found:
        raise NoItemsFoundError(
            f"No STAC Item found in {_describe(str(label), bbox_t, datetime, collections, ids)}. "
            "Check the bbox is (west, south, east, north) in degrees, widen the datetime range or "
            "drop the collections filter."
        )
    if modifier is not None:
        for item in found:
            modifier(item)
    return pystac.ItemCollection(found, clone_items=False)


def _check_bbox(bbox: Sequence[float] | None) -> BBox | None:
    """``bbox`` as four floats, or :class:`~staclearn.errors.ConfigError`."""
    if bbox is None:
        return None
    try:
        out = tuple(float(v) for v in bbox)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"bbox must be four numbers (west, south, east, north) in degrees, got {bbox!r}") from err
    if len(out) != 4:
        raise ConfigError(f"bbox must be (west, south, east, north) in degrees, got {bbox!r}")
    return out  # type: ignore[return-value]


def _iter_static(src: str) -> Iterable[pystac.Item]:
    try:
        yield from _walk_static(src)
    except StaclearnError:
        raise
    except json.JSONDecodeError as err:
        raise MalformedStacError(
            f"{_culprit(src)} is not JSON ({err}); fix the file or rebuild the catalog."
        ) from err
    except (KeyError, TypeError, ValueError, AttributeError, pystac.STACError, pystac.STACTypeError) as err:
        raise MalformedStacError(
            f"{_culprit(src)} is malformed ({type(err).__name__}: {err}); every Item needs "
            "'id', 'geometry', 'properties.datetime' (or start/end_datetime), 'links' and 'assets'. "
            "Fix the file or rebuild the catalog."
        ) from err
    except Exception as err:  # noqa: BLE001 - a child or Item URL of a remote catalog failed
        if not is_url(src):
            raise
        raise _unreadable_url(src, err) from err


def _culprit(src: str) -> str:
    """Name the first JSON file below a local catalog that does not parse or is not a valid STAC
    object (the error pystac raises names no file)."""
    if is_url(src):
        return f"A STAC file under {src!r}"
    for path in sorted(Path(src).parent.rglob("*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("type") == "Feature":
                pystac.Item.from_dict(doc)
        except Exception:  # noqa: BLE001 - any failure marks the culprit
            return f"STAC file {str(path)!r}"
    return f"A STAC file under {src!r}"


def _walk_static(src: str) -> Iterable[pystac.Item]:
    data = _read_json(src)
    kind = data.get("type")
    if kind == "FeatureCollection":
        yield from pystac.ItemCollection.from_dict(data, preserve_dict=False)
        return
    if kind == "Feature":
        item = pystac.Item.from_dict(data)
        item.set_self_href(src if is_url(src) else os.path.abspath(src))
        yield item
        return
    if kind in ("Catalog", "Collection"):
        root = pystac.read_file(src if is_url(src) else os.path.abspath(src))
        if isinstance(root, pystac.Catalog):
            yield from root.get_items(recursive=True)
        return
    raise CatalogNotFoundError(
        f"{src!r} is JSON of type {kind!r}, not a STAC Catalog, Collection, Item or ItemCollection."
    )


def _search_api(
    url: str,
    bbox: BBox | None,
    datetime: str | None,
    collections: Sequence[str] | None,
    ids: Sequence[str] | None,
    max_items: int | None,
    modifier: Modifier | None,
    retry: Any = None,
) -> list[pystac.Item]:
    import requests
    from pystac_client import Client
    from pystac_client.exceptions import APIError
    from pystac_client.stac_api_io import StacApiIO

    try:
        client = Client.open(url, modifier=modifier, stac_io=StacApiIO(max_retries=retry))
        search = client.search(
            bbox=bbox,
            datetime=datetime,
            collections=list(collections) if collections else None,
            ids=list(ids) if ids else None,
            max_items=max_items,
        )
        return list(search.items())
    except APIError as err:
        status = getattr(err, "status_code", None)
        if status is None and isinstance(err.__context__, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            raise StacApiError(
                f"Could not reach the STAC API at {url!r} after the retries "
                f"({type(err.__context__).__name__}). Check the URL and your network.",
                url=url,
                status_code=None,
            ) from err
        if status is not None and (status in RETRY_STATUSES or status >= 500):
            tries = 1 + (retry.total if retry is not None else 0)
            raise StacApiError(
                f"The STAC API at {url!r} answered HTTP {status} on {tries} attempts: "
                f"{str(err)[:200]}. The service is failing or rate-limiting; try again later, "
                "or raise retries= / backoff=.",
                url=url,
                status_code=status,
            ) from err
        raise CatalogNotFoundError(
            f"Could not search the STAC API at {url!r} (HTTP {status}): {str(err)[:200]}. Check the URL is "
            "the API root (the page with 'conformsTo').",
            url=url,
            status_code=status,
        ) from err
    except requests.exceptions.RetryError as err:  # urllib3 gave up on a status it retries
        found = re.search(r"too many (\d{3}) error", str(err))
        raise StacApiError(
            f"The STAC API at {url!r} kept failing after the retries: {err}. Try again later.",
            url=url,
            status_code=int(found.group(1)) if found else None,
        ) from err
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as err:
        raise StacApiError(
            f"Could not reach the STAC API at {url!r} after the retries ({type(err).__name__}). Check the "
            "URL and your network.",
            url=url,
            status_code=None,
        ) from err
    except OSError as err:
        raise CatalogNotFoundError(
            f"Could not search the STAC API at {url!r}: {err}. Check the URL is the API root "
            "(the page with 'conformsTo') and that it is reachable.",
            url=url,
            status_code=_http_status(err),
        ) from err
