"""Figures of chips and predictions, as arcgis.learn's ``show_batch`` and ``show_results``.

Both take any dataset staclearn trains on: segmentation and change chips
(:class:`staclearn.chips.pixel.ChipDataset`: ``(C, H, W) float32`` image, ``(H, W) int64`` class
indices, 255 unlabelled) and object-classifier chips (``(C, H, W)`` image, integer class
index). Images are shown as RGB from three chosen bands with a per-band 2-98 % percentile
stretch; masks are drawn over them in the classes' ``color_hint`` colours. Change chips
(2C channels: the before bands, then the after bands) are drawn as two images per sample.

Matplotlib is used as is: each function returns the :class:`matplotlib.figure.Figure` it
drew, and never calls ``plt.show()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from staclearn.errors import ConfigError
from staclearn.data.labels import IGNORE_INDEX, ClassInfo

__all__ = ["show_batch", "show_results", "class_colours", "rgb_image"]

def class_colours(classes: Sequence[ClassInfo]) -> np.ndarray:
    """RGB colours of classes, in class-index order (:func:`staclearn.viz.maps.class_colors`).

    Args:
        classes: the classes (their ``color_hint``, e.g. ``"228B22"``; matplotlib's tab10
            colours stand in for classes without one).

    Returns:
        ``(K, 3) float32`` in [0, 1].
    """
    from staclearn.viz.maps import class_colors

    by_value = class_colors(classes)
    return np.asarray([by_value[c.value] for c in classes], np.float32)


def rgb_image(image: np.ndarray | torch.Tensor, rgb: Sequence[int] = (0, 1, 2), stretch: tuple[float, float] = (2, 98)) -> np.ndarray:
    """Three bands of a chip as a displayable RGB image.

    Args:
        image: ``(C, H, W)`` chip in any units.
        rgb: band indices shown as red, green, blue (one index gives a grey image).
        stretch: lower and upper percentiles mapped to 0 and 1, per band (finite pixels only).

    Returns:
        ``(H, W, 3) float32`` in [0, 1].

    Raises:
        ConfigError: a band index is out of range.
    """
    arr = np.asarray(image, dtype=np.float32)
    if max(rgb) >= arr.shape[0] or min(rgb) < -arr.shape[0]:
        raise ConfigError(f"rgb band indices {list(rgb)} do not exist in a {arr.shape[0]}-band chip; pass rgb=.")
    from staclearn.viz.maps import percentile_stretch

    bands = arr[(list(rgb) * 3)[:3] if len(rgb) == 1 else list(rgb)]
    return np.nan_to_num(percentile_stretch(bands, stretch)).astype(np.float32)


def _overlay(rgb: np.ndarray, mask: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    out = rgb.copy()
    labelled = (mask != IGNORE_INDEX) & (mask >= 0) & (mask < len(colours))
    idx = np.where(labelled, mask, 0)
    out[labelled] = (1 - alpha) * rgb[labelled] + alpha * colours[idx[labelled]]
    return out


def _samples(dataset: Any, n: int, seed: int) -> list[int]:
    if len(dataset) == 0:
        raise ConfigError("The dataset is empty: nothing to show.")
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(len(dataset), size=min(n, len(dataset)), replace=False).tolist())


def _legend(fig: Any, classes: Sequence[ClassInfo], colours: np.ndarray) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=colours[i], label=c.name) for i, c in enumerate(classes)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(classes), 6), frameon=False)


def _panels(image: torch.Tensor, dates: bool, rgb: Sequence[int]) -> list[np.ndarray]:
    if not dates:
        return [rgb_image(image, rgb)]
    c = image.shape[0] // 2
    return [rgb_image(image[:c], rgb), rgb_image(image[c:], rgb)]


def show_batch(
    dataset: Any,
    *,
    classes: Sequence[ClassInfo],
    n: int = 8,
    rgb: Sequence[int] = (0, 1, 2),
    dates: bool = False,
    alpha: float = 0.45,
    ncols: int = 4,
    seed: int = 0,
) -> Any:
    """Show ``n`` random chips with their labels.

    Args:
        dataset: samples ``(image (C, H, W), target)``; target ``(H, W)`` class indices
            (drawn over the image) or one class index (written as the title).
        classes: the classes in index order (names, ``color_hint`` colours).
        n: number of chips.
        rgb: band indices shown as RGB (of one date for change chips), e.g. ``(2, 1, 0)`` for
            Sentinel-2 B02, B03, B04 loaded in that order.
        dates: chips hold two dates (2C channels, before then after): draw both.
        alpha: opacity of the mask colours.
        ncols: samples per row.
        seed: which chips are drawn.

    Returns:
        The matplotlib Figure.

    Raises:
        ConfigError: empty dataset, a band index out of range.
    """
    import matplotlib.pyplot as plt

    colours = class_colours(classes)
    idx = _samples(dataset, n, seed)
    per = 2 if dates else 1
    cols = min(ncols, len(idx)) * per
    rows = -(-len(idx) // ncols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for k, i in enumerate(idx):
        image, target = dataset[i]
        target = np.asarray(target)
        panels = _panels(image, dates, rgb)
        r, c0 = divmod(k, ncols)
        for j, panel in enumerate(panels):
            ax = axes[r, c0 * per + j]
            last = j == len(panels) - 1
            ax.imshow(_overlay(panel, target, colours, alpha) if target.ndim == 2 and last else panel)
            title = f"#{i}" + ((" before", " after")[j] if dates else "")
            if target.ndim == 0:
                title += f": {classes[int(target)].name}"
            ax.set_title(title, fontsize=8)
    _legend(fig, classes, colours)
    return fig


@torch.no_grad()
def show_results(
    model: torch.nn.Module,
    dataset: Any,
    *,
    classes: Sequence[ClassInfo] | None = None,
    n: int = 4,
    rgb: Sequence[int] = (0, 1, 2),
    dates: bool = False,
    alpha: float = 0.45,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Any:
    """Show predictions beside the truth for ``n`` random chips.

    One row per chip: the image (both dates for change chips), the truth and the prediction
    (argmax of the logits) drawn over the image; for object classifiers one panel per chip
    titled ``truth / prediction (confidence)``.

    Args:
        model: ``(B, C, H, W) -> (B, K, H, W)`` (segmentation, change) or ``(B, K)`` logits.
        dataset: samples ``(image, target)`` as for :func:`show_batch`.
        classes: classes in logit order; default ``model.spec.classes``.
        n: number of chips.
        rgb: band indices shown as RGB.
        dates: chips hold two dates (before then after).
        alpha: opacity of the mask colours.
        seed: which chips are drawn.
        device: where the model runs.

    Returns:
        The matplotlib Figure.

    Raises:
        ConfigError: no classes given and the model has no ``spec``; empty dataset.
    """
    import matplotlib.pyplot as plt

    if classes is None:
        spec = getattr(model, "spec", None)
        if spec is None:
            raise ConfigError("Pass classes= for a model without a spec.")
        classes = spec.classes
    colours = class_colours(classes)
    idx = _samples(dataset, n, seed)
    model = model.to(device).eval()
    samples = [dataset[i] for i in idx]
    logits = model(torch.stack([s[0] for s in samples]).to(device)).float().cpu()
    probs = logits.softmax(1)
    pred = probs.argmax(1).numpy()
    segmentation = logits.ndim == 4
    cols = (2 if dates else 1) + (2 if segmentation else 0)
    fig, axes = plt.subplots(len(idx), cols, figsize=(2.6 * cols, 2.6 * len(idx) + 0.5), squeeze=False)
    for r, (i, (image, target)) in enumerate(zip(idx, samples, strict=True)):
        target = np.asarray(target)
        panels = _panels(image, dates, rgb)
        for j, panel in enumerate(panels):
            ax = axes[r, j]
            ax.imshow(panel)
            title = f"#{i}" + ((" before", " after")[j] if dates else "")
            if not segmentation:
                conf = float(probs[r, pred[r]])
                title += f": {classes[int(target)].name} / {classes[int(pred[r])].name} ({conf:.2f})"
            ax.set_title(title, fontsize=8)
        if segmentation:
            base = panels[-1]
            axes[r, len(panels)].imshow(_overlay(base, target, colours, alpha))
            axes[r, len(panels)].set_title("truth", fontsize=8)
            axes[r, len(panels) + 1].imshow(_overlay(base, pred[r], colours, alpha))
            axes[r, len(panels) + 1].set_title("prediction", fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    _legend(fig, classes, colours)
    return fig
