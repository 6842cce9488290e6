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
a GeoBox, and per-class counts per part for the model card (``staclearn:split``); and the
split of change detection's pairs by whole cities (:func:`split_cities`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from staclearn.errors import ConfigError, SplitError

if TYPE_CHECKING:
    from staclearn.data.pairs import PairItems

__all__ = [
    "TRAIN", "VALID", "TEST", "PART_NAMES", "read_regions", "regions_mask", "part_counts", "split_description",
    "CitySplit", "split_cities",
]

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



@dataclass(frozen=True)
class CitySplit:
    """Whole cities per part of a change run (:func:`split_cities`).

    Attributes:
        train: training cities (chips, class weights, normalisation, CVA threshold).
        valid: validation cities (epoch choice; figures reported apart as validation).
        test: test cities (final figures only; never chipped).
        method: how the parts were made, in words (recorded in ``staclearn:split``).
        split_seed: seed of the drawing, ``None`` when both test and validation cities were given.
    """

    train: tuple[str, ...]
    valid: tuple[str, ...]
    test: tuple[str, ...]
    method: str
    split_seed: int | None

    def part_of(self, city: str) -> int:
        """Part code (:data:`staclearn.data.splits.TRAIN` / ``VALID`` / ``TEST``) of ``city``.

        Raises:
            SplitError: ``city`` is in no part.
        """
        for code, cities in ((TRAIN, self.train), (VALID, self.valid), (TEST, self.test)):
            if city in cities:
                return code
        raise SplitError(f"City {city!r} is in no part of the split {self.as_dict()}.")

    def describe(self, labels: Mapping[str, np.ndarray], class_names: Sequence[str], *, ignore_index: int = 255) -> dict[str, Any]:
        """``staclearn:split`` of the cities: labelled pixels per class and part, and the cities of each part.

        Args:
            labels: ``{city: (H, W) class indices}`` for every city of the split.
            class_names: name of each class index.
            ignore_index: unlabelled value.

        Returns:
            :func:`split_description` with ``unit="pixels"`` and ``cities`` (:meth:`as_dict`).

        Raises:
            SplitError: a city of ``labels`` is in no part.
        """
        flat = [np.asarray(lab).ravel() for lab in labels.values()]
        codes = [np.full(lab.shape, self.part_of(c), dtype=np.uint8) for c, lab in zip(labels, flat, strict=True)]
        counts = part_counts(np.concatenate(flat), np.concatenate(codes), class_names, ignore_index=ignore_index)
        return split_description(self.method, split_seed=self.split_seed, counts=counts, unit="pixels", cities=self.as_dict())

    def as_dict(self) -> dict[str, list[str]]:
        """``{"train": [...], "valid": [...], "test": [...]}`` (names of :data:`staclearn.data.splits.PART_NAMES`)."""
        return {PART_NAMES[TRAIN]: list(self.train), PART_NAMES[VALID]: list(self.valid), PART_NAMES[TEST]: list(self.test)}


def _listing(names: Iterable[str], limit: int = 40) -> str:
    names = sorted(names)
    more = f" ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f"{names[:limit]}{more}"


def _draw_count(what: str, fraction: float, count: int | None, n: int) -> int:
    if count is not None:
        if count < 1:
            raise SplitError(f"{what}_count must be at least 1, got {count}; name the cities instead to fix them.")
        return count
    if not 0.0 < fraction < 1.0:
        raise SplitError(f"{what}_fraction is a share of the cities in (0, 1), got {fraction}.")
    return max(1, round(fraction * n))


def split_cities(
    groups: Mapping[str, PairItems],
    *,
    test_cities: Sequence[str] = (),
    test_items: Sequence[str] = (),
    valid_cities: Sequence[str] = (),
    split_seed: int = 0,
    test_fraction: float = 0.2,
    test_count: int | None = None,
    valid_fraction: float = 0.2,
    valid_count: int | None = None,
) -> CitySplit:
    """Split cities into training, validation and test cities (whole cities, never pixels).

    The test cities are fixed first: ``test_cities`` plus the cities whose before, after or
    label Items have an id in ``test_items``; when both are empty, ``test_count`` cities
    (default ``round(test_fraction * n_cities)``, at least 1) are drawn from the cities not
    in ``valid_cities``. The validation cities are ``valid_cities``, or ``valid_count``
    (default ``round(valid_fraction * n_non_test)``, at least 1) cities drawn from the non-test
    cities. Draws use ``numpy.random.default_rng(split_seed)`` over the sorted city names,
    test first then validation, so the split depends on nothing but the cities and
    ``split_seed``. Every remaining city trains.

    Args:
        groups: ``{city: PairItems}`` of the catalog (every city with two dates and a label Item).
        test_cities: test city names.
        test_items: Item ids marking their cities as test.
        valid_cities: validation city names.
        split_seed: seed of the draws.
        test_fraction: share of all cities drawn as test, in (0, 1).
        test_count: number of test cities drawn (overrides ``test_fraction``).
        valid_fraction: share of the non-test cities drawn as validation, in (0, 1).
        valid_count: number of validation cities drawn (overrides ``valid_fraction``).

    Returns:
        A :class:`CitySplit` with sorted city names per part.

    Raises:
        SplitError: an unknown city or Item id (the message names what was asked and lists
            the catalog's cities or Item ids), a city both test and validation, a bad
            count or fraction, too few cities to draw from, or no city left for training.
    """
    cities = sorted(groups)
    asked = {"test_cities": list(test_cities), "valid_cities": list(valid_cities)}
    for what, names in asked.items():
        unknown = sorted(set(names) - set(cities))
        if unknown:
            raise SplitError(f"{what} {unknown} are not cities of the catalog; its cities are {cities}.")
    owner = {i.id: city for city, g in groups.items() for i in (*g.before, *g.after, g.labels)}
    unknown_items = sorted(set(test_items) - set(owner))
    if unknown_items:
        raise SplitError(
            f"test_items {unknown_items} are not before, after or label Items of any city; the catalog's "
            f"Items are {_listing(owner)}."
        )
    given_test = set(test_cities) | {owner[i] for i in test_items}
    both = sorted(given_test & set(valid_cities))
    if both:
        raise SplitError(f"Cities {both} are asked as both test and validation cities; a city is in one part only.")
    rng = np.random.default_rng(split_seed)
    drawn = []
    if given_test:
        test = sorted(given_test)
    else:
        pool = [c for c in cities if c not in set(valid_cities)]
        n = _draw_count("test", test_fraction, test_count, len(cities))
        if n > len(pool) - (0 if valid_cities else 1) - 1:
            raise SplitError(
                f"Cannot draw {n} test cities from {pool} (validation cities {sorted(valid_cities)}) and keep a "
                f"validation and a training city; the catalog has {len(cities)} cities {cities}. Name test_cities, "
                "lower test_count, or use a catalog with more cities."
            )
        test = sorted(str(c) for c in rng.choice(pool, size=n, replace=False))
        drawn.append("test")
    rest = [c for c in cities if c not in set(test)]
    if valid_cities:
        valid = sorted(valid_cities)
    else:
        n = _draw_count("valid", valid_fraction, valid_count, len(rest))
        if n > len(rest) - 1:
            raise SplitError(
                f"Cannot draw {n} validation cities from the non-test cities {rest} and keep a training city "
                f"(test cities {test}). Name valid_cities, lower valid_count, or use a catalog with more cities."
            )
        valid = sorted(str(c) for c in rng.choice(rest, size=n, replace=False))
        drawn.append("validation")
    train = [c for c in rest if c not in set(valid)]
    if not train:
        raise SplitError(
            f"Test cities {test} and validation cities {valid} leave no training city among {cities}; "
            "leave at least one city for training."
        )
    if drawn:
        method = f"whole cities; {' and '.join(drawn)} cities drawn with split_seed"
        if "test" not in drawn:
            method += ", test cities given"
        elif valid_cities:
            method += ", validation cities given"
    else:
        method = "whole cities; test and validation cities given"
    return CitySplit(tuple(train), tuple(valid), tuple(test), method, split_seed if drawn else None)
