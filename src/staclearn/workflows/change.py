"""Change detection on before/after image pairs: STAC pairs -> one GeoBox -> chips -> model -> change mask.

A *pair* is two dates of the same place, loaded onto **one** GeoBox (by default the native
grid of the finest requested band of the ``before`` Items, e.g. the 10 m grid of Sentinel-2
B02; coarser bands are resampled onto it by odc-stac). Every later step works on the two
dates *stacked as channels*: a ``(2C, H, W)`` image whose channel order is the C ``before``
bands then the same C ``after`` bands, named ``t1:<band>`` and ``t2:<band>``. So the chip
export, the trainer, the kornia augmentation (one geometric transform for every channel and
the mask, hence for both dates) and the tiled prediction are those of land cover. Each
date may be z-scored by its own band statistics first (``standardize``), so radiometric
differences between seasons and places are not change.

Three models take that stacked input (Daudt, Le Saux and Boulch 2018, "Fully convolutional
siamese networks for change detection", ICIP, for the first two):

* ``fusion="early"`` (FC-EF): a U-Net on the 2C channels (:class:`staclearn.models.segmentation.SegmentationModel`);
* ``fusion="siam-diff"`` (FC-Siam-diff): :class:`SiameseDiffUnet`, one encoder shared by the
  two dates and a U-Net decoder fed with the absolute feature differences ``|f1 - f2|``;
* ``architecture="PixelConvNet"`` (the default of :class:`ChangeConfig`): early fusion in a
  small full-resolution network (:class:`staclearn.models.segmentation.PixelConvNet`), the cheapest that
  beat CVA on unseen OSCD cities on CPU (``bench/change.py``).

A pixel is change where the model's probability of change reaches a decision threshold
chosen on validation cities (:func:`fit_change_threshold`), kept in the model card and
applied by :func:`predict_change`; the probability map is published beside the mask.

Labels are class indices 0 = no change, 1 = change, 255 = unlabelled (OSCD's 1/2 masks are
mapped through their ``classification:classes``). The classic baseline is change vector
analysis (CVA; Malila 1980, "Change vector analysis: an approach for detecting forest
changes with Landsat", LARS symposia): the magnitude of the per-pixel difference of
z-scored bands, thresholded where it maximises F1 on the training areas.

:func:`run_change` chains it all for a catalog of pairs grouped by city (the OSCD catalog
built by ``scripts/build_oscd_catalog.py``), split by whole cities (:func:`split_cities`) into
training, validation and test cities (the protocol of :mod:`staclearn.data.splits`): the training
cities give the chips, class weights, normalisation statistics and the CVA threshold; the
validation cities choose the epoch; the test cities are used for nothing but the final
figures, and are never chipped.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import torch
import xarray as xr
from odc.geo.geobox import GeoBox
from torch import nn
from torch.nn import functional as F

from staclearn.chips.pixel import ChipDataset, band_statistics, export_chips
from staclearn.data.cube import band_names, load_cube, valid_mask
from staclearn.errors import (
    AssetNotFoundError,
    BandMismatchError,
    ConfigError,
    DateOrderError,
    GeoBoxMismatchError,
    LabelError,
    NoItemsFoundError,
    NoGeoreferenceError,
    NoGeoreferenceWarning,
    NoOverlapError,
    SplitError,
    StaclearnWarning,
)
from staclearn.inference.engines import add_onnx_artifact
from staclearn.evaluation.metrics import ClassificationMetrics, compute_metrics, summary
from staclearn.evaluation.reports import write_evaluation
from staclearn.data.labels import (
    IGNORE_INDEX,
    ClassInfo,
    classes_from_item,
    load_label_raster,
    values_to_indices,
)
from staclearn.models.segmentation import (
    DATE_PREFIXES,
    FUSIONS,
    PIXEL_CONV,
    ModelSpec,
    SiameseDiffUnet,
    load_weights,
    model_from_spec,
    pair_band_names,
    save_weights,
)
from staclearn.inference.raster import (
    CLASS_MAP_NODATA,
    predict_class_map,
    predict_probabilities,
    write_cog,
)
from staclearn.data.search import bbox_intersects, item_time_range, open_items
from staclearn.data.splits import PART_NAMES, TEST, TRAIN, VALID, part_counts, split_description
from staclearn.training.trainer import EpochRecord, Trainer, class_weights
from staclearn.inference.vectorize import vectorize_item
from staclearn._io import write_json

__all__ = [
    "CHANGE_CLASSES",
    "DATE_PREFIXES",
    "FUSIONS",
    "pair_band_names",
    "load_pair",
    "load_png_pair",
    "stack_pair",
    "export_change_chips",
    "SiameseDiffUnet",
    "build_change_model",
    "load_change_model",
    "ChangeLoss",
    "ChangeAugmentation",
    "ChangePrediction",
    "predict_change",
    "change_vector_magnitude",
    "fit_cva_threshold",
    "fit_change_threshold",
    "precision_recall_table",
    "cva_mask",
    "ChangeConfig",
    "PairItems",
    "CitySplit",
    "split_cities",
    "ChangeResult",
    "run_change",
    "change_mask_item",
]

CHANGE_CLASSES: tuple[ClassInfo, ...] = (
    ClassInfo(0, "no change", "D9D9D9", "No change between the two dates"),
    ClassInfo(1, "change", "E31A1C", "Change between the two dates"),
)
"""Classes of change masks: value 0 no change, 1 change (255 = nodata / unlabelled)."""

#: Sentinel-2 10 m and 20 m bands, the default of :class:`ChangeConfig`.
S2_10M_20M = ("B02", "B03", "B04", "B08", "B05", "B06", "B07", "B8A", "B11", "B12")


# --------------------------------------------------------------------------------------------
# Loading pairs
# --------------------------------------------------------------------------------------------


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
    from rasterio.errors import NotGeoreferencedWarning

    if asset not in item.assets:
        raise AssetNotFoundError(
            f"Label Item {item.id!r} has no asset {asset!r}; it has {sorted(item.assets)}. Pass label_asset=."
        )
    href = item.assets[asset].get_absolute_href() or item.assets[asset].href
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(href) as src:
            georef = src.crs is not None  # without a CRS nothing can be reprojected
            shape = (src.height, src.width)
            raw = None if georef else src.read(1)
            file_nodata = src.nodata
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
        FileNotFoundError: a file does not exist.
        BandMismatchError: an image has fewer than ``len(bands)`` bands.
        GeoBoxMismatchError: the images (or the label) differ in shape.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    def read(path: str | os.PathLike[str]) -> np.ndarray:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{os.fspath(path)!r} does not exist.")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return src.read()

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


# --------------------------------------------------------------------------------------------
# Chips
# --------------------------------------------------------------------------------------------


def export_change_chips(
    pairs: Mapping[str, tuple[xr.DataArray, xr.DataArray, xr.DataArray]],
    out_dir: str | os.PathLike[str],
    *,
    valid_cities: Sequence[str],
    tile_size: int = 64,
    stride: int | None = None,
    min_labelled: float = 0.0,
    standardize: bool = False,
):  # -> geopandas.GeoDataFrame
    """Write before/after/label chips of several pairs, split by city, with one GeoParquet index.

    Each pair is stacked with :func:`stack_pair` and cut by :func:`staclearn.chips.pixel.export_chips`
    into ``out_dir/<city>/images`` (``(2C, tile, tile) float32`` GeoTIFFs, before bands then
    after bands, NaN nodata) and ``out_dir/<city>/labels`` (0/1, 255 unlabelled and where a
    date has no data). Whole cities go to ``"valid"`` (:data:`staclearn.data.splits.VALID`), the
    others to ``"train"``: no pixel of a validation city is in a training chip. Test cities
    are not chips at all: leave them out of ``pairs`` (:func:`run_change` does).

    Args:
        pairs: ``{city: (before, after, labels)}`` from :func:`load_pair` / :func:`load_png_pair`,
            training and validation cities only.
        out_dir: output folder; the index is ``out_dir/chips.parquet``.
        valid_cities: names in ``pairs`` whose chips form the ``"valid"`` split.
        tile_size: chip edge in pixels.
        stride: step between chips in pixels (default ``tile_size``).
        min_labelled: minimum labelled fraction of a chip, in [0, 1].
        standardize: z-score each date of each pair by its own band statistics
            (:func:`stack_pair`); the model must then be built with ``standardize=True``.

    Returns:
        The index GeoDataFrame (geometry: chip bounds in EPSG:4326, or pixel bounds with no
        CRS for non-georeferenced pairs) with the columns of
        :func:`staclearn.chips.pixel.export_chips` (``crs``/``transform``/``height``/``width``: the
        chip's GeoBox) plus ``city``; paths are relative to ``out_dir``;
        ``attrs["band_names"]`` lists the 2C stacked band names.

    Raises:
        SplitError: a validation city is not in ``pairs``, or no city is left for training.
        ConfigError: pairs mix georeferenced and non-georeferenced cubes, or a pair has no labels.
        LabelError: a city has no chip reaching ``min_labelled``.
    """
    import geopandas as gpd
    import pandas as pd

    valid = set(valid_cities)
    unknown = sorted(valid - set(pairs))
    if unknown:
        raise SplitError(f"Validation cities {unknown} are not among the pairs {sorted(pairs)}.")
    if not set(pairs) - valid:
        raise SplitError(f"Every city {sorted(pairs)} is a validation city: leave at least one for training.")
    out = Path(out_dir)
    frames = []
    crs_kinds = set()
    names: list[str] = []
    for city, (before, after, labels) in pairs.items():
        if labels is None:
            raise ConfigError(f"The pair {city!r} has no labels; load it with label_item= to export chips.")
        stacked = stack_pair(before, after, standardize=standardize)
        names = [str(b) for b in stacked.band.values]
        image = np.asarray(stacked.values, dtype=np.float32)
        geobox = stacked.odc.geobox
        crs_kinds.add(geobox.crs is not None)
        lab = np.where(valid_mask(image, float("nan")), np.asarray(labels.values), IGNORE_INDEX).astype(np.uint8)
        split = np.full(lab.shape, VALID if city in valid else TRAIN, dtype=np.uint8)
        index = export_chips(
            image,
            lab,
            split,
            geobox,
            out / city,
            tile_size=tile_size,
            stride=stride,
            min_labelled=min_labelled,
            nodata=float("nan"),
            band_names=names,
        )
        (out / city / "chips.parquet").unlink(missing_ok=True)  # one index for all cities
        index["city"] = city
        index["chip_id"] = city + "_" + index["chip_id"]
        index["image"] = city + "/" + index["image"]
        index["label"] = city + "/" + index["label"]
        if index.crs is not None:
            index = index.to_crs("EPSG:4326")
        frames.append(index)
    if len(crs_kinds) > 1:
        raise ConfigError("Pairs mix georeferenced and non-georeferenced cubes; export them separately.")
    combined = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=frames[0].crs)
    combined.attrs["band_names"] = names
    tmp = out / "chips.parquet.tmp"
    combined.to_parquet(tmp)
    os.replace(tmp, out / "chips.parquet")
    return combined


# --------------------------------------------------------------------------------------------
# Models and loss
# --------------------------------------------------------------------------------------------


def build_change_model(
    bands: Sequence[str],
    *,
    mean: Sequence[float] | np.ndarray,
    std: Sequence[float] | np.ndarray,
    fusion: str = "early",
    encoder: str = "resnet18",
    encoder_weights: str | None = None,
    encoder_depth: int = 5,
    classes: Sequence[ClassInfo] = CHANGE_CLASSES,
    standardize: bool = False,
    architecture: str = "Unet",
    width: int = 32,
    layers: int = 4,
    kernel: int = 3,
) -> nn.Module:
    """Build a change model taking the stacked pair ``(B, 2C, H, W)``.

    Args:
        bands: the C bands of ONE date (e.g. ``["B02", "B03", ...]``); the model's input
            bands are :func:`pair_band_names` of them (``t1:*`` then ``t2:*``).
        mean: per-channel mean for the z-score, 2C values (e.g. from
            :func:`staclearn.chips.pixel.band_statistics` of the stacked chips) or C values used for
            both dates; in the imagery's units.
        std: per-channel standard deviation, same length rules.
        fusion: ``"early"`` (U-Net on the 2C channels, FC-EF) or ``"siam-diff"``
            (:class:`SiameseDiffUnet`, FC-Siam-diff), Daudt et al. 2018.
        encoder: smp encoder name (``"resnet18"``...).
        encoder_weights: ``None`` (random init; offline) or ``"imagenet"``.
        encoder_depth: encoder stages, 3 to 5 (inputs must be multiples of ``2**depth`` px).
        classes: output classes; default :data:`CHANGE_CLASSES` (0 no change, 1 change).
        standardize: the model expects each date z-scored by its own band statistics
            (:func:`stack_pair` with ``standardize=True``); :func:`predict_change` then does it.
        architecture: ``"Unet"`` (smp U-Net with ``encoder``) or ``"PixelConvNet"``
            (:class:`staclearn.models.segmentation.PixelConvNet`: ``layers`` convolutions of
            ``kernel x kernel`` with ``width`` channels at full resolution, early fusion only;
            receptive field ``layers * (kernel - 1) + 1`` px, any input size).
        width: PixelConvNet channels.
        layers: PixelConvNet convolution blocks.
        kernel: PixelConvNet kernel edge (odd), pixels.

    Returns:
        The model, with ``model.spec`` a :class:`~staclearn.models.segmentation.ModelSpec` whose ``extra``
        holds ``{"fusion": ..., "dates": 2, "date_bands": [...], "standardize": bool}``
        (plus ``width`` / ``layers`` / ``kernel`` for a PixelConvNet).

    Raises:
        ConfigError: unknown fusion or architecture, a siamese PixelConvNet, mean/std of
            neither C nor 2C values.
    """
    if fusion not in FUSIONS:
        raise ConfigError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    if architecture not in ("Unet", PIXEL_CONV):
        raise ConfigError(f"architecture must be 'Unet' or {PIXEL_CONV!r}, got {architecture!r}")
    if architecture == PIXEL_CONV and fusion != "early":
        raise ConfigError(f"A {PIXEL_CONV} change model is early fusion only; got fusion={fusion!r}.")
    c = len(bands)
    mean_l, std_l = [float(v) for v in mean], [float(v) for v in std]
    if len(mean_l) == c and len(std_l) == c:
        mean_l, std_l = mean_l * 2, std_l * 2
    if len(mean_l) != 2 * c or len(std_l) != 2 * c:
        raise ConfigError(f"mean/std need {c} or {2 * c} values for {c} bands per date; got {len(mean_l)}/{len(std_l)}.")
    extra: dict[str, Any] = {"fusion": fusion, "dates": 2, "date_bands": list(bands), "standardize": bool(standardize)}
    pixel = architecture == PIXEL_CONV
    if pixel:
        extra.update(width=int(width), layers=int(layers), kernel=int(kernel), dropout=0.1)
    spec = ModelSpec(
        architecture=architecture,
        encoder="none" if pixel else encoder,
        bands=tuple(pair_band_names(bands)),
        classes=tuple(classes),
        mean=tuple(mean_l),
        std=tuple(std_l),
        encoder_weights=None if pixel else encoder_weights,
        encoder_depth=0 if pixel else encoder_depth,
        extra=extra,
    )
    return model_from_spec(spec)


def load_change_model(spec: ModelSpec | Mapping[str, Any], weights: str | os.PathLike[str]) -> nn.Module:
    """Rebuild a change model from its spec and safetensors weights.

    Args:
        spec: the model's :class:`~staclearn.models.segmentation.ModelSpec` or its ``to_dict()`` (e.g. the
            ``spec.json`` written by :func:`run_change`).
        weights: ``.safetensors`` file (pickles are refused).

    Returns:
        The model in eval mode.

    Raises:
        ConfigError: unknown ``extra["fusion"]``.
        UnsafeWeightsError: the file is not safetensors.
    """
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.from_dict(dict(spec))
    model = load_weights(model_from_spec(spec), weights)
    return model.eval()


class ChangeLoss(nn.Module):
    """Weighted cross-entropy plus an optional soft Dice loss on the change class.

    Change is rare (0.3 to 2.6 % of OSCD pixels): class weights raise its share of the
    cross-entropy, and the Dice term (Milletari et al. 2016, V-Net) optimises overlap of the
    change class directly. ``loss = CE(weight) + dice * (1 - Dice(change))``.

    Args:
        weight: ``(K,)`` class weights of the cross-entropy, or ``None``.
        dice: weight of the Dice term (0 disables it).
        ignore_index: mask value left out of both terms.
        change_index: class index of "change" (1).

    Forward:
        logits ``(B, K, H, W) float32``, mask ``(B, H, W) int64``; returns a scalar.
    """

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        *,
        dice: float = 0.0,
        ignore_index: int = IGNORE_INDEX,
        change_index: int = 1,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))
        self.dice = float(dice)
        self.ignore_index = ignore_index
        self.change_index = change_index

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, mask, weight=self.weight, ignore_index=self.ignore_index)
        if self.dice > 0:
            labelled = (mask != self.ignore_index).float()
            p = logits.softmax(1)[:, self.change_index] * labelled
            t = (mask == self.change_index).float() * labelled
            dice = (2 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0)
            loss = loss + self.dice * (1 - dice)
        return loss


class ChangeAugmentation(nn.Module):
    """Augmentation of stacked pairs: one geometric transform, date swap, per-date radiometry.

    1. :class:`staclearn.chips.augment.Augmentation` (kornia flips, rotation, zoom, shift): one
       transform for every channel and the mask, so both dates stay aligned;
    2. date swap: with probability ``swap``, a chip's after bands become its before bands and
       vice versa (change between two dates is symmetric; the label is unchanged);
    3. per-date radiometric jitter: :class:`staclearn.chips.augment.RadiometricJitter` drawn
       *independently* for each date, so that brightness, contrast and band-gain differences
       between acquisitions (season, sun, sensor, L1C offsets of another city) are seen as
       training variation rather than change.

    Args:
        dates: number of dates stacked (2); the channels are split into that many equal groups.
        swap: probability of swapping the two dates of a chip.
        radiometric: amount of the jitter (brightness, contrast and band gain each uniform in
            ``[1 - amount, 1 + amount]``); 0 disables it.
        geometric: apply step 1.

    Forward:
        image ``(B, 2C, H, W) float32``, mask ``(B, H, W)`` int; returns both transformed.
    """

    def __init__(self, *, dates: int = 2, swap: float = 0.5, radiometric: float = 0.1, geometric: bool = True) -> None:
        super().__init__()
        from staclearn.chips.augment import Augmentation, RadiometricJitter

        self.dates, self.swap = dates, float(swap)
        self.geometric = Augmentation() if geometric else None
        self.jitter = (
            RadiometricJitter(brightness=radiometric, contrast=radiometric, band_gain=radiometric / 2, p=0.8)
            if radiometric > 0
            else None
        )

    @torch.no_grad()
    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.geometric is not None:
            image, mask = self.geometric(image, mask)
        parts = list(image.chunk(self.dates, dim=1))
        if self.swap > 0 and self.dates == 2:
            flip = (torch.rand(image.shape[0], 1, 1, 1, device=image.device) < self.swap).to(image.dtype)
            parts = [flip * parts[1] + (1 - flip) * parts[0], flip * parts[0] + (1 - flip) * parts[1]]
        if self.jitter is not None:
            # NaN-free here (the Trainer fills nodata with the band mean before augmenting)
            parts = [self.jitter(part) for part in parts]
        return torch.cat(parts, 1), mask


# --------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChangePrediction:
    """Output of :func:`predict_change`.

    Attributes:
        mask: ``(y, x) uint8`` 0 no change / 1 change, 255 where a date has no data, on the
            pair's GeoBox (no CRS for non-georeferenced pairs); ``attrs["nodata"] = 255``.
        probability: ``(y, x) float32`` probability of change in [0, 1], NaN where a date
            has no data; ``None`` unless asked for.
    """

    mask: xr.DataArray
    probability: xr.DataArray | None = None


def predict_change(
    model: nn.Module,
    before: xr.DataArray,
    after: xr.DataArray,
    *,
    tile_size: int = 256,
    padding: int = 32,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    probability: bool = False,
    out_path: str | os.PathLike[str] | None = None,
    prob_path: str | os.PathLike[str] | None = None,
    threshold: float | None = None,
) -> ChangePrediction:
    """Predict a change mask (and optionally the change probability) for a whole pair.

    The pair is stacked (:func:`stack_pair`; standardised per date when
    ``model.spec.extra["standardize"]`` says the model was trained so) and predicted tile by
    tile with padding by :func:`staclearn.inference.raster.predict_class_map` (or
    :func:`staclearn.inference.raster.predict_probabilities` when the probability is wanted; the mask
    is then its argmax), so the output is on the pair's GeoBox.

    The decision rule: a pixel is change where its change probability is ``>= threshold``.
    The threshold is ``threshold`` when given, else the model's own
    (``model.spec.extra["threshold"]``, chosen on validation cities by :func:`run_change`
    and kept in the model card), else the argmax of the class probabilities (0.5 for two
    classes).

    Args:
        model: a change model (:func:`build_change_model`), input bands ``t1:*`` + ``t2:*``.
        before: ``(time=1, band, y, x)`` cube of the first date, in the units trained on.
        after: cube of the second date on the same GeoBox.
        tile_size: model input edge in pixels, padding included.
        padding: context pixels discarded on each tile side.
        batch_size: tiles per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
        probability: also return the change probability.
        out_path: write the mask there as a uint8 COG (nodata 255).
        prob_path: write the change probability there as a float32 COG (nodata NaN);
            implies ``probability``.
        threshold: decision threshold on the change probability in [0, 1], overriding the
            model's.

    Returns:
        A :class:`ChangePrediction`; ``mask.attrs["threshold"]`` is the threshold applied
        (``None``: argmax).

    Raises:
        BandMismatchError: the cubes' bands differ from each other or from the model's.
        GeoBoxMismatchError: the dates are not on one GeoBox.
        ConfigError: bad tiling.
        NoGeoreferenceError: a path given for a pair without CRS (no COG possible).
    """
    spec = getattr(model, "spec", None)
    standardize = bool(spec.extra.get("standardize", False)) if spec is not None else False
    if threshold is None and spec is not None and spec.extra.get("threshold") is not None:
        threshold = float(spec.extra["threshold"])
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold is a change probability in [0, 1], got {threshold}.")
    stacked = stack_pair(before, after, standardize=standardize)
    if (out_path is not None or prob_path is not None) and stacked.odc.crs is None:
        raise NoGeoreferenceError(
            "This pair has no georeference (pixel coordinates only): its change mask cannot be "
            "written as a COG. Use the returned arrays (prediction.mask.values) instead."
        )
    kw: dict[str, Any] = {"tile_size": tile_size, "padding": padding, "batch_size": batch_size, "device": device}
    if not (probability or prob_path is not None or threshold is not None):
        mask = predict_class_map(model, stacked, out_path=out_path, **kw)
        mask.attrs["threshold"] = None
        return ChangePrediction(mask)
    probs = predict_probabilities(model, stacked, **kw)
    values = np.asarray([int(v) for v in probs["class"].values], dtype=np.uint8)
    p = probs.values
    ok = ~np.isnan(p).any(0)
    change_pos = int(np.flatnonzero(values == 1)[0]) if (values == 1).any() else p.shape[0] - 1
    if threshold is None:
        mask_np = np.where(ok, values[np.nan_to_num(p, nan=0.0).argmax(0)], CLASS_MAP_NODATA).astype(np.uint8)
    else:
        mask_np = np.where(ok, np.nan_to_num(p[change_pos], nan=0.0) >= threshold, CLASS_MAP_NODATA).astype(np.uint8)
    prob = probs.isel({"class": change_pos}, drop=True).rename("change_probability")
    prob.attrs = {"nodata": float("nan")}
    mask = prob.copy(data=mask_np).rename("change")
    mask.attrs = {"nodata": CLASS_MAP_NODATA, "threshold": threshold}
    if out_path is not None:
        write_cog(mask, out_path)
    if prob_path is not None:
        write_cog(prob, prob_path)
    return ChangePrediction(mask, prob if (probability or prob_path is not None) else None)


# --------------------------------------------------------------------------------------------
# Change vector analysis baseline
# --------------------------------------------------------------------------------------------


def change_vector_magnitude(before: xr.DataArray, after: xr.DataArray) -> xr.DataArray:
    """Change vector analysis: magnitude of the per-pixel difference of z-scored bands.

    Each date's bands are z-scored with that date's own mean and standard deviation over its
    valid pixels (:func:`stack_pair` with ``standardize=True``, which also removes global
    radiometric offsets between the acquisitions), then
    ``magnitude = sqrt(sum_b (z_after_b - z_before_b) ** 2)``.

    Args:
        before: ``(time=1, band, y, x)`` cube of the first date.
        after: cube of the second date, same bands and GeoBox.

    Returns:
        ``(y, x) float32`` magnitude (unitless, in standard deviations), NaN where a date has
        no data, on the pair's GeoBox.

    Raises:
        BandMismatchError, GeoBoxMismatchError: as :func:`stack_pair`.
    """
    z = stack_pair(before, after, standardize=True)
    c = z.sizes["band"] // 2
    diff = z.isel(band=slice(c, None)).values - z.isel(band=slice(0, c)).values
    mag = np.sqrt((diff.astype(np.float64) ** 2).sum(0)).astype(np.float32)  # NaN stays NaN
    out = z.isel(band=0, drop=True).copy(data=mag).rename("cva_magnitude")
    out.attrs = {"nodata": float("nan")}
    return out


def fit_cva_threshold(
    magnitudes: Sequence[np.ndarray | xr.DataArray],
    labels: Sequence[np.ndarray | xr.DataArray],
    *,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[float, float]:
    """Choose the CVA threshold that maximises F1 of the change class on training pairs.

    All labelled, valid pixels of all pairs are pooled; every distinct magnitude is a
    candidate (scikit-learn's ``precision_recall_curve``), and pixels with
    ``magnitude >= threshold`` are called change.

    Args:
        magnitudes: ``(H, W)`` float magnitudes per pair (:func:`change_vector_magnitude`).
        labels: ``(H, W)`` uint8 0/1 labels per pair, ``ignore_index`` unlabelled.
        ignore_index: unlabelled value.

    Returns:
        ``(threshold, f1)``: the threshold (standard deviations) and its pooled F1 in [0, 1].

    Raises:
        ConfigError: lists of different lengths or arrays of different shapes.
        LabelError: no labelled change pixel (F1 undefined).
    """
    from sklearn.metrics import precision_recall_curve

    if len(magnitudes) != len(labels) or not magnitudes:
        raise ConfigError(f"Give one label array per magnitude array; got {len(magnitudes)} and {len(labels)}.")
    scores, truth = [], []
    for m, lab in zip(magnitudes, labels, strict=True):
        m, lab = np.asarray(m), np.asarray(lab)
        if m.shape != lab.shape:
            raise ConfigError(f"Magnitude {m.shape} and labels {lab.shape} differ in shape.")
        keep = (lab != ignore_index) & np.isfinite(m)
        scores.append(m[keep])
        truth.append(lab[keep] == 1)
    s, t = np.concatenate(scores), np.concatenate(truth)
    if not t.any():
        raise LabelError("No labelled change pixel in the training pairs: the CVA threshold cannot be fitted.")
    precision, recall, thresholds = precision_recall_curve(t, s)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)[:-1]
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def fit_change_threshold(
    probabilities: Sequence[np.ndarray | xr.DataArray],
    labels: Sequence[np.ndarray | xr.DataArray],
    *,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[float, float]:
    """Choose the decision threshold on the change probability that maximises F1 of change.

    The same rule as the CVA threshold (:func:`fit_cva_threshold`: all labelled, valid pixels
    pooled, every distinct probability a candidate, ``p >= threshold`` is change), applied
    to a change model's probabilities. :func:`run_change` calls it on the **validation**
    cities only, never on a test city: a model trained with class weights and Dice on other
    cities is not calibrated on a new one (on OSCD its probabilities of change are too low
    or too high by city), and 0.5 is an arbitrary cut.

    Args:
        probabilities: ``(H, W)`` change probabilities in [0, 1] per pair (NaN: no data).
        labels: ``(H, W)`` uint8 0/1 labels per pair, ``ignore_index`` unlabelled.
        ignore_index: unlabelled value.

    Returns:
        ``(threshold, f1)``: the threshold in [0, 1] and its pooled F1 on those pairs.

    Raises:
        ConfigError: lists of different lengths or arrays of different shapes.
        LabelError: no labelled change pixel.
    """
    threshold, f1 = fit_cva_threshold(probabilities, labels, ignore_index=ignore_index)
    return min(max(threshold, 0.0), 1.0), f1


def precision_recall_table(
    scores: np.ndarray | xr.DataArray,
    labels: np.ndarray | xr.DataArray,
    thresholds: Sequence[float] = tuple(round(0.05 * i, 2) for i in range(1, 20)),
    *,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, list[float]]:
    """Precision, recall and F1 of change at each threshold of a score map (probability or magnitude).

    Args:
        scores: ``(H, W)`` scores; ``>= threshold`` is change; NaN pixels are left out.
        labels: ``(H, W)`` 0/1 labels, ``ignore_index`` unlabelled.
        thresholds: the thresholds, in the scores' units.
        ignore_index: unlabelled value.

    Returns:
        ``{"threshold": [...], "precision": [...], "recall": [...], "f1": [...], "iou": [...]}``
        (precision 1.0 where nothing is called change; F1 0 where nothing is right).
    """
    s, lab = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    keep = (lab != ignore_index) & np.isfinite(s)
    s, t = s[keep], lab[keep] == 1
    out: dict[str, list[float]] = {"threshold": [], "precision": [], "recall": [], "f1": [], "iou": []}
    for th in thresholds:
        pred = s >= th
        tp = float((pred & t).sum())
        fp = float((pred & ~t).sum())
        fn = float((~pred & t).sum())
        out["threshold"].append(float(th))
        out["precision"].append(tp / (tp + fp) if tp + fp else 1.0)
        out["recall"].append(tp / (tp + fn) if tp + fn else 0.0)
        out["f1"].append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
        out["iou"].append(tp / (tp + fp + fn) if tp else 0.0)
    return out


def cva_mask(magnitude: xr.DataArray, threshold: float) -> xr.DataArray:
    """Threshold a CVA magnitude into a change mask.

    Args:
        magnitude: ``(y, x)`` float magnitude (:func:`change_vector_magnitude`).
        threshold: magnitudes ``>= threshold`` are change (:func:`fit_cva_threshold`).

    Returns:
        ``(y, x) uint8`` 0/1, 255 where the magnitude is NaN; same grid, ``attrs["nodata"] = 255``.
    """
    m = np.asarray(magnitude.values)
    out = np.where(np.isnan(m), CLASS_MAP_NODATA, m >= threshold).astype(np.uint8)
    da = magnitude.copy(data=out).rename("cva_change")
    da.attrs = {"nodata": CLASS_MAP_NODATA}
    return da


# --------------------------------------------------------------------------------------------
# Workflow
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChangeConfig:
    """Settings of a change-detection run. Sizes are in pixels of the common GeoBox.

    The defaults are those benchmarked by ``bench/change.py`` (OSCD, one test city per run).

    The split is by whole cities (:func:`split_cities`). The test cities are fixed first:
    ``test_cities`` and the cities of ``test_items``, or, when neither is given, drawn with
    ``split_seed`` from the cities not named in ``valid_cities``. The validation cities are
    ``valid_cities``, or drawn with the same ``split_seed`` from the cities that are not test.
    Every other city trains. So a config that names only ``valid_cities`` (the form before
    test cities existed) still runs: its test cities are drawn from the remaining cities,
    and it fails with :class:`~staclearn.errors.SplitError` when that leaves no training
    city. The split depends on ``split_seed`` and the catalog's cities only, never on
    ``seed``.

    Attributes:
        valid_cities: validation cities: they choose the epoch (``monitor``), and their
            figures are reported apart as validation figures (optimistic). Empty: drawn.
        test_cities: test cities: used for nothing but the final figures (no epoch
            choice, class weights, normalisation statistics or CVA threshold; never chipped).
        test_items: Item ids; the cities whose before, after or label Items include them are
            test cities too (added to ``test_cities``).
        split_seed: seed of the drawing of test and validation cities (numpy
            ``default_rng``); independent of the training ``seed``.
        test_fraction: share of all cities drawn as test cities when none is given
            (rounded, at least 1); ignored when ``test_count`` is set.
        test_count: number of test cities drawn when none is given.
        valid_fraction: share of the non-test cities drawn as validation cities when none
            is given (rounded, at least 1); ignored when ``valid_count`` is set.
        valid_count: number of validation cities drawn when none is given.
        bands: bands of each date, in channel order (default: Sentinel-2 10 m + 20 m bands).
        city_property: Item property naming the city (the region a pair belongs to).
        label_asset: key of the change raster asset of the label Items.
        resampling: resampling of coarser bands onto the common grid.
        fusion: ``"early"`` (FC-EF) or ``"siam-diff"`` (FC-Siam-diff).
        architecture: ``"Unet"`` (smp U-Net, ``encoder``) or ``"PixelConvNet"`` (small
            full-resolution convolutional net, ``width`` / ``layers`` / ``kernel``; early fusion).
        width: PixelConvNet channels.
        layers: PixelConvNet convolution blocks.
        kernel: PixelConvNet kernel edge, pixels (odd).
        tile_size: training chip edge; a multiple of ``2**encoder_depth``.
        stride: step between training chips (< tile_size: overlapping chips).
        min_labelled: minimum labelled fraction of a chip.
        encoder: smp encoder name.
        encoder_depth: encoder stages (3 to 5).
        encoder_weights: ``None`` or ``"imagenet"`` (needs internet).
        epochs: training epochs.
        lr: peak learning rate of the one-cycle schedule.
        batch_size: chips per batch.
        class_weights: ``"balanced"`` (median-frequency, :func:`staclearn.training.trainer.class_weights`),
            ``"sqrt"`` (its square root, milder) or ``None``; from the training chips only.
        dice: weight of the Dice term of :class:`ChangeLoss` (0: cross-entropy only).
        augment: kornia flips/rotation/zoom/shift, identical for both dates and the mask
            (:class:`ChangeAugmentation`, with ``date_swap`` and ``radiometric``).
        date_swap: probability of swapping a training chip's two dates (augmentation).
        radiometric: amount of the per-date radiometric jitter (augmentation; 0 disables it).
        oversample_change: chips holding change pixels are drawn about this many times as
            often (:mod:`staclearn.chips.sampling`); ``None``: each chip once per epoch.
        standardize: z-score each date of each city by its own band statistics before the
            model (:func:`stack_pair`) instead of one z-score of the training chips, so a
            new city's radiometric offsets are not change.
        threshold: decision threshold on the change probability; ``None`` (default): chosen
            on the validation cities (:func:`fit_change_threshold`, highest F1 of change on
            their pooled pixels) and kept in the model (``spec.extra["threshold"]``) and its
            card; a number: that threshold, recorded as given.
        monitor: epoch record field measured on the validation chips that picks the kept
            epoch (:meth:`staclearn.training.trainer.Trainer.fit`): ``"valid_miou"``, ``"valid_loss"``
            or ``"valid_accuracy"``.
        patience: stop after this many epochs without improvement of ``monitor`` on the
            validation chips; ``None`` never stops early.
        predict_tile_size: inference tile edge, padding included.
        padding: inference context discarded on each tile side.
        probability: also write change-probability COGs (published beside the masks).
        seed: training seed (initialisation, shuffling, augmentation); not the split's.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
    """

    valid_cities: tuple[str, ...] = ()
    test_cities: tuple[str, ...] = ()
    test_items: tuple[str, ...] = ()
    split_seed: int = 0
    test_fraction: float = 0.2
    test_count: int | None = None
    valid_fraction: float = 0.2
    valid_count: int | None = None
    bands: tuple[str, ...] = S2_10M_20M
    city_property: str = "staclearn:city"
    label_asset: str = "labels"
    resampling: str = "bilinear"
    fusion: str = "early"
    architecture: str = "PixelConvNet"
    width: int = 32
    layers: int = 4
    kernel: int = 3
    tile_size: int = 64
    stride: int = 128
    min_labelled: float = 0.0
    encoder: str = "resnet18"
    encoder_depth: int = 5
    encoder_weights: str | None = None
    epochs: int = 8
    lr: float = 3e-3
    batch_size: int = 16
    class_weights: str | None = "sqrt"
    dice: float = 0.5
    augment: bool = True
    date_swap: float = 0.5
    radiometric: float = 0.1
    oversample_change: float | None = 4.0
    standardize: bool = True
    threshold: float | None = None
    monitor: str = "valid_miou"
    patience: int | None = None
    predict_tile_size: int = 256
    padding: int = 32
    probability: bool = True
    seed: int = 0
    device: str = "auto"


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


@dataclass
class ChangeResult:
    """What a change run produced.

    Figures are :class:`~staclearn.evaluation.metrics.ClassificationMetrics` of the whole city's change
    mask against its labels (0 no change / 1 change, 255 unlabelled left out), per city as
    ``{city: {"model": ..., "cva": ...}}`` and pooled over the cities of a part as
    ``{"model": ..., "cva": ...}``. Only the test figures are measured on cities that no
    choice has seen; the validation figures come from the cities that chose the epoch.

    Attributes:
        out_dir: the run folder.
        model: the trained model (eval mode, weights of the epoch chosen on the validation
            cities), ``model.spec`` its ModelSpec.
        weights: ``model/weights.safetensors``.
        spec: ``model/spec.json`` (``ModelSpec.to_dict()``, for :func:`load_change_model`).
        chips: the chip index ``chips/chips.parquet`` (training and validation cities only).
        change_masks: ``{city: change_<city>.tif}`` COGs of the test cities.
        probabilities: ``{city: change_probability_<city>.tif}`` of the test cities (only
            with ``config.probability``).
        cva_masks: ``{city: cva_<city>.tif}`` COGs of the CVA baseline on the test cities.
        test_metrics: per test city, model and CVA.
        test_pooled: model and CVA over all test pixels together.
        valid_metrics: per validation city, model and CVA (optimistic: they chose the epoch).
        valid_pooled: model and CVA over all validation pixels together.
        cva_threshold: CVA magnitude threshold chosen on the training cities.
        cva_train_f1: F1 of change of that threshold on the training cities.
        threshold: the model's decision threshold on the change probability (chosen on the
            validation cities unless given).
        threshold_method: how it was chosen, in words (as in the card).
        precision_recall: ``{"test" | "validation": {city: {"model": table, "model_at_threshold":
            table, "model_at_0.5": table, "cva": table}}}`` of :func:`precision_recall_table`
            (the model's at thresholds 0.05 to 0.95, at its decision threshold and at 0.5;
            CVA's at its training threshold).
        evaluation: ``evaluation.json`` (``"test"``, ``"validation"`` and ``"split"`` apart).
        source_items: ``{city: PairItems}`` for every city.
        split: the cities of each part (:class:`CitySplit`).
        split_record: the ``staclearn:split`` record (:func:`staclearn.data.splits.split_description`)
            with change / no-change pixel counts per part.
        history: per-epoch training records (with the validation chips' figures).
        catalog: ``catalog.json`` of the published run (MLM card + change-mask Items).
        model_card: the MLM card Item.
        items: ``{city: change-mask Item}`` of the test cities.
        timings: seconds per step.
    """

    out_dir: Path
    model: nn.Module
    weights: Path
    spec: Path
    chips: Path
    change_masks: dict[str, Path]
    probabilities: dict[str, Path]
    cva_masks: dict[str, Path]
    test_metrics: dict[str, dict[str, ClassificationMetrics]]
    test_pooled: dict[str, ClassificationMetrics]
    valid_metrics: dict[str, dict[str, ClassificationMetrics]]
    valid_pooled: dict[str, ClassificationMetrics]
    cva_threshold: float
    cva_train_f1: float
    threshold: float
    threshold_method: str
    precision_recall: dict[str, Any]
    evaluation: Path
    source_items: dict[str, PairItems]
    split: CitySplit
    split_record: dict[str, Any]
    history: list[EpochRecord]
    catalog: Path | None = None
    model_card: pystac.Item | None = None
    items: dict[str, pystac.Item] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def test_cities(self) -> tuple[str, ...]:
        """The test cities."""
        return self.split.test

    @property
    def valid_cities(self) -> tuple[str, ...]:
        """The validation cities."""
        return self.split.valid

    @property
    def train_cities(self) -> tuple[str, ...]:
        """The training cities."""
        return self.split.train


def _is_label_item(item: pystac.Item) -> bool:
    return any("/label/" in e for e in item.stac_extensions) or any(k.startswith("label:") for k in item.properties)


def _group_pairs(items: Iterable[pystac.Item], city_property: str) -> dict[str, PairItems]:
    by_city: dict[str, list[pystac.Item]] = {}
    for item in items:
        city = item.properties.get(city_property)
        if city is not None:
            by_city.setdefault(str(city), []).append(item)
    if not by_city:
        raise NoItemsFoundError(f"No Item has the property {city_property!r}; set ChangeConfig.city_property.")
    pairs = {}
    for city, group in sorted(by_city.items()):
        labels = [i for i in group if _is_label_item(i)]
        imagery = [i for i in group if not _is_label_item(i)]
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


def _weights(dataset: ChipDataset, how: str | None) -> torch.Tensor | None:
    if how is None:
        return None
    w = class_weights(dataset, len(CHANGE_CLASSES))
    if how == "balanced":
        return w
    if how == "sqrt":
        return w.sqrt()
    raise ConfigError(f"class_weights must be 'balanced', 'sqrt' or None, got {how!r}")


def run_change(
    catalog: Any,
    out_dir: str | os.PathLike[str],
    config: ChangeConfig,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    pairs: Mapping[str, tuple[xr.DataArray, xr.DataArray, xr.DataArray]] | None = None,
    magnitudes: Mapping[str, xr.DataArray] | None = None,
) -> ChangeResult:
    """Train a change model on training cities, choose its epoch on validation cities and
    evaluate it, with CVA, on test cities.

    Steps: Items grouped by ``config.city_property`` (per city two dates and one label
    Item) -> :func:`split_cities` (whole cities: train / validation / test, see
    :class:`ChangeConfig`) -> :func:`load_pair` on each city's 10 m grid ->
    :func:`export_change_chips` of the training (``"train"``) and validation (``"valid"``)
    cities only -> :class:`staclearn.training.trainer.Trainer` with :class:`ChangeLoss` (class weights
    and normalisation statistics from the training chips; the epoch kept by
    ``config.monitor`` on the validation chips, early stopping with ``config.patience``) ->
    CVA threshold fitted on the training cities -> :func:`predict_change` on each whole
    validation city -> the decision threshold on p(change) chosen there
    (:func:`fit_change_threshold`, unless ``config.threshold`` is given) and stored in
    ``model.spec.extra["threshold"]`` -> :func:`predict_change` on each test city with it ->
    :func:`staclearn.evaluation.metrics.compute_metrics` of the model and of CVA, per city and pooled
    per part, and precision / recall against the threshold per city
    (:func:`precision_recall_table`, ``evaluation_precision_recall.png``). The test cities
    are used for nothing but those final figures.

    Args:
        catalog: STAC catalog path / URL or Items (see :func:`staclearn.data.search.open_items`),
            e.g. ``catalogs/oscd/catalog.json``.
        out_dir: run folder; receives ``chips/``, ``model/weights.safetensors`` +
            ``model/spec.json``, per test city ``change_<city>.tif`` (uint8 COG, 0/1, nodata
            255), ``cva_<city>.tif`` and optionally ``change_probability_<city>.tif``;
            ``evaluation.json`` (``{"test": ..., "validation": ..., "split": ...}``, see
            :func:`staclearn.evaluation.reports.write_evaluation`; model ``"<city> <fusion>"`` /
            ``"<city> cva"`` per city and ``"pooled <fusion>"`` / ``"pooled cva"``) with
            ``evaluation_confusion.png`` (test) and ``evaluation_validation_confusion.png``,
            ``history.json``, ``timings.json`` and the published ``catalog.json`` ->
            ``<run>/collection.json`` -> Items.
        config: settings, including the split (:class:`ChangeConfig`).
        progress: tqdm progress bars while training.
        log: where step messages go.
        pairs: ``{city: (before, after, labels)}`` already loaded by :func:`load_pair` with
            ``config.bands`` (e.g. by an earlier run over the same catalog, as
            ``bench/change.py`` does); cities missing from it are loaded.
        magnitudes: ``{city: change_vector_magnitude(before, after)}`` already computed
            for those pairs; cities missing from it are computed.

    Returns:
        A :class:`ChangeResult`. ``out_dir/catalog.json`` is a static catalog with the MLM
        card (both dates in ``mlm:input``; ``staclearn:metrics`` ``{"test": ...,
        "validation": ...}`` and ``staclearn:split``) and one change-mask Item per test city
        (:func:`change_mask_item`, with its city's test figures and the split record), which
        validate offline (:mod:`staclearn.stac.validate`).

    Raises:
        SplitError: unknown city or Item id, a city asked for two parts, or too few cities
            for a training, a validation and a test part (:func:`split_cities`).
        ConfigError: bad settings (fusion, monitor...).
        NoItemsFoundError: a city lacks two dates or its label Item.
        plus the errors of :func:`load_pair` and the training / prediction steps.
    """
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.fusion not in FUSIONS:
        raise ConfigError(f"fusion must be one of {FUSIONS}, got {config.fusion!r}")
    groups = _group_pairs(open_items(catalog), config.city_property)
    split = split_cities(
        groups, test_cities=config.test_cities, test_items=config.test_items, valid_cities=config.valid_cities,
        split_seed=config.split_seed, test_fraction=config.test_fraction, test_count=config.test_count,
        valid_fraction=config.valid_fraction, valid_count=config.valid_count,
    )
    log(f"split ({split.method}): train {list(split.train)}, validation {list(split.valid)}, test {list(split.test)}")
    bands = list(config.bands)

    given = dict(pairs or {})
    pairs = {}
    for city, g in groups.items():
        if city in given:
            pairs[city] = given[city]
            continue
        before, after, labels = load_pair(
            g.before, g.after, bands=bands, label_item=g.labels, label_asset=config.label_asset, resampling=config.resampling
        )
        assert labels is not None  # label_item given
        pairs[city] = (before.load(), after.load(), labels)
        log(f"{city}: {g.before[0].id} -> {g.after[0].id}, grid {tuple(labels.shape)}, {int((labels == 1).sum())} change px")
    # test cities are never chipped: no pixel of theirs reaches training, validation or the statistics
    index = export_change_chips(
        {c: pairs[c] for c in (*split.train, *split.valid)}, out / "chips", valid_cities=split.valid,
        tile_size=config.tile_size, stride=config.stride, min_labelled=config.min_labelled, standardize=config.standardize,
    )
    index_path = out / "chips" / "chips.parquet"
    log(f"{int((index.split == 'train').sum())} training chips ({', '.join(split.train)}), "
        f"{int((index.split == 'valid').sum())} validation chips ({', '.join(split.valid)})")
    timings["prepare"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    mean, std = band_statistics(index_path, "train")
    model = build_change_model(
        bands, mean=mean, std=std, fusion=config.fusion, encoder=config.encoder,
        encoder_weights=config.encoder_weights, encoder_depth=config.encoder_depth, standardize=config.standardize,
        architecture=config.architecture, width=config.width, layers=config.layers, kernel=config.kernel,
    )
    train_ds = ChipDataset(index_path, "train", fill=mean)
    valid_ds = ChipDataset(index_path, "valid", fill=mean)
    loss = ChangeLoss(_weights(train_ds, config.class_weights), dice=config.dice)
    augment: nn.Module | bool = config.augment
    if config.augment and (config.date_swap or config.radiometric):
        augment = ChangeAugmentation(swap=config.date_swap, radiometric=config.radiometric)
    trainer = Trainer(
        model, train_ds, valid_ds, num_classes=len(CHANGE_CLASSES), batch_size=config.batch_size, loss=loss,
        augment=augment, device=config.device, seed=config.seed,
        oversample={1: config.oversample_change} if config.oversample_change else None,
    )
    history = trainer.fit(
        config.epochs, config.lr, progress=progress, keep_best=True, monitor=config.monitor, patience=config.patience,
        on_epoch=lambda r: log(
            f"epoch {r.epoch:3d}  train_loss {r.train_loss:.4f}  valid_miou {r.valid_miou:.4f}  ({r.seconds:.1f} s)"
        ),
    )
    timings["train"] = time.perf_counter() - t1
    weights = save_weights(model, out / "model" / "weights.safetensors")
    write_json(out / "history.json", {"epochs": trainer.history_table(), "monitor": config.monitor})

    t2 = time.perf_counter()
    given_m = dict(magnitudes or {})
    magnitudes = {city: given_m[city] if city in given_m else change_vector_magnitude(b, a) for city, (b, a, _) in pairs.items()}
    threshold, train_f1 = fit_cva_threshold(
        [magnitudes[c].values for c in split.train], [pairs[c][2].values for c in split.train]
    )
    log(f"CVA threshold {threshold:.3f} (F1 {train_f1:.3f} on the training cities)")
    timings["cva"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    names = [c.name for c in CHANGE_CLASSES]
    values = [c.value for c in CHANGE_CLASSES]
    kw = {"tile_size": config.predict_tile_size, "padding": config.padding,
          "batch_size": max(1, config.batch_size // 4), "device": config.device}
    # the validation cities first: they choose the decision threshold; the test cities come after
    valid_probs = {city: predict_change(model, pairs[city][0], pairs[city][1], probability=True, threshold=0.5, **kw)
                   for city in split.valid}
    if config.threshold is None:
        decision, valid_f1 = fit_change_threshold(
            [valid_probs[c].probability.values for c in split.valid], [pairs[c][2].values for c in split.valid]  # type: ignore[union-attr]
        )
        how = (f"highest F1(change) on the pooled pixels of the validation cities {list(split.valid)} "
               f"(F1 {valid_f1:.3f} there); the test cities took no part")
        log(f"decision threshold {decision:.3f}: {how}")
    else:
        decision, how = float(config.threshold), "given (ChangeConfig.threshold / --threshold)"
    threshold_record = {"value": decision, "method": how, "cities": list(split.valid) if config.threshold is None else []}
    model.spec = replace(model.spec, extra={**model.spec.extra, "threshold": decision, "threshold_method": how})  # type: ignore[union-attr,arg-type]
    spec_path = out / "model" / "spec.json"
    write_json(spec_path, model.spec.to_dict())  # type: ignore[union-attr]
    masks: dict[str, Path] = {}
    predicted: dict[str, xr.DataArray] = {}
    probs: dict[str, Path] = {}
    cvas: dict[str, Path] = {}
    per_city: dict[str, dict[str, dict[str, ClassificationMetrics]]] = {"test": {}, "validation": {}}
    pooled: dict[str, dict[str, ClassificationMetrics]] = {}
    curves: dict[str, dict[str, dict[str, dict[str, list[float]]]]] = {"test": {}, "validation": {}}
    for part, cities in (("validation", split.valid), ("test", split.test)):
        refs, preds, cva_preds = [], [], []
        for city in cities:
            before, after, labels = pairs[city]
            is_test = part == "test"
            mask_path = out / f"change_{city}.tif" if is_test else None
            prob_path = out / f"change_probability_{city}.tif" if is_test and config.probability else None
            if is_test:
                pred = predict_change(model, before, after, out_path=mask_path, prob_path=prob_path, probability=True, **kw)
            else:
                p = valid_probs[city].probability
                mask_np = np.where(np.isnan(p.values), CLASS_MAP_NODATA, p.values >= decision).astype(np.uint8)
                mask = p.copy(data=mask_np).rename("change")
                mask.attrs = {"nodata": CLASS_MAP_NODATA, "threshold": decision}
                pred = ChangePrediction(mask, p)
            cva = cva_mask(magnitudes[city], threshold)
            if is_test:
                masks[city] = mask_path  # type: ignore[assignment]
                predicted[city] = pred.mask
                if prob_path is not None:
                    probs[city] = prob_path
                cvas[city] = write_cog(cva, out / f"cva_{city}.tif")
            reference = np.asarray(labels.values)
            per_city[part][city] = {
                "model": compute_metrics(reference, pred.mask.values, values, names),
                "cva": compute_metrics(reference, cva.values, values, names),
            }
            curves[part][city] = {
                "model": precision_recall_table(pred.probability.values, reference),  # type: ignore[union-attr]
                "model_at_threshold": precision_recall_table(pred.probability.values, reference, [decision]),  # type: ignore[union-attr]
                "model_at_0.5": precision_recall_table(pred.probability.values, reference, [0.5]),  # type: ignore[union-attr]
                "cva": precision_recall_table(magnitudes[city].values, reference, [threshold]),
            }
            refs.append(reference.ravel())
            preds.append(np.asarray(pred.mask.values).ravel())
            cva_preds.append(np.asarray(cva.values).ravel())
            m, c = per_city[part][city]["model"], per_city[part][city]["cva"]
            log(f"{part} {city}: F1(change) {config.fusion} {m.f1['change']:.3f} (threshold {decision:.3f})  CVA {c.f1['change']:.3f}")
        ref = np.concatenate(refs)
        pooled[part] = {
            "model": compute_metrics(ref, np.concatenate(preds), values, names),
            "cva": compute_metrics(ref, np.concatenate(cva_preds), values, names),
        }
    timings["predict_evaluate"] = time.perf_counter() - t3
    record = _split_record(split, pairs, names)
    parts = {
        part: {
            **{f"{city} {config.fusion if k == 'model' else 'cva'}": v for city, d in per_city[part].items() for k, v in d.items()},
            **{f"pooled {config.fusion if k == 'model' else 'cva'}": v for k, v in pooled[part].items()},
        }
        for part in ("test", "validation")
    }
    json_path, pngs = write_evaluation(parts, out, split=record, name="evaluation")
    evaluation = json.loads(json_path.read_text(encoding="utf-8"))
    evaluation["threshold"] = threshold_record
    evaluation["precision_recall"] = curves
    write_json(json_path, evaluation)
    pngs["precision_recall"] = _plot_precision_recall(curves, decision, out / "evaluation_precision_recall.png")
    card, items = _publish_run(
        out, model, config, groups, split, record, per_city, pooled, masks, predicted, probs, json_path, pngs,
        threshold_record, trainer.hyperparameters,
    )
    timings["total"] = time.perf_counter() - t0
    write_json(out / "timings.json", timings)
    return ChangeResult(
        out_dir=out,
        model=model.eval(),
        weights=weights,
        spec=spec_path,
        chips=index_path,
        change_masks=masks,
        probabilities=probs,
        cva_masks=cvas,
        test_metrics=per_city["test"],
        test_pooled=pooled["test"],
        valid_metrics=per_city["validation"],
        valid_pooled=pooled["validation"],
        cva_threshold=threshold,
        cva_train_f1=train_f1,
        threshold=decision,
        threshold_method=how,
        precision_recall=curves,
        evaluation=json_path,
        source_items=groups,
        split=split,
        split_record=record,
        history=history,
        catalog=out / "catalog.json",
        model_card=card,
        items=items,
        timings=timings,
    )


def _split_record(
    split: CitySplit, pairs: Mapping[str, tuple[xr.DataArray, xr.DataArray, xr.DataArray]], class_names: Sequence[str]
) -> dict[str, Any]:
    """``staclearn:split``: labelled change / no-change pixels per part and the cities of each part."""
    labels = [np.asarray(pairs[c][2].values).ravel() for c in pairs]
    codes = [np.full(lab.shape, split.part_of(c), dtype=np.uint8) for c, lab in zip(pairs, labels, strict=True)]
    counts = part_counts(np.concatenate(labels), np.concatenate(codes), class_names, ignore_index=IGNORE_INDEX)
    return split_description(split.method, split_seed=split.split_seed, counts=counts, unit="pixels", cities=split.as_dict())


def _figures(d: Mapping[str, ClassificationMetrics]) -> dict[str, dict[str, Any]]:
    """Headline figures (:func:`staclearn.evaluation.metrics.summary`) plus the change class's, per model (``None`` for NaN)."""

    def num(x: float) -> float | None:
        return None if np.isnan(x) else float(x)

    return {
        k: {
            **summary(m),
            "f1_change": num(m.f1["change"]),
            "precision_change": num(m.precision["change"]),
            "recall_change": num(m.recall["change"]),
            "iou_change": num(m.iou["change"]),
        }
        for k, m in d.items()
    }


def _publish_run(
    out: Path,
    model: nn.Module,
    config: ChangeConfig,
    groups: Mapping[str, PairItems],
    split: CitySplit,
    record: Mapping[str, Any],
    per_city: Mapping[str, Mapping[str, Mapping[str, ClassificationMetrics]]],
    pooled: Mapping[str, Mapping[str, ClassificationMetrics]],
    masks: Mapping[str, Path],
    predicted: Mapping[str, xr.DataArray],
    probs: Mapping[str, Path],
    evaluation_json: Path,
    confusion_pngs: Mapping[str, Path],
    threshold: Mapping[str, Any],
    hyperparameters: Mapping[str, Any],
) -> tuple[pystac.Item, dict[str, pystac.Item]]:
    """Write the MLM card and one change-mask Item per test city into ``out/catalog.json``."""
    from staclearn.stac.modelcard import model_card
    from staclearn.stac.catalog import write_catalog

    run_id = out.resolve().name
    training = [i for c in split.train for i in (*groups[c].before, *groups[c].after, groups[c].labels)]
    metrics = {
        part: {**{city: _figures(d) for city, d in per_city[part].items()}, "pooled": _figures(pooled[part])}
        for part in ("test", "validation")
    }
    card = model_card(
        model,  # type: ignore[arg-type]
        str((out / "model" / "weights.safetensors").resolve()),
        id=f"{run_id}-model",
        tile_size=config.predict_tile_size,
        hyperparameters={
            **hyperparameters,
            "tile_size": config.tile_size,
            "stride": config.stride,
            "loss": f"cross-entropy ({config.class_weights or 'unweighted'} class weights) + {config.dice:g} x Dice(change)",
            "augmentation": (
                "kornia flips/rotation/zoom/shift, one transform for both dates and the mask"
                + (f"; date swap p={config.date_swap:g}" if config.date_swap else "")
                + (f"; per-date radiometric jitter {config.radiometric:g}" if config.radiometric else "")
            )
            if config.augment
            else "none",
            "resampling": config.resampling,
            "decision_threshold": f"change where p(change) >= {threshold['value']:.4f}: {threshold['method']}",
            "sampling": f"chips holding change drawn {config.oversample_change:g}x as often"
            if config.oversample_change
            else "each chip once per epoch",
            "seed": config.seed,
            "split_seed": config.split_seed,
            "epoch_selection": f"best {config.monitor} on the validation chips"
            + (f", early stopping after {config.patience} epochs" if config.patience else ""),
            "split": (
                f"by city; training cities {list(split.train)}, validation cities {list(split.valid)}, "
                f"test cities {list(split.test)}"
            ),
        },
        training_items=training,
        metrics=metrics,
        description=(
            f"Change detection ({config.fusion} fusion, U-Net {config.encoder}) on pairs of {len(config.bands)} bands "
            f"{list(config.bands)}, trained by staclearn on {', '.join(split.train)} (epoch chosen on "
            f"{', '.join(split.valid)}; tested on {', '.join(split.test)}). Output: 0 no change, 1 change."
        ),
    )
    card.properties["staclearn:split"] = dict(record)
    card.properties["staclearn:threshold"] = dict(threshold)
    add_onnx_artifact(card, model, required=False)
    card.add_asset(
        "evaluation",
        pystac.Asset(
            str(evaluation_json.resolve()), media_type=pystac.MediaType.JSON, roles=["metadata"],
            title="Evaluation on test cities and, apart, validation cities (model and CVA)",
        ),
    )
    for part, png in confusion_pngs.items():
        if part == "precision_recall":
            card.add_asset(
                "precision_recall",
                pystac.Asset(str(png.resolve()), media_type=pystac.MediaType.PNG, roles=["overview"],
                             title="Precision / recall of change against the threshold, per test and validation city"),
            )
            continue
        card.add_asset(
            "confusion_matrix" if part == "test" else f"confusion_matrix_{part}",
            pystac.Asset(str(png.resolve()), media_type=pystac.MediaType.PNG, roles=["overview"], title=f"Confusion matrices ({part})"),
        )
    items = {}
    for city, path in masks.items():
        g = groups[city]
        item = change_mask_item(
            str(path.resolve()), predicted[city], id=f"{run_id}-change-{city}", before=g.before, after=g.after, model_card=card,
            probability_href=str(probs[city].resolve()) if city in probs else None,
            threshold=float(threshold["value"]), threshold_method=str(threshold["method"]),
        )
        item.properties["staclearn:metrics"] = {"test": metrics["test"][city]}
        item.properties["staclearn:split"] = dict(record)
        items[city] = item
    polygons = [vectorize_item(item, masks[city], out, name=f"{city}-polygons.parquet") for city, item in items.items()]
    write_catalog([card, *items.values(), *polygons], out, id=run_id, description="staclearn change-detection run")
    return card, items


def change_mask_item(
    cog_href: str,
    mask: xr.DataArray,
    *,
    id: str,
    before: Sequence[pystac.Item],
    after: Sequence[pystac.Item],
    model_card: pystac.Item | None = None,
    probability_href: str | None = None,
    collection: str | None = None,
    threshold: float | None = None,
    threshold_method: str | None = None,
) -> pystac.Item:
    """Describe a change-mask COG as a STAC Item.

    The Item is a :func:`staclearn.stac.items.class_map_item` whose asset ``change_mask`` carries
    ``classification:classes`` 0 no change / 1 change (nodata 255), whose time range runs
    from the start of the before Items to the end of the after Items, with ``derived_from``
    links to every before and after Item and to the model card.

    Args:
        cog_href: href of the change-mask COG (uint8).
        mask: the ``(y, x)`` change mask on its GeoBox (geometry = its non-nodata pixels).
        id: Item id.
        before: Items of the first date.
        after: Items of the second date.
        model_card: the MLM card Item of the change model.
        probability_href: href of the change-probability COG (float32, NaN nodata), added as
            asset ``change_probability``.
        collection: collection id to record.
        threshold: the decision threshold on the change probability that made the mask,
            recorded as ``staclearn:threshold`` ``{"value", "method"}`` and in
            ``processing:lineage``; ``None``: argmax.
        threshold_method: where the threshold came from (e.g. "model card: chosen on the
            validation cities", "given with --threshold").

    Returns:
        The Item (projection, raster, classification and processing extensions).

    Raises:
        NoGeoreferenceError: ``mask`` has no CRS (a PNG pair): it has no geometry to publish.
    """
    from staclearn.stac.items import class_map_item, unsigned_href

    if mask.odc.crs is None:
        raise NoGeoreferenceError(
            f"The change mask for Item {id!r} has no CRS (its pair had no georeference, e.g. LEVIR PNGs), "
            "so it has no geometry and cannot be published as a STAC Item. Keep it as an array or "
            "predict a georeferenced pair loaded from STAC Items."
        )
    item = class_map_item(
        cog_href,
        mask,
        id=id,
        classes=CHANGE_CLASSES,
        source_items=[*before, *after],
        model_card=model_card,
        collection=collection,
        lineage=(
            f"Change between {_ids(before)} (before) and {_ids(after)} (after): both dates loaded onto one GeoBox with "
            "odc-stac, stacked (t1 bands, then t2 bands) and predicted tile by tile by the change model of the "
            "derived_from MLM card"
            + (
                f"; change where p(change) >= {threshold:.4f} ({threshold_method or 'threshold given'})."
                if threshold is not None
                else "; class of highest probability."
            )
        ),
        asset_key="change_mask",
        title="Change mask (0 no change, 1 change)",
    )
    for link in item.links:
        if link.rel == "derived_from":
            for label, group in (("before", before), ("after", after)):
                if any(link.title == f"source: {i.id}" for i in group):
                    link.title = link.title.replace("source", label, 1)
    if threshold is not None:
        item.properties["staclearn:threshold"] = {"value": float(threshold), "method": threshold_method or "given"}
    if probability_href is not None:
        item.add_asset(
            "change_probability",
            pystac.Asset(
                href=unsigned_href(probability_href),
                media_type=pystac.MediaType.COG,
                roles=["data"],
                title="Probability of change (softmax), 0 to 1",
                extra_fields={"raster:bands": [{"nodata": "nan", "data_type": "float32", "unit": "1"}]},
            ),
        )
    return item


def _plot_precision_recall(curves: Mapping[str, Mapping[str, Mapping[str, Mapping[str, list[float]]]]], threshold: float, path: Path) -> Path:
    """One precision-recall panel per test (then validation) city: the model's curve over
    thresholds, its chosen threshold and 0.5 marked, and CVA's point."""
    from matplotlib.figure import Figure  # a standalone figure: pyplot's backend and state are left alone

    panels = [(part, city, d) for part in ("test", "validation") for city, d in curves[part].items()]
    n = max(1, len(panels))
    cols = min(n, 4)
    rows = -(-n // cols)
    fig = Figure(figsize=(3.2 * cols, 3.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, (part, city, d) in zip(axes.ravel(), panels, strict=False):
        m = d["model"]
        ax.plot(m["recall"], m["precision"], "-", color="#1f78b4", lw=1.2, label="model (0.05-0.95)")
        at = d["model_at_threshold"]
        ax.plot(at["recall"][0], at["precision"][0], "o", color="#e31a1c", label=f"model p>={threshold:.2f}")
        half = d["model_at_0.5"]
        ax.plot(half["recall"][0], half["precision"][0], "s", color="#ff7f00", mfc="none", label="model p>=0.5")
        c = d["cva"]
        ax.plot(c["recall"][0], c["precision"][0], "^", color="#333333", label="CVA")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="recall (change)", ylabel="precision (change)", title=f"{part}: {city}")
        ax.grid(alpha=0.3)
    axes.ravel()[0].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path
