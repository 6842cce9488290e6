"""Change models: networks that take a stacked before/after pair, their loading and their loss.

Three models take the stacked input ``(B, 2C, H, W)`` (C before bands then C after bands;
Daudt, Le Saux and Boulch 2018, "Fully convolutional siamese networks for change
detection", ICIP, for the first two):

* ``fusion="early"`` (FC-EF): a U-Net on the 2C channels (:class:`staclearn.models.segmentation.SegmentationModel`);
* ``fusion="siam-diff"`` (FC-Siam-diff): :class:`staclearn.models.segmentation.SiameseDiffUnet`,
  one encoder shared by the two dates and a U-Net decoder fed with the absolute feature
  differences ``|f1 - f2|``;
* ``architecture="PixelConvNet"``: early fusion in a small full-resolution network
  (:class:`staclearn.models.segmentation.PixelConvNet`), the cheapest that beat CVA on unseen
  OSCD cities on CPU (``bench/change.py``).

:class:`ChangeLoss` is weighted cross-entropy plus the Dice loss of the change class
(``segmentation_models_pytorch.losses.DiceLoss``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from staclearn.data.labels import IGNORE_INDEX, ClassInfo
from staclearn.data.pairs import CHANGE_CLASSES
from staclearn.errors import ConfigError
from staclearn.models.segmentation import (
    FUSIONS,
    PIXEL_CONV,
    ModelSpec,
    load_weights,
    model_from_spec,
    pair_band_names,
)

__all__ = ["build_change_model", "load_change_model", "ChangeLoss"]


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
            bands are :func:`~staclearn.models.segmentation.pair_band_names` of them (``t1:*`` then ``t2:*``).
        mean: per-channel mean for the z-score, 2C values (e.g. from
            :func:`staclearn.chips.pixel.band_statistics` of the stacked chips) or C values used for
            both dates; in the imagery's units.
        std: per-channel standard deviation, same length rules.
        fusion: ``"early"`` (U-Net on the 2C channels, FC-EF) or ``"siam-diff"``
            (:class:`~staclearn.models.segmentation.SiameseDiffUnet`, FC-Siam-diff), Daudt et al. 2018.
        encoder: smp encoder name (``"resnet18"``...).
        encoder_weights: ``None`` (random init; offline) or ``"imagenet"``.
        encoder_depth: encoder stages, 3 to 5 (inputs must be multiples of ``2**depth`` px).
        classes: output classes; default :data:`~staclearn.data.pairs.CHANGE_CLASSES` (0 no change, 1 change).
        standardize: the model expects each date z-scored by its own band statistics
            (:func:`~staclearn.data.pairs.stack_pair` with ``standardize=True``); :func:`~staclearn.inference.change.predict_change` then does it.
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
            ``spec.json`` written by :func:`~staclearn.workflows.change.run_change`).
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
    change class directly. ``loss = CE(weight) + dice * (1 - Dice(change))`` with
    ``Dice = (2 * sum(p * t) + 1) / (sum(p) + sum(t) + 1)`` pooled over the batch, ``p`` the
    softmax probability of change and ``t`` the change mask, unlabelled pixels left out:
    ``segmentation_models_pytorch.losses.DiceLoss`` in ``"multiclass"`` mode restricted to the
    change class (its ``smooth=0.5`` is the ``+ 1`` above, as it computes
    ``(sum(p * t) + smooth) / ((sum(p) + sum(t)) / 2 + smooth)``). A batch without a
    labelled change pixel gets no Dice term (smp sets it to 0 there: the overlap of an
    absent class is undefined).

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
        from segmentation_models_pytorch.losses import DiceLoss

        super().__init__()
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))
        self.dice = float(dice)
        self.ignore_index = ignore_index
        self.change_index = change_index
        self.dice_loss = DiceLoss(
            "multiclass", classes=[change_index], from_logits=True, smooth=0.5, ignore_index=ignore_index
        )

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, mask, weight=self.weight, ignore_index=self.ignore_index)
        if self.dice > 0:
            loss = loss + self.dice * self.dice_loss(logits, mask)
        return loss
