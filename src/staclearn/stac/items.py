"""Publish predictions as STAC Items and write them into a static catalog.

A predicted class map (or change mask) becomes an Item whose asset is the COG, with the
classification extension (``classification:classes``) and raster extension (nodata, data
type, resolution) on the asset, the projection extension, and ``derived_from`` links to
every source Item and to the MLM model card. Signed hrefs (Planetary Computer SAS tokens,
any query string) are stripped before anything is written.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pystac
from pystac.utils import make_relative_href
import xarray as xr
from odc.geo.geobox import GeoBox

from staclearn.errors import PublishError
from staclearn.data.labels import ClassInfo
from staclearn._io import is_url, local_path

__all__ = [
    "unsigned_href",
    "geobox_geometry",
    "class_map_item",
    "write_catalog",
    "api_items",
    "chips_collection",
    "vector_item",
    "publish_to_api",
    "FsspecStacIO",
]

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
    from staclearn.data.search import item_time_range

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
    _provenance(item, source_items, model_card)
    return item




GEOPARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
GEOJSON_MEDIA_TYPE = "application/geo+json"


def _provenance(
    item: pystac.Item,
    source_items: Sequence[pystac.Item],
    model_card: pystac.Item | None,
) -> None:
    for src in source_items:
        href = src.get_self_href()
        if href:
            item.add_link(pystac.Link("derived_from", unsigned_href(href), pystac.MediaType.JSON, title=f"source: {src.id}"))
    if model_card is not None:
        # the card id as a property too, so a STAC API finds every output of a model with a
        # CQL2 filter (``staclearn:model_card = '<id>'``); links are not searchable
        item.properties["staclearn:model_card"] = model_card.id
        href = model_card.get_self_href()
        item.add_link(
            pystac.Link(
                "derived_from",
                unsigned_href(href) if href else model_card,
                pystac.MediaType.JSON,
                title=f"model card: {model_card.id}",
            )
        )


def vector_item(
    href: str,
    table: Any,
    *,
    id: str,
    classes: Sequence[ClassInfo],
    source_items: Sequence[pystac.Item],
    model_card: pystac.Item | None = None,
    class_field: str = "class_value",
    datetime_range: tuple[datetime, datetime] | None = None,
    collection: str | None = None,
    lineage: str | None = None,
    asset_key: str = "footprints",
    title: str = "Classified footprints",
    extra_assets: Mapping[str, str] | None = None,
) -> pystac.Item:
    """Describe a per-object result table (e.g. building footprints with their predicted
    damage class and confidence) as a STAC Item with a vector asset.

    The geometry is the WGS84 convex hull of the objects; the asset is GeoParquet (or
    GeoJSON by its extension) and carries ``classification:classes`` for ``class_field``;
    the Item has the processing extension and ``derived_from`` links to the imagery Items and
    the MLM card, like :func:`class_map_item`.

    Args:
        href: path or URL of the GeoParquet / GeoJSON file.
        table: the ``geopandas.GeoDataFrame`` written there (any CRS).
        id: Item id.
        classes: classes of ``class_field``.
        source_items: imagery Items the objects were classified from.
        model_card: the classifier's MLM card Item.
        class_field: column holding the class value.
        datetime_range: time range; default the union of the source Items' ranges.
        collection: collection id to record.
        lineage: ``processing:lineage`` text.
        asset_key: key of the table asset.
        title: asset title.
        extra_assets: more files of the same table, ``{key: href}`` (e.g. a GeoJSON copy).

    Returns:
        The Item (STAC 1.1; classification and processing extensions).

    Raises:
        PublishError: the table is empty or has no CRS.
    """
    from shapely.geometry import mapping

    from staclearn.data.search import item_time_range

    if table.crs is None or len(table) == 0:
        raise PublishError(f"Cannot publish {href}: the table is empty or has no CRS; set one with .set_crs().")
    wgs = table.to_crs("EPSG:4326")
    valid = wgs.geometry[~(wgs.geometry.is_empty | wgs.geometry.isna())]
    hull = valid.union_all().convex_hull if len(valid) else None
    if datetime_range is None and source_items:
        ranges = [item_time_range(i) for i in source_items]
        datetime_range = (min(r[0] for r in ranges), max(r[1] for r in ranges))
    start, end = datetime_range if datetime_range else (None, None)
    counts = table[class_field].value_counts(dropna=True).to_dict() if class_field in table else {}
    props: dict[str, Any] = {
        "start_datetime": start.isoformat().replace("+00:00", "Z") if start else None,
        "end_datetime": end.isoformat().replace("+00:00", "Z") if end else None,
        "processing:software": {"staclearn": _version()},
        "processing:lineage": lineage
        or "Chips around each footprint classified by the model in the derived_from MLM card over the derived_from imagery.",
        "processing:level": "L4",
    }
    item = pystac.Item(
        id=id,
        geometry=dict(mapping(hull)) if hull is not None else None,
        bbox=list(hull.bounds) if hull is not None else None,
        datetime=start or datetime.now().astimezone(),
        properties={k: v for k, v in props.items() if v is not None},
        collection=collection,
    )
    item.stac_extensions = [CLASSIFICATION_SCHEMA, PROCESSING_SCHEMA]
    files = {asset_key: href, **dict(extra_assets or {})}
    for key, path in files.items():
        media = GEOJSON_MEDIA_TYPE if str(path).endswith((".geojson", ".json")) else GEOPARQUET_MEDIA_TYPE
        item.add_asset(
            key,
            pystac.Asset(
                href=path,
                media_type=media,
                roles=["data"],
                title=title,
                extra_fields={
                    "classification:classes": [c.to_dict() for c in classes],
                    "staclearn:class_field": class_field,
                    "staclearn:row_count": int(len(table)),
                    "staclearn:class_counts": {str(int(k)): int(v) for k, v in counts.items()},
                },
            ),
        )
    _provenance(item, source_items, model_card)
    return item


def chips_collection(
    index_path: str | os.PathLike[str],
    *,
    id: str,
    source_items: Sequence[pystac.Item],
    description: str = "Training chips exported by staclearn",
    license: str = "other",
) -> pystac.Collection:
    """Describe an exported chip set as a STAC Collection.

    The chips themselves stay GeoTIFFs listed in the GeoParquet index (one row per chip with
    its GeoBox, split and files); the Collection carries the index as its ``index`` asset,
    the chips' extent (WGS84 union of chip footprints; time range of the source Items),
    ``summaries`` of the split, and ``derived_from`` links to the source Items.

    Args:
        index_path: the ``chips.parquet`` written by :func:`staclearn.chips.pixel.export_chips`.
        id: Collection id.
        source_items: imagery and label Items the chips were cut from.
        description: Collection description.
        license: licence of the chips (that of the source data).

    Returns:
        The Collection (not saved; pass it to :func:`write_catalog` ``children``).
    """
    import geopandas as gpd

    from staclearn.data.search import item_time_range

    index = gpd.read_parquet(index_path)
    bounds = index.to_crs("EPSG:4326").total_bounds.tolist() if len(index) else [-180.0, -90.0, 180.0, 90.0]
    times = [item_time_range(i) for i in source_items]
    interval = [min(t[0] for t in times), max(t[1] for t in times)] if times else [None, None]
    col = pystac.Collection(
        id=id,
        description=description,
        extent=pystac.Extent(pystac.SpatialExtent([bounds]), pystac.TemporalExtent([interval])),
        license=license,
    )
    counts = index["split"].value_counts().to_dict() if "split" in index else {}
    col.summaries = pystac.Summaries({"staclearn:split": sorted(counts), "staclearn:chip_count": [int(len(index))]})
    col.add_asset(
        "index",
        pystac.Asset(
            href=str(Path(index_path).resolve()),
            media_type=GEOPARQUET_MEDIA_TYPE,
            roles=["data"],
            title="Chip index (GeoParquet): chip GeoBox, split, image and label files",
            extra_fields={"staclearn:chips": {k: int(v) for k, v in counts.items()}},
        ),
    )
    for src in source_items:
        href = src.get_self_href()
        if href:
            col.add_link(pystac.Link("derived_from", unsigned_href(href), pystac.MediaType.JSON, title=f"source: {src.id}"))
    return col






class FsspecStacIO(pystac.stac_io.DefaultStacIO):
    """pystac reader/writer for local paths and any fsspec URL (``memory://``, ``s3://``,
    ``gs://``, ``az://``...).

    Local files are written to a temporary name and renamed, so an interrupted run never
    leaves a truncated JSON that looks complete; object stores write whole objects anyway.
    http(s) hrefs are read with pystac's default reader.
    """

    def read_text_from_href(self, href: str) -> str:
        if is_url(href) and not href.startswith(("http://", "https://")):
            import fsspec

            with fsspec.open(href, "r", encoding="utf-8") as f:
                return str(f.read())
        return super().read_text_from_href(href)

    def write_text_to_href(self, href: str, txt: str) -> None:
        if is_url(href):
            if href.startswith(("http://", "https://")):
                raise PublishError(
                    f"Cannot write {href}: http(s) locations are read-only. Publish into a STAC API "
                    "with publish_to_api(), or write to a local folder or an object-store URL."
                )
            import fsspec

            with fsspec.open(href, "w", encoding="utf-8") as f:
                f.write(txt)
            return
        path = Path(local_path(href))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(txt, encoding="utf-8")
        os.replace(tmp, path)


def _copy_file(src: str, dst: str) -> None:
    """Copy a local file to a local path (atomically) or an fsspec URL."""
    import fsspec

    if is_url(dst):
        with open(src, "rb") as fi, fsspec.open(dst, "wb") as fo:
            shutil.copyfileobj(fi, fo)
        return
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    tmp = dst + ".tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _join(root: str, rel: str) -> str:
    return f"{root.rstrip('/')}/{rel}" if is_url(root) else str(Path(root) / rel)


def _strip_secrets(item: pystac.Item) -> None:
    """Unsign every asset and link href of ``item`` (in place)."""
    for asset in item.assets.values():
        asset.href = unsigned_href(asset.href)
    for link in item.links:
        if isinstance(link.target, str):
            link.target = unsigned_href(link.target)


_STRUCTURAL = frozenset({"self", "root", "parent", "child", "item", "collection"})


def _absolute_links(obj: pystac.STACObject) -> None:
    """Resolve the non-structural link hrefs of ``obj`` against its current self href (in
    place), so they survive the move of ``obj`` into another catalog."""
    from pystac.utils import make_absolute_href

    start = obj.get_self_href()
    for link in obj.links:
        if link.rel in _STRUCTURAL or not isinstance(link.target, str):
            continue
        href = link.target
        if start is not None and not is_url(href) and not os.path.isabs(local_path(href)):
            href = make_absolute_href(href, start)
        link.target = unsigned_href(href)


def _portable_href(href: str, start: str, local_start: str | None) -> str:
    """The href a published object at ``start`` writes for a link to ``href``.

    http(s) targets keep their canonical (unsigned) absolute URL; targets on the same object
    store or filesystem root as ``start`` become relative, so the catalog can be moved or
    copied along with its neighbours; a local target seen from an object-store ``start``
    is made relative to ``local_start`` (where that object lies in the local layout the
    catalog was copied from), else kept as a ``file://`` URI.
    """
    href = unsigned_href(href)
    if href.startswith(("http://", "https://")):
        return href
    if is_url(href):
        same_store = is_url(start) and urlsplit(href)[:2] == urlsplit(start)[:2]
        return make_relative_href(href, start) if same_store else href
    path = Path(local_path(href))
    if not path.is_absolute():  # relative to an object without a self href: nothing to resolve it against
        return href
    if is_url(start):
        if local_start is None:
            return path.resolve().as_uri()
        start = local_start
    start_dir = Path(local_path(start)).parent
    if path.anchor != start_dir.anchor:  # another drive: no relative path exists
        return path.as_uri()
    return Path(os.path.relpath(path, start_dir)).as_posix()


def _portable_links(obj: pystac.STACObject, root: str, base: Path | None) -> None:
    """Rewrite the non-structural links of ``obj`` (already at its final self href under
    ``root``) with :func:`_portable_href`."""
    start = obj.get_self_href()
    if start is None:
        return
    local_start = None
    if is_url(start) and base is not None and start.startswith(root.rstrip("/") + "/"):
        local_start = str(base / start[len(root.rstrip("/")) + 1 :])
    for link in obj.links:
        if link.rel in _STRUCTURAL:
            continue
        target = link.target
        href = target if isinstance(target, str) else target.get_self_href()
        if href is None:
            continue
        link.target = _portable_href(href, start, local_start)


def write_catalog(
    items: Sequence[pystac.Item],
    target: str | os.PathLike[str],
    *,
    id: str = "staclearn-run",
    description: str = "Outputs of a staclearn run",
    collection_id: str | None = None,
    license: str = "other",
    asset_root: str | os.PathLike[str] | None = None,
    children: Sequence[pystac.Collection] = (),
) -> pystac.Catalog:
    """Write Items into a self-contained static catalog: ``catalog.json`` → one Collection
    (``<collection_id>/collection.json``) → ``<collection_id>/<item id>/<item id>.json``.

    ``target`` is a local folder or any fsspec URL (``memory://``, ``s3://bucket/prefix``,
    ``file:///...``). Asset files that are local and not already under ``target`` are copied
    there, so the catalog stands on its own: under ``asset_root`` they keep their relative
    path, elsewhere they go next to their Item. The catalog is relocatable: every href
    between its own objects and to its assets is relative, and links to sources outside it
    (``derived_from`` the imagery, the model card) are their canonical absolute URL when
    remote (http(s), unsigned) and relative when local (same filesystem root), never an
    absolute machine path; from an object-store ``target`` a local source is linked relative
    to where the object lies under ``asset_root`` (a ``file://`` URI without one). Every
    href is unsigned first (query strings such as Planetary Computer SAS tokens are dropped)
    so no secret is published. Local JSON and copied files are written to a temporary name
    and renamed, so an interrupted run leaves no truncated output.

    Args:
        items: Items to publish (model card, predictions...). Their ``collection`` is set.
        target: catalog root folder or fsspec URL.
        id: catalog id.
        description: catalog and collection description.
        collection_id: id of the Collection; default ``id``.
        license: SPDX id or ``"other"`` for the Collection (the source data's licence rules).
        asset_root: local folder the Items' asset files are laid out under; default:
            ``target`` when it is local.
        children: further Collections to list in the root catalog (e.g. the chip index from
            :func:`chips_collection`); their assets are placed like the Items'.

    Returns:
        The saved root catalog.

    Raises:
        PublishError: ``target`` is an http(s) URL (read-only; use :func:`publish_to_api`).
    """
    root = os.fspath(target)
    if root.startswith(("http://", "https://")):
        raise PublishError(
            f"Cannot write a static catalog to {root}: http(s) is read-only. Use publish_to_api() "
            "for a STAC API, or a local folder / object-store URL (s3://, gs://, az://, memory://)."
        )
    if not is_url(root):
        root = str(Path(local_path(root)).resolve())
    base = Path(asset_root).resolve() if asset_root is not None else (None if is_url(root) else Path(root))
    cat = pystac.Catalog(id=id, description=description)
    cid = collection_id or id

    def place(owner: str, folder: str, assets: Mapping[str, pystac.Asset]) -> None:
        for key, asset in assets.items():
            asset.href = unsigned_href(asset.get_absolute_href() or asset.href)
            href = local_path(asset.href)
            if is_url(href):
                continue
            src = Path(href if os.path.isabs(href) else (base or Path.cwd()) / href).resolve()
            inside = base is not None and src.is_relative_to(base)
            rel = src.relative_to(base).as_posix() if inside else f"{folder}/{src.name}"
            dst = _join(root, rel)
            if not (inside and not is_url(root) and base == Path(root)):
                if not src.is_file():
                    raise PublishError(
                        f"Asset {key!r} of {owner!r} points to {src}, which does not exist; "
                        "write the file before publishing or fix the href."
                    )
                _copy_file(str(src), dst)
            asset.href = dst

    for item in items:
        _strip_secrets(item)
        _absolute_links(item)
        for rel in ("root", "parent", "collection"):  # re-parented below; stale ones may not resolve
            item.remove_links(rel)
    # a link to another Item being published follows it to its new place
    by_href = {os.path.normpath(local_path(h)): i for i in items if (h := i.get_self_href())}
    for item in items:
        for link in item.links:
            if link.rel not in _STRUCTURAL and isinstance(link.target, str):
                link.target = by_href.get(os.path.normpath(local_path(link.target)), link.target)
        place(item.id, f"{cid}/{item.id}", item.assets)
        item.collection_id = cid
    for child in children:
        _absolute_links(child)
        place(child.id, child.id, child.assets)
        cat.add_child(child)
    extent = pystac.Extent.from_items(items) if items else pystac.Extent(
        pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]), pystac.TemporalExtent([[None, None]])
    )
    col = pystac.Collection(id=cid, description=description, extent=extent, license=license)
    cat.add_child(col)
    col.add_items(items)
    cat.normalize_hrefs(root)
    cat.make_all_asset_hrefs_relative()
    for child in children:
        child.make_all_asset_hrefs_relative()
    for obj in [*items, *children]:  # derived_from and other links: relative, or canonical URLs
        _portable_links(obj, root, base)
    cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED, stac_io=FsspecStacIO())
    return cat


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
            asset["href"] = unsigned_href(_absolute(asset["href"], self_href))
        links = []
        for link in d.get("links", []):
            if link.get("rel") in ("self", "root", "parent", "collection", "child", "item"):
                continue
            href = unsigned_href(_absolute(link["href"], self_href))
            if link.get("rel") == "derived_from" and api_url:
                target = next((i for i in items if i.get_self_href() and _same(i.get_self_href(), href)), None)
                if target is not None and target.id in ids:
                    href = f"{api_url.rstrip('/')}/collections/{collection_id}/items/{target.id}"
            links.append({**link, "href": href})
        d["links"] = links
        d["collection"] = collection_id
        out.append(d)
    return out


def _absolute(href: str, start: str | None) -> str:
    """Absolute form of ``href``; local paths become ``file://`` URIs, which stay unambiguous
    when the Item is read back from an http(s) API."""
    if not is_url(href) and not os.path.isabs(local_path(href)) and start is not None:
        from pystac.utils import make_absolute_href

        href = make_absolute_href(href, start)
    if not is_url(href):
        return Path(local_path(href)).resolve().as_uri()
    return href


def _same(a: str, b: str) -> bool:
    return os.path.normpath(local_path(a)) == os.path.normpath(local_path(b))


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
