"""Publish predictions as STAC Items and write them into a static catalog.

A predicted class map (or change mask) becomes an Item whose asset is the COG, with the
classification extension (``classification:classes``) and raster extension (nodata, data
type, resolution) on the asset, the projection extension, and ``derived_from`` links to
every source Item and to the MLM model card. Signed hrefs (Planetary Computer SAS tokens,
any query string) are stripped before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pystac
from pystac.utils import make_relative_href
import xarray as xr
from odc.geo.geobox import GeoBox

from staclearn.labels import ClassInfo

__all__ = ["unsigned_href", "class_map_item", "write_catalog", "geobox_geometry"]

PROJ_SCHEMA = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER_SCHEMA = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
CLASSIFICATION_SCHEMA = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"


def unsigned_href(href: str) -> str:
    """Strip the query string and fragment of an http(s) href (e.g. a Planetary Computer SAS
    token ``?st=...&sig=...``) so no secret is published; other hrefs are returned unchanged."""
    if href.startswith(("http://", "https://")):
        parts = urlsplit(href)
        return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return href


def geobox_geometry(geobox: GeoBox, valid: xr.DataArray | None = None) -> tuple[dict[str, Any], list[float]]:
    """WGS84 GeoJSON geometry and bbox of a GeoBox's footprint.

    Args:
        geobox: the raster's GeoBox.
        valid: optional ``(y, x)`` bool DataArray; the footprint is then the bounding box of
            its True pixels (the predicted area, not the whole scene).

    Returns:
        ``(geometry, bbox)`` in EPSG:4326 (degrees).
    """
    import numpy as np

    gb = geobox
    if valid is not None:
        ys, xs = np.nonzero(np.asarray(valid))
        if len(ys):
            gb = geobox[int(ys.min()) : int(ys.max()) + 1, int(xs.min()) : int(xs.max()) + 1]
    extent = gb.extent.to_crs("EPSG:4326")
    return extent.json, list(extent.boundingbox)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("staclearn")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


def class_map_item(
    cog_href: str,
    class_map: xr.DataArray,
    *,
    id: str,
    classes: Sequence[ClassInfo],
    source_items: Sequence[pystac.Item],
    model_card: pystac.Item | None = None,
    datetime_range: tuple[datetime, datetime] | None = None,
    collection: str | None = None,
    lineage: str | None = None,
    asset_key: str = "class_map",
    title: str = "Predicted class map",
    nodata: int = 255,
) -> pystac.Item:
    """Describe a predicted class map COG as a STAC Item.

    Args:
        cog_href: href of the COG (made relative when the catalog is saved).
        class_map: the ``(y, x)`` class map (its GeoBox and valid pixels give geometry and
            proj fields).
        id: Item id.
        classes: classes of the map (value, name, colour).
        source_items: imagery Items the prediction was made from (``derived_from``).
        model_card: MLM card Item of the model (``derived_from``).
        datetime_range: acquisition time range of the source imagery; default: the union of
            the source Items' ranges.
        collection: collection id to record.
        lineage: ``processing:lineage`` text.
        asset_key: key of the COG asset.
        title: asset title.
        nodata: nodata value of the COG.

    Returns:
        The Item (STAC 1.1; projection, raster, classification, processing extensions).
    """
    from staclearn.search import item_time_range

    geobox: GeoBox = class_map.odc.geobox
    geometry, bbox = geobox_geometry(geobox, class_map != nodata)
    if datetime_range is None and source_items:
        ranges = [item_time_range(i) for i in source_items]
        datetime_range = (min(r[0] for r in ranges), max(r[1] for r in ranges))
    start, end = datetime_range if datetime_range else (None, None)
    props: dict[str, Any] = {
        "start_datetime": start.isoformat().replace("+00:00", "Z") if start else None,
        "end_datetime": end.isoformat().replace("+00:00", "Z") if end else None,
        "proj:code": f"EPSG:{geobox.crs.epsg}" if geobox.crs.epsg else None,
        "proj:shape": list(geobox.shape.yx),
        "proj:transform": list(geobox.affine)[:6],
        "proj:bbox": list(geobox.boundingbox),
        "processing:software": {"staclearn": _version()},
        "processing:lineage": lineage
        or "Tiled inference of the model in the derived_from MLM card over the derived_from imagery.",
        "processing:level": "L4",
    }
    if geobox.crs.epsg is None:
        props["proj:wkt2"] = geobox.crs.to_wkt()
    item = pystac.Item(
        id=id,
        geometry=geometry,
        bbox=bbox,
        datetime=start or datetime.now().astimezone(),
        properties={k: v for k, v in props.items() if v is not None},
        collection=collection,
    )
    item.stac_extensions = [PROJ_SCHEMA, RASTER_SCHEMA, CLASSIFICATION_SCHEMA, PROCESSING_SCHEMA]
    res = abs(geobox.resolution.x)
    item.add_asset(
        asset_key,
        pystac.Asset(
            href=cog_href,
            media_type=pystac.MediaType.COG,
            roles=["data"],
            title=title,
            extra_fields={
                "classification:classes": [c.to_dict() for c in classes],
                "raster:bands": [
                    {"nodata": nodata, "data_type": "uint8", "spatial_resolution": res, "sampling": "area"}
                ],
            },
        ),
    )
    for src in source_items:
        href = src.get_self_href()
        if href:
            item.add_link(pystac.Link("derived_from", unsigned_href(href), pystac.MediaType.JSON, title=f"source: {src.id}"))
    if model_card is not None:
        href = model_card.get_self_href()
        item.add_link(
            pystac.Link(
                "derived_from",
                unsigned_href(href) if href else model_card,
                pystac.MediaType.JSON,
                title=f"model card: {model_card.id}",
            )
        )
    return item


def write_catalog(
    items: Sequence[pystac.Item],
    out_dir: str | os.PathLike[str],
    *,
    id: str = "staclearn-run",
    description: str = "Outputs of a staclearn run",
) -> pystac.Catalog:
    """Write Items into a self-contained static catalog with relative hrefs.

    Asset files are expected inside ``out_dir`` already (their hrefs become relative). Each
    JSON is written to a temporary name and renamed (pystac's writer is wrapped), so an
    interrupted run leaves no truncated Item.

    Args:
        items: Items to add (model card, predictions...).
        out_dir: catalog root folder; ``catalog.json`` is written there, each Item in
            ``<item id>/<item id>.json``.
        id: catalog id.
        description: catalog description.

    Returns:
        The saved catalog.
    """
    out = Path(out_dir).resolve()
    cat = pystac.Catalog(id=id, description=description)
    for item in items:
        for asset in item.assets.values():
            if not asset.href.startswith(("http://", "https://")) and not os.path.isabs(asset.href):
                asset.href = str((out / asset.href).resolve())
        cat.add_item(item)
    cat.normalize_hrefs(str(out))
    cat.make_all_asset_hrefs_relative()
    for item in items:  # derived_from links between Items of this catalog become relative
        for link in item.links:
            if link.rel == "derived_from" and isinstance(link.target, pystac.Item) and link.target in items:
                link.target = make_relative_href(link.target.get_self_href(), item.get_self_href())
    cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED, stac_io=_AtomicStacIO())
    return cat


class _AtomicStacIO(pystac.stac_io.DefaultStacIO):
    def write_text_to_href(self, href: str, txt: str) -> None:
        if href.startswith(("http://", "https://")) or "://" in href:
            return super().write_text_to_href(href, txt)
        path = Path(href)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(txt, encoding="utf-8")
        os.replace(tmp, path)
