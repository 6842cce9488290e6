"""Change vector analysis (CVA), the classical change-detection baseline.

CVA (Malila 1980, "Change vector analysis: an approach for detecting forest changes with
Landsat", LARS symposia) calls a pixel change where the magnitude of the per-pixel difference
of z-scored bands reaches a threshold; the threshold is the one that maximises F1 of change
on the training areas. It needs no training, so it is the yardstick a change model must beat
on unseen cities.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from staclearn.data.labels import IGNORE_INDEX
from staclearn.data.pairs import stack_pair
from staclearn.errors import ConfigError, LabelError

__all__ = ["change_vector_magnitude", "fit_cva_threshold", "cva_mask"]


def change_vector_magnitude(before: xr.DataArray, after: xr.DataArray) -> xr.DataArray:
    """Change vector analysis: magnitude of the per-pixel difference of z-scored bands.

    Each date's bands are z-scored with that date's own mean and standard deviation over its
    valid pixels (:func:`~staclearn.data.pairs.stack_pair` with ``standardize=True``, which also removes global
    radiometric offsets between the acquisitions), then
    ``magnitude = sqrt(sum_b (z_after_b - z_before_b) ** 2)``.

    Args:
        before: ``(time=1, band, y, x)`` cube of the first date.
        after: cube of the second date, same bands and GeoBox.

    Returns:
        ``(y, x) float32`` magnitude (unitless, in standard deviations), NaN where a date has
        no data, on the pair's GeoBox.

    Raises:
        BandMismatchError, GeoBoxMismatchError: as :func:`~staclearn.data.pairs.stack_pair`.
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


def cva_mask(magnitude: xr.DataArray, threshold: float) -> xr.DataArray:
    """Threshold a CVA magnitude into a change mask.

    Args:
        magnitude: ``(y, x)`` float magnitude (:func:`change_vector_magnitude`).
        threshold: magnitudes ``>= threshold`` are change (:func:`fit_cva_threshold`).

    Returns:
        ``(y, x) uint8`` 0/1, 255 where the magnitude is NaN; same grid, ``attrs["nodata"] = 255``.
    """
    from staclearn.inference.raster import (
        CLASS_MAP_NODATA,  # 255, as the model's change masks
    )

    m = np.asarray(magnitude.values)
    out = np.where(np.isnan(m), CLASS_MAP_NODATA, m >= threshold).astype(np.uint8)
    da = magnitude.copy(data=out).rename("cva_change")
    da.attrs = {"nodata": CLASS_MAP_NODATA}
    return da
