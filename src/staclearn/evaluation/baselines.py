"""Classical baselines fitted on the same data as the deep models, in the same run.

:func:`random_forest_baseline` is the per-pixel random forest (Breiman 2001) that land-cover
maps are compared with.

:func:`hist_gradient_boosting_baseline` is the per-building gradient boosting (on chip colour
statistics) that the building-damage classifier is compared with.
"""

from __future__ import annotations

__all__ = ['random_forest_baseline', 'hist_gradient_boosting_baseline']

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from staclearn.errors import ConfigError, LabelError
from staclearn.evaluation.metrics import _check_mask

# Pixels per prediction chunk of the random forest: bounds the (n, n_classes) float64
# probability arrays each tree allocates to a few tens of MB.
_RF_CHUNK_PIXELS = 1 << 18


def random_forest_baseline(
    image: np.ndarray,
    labels: np.ndarray,
    train_mask: np.ndarray,
    *,
    nodata_mask: np.ndarray | None = None,
    ignore_index: int = 255,
    n_estimators: int = 200,
    seed: int = 0,
    n_jobs: int | None = None,
) -> np.ndarray:
    """Classify every pixel with a per-pixel random forest trained on labelled pixels.

    The classic baseline for land-cover maps (Breiman 2001, "Random Forests", Machine
    Learning 45:5-32; pyspatialml's Landsat NC tutorial uses it on the same kind of data):
    each pixel's band vector is one sample, spatial context is ignored. A
    :class:`sklearn.ensemble.RandomForestClassifier` is fitted on the pixels where
    ``train_mask`` is True, the label is not ``ignore_index``, ``nodata_mask`` is False and
    every band is finite; it then predicts every other valid pixel too (training and
    unlabelled pixels included), in chunks of rows to bound memory.

    Args:
        image: (C, H, W) float32 band values (any real dtype is cast to float32).
        labels: (H, W) uint8 class values, ``ignore_index`` where unlabelled.
        train_mask: (H, W) bool, True for the labelled pixels used for training; labelled
            pixels outside it are held out for :func:`compute_metrics`.
        nodata_mask: (H, W) bool, True where the image has no data; default none.
        ignore_index: Label value of unlabelled pixels, also written to the output where
            ``nodata_mask`` is True or a band value is NaN/inf. 0-255.
        n_estimators: Number of trees.
        seed: ``random_state`` of the forest (bootstrap and feature draws).
        n_jobs: Parallel jobs for fit and predict (scikit-learn/joblib meaning; ``None`` = 1,
            ``-1`` = all cores).

    Returns:
        (H, W) uint8 class map: the label values seen in training, ``ignore_index`` at
        nodata pixels.

    Raises:
        ConfigError: Wrong ``image``/mask dimensions, shapes that do not match, non-bool
            masks, or ``ignore_index``/``n_estimators`` out of range.
        LabelError: ``labels`` is not integer or holds values above 255, or no labelled
            training pixel remains.
    """
    img = np.asarray(image)
    if img.ndim != 3:
        raise ConfigError(
            f"image has shape {img.shape}; expected (C, H, W) (band, y, x). Add a band axis "
            "with image[None] for a single band."
        )
    if img.dtype.kind not in "iuf":
        raise ConfigError(f"image has dtype {img.dtype}; pass real band values (float32).")
    c, h, w = img.shape
    lab = np.asarray(labels)
    if lab.shape != (h, w):
        raise ConfigError(
            f"labels has shape {lab.shape} but image is {img.shape}; rasterize the labels "
            "onto the image grid (H, W) first."
        )
    if lab.dtype.kind not in "iu":
        raise LabelError(
            f"labels has dtype {lab.dtype}; pass integer class values (uint8) with "
            "ignore_index for unlabelled pixels."
        )
    train = _check_mask(train_mask, "train_mask", (h, w))
    nodata = (
        np.zeros((h, w), dtype=bool)
        if nodata_mask is None
        else _check_mask(nodata_mask, "nodata_mask", (h, w))
    )
    if isinstance(ignore_index, bool) or not 0 <= int(ignore_index) <= 255:
        raise ConfigError(
            f"ignore_index={ignore_index} does not fit the uint8 output; use a value in 0-255."
        )
    if n_estimators < 1:
        raise ConfigError(f"n_estimators={n_estimators}; use at least 1 tree (default 200).")

    # (H, W, C) view order so each row chunk is a contiguous (n, C) sample block.
    feats = np.moveaxis(img, 0, -1).astype(np.float32, copy=False)
    valid = ~nodata & np.isfinite(feats).all(axis=-1)
    labelled = lab != ignore_index
    fit_px = train & labelled & valid
    if not fit_px.any():
        raise LabelError(
            f"no labelled training pixel: train_mask selects {int(train.sum())} pixels, of "
            f"which none has a label other than ignore_index={ignore_index} and valid image "
            "data; check that the labels overlap the image and train_mask."
        )
    y = lab[fit_px]
    if int(y.max()) > 255 or int(y.min()) < 0:
        raise LabelError(
            f"labels hold values outside 0-255 (min {int(y.min())}, max {int(y.max())}); "
            "remap the classes to uint8 values."
        )

    forest = RandomForestClassifier(n_estimators=n_estimators, random_state=seed, n_jobs=n_jobs)
    forest.fit(feats[fit_px], y.astype(np.uint8))

    out = np.full((h, w), ignore_index, dtype=np.uint8)
    rows = max(1, _RF_CHUNK_PIXELS // max(w, 1))
    for r0 in range(0, h, rows):
        block_valid = valid[r0 : r0 + rows]
        if not block_valid.any():
            continue
        pred = forest.predict(feats[r0 : r0 + rows][block_valid])
        out[r0 : r0 + rows][block_valid] = pred.astype(np.uint8)
    return out


def hist_gradient_boosting_baseline(
    features: np.ndarray,
    targets: np.ndarray,
    train_mask: np.ndarray,
    *,
    class_weight: str | None = "balanced",
    seed: int = 0,
    missing: int = -2,
) -> np.ndarray:
    """Classify every object with gradient-boosted trees fitted on the training objects.

    scikit-learn's ``HistGradientBoostingClassifier`` (300 iterations, learning rate 0.05, no
    early stopping: no held-out choice inside the training objects) on per-object features
    such as :func:`staclearn.chips.object_dataset.chip_features` - the non-deep baseline the
    building-damage classifier is compared with.

    Args:
        features: ``(N, F)`` float features; a row holding NaN (an object without a chip)
            is neither trained on nor predicted.
        targets: ``(N,)`` integer class values; read only where ``train_mask`` is True.
        train_mask: ``(N,)`` bool, the objects to fit on (training part, labelled).
        class_weight: ``"balanced"`` (inverse class frequency) or ``None``.
        seed: ``random_state`` of the model.
        missing: value given to rows with a NaN feature.

    Returns:
        ``(N,) int64`` predicted class values, ``missing`` where a feature is NaN.

    Raises:
        ConfigError: ``features``, ``targets`` and ``train_mask`` have different lengths.
        LabelError: no training row with finite features.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    features = np.asarray(features, dtype=np.float64)
    targets, train_mask = np.asarray(targets), np.asarray(train_mask, dtype=bool)
    if not len(features) == len(targets) == len(train_mask):
        raise ConfigError(
            f"features ({len(features)} rows), targets ({len(targets)}) and train_mask ({len(train_mask)}) must "
            "have one entry per object."
        )
    has = ~np.isnan(features).any(axis=1)
    train = has & train_mask
    if not train.any():
        raise LabelError("No training object with finite features: the baseline has nothing to fit on.")
    clf = HistGradientBoostingClassifier(
        max_iter=300,
        learning_rate=0.05,
        early_stopping=False,
        class_weight=class_weight,
        random_state=seed,
    )
    clf.fit(features[train], targets[train])
    out = np.full(len(features), missing, dtype=np.int64)
    out[has] = clf.predict(features[has])
    return out
