"""Before/after pairs: two dates (and their change labels) loaded onto one GeoBox, then stacked.

A *pair* is two dates of the same place, loaded onto **one** GeoBox (by default the native
grid of the finest requested band of the ``before`` Items, e.g. the 10 m grid of Sentinel-2
B02; coarser bands are resampled onto it by odc-stac): :func:`load_pair` for STAC Items,
:func:`load_png_pair` for non-georeferenced image pairs (LEVIR-CD PNGs). Every later step
works on the two dates *stacked as channels* (:func:`stack_pair`): a ``(2C, H, W)`` image
whose channel order is the C ``before`` bands then the same C ``after`` bands, named
``t1:<band>`` and ``t2:<band>``. Each date may be z-scored by its own band statistics first
(``standardize``), so radiometric differences between seasons and places are not change.

Labels are class indices 0 = no change, 1 = change, 255 = unlabelled (:data:`CHANGE_CLASSES`;
OSCD's 1/2 masks are mapped through their ``classification:classes``). :func:`group_pairs`
groups a catalog's Items into one :class:`PairItems` (two dates and a label Item) per city.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pystac
import xarray as xr
from odc.geo.geobox import GeoBox

from staclearn.data.cube import band_names, load_cube
from staclearn.data.labels import (
    IGNORE_INDEX,
    ClassInfo,
    classes_from_item,
    is_label_item,
    load_label_raster,
    values_to_indices,
)
from staclearn.data.search import bbox_intersects, item_time_range
from staclearn.errors import (
    AssetNotFoundError,
    AssetReadError,
    BandMismatchError,
    ConfigError,
    DateOrderError,
    GeoBoxMismatchError,
    ImageryNotFoundError,
    LabelError,
    NoGeoreferenceWarning,
    NoItemsFoundError,
    NoOverlapError,
    StaclearnWarning,
)

__all__ = [
    "DATE_PREFIXES",
    "CHANGE_CLASSES",
    "load_pair",
    "load_png_pair",
    "stack_pair",
    "PairItems",
    "group_pairs",
    "load_pairs",
]


DATE_PREFIXES = ("t1:", "t2:")
"""Prefixes of the stacked band names: ``t1:`` the before date, ``t2:`` the after date."""

CHANGE_CLASSES: tuple[ClassInfo, ...] = (
    ClassInfo(0, "no change", "D9D9D9", "No change between the two dates"),
    ClassInfo(1, "change", "E31A1C", "Change between the two dates"),
)
"""Classes of change masks: value 0 no change, 1 change (255 = nodata / unlabelled)."""


def _ids(items: Sequence[pystac.Item]) -> list[str]:
    return [i.id for i in items]


def _union_bbox(items: Sequence[pystac.Item]) -> list[float] | None:
    boxes = [i.bbox for i in items if i.bbox is not None]
    if not boxes:
        return None
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]


def _check_order(before: Sequence[pystac.Item], after: Sequence[pystac.Item], allow_reversed: bool) -> None:
    t1 = min(item_time_range(i)[0] for i in before)
    t2 = min(item_time_range(i)[0] for i in after)
    if t1 > t2 and not allow_reversed:
        raise DateOrderError(
            f"The before Items {_ids(before)} ({t1.isoformat()}) are later than the after Items "
            f"{_ids(after)} ({t2.isoformat()}). Swap before_items and after_items, or pass "
            "allow_reversed=True to detect change backwards in time."
        )


def _check_pair_bands(before: Sequence[pystac.Item], after: Sequence[pystac.Item], bands: Sequence[str]) -> None:
    have_b, have_a = band_names(before), band_names(after)
    miss_b = [b for b in bands if b not in have_b]
    miss_a = [b for b in bands if b not in have_a]
    if miss_b or miss_a:
        raise BandMismatchError(
            f"The two dates do not both hold bands {list(bands)}: the before Items {_ids(before)} "
            f"lack {miss_b} (they have {have_b}); the after Items {_ids(after)} lack {miss_a} "
            f"(they have {have_a}). Pass only bands present on both dates."
        )


def _check_pair_overlap(before: Sequence[pystac.Item], after: Sequence[pystac.Item]) -> None:
    b, a = _union_bbox(before), _union_bbox(after)
    if b is not None and a is not None and not bbox_intersects(b, a):
        raise NoOverlapError(
            f"The before Items {_ids(before)} (bbox {b}) and the after Items {_ids(after)} "
            f"(bbox {a}) do not overlap. Pair Items of the same place (same city, same tile)."
        )


def _pair_geobox(items: Sequence[pystac.Item], bands: Sequence[str], resolution: float | None) -> GeoBox:
    import odc.stac

    parsed = list(odc.stac.parse_items(items))
    native = parsed[0].geoboxes(list(bands))
    if native and resolution is None and len(items) == 1:
        return native[0]
    crs = parsed[0].crs(list(bands))
    if resolution is None:
        if not native:
            raise ConfigError(
                f"The before Items {_ids(items)} have no proj metadata for bands {list(bands)}: "
                "pass geobox= or resolution= (in units of their CRS)."
            )
        resolution = min(abs(native[0].resolution.x), abs(native[0].resolution.y))
    gbox = odc.stac.output_geobox(parsed, list(bands), crs=crs, resolution=resolution)
    if gbox is None:
        raise ConfigError(f"Cannot derive a GeoBox from the before Items {_ids(items)}; pass geobox=.")
    return gbox


def _nodata_to_nan(cube: xr.DataArray) -> xr.DataArray:
    nodata = cube.attrs.get("nodata")
    out = cube.astype(np.float32)
    if nodata is not None and not np.isnan(nodata):
        out = out.where(out != nodata)
    out.attrs = {**cube.attrs, "nodata": float("nan")}
    return out


def _load_date(
    items: Sequence[pystac.Item], bands: Sequence[str], geobox: GeoBox, resampling: str, chunks: dict[str, int] | None
) -> xr.DataArray:
    cube = _nodata_to_nan(load_cube(items, bands=bands, geobox=geobox, resampling=resampling, chunks=chunks))
    if cube.sizes["time"] > 1:  # several acquisitions of one date (tiles): one mosaic
        first = cube.time.values[:1]
        cube = cube.median("time", keep_attrs=True).expand_dims(time=first).transpose("time", "band", "y", "x")
    return cube


def _change_indices(idx: np.ndarray, classes: Sequence[ClassInfo], item_id: str) -> np.ndarray:
    """Class indices of a two-class label raster -> 0 no change / 1 change (255 kept)."""
    if len(classes) != 2:
        raise LabelError(
            f"Label Item {item_id!r} declares {len(classes)} classes {[c.name for c in classes]}; a "
            "change mask needs exactly two (no change, change) in classification:classes."
        )
    names = [c.name.strip().lower() for c in classes]
    change = names.index("change") if "change" in names else 1  # else: the higher value is change
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[change], lut[1 - change] = 1, 0
    return lut[idx]


def _load_change_labels(item: pystac.Item, asset: str, geobox: GeoBox) -> xr.DataArray:
    import rasterio
    from odc.geo.xr import xr_coords
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    if asset not in item.assets:
        raise AssetNotFoundError(
            f"Label Item {item.id!r} has no asset {asset!r}; it has {sorted(item.assets)}. Pass label_asset=."
        )
    href = item.assets[asset].get_absolute_href() or item.assets[asset].href
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(href) as src:
                georef = src.crs is not None  # without a CRS nothing can be reprojected
                shape = (src.height, src.width)
                raw = None if georef else src.read(1)
                file_nodata = src.nodata
    except RasterioError as err:
        raise AssetReadError(
            f"Label asset {asset!r} of Item {item.id!r} ({href}) cannot be read ({err}): the file is missing, "
            "truncated or corrupt, or its host refused it. Fix the file or the asset href.",
            item_id=item.id, asset=asset, href=href,
        ) from err
    classes = classes_from_item(item, asset)
    if georef:  # any grid, any CRS: reprojected onto the pair's GeoBox with nearest neighbour
        idx = load_label_raster(item, geobox, asset=asset, classes=classes).values
    else:
        if shape != tuple(geobox.shape.yx):
            raise GeoBoxMismatchError(
                f"Label asset {asset!r} of Item {item.id!r} ({href}) has no georeference (no CRS, "
                f"identity transform), so it cannot be reprojected, and its shape {shape} differs "
                f"from the pair's grid {tuple(geobox.shape.yx)}. Use the georeferenced mask (for "
                "OSCD: cm/<city>-cm_georef.tif) or load the pair on the grid the mask was drawn on."
            )
        warnings.warn(
            StaclearnWarning(
                f"Label asset {asset!r} of Item {item.id!r} has no georeference; its {shape} pixels "
                "are taken to lie on the pair's grid because the shapes match."
            ),
            stacklevel=3,
        )
        nodata = file_nodata
        if nodata is None:
            rb = item.assets[asset].extra_fields.get("raster:bands") or [{}]
            nodata = rb[0].get("nodata")
        idx = values_to_indices(raw, classes, nodata=nodata)  # type: ignore[arg-type]
    out = _change_indices(idx, classes, item.id)
    return xr.DataArray(
        out,
        dims=("y", "x"),
        coords=xr_coords(geobox, always_yx=True),
        attrs={"classes": list(CHANGE_CLASSES), "ignore_index": IGNORE_INDEX, "nodata": IGNORE_INDEX},
        name="change_labels",
    )


def load_pair(
    before_items: Iterable[pystac.Item],
    after_items: Iterable[pystac.Item],
    *,
    bands: Sequence[str],
    geobox: GeoBox | None = None,
    resolution: float | None = None,
    label_item: pystac.Item | None = None,
    label_asset: str = "labels",
    resampling: str = "bilinear",
    allow_reversed: bool = False,
    chunks: dict[str, int] | None = None,
) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray | None]:
    """Load two dates (and their change labels) onto one GeoBox.

    Both dates are loaded with odc-stac (:func:`staclearn.data.cube.load_cube`) onto the same
    GeoBox; bands on coarser grids (Sentinel-2 20 m and 60 m) are resampled onto it with
    ``resampling``. A label raster with a georeference in any grid or CRS is reprojected
    onto it with nearest neighbour; a label raster *without* georeference (OSCD's original
    ``<city>-cm.tif``) is accepted only when its shape equals the GeoBox's (with a warning).

    Args:
        before_items: Items of the first date (several are mosaicked: median per pixel).
        after_items: Items of the second date.
        bands: the C bands to load, in channel order (``eo:bands`` names or asset keys),
            the same for both dates.
        geobox: output GeoBox; default: the native grid of the finest of ``bands`` in the
            ``before`` Items (e.g. the 10 m grid of B02).
        resolution: output pixel size in units of the before Items' CRS (degrees for
            EPSG:4326) when no ``geobox`` is given; the grid is then snapped by odc-stac.
        label_item: Item whose ``label_asset`` is a two-class change raster with
            ``classification:classes`` (a class named ``"change"``, or the higher value, is
            change); ``None``: no labels.
        label_asset: key of the label raster asset.
        resampling: GDAL resampling of the imagery (``"bilinear"``, ``"nearest"``...).
        allow_reversed: accept ``before`` Items later than ``after`` Items.
        chunks: dask chunks passed to :func:`staclearn.data.cube.load_cube`.

    Returns:
        ``(before, after, labels)``: two lazy ``(time=1, band, y, x) float32`` cubes in the
        Items' units (e.g. Sentinel-2 L1C digital numbers), NaN where there is no data
        (``attrs["nodata"]`` NaN), and ``labels`` a ``(y, x) uint8`` DataArray of 0 no
        change / 1 change / 255 unlabelled (or ``None``), all on the same GeoBox.

    Raises:
        NoItemsFoundError: ``before_items`` or ``after_items`` is empty.
        DateOrderError: the before Items are later than the after Items (and not
            ``allow_reversed``); the message names both and their dates.
        ConfigError: both ``geobox`` and ``resolution``; no band given.
        BandMismatchError: a band is missing on one date (the message lists both band sets).
        NoOverlapError: the two dates, or a given ``geobox``, do not overlap; no labelled
            pixel on the grid.
        GeoBoxMismatchError: the label raster has no georeference and a different shape.
        AssetNotFoundError: the label Item has no ``label_asset``.
        AssetReadError: the label raster cannot be read (missing, truncated or corrupt file).
        LabelError: the label Item does not declare two classes.
    """
    before, after = list(before_items), list(after_items)
    if not before or not after:
        raise NoItemsFoundError(
            f"load_pair() needs Items for both dates; got {len(before)} before and {len(after)} after."
        )
    bands = list(bands)
    if not bands:
        raise ConfigError("load_pair() needs at least one band.")
    if geobox is not None and resolution is not None:
        raise ConfigError("Pass either geobox= or resolution=, not both.")
    _check_order(before, after, allow_reversed)
    _check_pair_bands(before, after, bands)
    _check_pair_overlap(before, after)
    if geobox is None:
        geobox = _pair_geobox(before, bands, resolution)
    else:
        extent = list(geobox.extent.to_crs("EPSG:4326").boundingbox)
        for date, items in (("before", before), ("after", after)):
            box = _union_bbox(items)
            if box is not None and not bbox_intersects(box, extent):
                raise NoOverlapError(
                    f"The GeoBox (bbox {extent}) misses the {date} Items {_ids(items)} (bbox {box}); "
                    "pass a GeoBox over the pair or none."
                )
    cube_before = _load_date(before, bands, geobox, resampling, chunks)
    cube_after = _load_date(after, bands, geobox, resampling, chunks)
    labels = _load_change_labels(label_item, label_asset, geobox) if label_item is not None else None
    return cube_before, cube_after, labels


def load_png_pair(
    a_path: str | os.PathLike[str],
    b_path: str | os.PathLike[str],
    label_path: str | os.PathLike[str] | None = None,
    *,
    bands: Sequence[str] = ("red", "green", "blue"),
) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray | None]:
    """Load a non-georeferenced image pair (LEVIR-CD PNGs) as cubes in pixel coordinates.

    The cubes have no CRS: ``x`` and ``y`` are pixel-centre coordinates (0.5, 1.5, ...; ``y``
    grows downwards), so models train and predict on them as on georeferenced pairs, but
    their change masks cannot be written as COGs nor published as STAC Items with a geometry.

    Args:
        a_path: the before image (PNG or any raster GDAL reads), ``len(bands)`` bands or more.
        b_path: the after image, same shape.
        label_path: optional change label image (LEVIR: 0 no change, 255 change); its first
            band is used, values >= 128 are change.
        bands: names of the first bands of the images (LEVIR: RGB).

    Returns:
        ``(before, after, labels)``: ``(time=1, band, y, x) float32`` cubes in the images'
        units (0-255 for 8-bit PNGs), ``attrs["nodata"]`` NaN (PNG pairs have no nodata), and
        ``labels`` ``(y, x) uint8`` 0/1 or ``None``.

    Warns:
        NoGeoreferenceWarning: always, saying the pair has no georeference.

    Raises:
        ImageryNotFoundError: a file does not exist or cannot be read (a ``FileNotFoundError`` too).
        BandMismatchError: an image has fewer than ``len(bands)`` bands.
        GeoBoxMismatchError: the images (or the label) differ in shape.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    def read(path: str | os.PathLike[str]) -> np.ndarray:
        if not Path(path).is_file():
            raise ImageryNotFoundError(f"{os.fspath(path)!r} does not exist.")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path) as src:
                    return src.read()
        except RasterioError as err:
            raise ImageryNotFoundError(f"{os.fspath(path)!r} cannot be read as an image ({err}): truncated or corrupt?") from err

    a, b = read(a_path), read(b_path)
    for path, arr in ((a_path, a), (b_path, b)):
        if arr.shape[0] < len(bands):
            raise BandMismatchError(f"{os.fspath(path)!r} has {arr.shape[0]} bands; bands={list(bands)} needs {len(bands)}.")
    if a.shape[1:] != b.shape[1:]:
        raise GeoBoxMismatchError(
            f"{os.fspath(a_path)!r} is {a.shape[1:]} px but {os.fspath(b_path)!r} is {b.shape[1:]} px; "
            "a non-georeferenced pair must have the same shape (nothing can be reprojected)."
        )
    h, w = a.shape[1:]
    coords = {
        "time": [np.datetime64("NaT", "ns")],
        "band": list(bands),
        "y": np.arange(h, dtype=np.float64) + 0.5,
        "x": np.arange(w, dtype=np.float64) + 0.5,
    }

    def cube(arr: np.ndarray) -> xr.DataArray:
        data = arr[None, : len(bands)].astype(np.float32)
        return xr.DataArray(data, dims=("time", "band", "y", "x"), coords=coords, attrs={"nodata": float("nan")}, name="cube")

    labels = None
    if label_path is not None:
        lab = read(label_path)[0]
        if lab.shape != (h, w):
            raise GeoBoxMismatchError(f"Label {os.fspath(label_path)!r} is {lab.shape} px but the images are {(h, w)} px.")
        labels = xr.DataArray(
            (lab >= 128).astype(np.uint8),
            dims=("y", "x"),
            coords={"y": coords["y"], "x": coords["x"]},
            attrs={"classes": list(CHANGE_CLASSES), "ignore_index": IGNORE_INDEX, "nodata": IGNORE_INDEX},
            name="change_labels",
        )
    warnings.warn(
        NoGeoreferenceWarning(
            f"{os.fspath(a_path)!r} and {os.fspath(b_path)!r} have no georeference: the cubes are in "
            "pixel coordinates without CRS, so their change masks cannot be written as COGs nor "
            "published as STAC Items with a geometry."
        ),
        stacklevel=2,
    )
    return cube(a), cube(b), labels


def _band_yx(cube: xr.DataArray, what: str) -> xr.DataArray:
    if "time" in cube.dims:
        if cube.sizes["time"] != 1:
            raise ConfigError(f"The {what} cube has {cube.sizes['time']} time steps; load one date per cube (load_pair).")
        cube = cube.isel(time=0)
    return cube.transpose("band", "y", "x")


def _standardize(date: xr.DataArray) -> xr.DataArray:
    mean = date.mean(("y", "x"), skipna=True)
    std = date.std(("y", "x"), skipna=True)
    return (date - mean) / std.where(std > 1e-6, 1.0)


def stack_pair(before: xr.DataArray, after: xr.DataArray, *, standardize: bool = False) -> xr.DataArray:
    """Stack two dates as channels: the model input of every change model here.

    Args:
        before: ``(time=1, band, y, x)`` or ``(band, y, x)`` cube of the first date.
        after: the same for the second date, same bands and GeoBox.
        standardize: z-score each band of each date with that date's own mean and standard
            deviation over its valid pixels. This removes the radiometric offsets between
            acquisitions and between places (top-of-atmosphere DN of different seasons and
            cities), as Daudt et al.'s reference code does for each OSCD image; the values
            are then unitless.

    Returns:
        ``(band, y, x) float32`` (lazy if the inputs are) with 2C bands named ``t1:<band>``
        (before) then ``t2:<band>`` (after), NaN where a date has no data
        (``attrs["nodata"]`` NaN), on the inputs' GeoBox.

    Raises:
        BandMismatchError: the two dates have different bands.
        GeoBoxMismatchError: the two dates are not on the same grid.
        ConfigError: a cube holds several dates.
    """
    b, a = _band_yx(before, "before"), _band_yx(after, "after")
    bands_b = [str(v) for v in b.band.values]
    bands_a = [str(v) for v in a.band.values]
    if bands_b != bands_a:
        raise BandMismatchError(
            f"The before bands {bands_b} differ from the after bands {bands_a}; load both dates "
            "with the same bands (load_pair)."
        )
    same_grid = b.sizes["y"] == a.sizes["y"] and b.sizes["x"] == a.sizes["x"]
    if same_grid and b.odc.crs is not None:
        same_grid = b.odc.geobox == a.odc.geobox
    if not same_grid:
        raise GeoBoxMismatchError(
            f"The before cube ({dict(b.sizes)}, CRS {b.odc.crs}) and the after cube ({dict(a.sizes)}, "
            f"CRS {a.odc.crs}) are not on one GeoBox; load them with load_pair (one GeoBox for both)."
        )
    parts = []
    for prefix, date in zip(DATE_PREFIXES, (b, a), strict=True):
        date = _nodata_to_nan(date)
        if standardize:
            date = _standardize(date)
        parts.append(date.assign_coords(band=[f"{prefix}{n}" for n in bands_b]))
    out = xr.concat(parts, dim="band", join="override", coords="minimal", compat="override").astype(np.float32)
    out.attrs = {"nodata": float("nan")}
    out.name = "pair"
    return out


@dataclass(frozen=True)
class PairItems:
    """The STAC Items of one city's pair.

    Attributes:
        before: Items of the first date.
        after: Items of the second date.
        labels: the change label Item.
    """

    before: tuple[pystac.Item, ...]
    after: tuple[pystac.Item, ...]
    labels: pystac.Item


def group_pairs(items: Iterable[pystac.Item], city_property: str) -> dict[str, PairItems]:
    """Group Items into one pair per city: the Items of its first and last date, and its label Item.

    Items are grouped by the property ``city_property``; Items without it are left out. In a
    city, label Items are those with the label extension or ``label:*`` properties; the
    imagery Items of the earliest start time are the before date, those of the latest the
    after date (several Items of one date are mosaicked by :func:`load_pair`).

    Args:
        items: STAC Items (e.g. of the OSCD catalog built by ``scripts/build_oscd_catalog.py``).
        city_property: Item property naming the city (``"staclearn:city"``).

    Returns:
        ``{city: PairItems}``, cities sorted by name.

    Raises:
        NoItemsFoundError: no Item has ``city_property``; a city has no or several label
            Items, or imagery of fewer than two dates.
    """
    by_city: dict[str, list[pystac.Item]] = {}
    for item in items:
        city = item.properties.get(city_property)
        if city is not None:
            by_city.setdefault(str(city), []).append(item)
    if not by_city:
        raise NoItemsFoundError(f"No Item has the property {city_property!r}; set ChangeConfig.city_property.")
    pairs = {}
    for city, group in sorted(by_city.items()):
        labels = [i for i in group if is_label_item(i)]
        imagery = [i for i in group if not is_label_item(i)]
        if len(labels) != 1:
            raise NoItemsFoundError(
                f"City {city!r} has {len(labels)} label Items ({_ids(labels)}); it needs exactly one."
            )
        starts = sorted({item_time_range(i)[0] for i in imagery})
        if len(starts) < 2:
            raise NoItemsFoundError(f"City {city!r} has imagery Items of {len(starts)} date(s) ({_ids(imagery)}); it needs two.")
        before = tuple(i for i in imagery if item_time_range(i)[0] == starts[0])
        after = tuple(i for i in imagery if item_time_range(i)[0] == starts[-1])
        pairs[city] = PairItems(before, after, labels[0])
    return pairs


def load_pairs(
    groups: Mapping[str, PairItems],
    *,
    bands: Sequence[str],
    label_asset: str = "labels",
    resampling: str = "bilinear",
    given: Mapping[str, tuple[xr.DataArray, xr.DataArray, xr.DataArray]] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, tuple[xr.DataArray, xr.DataArray, xr.DataArray]]:
    """Load every city's pair and change labels into memory, each city on its own grid (:func:`load_pair`).

    Args:
        groups: ``{city: PairItems}`` (:func:`group_pairs`).
        bands: the C bands of each date, in channel order.
        label_asset: key of the change raster asset of the label Items.
        resampling: resampling of coarser bands onto the grid of the finest.
        given: pairs already loaded (with the same ``bands``), taken as they are.
        log: called with one line per city loaded (its dates, grid and change pixels).

    Returns:
        ``{city: (before, after, labels)}`` in the order of ``groups``: ``(time=1, band, y,
        x) float32`` cubes (NaN nodata) and ``(y, x) uint8`` labels (0 / 1 / 255), loaded.

    Raises:
        the errors of :func:`load_pair`.
    """
    given = given or {}
    pairs = {}
    for city, g in groups.items():
        if city in given:
            pairs[city] = given[city]
            continue
        before, after, labels = load_pair(
            g.before, g.after, bands=list(bands), label_item=g.labels, label_asset=label_asset, resampling=resampling
        )
        assert labels is not None  # label_item given
        pairs[city] = (before.load(), after.load(), labels)
        if log is not None:
            log(f"{city}: {g.before[0].id} -> {g.after[0].id}, grid {tuple(labels.shape)}, {int((labels == 1).sum())} change px")
    return pairs
