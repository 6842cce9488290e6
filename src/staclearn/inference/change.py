"""Change prediction: a change mask (and the probability of change) for a whole before/after pair.

:func:`predict_change` stacks the pair (:func:`staclearn.data.pairs.stack_pair`) and predicts
it tile by tile with :mod:`staclearn.inference.raster`, so the mask is on the pair's GeoBox. A
pixel is change where the model's probability of change reaches a decision threshold
(chosen on validation cities by :func:`staclearn.workflows.change.run_change` and kept in the
model card), or by argmax when there is none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from staclearn.data.pairs import stack_pair
from staclearn.errors import ConfigError, NoGeoreferenceError
from staclearn.inference.raster import (
    CLASS_MAP_NODATA,
    predict_class_map,
    predict_probabilities,
    write_cog,
)

__all__ = ["ChangePrediction", "predict_change", "threshold_change"]


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

    The pair is stacked (:func:`~staclearn.data.pairs.stack_pair`; standardised per date when
    ``model.spec.extra["standardize"]`` says the model was trained so) and predicted tile by
    tile with padding by :func:`staclearn.inference.raster.predict_class_map` (or
    :func:`staclearn.inference.raster.predict_probabilities` when the probability is wanted; the mask
    is then its argmax), so the output is on the pair's GeoBox.

    The decision rule: a pixel is change where its change probability is ``>= threshold``.
    The threshold is ``threshold`` when given, else the model's own
    (``model.spec.extra["threshold"]``, chosen on validation cities by :func:`~staclearn.workflows.change.run_change`
    and kept in the model card), else the argmax of the class probabilities (0.5 for two
    classes).

    Args:
        model: a change model (:func:`~staclearn.models.change.build_change_model`), input bands ``t1:*`` + ``t2:*``.
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


def threshold_change(probability: xr.DataArray, threshold: float) -> xr.DataArray:
    """Cut a change-probability map at a decision threshold: the change mask ``p >= threshold``.

    The rule :func:`predict_change` applies with a threshold, for probabilities already
    predicted (e.g. those of the validation cities that chose the threshold).

    Args:
        probability: ``(y, x) float32`` probability of change in [0, 1], NaN where there is
            no data (:attr:`ChangePrediction.probability`).
        threshold: decision threshold on the probability, in [0, 1].

    Returns:
        ``(y, x) uint8`` DataArray named ``"change"``: 0 no change / 1 change, 255 where the
        probability is NaN, on the same grid; ``attrs`` ``{"nodata": 255, "threshold": threshold}``.
    """
    p = probability.values
    mask_np = np.where(np.isnan(p), CLASS_MAP_NODATA, p >= threshold).astype(np.uint8)
    mask = probability.copy(data=mask_np).rename("change")
    mask.attrs = {"nodata": CLASS_MAP_NODATA, "threshold": threshold}
    return mask
