"""Labels on the imagery GeoBox: label rasters (any CRS) and vector labels.

Whatever the source, labels end as an ``(H, W) uint8`` array of *class indices*
``0..K-1`` on the imagery GeoBox, with ``ignore_index`` (255) where there is no label
(nodata, unlabelled background, outside the label footprint). Class indices map to the
class *values* written in the label data through :class:`ClassInfo` lists, read from the
STAC classification extension (``classification:classes``) or the label extension.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pystac
import xarray as xr
from odc.geo.geobox import GeoBox

from staclearn.data.cube import find_unreadable_asset, yx_dims
from staclearn.errors import (
    AssetNotFoundError,
    AssetReadError,
    LabelError,
    NoOverlapError,
)

__all__ = [
    "split_label_items",
    "IGNORE_INDEX",
    "ClassInfo",
    "classes_from_item",
    "load_label_raster",
    "rasterize_labels",
    "values_to_indices",
    "indices_to_values",
]

IGNORE_INDEX = 255
"""Class index of unlabelled / nodata pixels, ignored by the loss and the metrics."""


@dataclass(frozen=True)
class ClassInfo:
    """One class of a class map, as in the STAC classification extension's Class Object.

    Attributes:
        value: the integer written in label rasters and predicted class maps.
        name: short name, e.g. ``"forest"``.
        color_hint: RGB hex without ``#`` (``"228B22"``), used for maps; ``None`` if unknown.
        description: longer text, optional.
    """

    value: int
    name: str
    color_hint: str | None = None
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The STAC ``classification:classes`` Class Object of this class.

        Classification v1.1.0 requires ``description``; the name stands in when there is none.
        """
        d: dict[str, Any] = {"value": int(self.value), "name": self.name, "description": self.description or self.name}
        if self.color_hint:
            d["color_hint"] = self.color_hint.lstrip("#").upper()
        return d


def classes_from_item(item: pystac.Item, asset: str | None = None) -> list[ClassInfo]:
    """Read the class list of a label Item.

    Looks at ``classification:classes`` of the asset (or of every asset, then the Item), then
    falls back to the label extension's ``label:classes`` (names only, values 1..K).

    Args:
        item: the label Item.
        asset: the asset key holding the labels; ``None`` searches every asset.

    Returns:
        Classes sorted by value.

    Raises:
        LabelError: the Item declares no classes.
    """
    sources: list[Mapping[str, Any]] = []
    if asset is not None and asset in item.assets:
        sources.append(item.assets[asset].extra_fields)
    sources.extend(a.extra_fields for a in item.assets.values())
    sources.append(item.properties)
    for src in sources:
        raw = src.get("classification:classes")
        if raw:
            try:
                return _parse_classes(raw)
            except (KeyError, TypeError, ValueError) as err:
                raise LabelError(
                    f"Label Item {item.id!r} has malformed 'classification:classes' ({type(err).__name__}: {err}); "
                    "every class needs an integer 'value' (and a 'name' or 'description')."
                ) from err
    for lc in item.properties.get("label:classes") or []:
        names = [n for n in lc.get("classes", []) if isinstance(n, str)]
        if names:
            return [ClassInfo(value=i + 1, name=n) for i, n in enumerate(names)]
    raise LabelError(
        f"Label Item {item.id!r} declares no classes: add 'classification:classes' to asset "
        f"{asset!r} (STAC classification extension) or pass the classes explicitly."
    )


def _parse_classes(raw: Sequence[Mapping[str, Any]]) -> list[ClassInfo]:
    """``classification:classes`` entries as :class:`ClassInfo`, sorted by value."""
    return sorted(
        (
            ClassInfo(
                value=int(c["value"]),
                # classification v1.0 Items (e.g. Planetary Computer's chesapeake-lc-*)
                # have no name but a description, and spell the colour "color-hint"
                name=str(c.get("name") or c.get("title") or c.get("description") or c["value"]),
                color_hint=c.get("color_hint") or c.get("color-hint"),
                description=c.get("description"),
            )
            for c in raw
        ),
        key=lambda c: c.value,
    )


def values_to_indices(
    values: np.ndarray,
    classes: Sequence[ClassInfo],
    *,
    nodata: float | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Map label values to class indices.

    Args:
        values: label raster of any numeric dtype, any shape.
        classes: the classes, index ``i`` = ``classes[i]``.
        nodata: value that marks unlabelled pixels (NaN is always unlabelled).
        ignore_index: index written for unlabelled pixels and values not in ``classes``.

    Returns:
        uint8 array of the same shape with indices ``0..K-1`` or ``ignore_index``.
    """
    out = np.full(values.shape, ignore_index, dtype=np.uint8)
    for idx, c in enumerate(classes):
        out[values == c.value] = idx
    if nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata)):
        out[values == nodata] = ignore_index
    return out


def indices_to_values(
    indices: np.ndarray,
    classes: Sequence[ClassInfo],
    *,
    ignore_index: int = IGNORE_INDEX,
    nodata: int = IGNORE_INDEX,
) -> np.ndarray:
    """Map class indices back to class values (the inverse of :func:`values_to_indices`).

    Args:
        indices: uint8 class indices ``0..K-1`` or ``ignore_index``, any shape.
        classes: the classes, index ``i`` = ``classes[i]``.
        ignore_index: index of unlabelled / nodata pixels.
        nodata: value written where ``indices == ignore_index``.

    Returns:
        uint8 array of class values, ``nodata`` where ignored.

    Raises:
        LabelError: more than 255 classes, or a class value outside 0..255 (not uint8).
    """
    bad = [c.value for c in classes if not 0 <= int(c.value) <= 255]
    if len(classes) > 255 or bad:
        raise LabelError(
            f"Class values must fit uint8 (0..255, at most 255 classes); got {len(classes)} classes, values out of range {bad[:10]}."
        )
    lut = np.full(256, nodata, dtype=np.uint8)
    lut[: len(classes)] = [c.value for c in classes]
    lut[ignore_index] = nodata
    return lut[np.asarray(indices, dtype=np.uint8)]


def _footprint_overlaps(item: pystac.Item, geobox: GeoBox) -> bool:
    if item.bbox is None:
        return True
    from odc.geo.geom import box

    item_box = box(*item.bbox, crs="EPSG:4326")
    return bool(item_box.intersects(geobox.extent.to_crs("EPSG:4326")))


def load_label_raster(
    item: pystac.Item,
    geobox: GeoBox,
    *,
    asset: str = "labels",
    classes: Sequence[ClassInfo] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> xr.DataArray:
    """Align a label raster (any CRS) to the imagery GeoBox.

    The asset is loaded with odc-stac onto ``geobox`` with nearest-neighbour resampling, so
    class values are never mixed; the file's own CRS is used (the NC label Item is tagged
    EPSG:3358 while the imagery is EPSG:32119: it is reprojected, not assumed equal).

    Args:
        item: the label Item (label / classification extensions).
        geobox: the imagery GeoBox to align to.
        asset: key of the label raster asset.
        classes: classes to map; default :func:`classes_from_item`.
        ignore_index: index for nodata and unlabelled pixels.

    Returns:
        ``(y, x)`` uint8 DataArray of class indices on ``geobox`` (``ignore_index`` where
        unlabelled), with ``attrs["classes"]`` the list of :class:`ClassInfo`.

    Raises:
        AssetNotFoundError: the Item has no asset ``asset``.
        AssetReadError: the label raster cannot be read (truncated, HTTP 404 / 403); names
            the Item, asset and href.
        NoOverlapError: the label raster does not overlap the GeoBox, or no labelled pixel
            falls on it.
        LabelError: no classes are declared and none were given.
    """
    import odc.stac

    if asset not in item.assets:
        raise AssetNotFoundError(
            f"Label Item {item.id!r} has no asset {asset!r}; it has {sorted(item.assets)}. "
            "Pass the key of the label raster asset."
        )
    if not _footprint_overlaps(item, geobox):
        raise NoOverlapError(
            f"Label Item {item.id!r} (bbox {item.bbox}) does not overlap the imagery GeoBox "
            f"(bbox {list(geobox.extent.to_crs('EPSG:4326').boundingbox)}). Use a label Item "
            "that covers the imagery."
        )
    classes = list(classes) if classes is not None else classes_from_item(item, asset)
    from rasterio.errors import RasterioError

    try:
        ds = odc.stac.load([item], bands=[asset], geobox=geobox, resampling="nearest", dtype="float32")
    except (RasterioError, OSError) as err:  # odc-stac's "Chunk and warp failed" names no file
        named = find_unreadable_asset([item])
        if named is None:
            raise AssetReadError(
                f"Label asset {asset!r} of Item {item.id!r} cannot be read: {err}.",
                item_id=item.id, asset=asset, href=item.assets[asset].get_absolute_href() or item.assets[asset].href,
            ) from err
        raise named from err
    ds = yx_dims(ds)
    raw = ds[asset].isel(time=0).values
    nodata = ds[asset].attrs.get("nodata")
    idx = values_to_indices(raw, classes, nodata=nodata, ignore_index=ignore_index)
    if not (idx != ignore_index).any():
        raise NoOverlapError(
            f"No labelled pixel of Item {item.id!r} asset {asset!r} falls on the imagery GeoBox; "
            f"classes {[c.value for c in classes]}, nodata {nodata}. Check the label raster "
            "covers the imagery and uses these class values."
        )
    return xr.DataArray(
        idx,
        dims=("y", "x"),
        coords={"y": ds.y, "x": ds.x},
        attrs={"classes": classes, "ignore_index": ignore_index},
        name="labels",
    )


def rasterize_labels(
    vector: Any,
    geobox: GeoBox,
    *,
    class_field: str,
    classes: Sequence[ClassInfo],
    ignore_index: int = IGNORE_INDEX,
    all_touched: bool = False,
) -> xr.DataArray:
    """Burn vector labels (polygons with a class field) into the imagery GeoBox.

    Geometries are reprojected to the GeoBox CRS first. Later features overwrite earlier ones
    where they overlap (rasterio.features.rasterize order).

    Args:
        vector: a GeoDataFrame or anything geopandas reads (path/URL of GeoJSON, GeoParquet,
            GeoPackage, Shapefile).
        geobox: the imagery GeoBox.
        class_field: column holding the class, either its integer value or its name.
        classes: the classes; values or names in ``class_field`` are matched to them.
        ignore_index: index outside every polygon.
        all_touched: burn every pixel a polygon touches, not only those whose centre is inside.

    Returns:
        ``(y, x)`` uint8 DataArray of class indices, ``attrs["classes"]`` as given.

    Raises:
        LabelError: the file cannot be read, has no CRS, ``class_field`` is missing, or holds
            values matching no class (named).
        NoOverlapError: no polygon falls on the GeoBox.
    """
    import geopandas as gpd
    from rasterio.features import rasterize

    if isinstance(vector, gpd.GeoDataFrame):
        gdf = vector
    else:
        try:
            gdf = gpd.read_file(os.fspath(vector))
        except Exception as err:  # noqa: BLE001 - pyogrio / fiona / pyarrow raise many kinds
            raise LabelError(
                f"Cannot read vector labels from {os.fspath(vector)!r} ({type(err).__name__}: {err}); pass a file "
                "geopandas reads (GeoJSON, GeoParquet, GeoPackage, Shapefile) or a GeoDataFrame."
            ) from err
    if class_field not in gdf.columns:
        raise LabelError(
            f"Class field {class_field!r} not in the vector labels; columns are "
            f"{[c for c in gdf.columns if c != 'geometry']}."
        )
    by_value = {c.value: i for i, c in enumerate(classes)}
    by_name = {c.name: i for i, c in enumerate(classes)}
    lookup: dict[Any, int] = {}
    unknown = []
    for v in gdf[class_field].unique():
        if isinstance(v, str) and v in by_name:
            lookup[v] = by_name[v]
        elif not isinstance(v, str) and v is not None and int(v) in by_value:
            lookup[v] = by_value[int(v)]
        else:
            unknown.append(v)
    if unknown:
        raise LabelError(
            f"Values {unknown} of class field {class_field!r} match no class "
            f"(values {[c.value for c in classes]}, names {[c.name for c in classes]})."
        )
    if gdf.crs is None:
        raise LabelError("The vector labels have no CRS; set one (e.g. gdf.set_crs('EPSG:4326')) so they can be aligned.")
    gdf = gdf[~gdf.geometry.is_empty & gdf.geometry.notna()].to_crs(geobox.crs.to_wkt())
    shapes = ((geom, lookup[v]) for geom, v in zip(gdf.geometry, gdf[class_field], strict=True))
    out = rasterize(
        shapes,
        out_shape=geobox.shape.yx,
        transform=geobox.affine,
        fill=ignore_index,
        dtype="uint8",
        all_touched=all_touched,
    )
    if not (out != ignore_index).any():
        raise NoOverlapError("No vector label falls on the imagery GeoBox; check both cover the same area.")
    coords = geobox.coordinates
    return xr.DataArray(
        out,
        dims=("y", "x"),
        coords={"y": coords["y"].values, "x": coords["x"].values},
        attrs={"classes": list(classes), "ignore_index": ignore_index},
        name="labels",
    )


def is_label_item(item: pystac.Item) -> bool:
    """Whether ``item`` holds labels (it declares the STAC label extension or has ``label:``
    properties) rather than imagery."""
    return any("/label/" in e for e in item.stac_extensions) or any(k.startswith("label:") for k in item.properties)


def split_label_items(items: Sequence[pystac.Item]) -> tuple[list[pystac.Item], list[pystac.Item]]:
    """Separate imagery Items from label Items (:func:`is_label_item`), keeping their order.

    Returns:
        ``(imagery, labels)``.
    """
    return [i for i in items if not is_label_item(i)], [i for i in items if is_label_item(i)]
