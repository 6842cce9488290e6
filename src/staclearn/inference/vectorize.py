"""Polygons from a predicted class map or change mask ("Raster to Polygon").

A class map (or change mask) COG becomes one polygon per 4-connected region of equal class
(``rasterio.features.shapes``, i.e. GDAL's polygonize), with its class value and name, its
area in square metres and, where the Item has a probability asset, the mean probability of
the polygon's class over its pixels. Two optional cartographic steps:

* a minimum mapping unit ``min_area_m2``: regions smaller than it are merged into their
  largest neighbour *before* polygonizing (``rasterio.features.sieve``, GDAL's sieve
  filter), so the polygons still tile the predicted area without holes;
* a simplification tolerance ``simplify_m``: the polygons are simplified together as one
  coverage (``shapely.coverage_simplify``, Visvalingam-Whyatt), so neighbours keep a shared
  edge and neither gaps nor overlaps appear.

The table is written as GeoParquet and described by a vector Item whose ``derived_from``
link is the raster Item (:func:`staclearn.stac.items.vectorize_item`), the step that follows a classification in
arcgis.learn's workflows.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pystac

from staclearn.errors import AssetNotFoundError, ConfigError
from staclearn.data.labels import ClassInfo

if TYPE_CHECKING:
    import geopandas as gpd

__all__ = ["vectorize", "class_map_asset", "probability_asset", "POLYGON_COLUMNS"]

POLYGON_COLUMNS = ("class_value", "class_name", "area_m2", "pixel_count", "mean_probability", "geometry")
"""Columns of :func:`vectorize`'s table (``mean_probability`` only with probabilities)."""

_PROBABILITY_KEYS = ("probabilities", "change_probability")


def class_map_asset(item: pystac.Item) -> str:
    """Key of the Item's class-map / change-mask asset: the first data asset with
    ``classification:classes`` (``class_map``, ``change_mask``...).

    Raises:
        AssetNotFoundError: no asset carries ``classification:classes``.
    """
    for key, asset in item.assets.items():
        if "classification:classes" in asset.extra_fields and key not in _PROBABILITY_KEYS:
            return key
    raise AssetNotFoundError(
        f"Item {item.id!r} has no asset with classification:classes (assets: {sorted(item.assets)}); "
        "pass the class-map Item written by staclearn (asset 'class_map' or 'change_mask')."
    )


def probability_asset(item: pystac.Item) -> str | None:
    """Key of the Item's probability asset (``probabilities`` or ``change_probability``), or None."""
    return next((k for k in _PROBABILITY_KEYS if k in item.assets), None)


def _metres_per_unit(crs: Any) -> float | None:
    """Metres per linear unit of a projected CRS; None for a geographic one."""
    from pyproj import CRS

    crs = CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    if crs.is_geographic:
        return None
    return float(crs.axis_info[0].unit_conversion_factor)


def _mean_per_label(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Mean of ``values`` (NaN ignored) over pixels of each label ``1..n``; NaN where none."""
    ok = (labels > 0) & np.isfinite(values)
    sums = np.bincount(labels[ok], weights=values[ok], minlength=n + 1)
    counts = np.bincount(labels[ok], minlength=n + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts)[1:]


def vectorize(
    source: str | os.PathLike[str] | pystac.Item,
    *,
    classes: Sequence[ClassInfo] | None = None,
    min_area_m2: float = 0.0,
    simplify_m: float | None = None,
    probabilities: str | os.PathLike[str] | None = None,
    nodata: int | None = None,
    connectivity: int = 4,
) -> gpd.GeoDataFrame:
    """Polygonize a class map or change mask.

    Args:
        source: the class-map / change-mask Item (its asset with ``classification:classes``
            is read, and its probability asset when it has one), or the path / URL of a
            ``(y, x)`` uint8 class-map GeoTIFF.
        classes: class names; default: the Item's ``classification:classes`` (a bare raster
            without ``classes`` gets names ``"class <value>"``).
        min_area_m2: minimum mapping unit in square metres; smaller regions are merged into
            their largest neighbour before polygonizing (sieve). 0 keeps every region.
        simplify_m: coverage-simplification tolerance in metres (roughly the square root of
            the largest triangle area removed); None keeps the pixel-edge outlines.
        probabilities: path / URL of the probability raster, overriding the Item's asset:
            ``K`` bands (band ``i`` = class ``i`` of ``classes``) or one band (P(change) of a
            change mask: class 1 gets ``p``, class 0 gets ``1 - p``).
        nodata: nodata value of the class map; default the raster's (255 for staclearn).
        connectivity: 4 or 8 (pixel neighbourhood of a region).

    Returns:
        A GeoDataFrame in the raster's CRS, one row per polygon, columns
        :data:`POLYGON_COLUMNS`: ``class_value`` (int), ``class_name``, ``area_m2`` (area of
        the written geometry; in a local UTM zone when the raster CRS is geographic),
        ``pixel_count`` (pixels of the region), ``mean_probability`` (mean over the region's
        pixels of its class probability; only with probabilities). Nodata pixels make no
        polygon.

    Raises:
        AssetNotFoundError: the Item has no class-map asset.
        ConfigError: a negative ``min_area_m2`` / ``simplify_m``, a bad ``connectivity``, a
            raster without a CRS, or a probability raster on another grid or with a band
            count that matches neither ``classes`` nor one band.
    """
    import geopandas as gpd
    import rasterio
    import shapely
    from rasterio.features import rasterize, shapes, sieve
    from shapely.geometry import shape

    from staclearn.data.labels import classes_from_item

    if min_area_m2 < 0 or (simplify_m is not None and simplify_m < 0):
        raise ConfigError(f"min_area_m2 and simplify_m must be >= 0, got {min_area_m2} and {simplify_m}.")
    if connectivity not in (4, 8):
        raise ConfigError(f"connectivity must be 4 or 8, got {connectivity}.")
    prob_href = os.fspath(probabilities) if probabilities is not None else None
    if isinstance(source, pystac.Item):
        key = class_map_asset(source)
        href = source.assets[key].get_absolute_href() or source.assets[key].href
        if classes is None:
            classes = classes_from_item(source, key)
        pkey = probability_asset(source)
        if prob_href is None and pkey is not None:
            prob_href = source.assets[pkey].get_absolute_href()
    else:
        href = os.fspath(source)
    with rasterio.open(href) as src:
        data = src.read(1)
        transform, crs = src.transform, (src.crs.to_wkt() if src.crs is not None else None)
        nodata = int(src.nodata) if nodata is None and src.nodata is not None else nodata
    if crs is None:
        raise ConfigError(f"{href} has no CRS: polygons need a georeferenced class map.")
    valid = data != nodata if nodata is not None else np.ones(data.shape, bool)
    pixel_m2 = abs(transform.a * transform.e - transform.b * transform.d)
    per_unit = _metres_per_unit(crs)
    if per_unit is not None:
        pixel_m2 *= per_unit**2
    else:  # geographic: the pixel area at the raster's centre, enough to size the sieve
        lat = math.radians((transform * (data.shape[1] / 2, data.shape[0] / 2))[1])
        pixel_m2 *= (111_320.0**2) * math.cos(lat)
    if min_area_m2 > 0:
        size = math.ceil(min_area_m2 / pixel_m2)
        data = sieve(data, size=size, connectivity=connectivity, mask=valid)
    regions = [
        (shape(geom), int(value))
        for geom, value in shapes(data, mask=valid, connectivity=connectivity, transform=transform)
    ]
    names = {int(c.value): c.name for c in (classes or [])}
    geoms = np.array([g for g, _ in regions], dtype=object)
    values = np.array([v for _, v in regions], dtype=np.int64)
    # region id raster: each pixel's polygon (pixel centres lie strictly inside their outline)
    ids = (
        rasterize(zip(geoms, range(1, len(geoms) + 1)), out_shape=data.shape, transform=transform, fill=0, dtype="int32")
        if len(geoms)
        else np.zeros(data.shape, np.int32)
    )
    table = gpd.GeoDataFrame(
        {
            "class_value": values,
            "class_name": [names.get(v, f"class {v}") for v in values],
            "pixel_count": np.bincount(ids.ravel(), minlength=len(geoms) + 1)[1:].astype(np.int64),
        },
        geometry=list(geoms),
        crs=crs,
    )
    if prob_href is not None:
        table["mean_probability"] = _mean_probability(prob_href, ids, values, classes, data.shape, transform)
    if simplify_m and len(table):
        tol = simplify_m / per_unit if per_unit is not None else simplify_m / 111_320.0
        table = table.set_geometry(list(shapely.coverage_simplify(np.asarray(table.geometry.values, dtype=object), tol)))
    metric = table if per_unit is not None else table.to_crs(table.estimate_utm_crs())
    table["area_m2"] = metric.geometry.area.to_numpy() * (per_unit**2 if per_unit is not None else 1.0)
    cols = [c for c in POLYGON_COLUMNS if c in table.columns]
    return table[cols]


def _mean_probability(
    href: str,
    ids: np.ndarray,
    values: np.ndarray,
    classes: Sequence[ClassInfo] | None,
    shape: tuple[int, int],
    transform: Any,
) -> np.ndarray:
    import rasterio

    with rasterio.open(href) as src:
        if (src.height, src.width) != shape or not src.transform.almost_equals(transform):
            raise ConfigError(
                f"Probability raster {href} is on another grid ({src.height}x{src.width}) than the class map "
                f"({shape[0]}x{shape[1]}); pass the probabilities written with it."
            )
        probs = src.read().astype(np.float32)
    n = len(values)
    out = np.full(n, np.nan)
    if probs.shape[0] == 1:  # P(change): class 1 gets p, class 0 gets 1 - p
        mean_p = _mean_per_label(probs[0], ids, n)
        out = np.where(values == 1, mean_p, 1.0 - mean_p)
        return out
    order = [int(c.value) for c in (classes or [])]
    if probs.shape[0] != len(order):
        raise ConfigError(
            f"Probability raster {href} has {probs.shape[0]} bands for {len(order)} classes {order}; "
            "band i must be the probability of class i."
        )
    for band, value in enumerate(order):
        sel = values == value
        if sel.any():
            out[sel] = _mean_per_label(probs[band], ids, n)[sel]
    return out


