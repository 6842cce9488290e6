"""Describe predictions as STAC Items (class maps, change masks, vector tables) and chip sets as Collections.

A predicted class map (or change mask) becomes an Item whose asset is the COG, with the
classification extension (``classification:classes``) and raster extension (nodata, data
type, resolution) on the asset, the projection extension, and ``derived_from`` links to
every source Item and to the MLM model card. Signed hrefs (Planetary Computer SAS tokens,
any query string) are stripped before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pystac
import xarray as xr
from odc.geo.geobox import GeoBox
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension, Sampling

from staclearn.data.labels import ClassInfo
from staclearn.errors import PublishError

__all__ = [
    "vectorize_item",
    "unsigned_href",
    "geobox_geometry",
    "class_map_item",
    "chips_collection",
    "vector_item",
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


def add_schema(obj: pystac.Item | pystac.Collection, uri: str) -> None:
    """Declare an extension schema on ``obj``: append ``uri`` to its ``stac_extensions``
    unless it is already there (never replaces the list).

    For the extensions pystac has no class for at the version staclearn writes
    (classification v1.1.0, processing v1.2.0, MLM v1.5.2); the others go through
    pystac's ``XExtension.ext(obj, add_if_missing=True)``.
    """
    if uri not in obj.stac_extensions:
        obj.stac_extensions.append(uri)


def _owner(obj: pystac.Item | pystac.Asset) -> pystac.Item | pystac.Collection:
    owner = obj.owner if isinstance(obj, pystac.Asset) else obj
    if not isinstance(owner, (pystac.Item, pystac.Collection)):
        raise PublishError(f"Asset {obj!r} has no owner Item; add it to an Item before its extension fields.")
    return owner


def _classification(obj: pystac.Item | pystac.Asset, classes: Sequence[ClassInfo]) -> None:
    """``classification:classes`` (v1.1.0) on an Item or an asset already added to its Item.

    pystac's ``ClassificationExtension`` writes v2.0.0, whose schema has no local copy for
    offline validation, so the v1.1.0 field is set directly and its schema declared.
    """
    fields = obj.properties if isinstance(obj, pystac.Item) else obj.extra_fields
    fields["classification:classes"] = [c.to_dict() for c in classes]
    add_schema(_owner(obj), CLASSIFICATION_SCHEMA)


def _processing(item: pystac.Item, lineage: str) -> None:
    """Processing extension (v1.2.0; pystac has no class for it): software, lineage, level L4."""
    item.properties["processing:software"] = {"staclearn": _version()}
    item.properties["processing:lineage"] = lineage
    item.properties["processing:level"] = "L4"
    add_schema(item, PROCESSING_SCHEMA)


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
    }
    item = pystac.Item(
        id=id,
        geometry=geometry,
        bbox=bbox,
        datetime=start or datetime.now().astimezone(),
        properties={k: v for k, v in props.items() if v is not None},
        collection=collection,
    )
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.code = f"EPSG:{geobox.crs.epsg}" if geobox.crs.epsg else None
    proj.shape = list(geobox.shape.yx)
    proj.transform = list(geobox.affine)[:6]
    proj.bbox = list(geobox.boundingbox)
    if geobox.crs.epsg is None:
        proj.wkt2 = geobox.crs.to_wkt()
    asset = pystac.Asset(href=cog_href, media_type=pystac.MediaType.COG, roles=["data"], title=title)
    item.add_asset(asset_key, asset)
    raster = RasterExtension.ext(asset, add_if_missing=True)
    _classification(asset, classes)
    raster.bands = [
        RasterBand.create(
            nodata=nodata, data_type=DataType.UINT8, spatial_resolution=abs(geobox.resolution.x), sampling=Sampling.AREA
        )
    ]
    _processing(
        item,
        lineage or "Tiled inference of the model in the derived_from MLM card over the derived_from imagery.",
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
    }
    item = pystac.Item(
        id=id,
        geometry=dict(mapping(hull)) if hull is not None else None,
        bbox=list(hull.bounds) if hull is not None else None,
        datetime=start or datetime.now().astimezone(),
        properties={k: v for k, v in props.items() if v is not None},
        collection=collection,
    )
    files = {asset_key: href, **dict(extra_assets or {})}
    for key, path in files.items():
        media = GEOJSON_MEDIA_TYPE if str(path).endswith((".geojson", ".json")) else GEOPARQUET_MEDIA_TYPE
        asset = pystac.Asset(href=path, media_type=media, roles=["data"], title=title)
        item.add_asset(key, asset)
        _classification(asset, classes)
        asset.extra_fields.update(
            {
                "staclearn:class_field": class_field,
                "staclearn:row_count": int(len(table)),
                "staclearn:class_counts": {str(int(k)): int(v) for k, v in counts.items()},
            }
        )
    _processing(
        item,
        lineage
        or "Chips around each footprint classified by the model in the derived_from MLM card over the derived_from imagery.",
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


def vectorize_item(
    item: pystac.Item,
    class_map_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    min_area_m2: float = 0.0,
    simplify_m: float | None = None,
    probabilities: str | os.PathLike[str] | None = None,
    name: str = "polygons.parquet",
) -> pystac.Item:
    """Polygonize a workflow's class map / change mask and describe it as a vector Item.

    Writes ``out_dir/name`` (GeoParquet) and returns an Item (not saved: publish it with the
    raster Item through :func:`staclearn.stac.catalog.write_catalog`) with the table as asset
    ``polygons``, id ``<item id>-polygons``, the raster Item's time range and a
    ``derived_from`` link to the raster Item (the Item object when it has no self href yet,
    so the link follows it into the catalog).

    Args:
        item: the class-map / change-mask Item (classes, time range, probability asset).
        class_map_path: the COG it describes (read here: the Item's href may be relative).
        out_dir: folder for the GeoParquet file.
        min_area_m2: minimum mapping unit, see :func:`vectorize`.
        simplify_m: simplification tolerance in metres, see :func:`vectorize`.
        probabilities: probability raster; default the Item's probability asset if its file
            exists.
        name: file name of the GeoParquet.

    Returns:
        The vector Item (classification and processing extensions).

    Raises:
        AssetNotFoundError, ConfigError: see :func:`vectorize`.
        PublishError: the class map has no predicted pixel (nothing to publish).
    """
    from staclearn.data.labels import classes_from_item
    from staclearn.inference.vectorize import class_map_asset, probability_asset, vectorize
    from staclearn.data.search import item_time_range

    key = class_map_asset(item)
    classes = classes_from_item(item, key)
    if probabilities is None and (pkey := probability_asset(item)) is not None:
        href = item.assets[pkey].get_absolute_href() or item.assets[pkey].href
        probabilities = href if "://" in href or Path(href).exists() else None
    table = vectorize(
        class_map_path, classes=classes, min_area_m2=min_area_m2, simplify_m=simplify_m, probabilities=probabilities
    )
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    table.to_parquet(tmp)
    os.replace(tmp, path)
    vec = vector_item(
        str(path.resolve()),
        table,
        id=f"{item.id}-polygons",
        classes=classes,
        source_items=[],
        datetime_range=item_time_range(item),
        collection=item.collection_id,
        lineage=(
            f"Polygons of the derived_from raster Item {item.id!r} (asset {key!r}): 4-connected regions of one class "
            f"(rasterio.features.shapes), minimum mapping unit {min_area_m2} m2 (sieve), "
            f"simplification {simplify_m or 0} m (shapely.coverage_simplify)."
        ),
        asset_key="polygons",
        title="Polygons of the class map (GeoParquet)",
    )
    target: pystac.Item | str = item.get_self_href() or item
    vec.add_link(pystac.Link("derived_from", target, pystac.MediaType.JSON, title=f"raster: {item.id}"))
    vec.properties["staclearn:min_area_m2"] = float(min_area_m2)
    if simplify_m:
        vec.properties["staclearn:simplify_m"] = float(simplify_m)
    return vec
