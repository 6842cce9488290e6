"""Train / validation / test parts: user-given test regions and a description of a split.

The protocol (shared by the three workflows): the **test** part is fixed first - given by the
user (polygons in any file geopandas reads, bboxes, a mask raster, tile ids, cities or Item
ids) or drawn as spatial blocks / whole tiles / whole cities with ``split_seed`` - and is
then used for nothing but the final figures: not for epoch selection or early stopping, not
for decision thresholds, class weights or normalisation statistics. The **validation** part
(drawn from what is left) makes those choices; its figures are reported apart and named as
validation figures. The training ``seed`` (initialisation, shuffling, augmentation) is a
separate argument, so changing it keeps the split.

This module holds what the workflows share: the part codes, reading user test regions onto
a GeoBox, and per-class counts per part for the model card (``staclearn:split``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from staclearn.errors import ConfigError, SplitError

__all__ = ["TRAIN", "VALID", "TEST", "PART_NAMES", "read_regions", "regions_mask", "part_counts", "split_description"]

TRAIN = 0
VALID = 1
TEST = 2
#: Part code -> name used in chip indexes, ``evaluation.json`` and ``staclearn:split``.
PART_NAMES = {TRAIN: "train", VALID: "valid", TEST: "test"}

_RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".img", ".jp2"}


def _is_bbox(x: Any) -> bool:
    return (
        isinstance(x, Sequence)
        and not isinstance(x, (str, bytes))
        and len(x) == 4
        and all(isinstance(v, (int, float, np.integer, np.floating)) for v in x)
    )


def read_regions(regions: Any, crs: Any = None):  # -> geopandas.GeoSeries
    """Read user test regions as polygons, optionally reprojected to ``crs``.

    Args:
        regions: one of
            - a path / URL of any vector file geopandas reads (GeoJSON, GeoParquet ``.parquet``,
              GeoPackage, Shapefile...); its own CRS is honoured (GeoJSON: EPSG:4326);
            - a ``geopandas.GeoDataFrame`` / ``GeoSeries`` (with a CRS);
            - one bbox ``(west, south, east, north)`` or a list of bboxes, in WGS84 degrees;
            - a shapely geometry, in WGS84 degrees.
        crs: CRS to reproject to (anything pyproj reads); ``None`` keeps the source CRS.

    Returns:
        A ``GeoSeries`` of the (non-empty) region geometries.

    Raises:
        SplitError: the file is missing or unreadable, holds no geometry, has no CRS, or
            ``regions`` is none of the accepted kinds.
    """
    import geopandas as gpd
    from shapely.geometry import box
    from shapely.geometry.base import BaseGeometry

    if isinstance(regions, (str, os.PathLike)):
        path = str(regions)
        if "://" not in path and not Path(path).exists():
            raise SplitError(f"Test-regions file {path} does not exist; pass a vector file (GeoJSON, GeoParquet, GeoPackage...).")
        try:
            if path.lower().endswith((".parquet", ".geoparquet")):
                gdf = gpd.read_parquet(path)
            else:
                gdf = gpd.read_file(path)
        except Exception as err:  # noqa: BLE001 - pyogrio / pyarrow raise many kinds
            raise SplitError(f"Cannot read test regions from {path}: {err}. Pass a file geopandas reads.") from err
        series = gdf.geometry
        where = path
    elif isinstance(regions, gpd.GeoDataFrame):
        series, where = regions.geometry, "the GeoDataFrame"
    elif isinstance(regions, gpd.GeoSeries):
        series, where = regions, "the GeoSeries"
    elif isinstance(regions, BaseGeometry):
        series, where = gpd.GeoSeries([regions], crs="EPSG:4326"), "the geometry"
    elif _is_bbox(regions):
        series, where = gpd.GeoSeries([box(*map(float, regions))], crs="EPSG:4326"), "the bbox"
    elif isinstance(regions, Sequence) and regions and all(_is_bbox(b) for b in regions):
        series, where = gpd.GeoSeries([box(*map(float, b)) for b in regions], crs="EPSG:4326"), "the bboxes"
    else:
        raise SplitError(
            f"Test regions {regions!r} are not a vector file, GeoDataFrame, geometry or (west, south, east, north) bbox(es)."
        )
    series = series[~(series.is_empty | series.isna())]
    if len(series) == 0:
        raise SplitError(f"No geometry in {where}; test regions need at least one polygon.")
    if series.crs is None:
        raise SplitError(f"Test regions in {where} have no CRS; set one (e.g. gdf.set_crs('EPSG:4326')).")
    return series.to_crs(crs) if crs is not None else series


def regions_mask(regions: Any, geobox) -> np.ndarray:
    """Pixels of ``geobox`` inside the test regions.

    Args:
        regions: what :func:`read_regions` takes, or a raster (path ending ``.tif`` /
            ``.tiff`` / ``.vrt``...) whose non-zero, non-nodata pixels are test: on the label
            grid it is used as is; on another grid it is reprojected with nearest resampling.
            A ``(H, W)`` bool / integer array on ``geobox`` is used as is (non-zero = test).
        geobox: the ``odc.geo.geobox.GeoBox`` of the labels.

    Returns:
        ``(H, W)`` bool, True where a pixel centre lies in a region.

    Raises:
        SplitError: unreadable regions, an array of the wrong shape, or no pixel of
            ``geobox`` in the regions.
    """
    shape = tuple(geobox.shape.yx)
    if isinstance(regions, np.ndarray):
        if regions.shape != shape:
            raise SplitError(f"Test mask of shape {regions.shape} is not on the label grid {shape}.")
        mask = regions.astype(bool)
        where = "the test mask array"
    elif isinstance(regions, (str, os.PathLike)) and Path(str(regions)).suffix.lower() in _RASTER_SUFFIXES:
        mask = _raster_mask(str(regions), geobox)
        where = str(regions)
    else:
        from rasterio.features import geometry_mask

        if geobox.crs is None:
            raise SplitError("The imagery has no CRS: give test regions as a mask array or raster on its grid.")
        series = read_regions(regions, crs=geobox.crs.to_wkt())
        mask = geometry_mask(list(series.geometry), out_shape=shape, transform=geobox.affine, invert=True)
        where = str(regions) if isinstance(regions, (str, os.PathLike)) else "the test regions"
    if not mask.any():
        raise SplitError(f"No pixel of the label grid lies in {where}: check its CRS and extent.")
    return mask


def _raster_mask(path: str, geobox) -> np.ndarray:
    import rasterio
    from rasterio.warp import Resampling, reproject

    try:
        with rasterio.open(path) as src:
            data = src.read(1)
            nodata = src.nodata
            same = src.shape == tuple(geobox.shape.yx) and (
                geobox.crs is None or (src.crs is not None and src.transform.almost_equals(geobox.affine))
            )
            if same:
                out = data
            else:
                if src.crs is None or geobox.crs is None:
                    raise SplitError(
                        f"Test mask {path} ({src.shape}) is not on the label grid {tuple(geobox.shape.yx)} and "
                        "cannot be reprojected without a CRS."
                    )
                out = np.zeros(tuple(geobox.shape.yx), dtype=data.dtype)
                reproject(
                    data, out, src_transform=src.transform, src_crs=src.crs, src_nodata=nodata,
                    dst_transform=geobox.affine, dst_crs=geobox.crs.to_wkt(), dst_nodata=0,
                    resampling=Resampling.nearest,
                )
                nodata = None
    except rasterio.errors.RasterioError as err:
        raise SplitError(f"Cannot read the test mask raster {path}: {err}") from err
    ok = out != 0
    if nodata is not None and not np.isnan(nodata):
        ok &= out != nodata
    return ok


def part_counts(
    labels: np.ndarray,
    parts: np.ndarray,
    class_names: Sequence[str],
    *,
    ignore_index: int = 255,
) -> dict[str, dict[str, int]]:
    """Labelled samples per class in each part.

    Args:
        labels: ``(...)`` integer class indices (0..K-1), ``ignore_index`` where unlabelled.
        parts: same shape, :data:`TRAIN` / :data:`VALID` / :data:`TEST` codes (other codes
            are ignored).
        class_names: the K class names, in index order.
        ignore_index: unlabelled index.

    Returns:
        ``{"train": {class name: count}, "valid": {...}, "test": {...}}`` (every class listed).

    Raises:
        ConfigError: shapes differ.
    """
    labels = np.asarray(labels)
    parts = np.asarray(parts)
    if labels.shape != parts.shape:
        raise ConfigError(f"labels {labels.shape} and parts {parts.shape} differ in shape")
    out: dict[str, dict[str, int]] = {}
    for code, name in PART_NAMES.items():
        sel = labels[(parts == code) & (labels != ignore_index)].astype(np.int64)
        counts = np.bincount(sel, minlength=len(class_names))[: len(class_names)]
        out[name] = {str(c): int(n) for c, n in zip(class_names, counts, strict=True)}
    return out


def split_description(method: str, *, split_seed: int | None, counts: Mapping[str, Mapping[str, int]], unit: str, **extra: Any) -> dict[str, Any]:
    """The ``staclearn:split`` record written to ``evaluation.json``, the card and the Items.

    Args:
        method: how the test and validation parts were drawn, in words.
        split_seed: the seed of the drawing (``None`` when every part was given).
        counts: per part, per class counts (:func:`part_counts`).
        unit: what is counted (``"pixels"``, ``"buildings"``).
        **extra: further JSON-able fields (tile ids, cities, block size...).

    Returns:
        ``{"method", "split_seed", "unit", "counts", **extra}``.
    """
    return {"method": method, "split_seed": split_seed, "unit": unit, "counts": {k: dict(v) for k, v in counts.items()}, **extra}
