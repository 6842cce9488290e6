"""Class-balanced sampling of training chips: draw chips that hold rare classes more often.

A loss weighted by class frequency (``Trainer(weights="balanced")``) makes each rare pixel
count more; sampling instead shows the model the chips that hold rare classes more often,
each time with another random rotation / zoom from the augmentation, which is how the seed
arcgis.learn workflow made rare classes 2-3x more frequent. Chips are drawn with replacement
by ``torch.utils.data.WeightedRandomSampler`` (as torchgeo and the PyTorch docs do for
imbalanced data), ``len(dataset)`` draws per epoch.

Rule for a chip's weight (segmentation: a chip holds several classes; classification: one):

- ``balanced``: ``w_i = max over classes k present in chip i of 1 / n_k``, where ``n_k`` is
  the number of training chips holding class ``k``; a chip is weighted by its rarest class.
  With one class per chip this is ``1 / n_{y_i}`` and every class is drawn equally often in
  expectation (scikit-learn / imbalanced-learn random over-sampling). A chip without a
  labelled pixel gets ``1 / N``, the weight of a class present in every chip.
- ``oversample={k: f}``: ``w_i`` is then multiplied by the largest ``f`` of the classes in
  chip ``i`` (1 for classes not listed), so chips holding class ``k`` are drawn about ``f``
  times as often (before the weights are normalised).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from staclearn.errors import ConfigError
from staclearn.data.labels import IGNORE_INDEX

__all__ = ["class_presence", "targets_presence", "sample_weights", "balanced_sampler"]


def class_presence(dataset: Dataset, num_classes: int, *, ignore_index: int | None = IGNORE_INDEX) -> np.ndarray:
    """Which classes each sample holds, read from the samples' labels.

    Args:
        dataset: samples ``(image, label)`` with ``label`` a ``(H, W)`` int64 mask or a ``()``
            int64 class index.
        num_classes: K; label values ``>= K`` (other than ``ignore_index``) are left out.
        ignore_index: unlabelled value; ``None`` when every value is a class.

    Returns:
        ``(N, K) bool``: ``[i, k]`` is True when sample ``i`` has a pixel (or its label) of class ``k``.
    """
    n = len(dataset)  # type: ignore[arg-type]
    out = np.zeros((n, num_classes), dtype=bool)
    for i in range(n):
        y = torch.as_tensor(dataset[i][1]).flatten()
        if ignore_index is not None:
            y = y[y != ignore_index]
        y = y[(y >= 0) & (y < num_classes)]
        out[i, torch.unique(y).numpy()] = True
    return out


def targets_presence(targets: np.ndarray | list[int], num_classes: int) -> np.ndarray:
    """``(N, K) bool`` one-hot presence of ``(N,)`` integer class indices (one label per sample)."""
    t = np.asarray(targets, dtype=np.int64)
    out = np.zeros((t.size, num_classes), dtype=bool)
    ok = (t >= 0) & (t < num_classes)
    out[np.flatnonzero(ok), t[ok]] = True
    return out


def sample_weights(
    presence: np.ndarray,
    *,
    balanced: bool = True,
    oversample: Mapping[int, float] | None = None,
) -> np.ndarray:
    """Per-sample drawing weights from class presence (rule in the module docstring).

    Args:
        presence: ``(N, K) bool`` from :func:`class_presence`.
        balanced: weight each sample by its rarest class (``1 / n_k``); ``False`` starts from 1.
        oversample: class index (logit order, 0..K-1) -> factor >= 1.

    Returns:
        ``(N,) float64`` weights, normalised to sum to 1.

    Raises:
        ConfigError: empty ``presence``, a class index outside 0..K-1 or a factor < 1.
    """
    presence = np.asarray(presence, dtype=bool)
    n, k = presence.shape
    if n == 0:
        raise ConfigError("No training sample to weight.")
    if balanced:
        counts = presence.sum(axis=0)
        inv = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
        w = np.where(presence, inv[None, :], 0.0).max(axis=1)
        w[~presence.any(axis=1)] = 1.0 / n
    else:
        w = np.ones(n, dtype=np.float64)
    if oversample:
        factor = np.ones(k, dtype=np.float64)
        for cls, f in oversample.items():
            if not 0 <= int(cls) < k:
                raise ConfigError(f"oversample class {cls} is not a class index 0..{k - 1}")
            if not f >= 1:
                raise ConfigError(f"oversample factor of class {cls} must be >= 1, got {f}")
            factor[int(cls)] = float(f)
        w = w * np.where(presence, factor[None, :], 1.0).max(axis=1, initial=1.0)
    return w / w.sum()


def balanced_sampler(weights: np.ndarray, generator: torch.Generator | None = None) -> WeightedRandomSampler:
    """A sampler drawing ``len(weights)`` indices per epoch with replacement, seeded by ``generator``."""
    return WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.float64), num_samples=len(weights), replacement=True, generator=generator
    )
