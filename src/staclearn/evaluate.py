"""Accuracy assessment of class maps: confusion matrix, OA, kappa, per-class P/R/F1/IoU.

Used for land cover, building damage and change detection alike: every map is a class map
of integer values compared pixel by pixel with a reference (truth) map on the same grid.

Conventions (shared with torchgeo's glossary and Olofsson et al. 2014, "Good practices for
estimating area and assessing accuracy of land change", Remote Sens. Environ. 148:42-57):

* the confusion matrix has the reference (truth) in rows and the prediction in columns;
* samples whose reference equals ``ignore_index`` (unlabelled) are dropped before counting;
* a predicted value that is not one of ``class_values`` (nodata such as 255 in the
  prediction, or a class the model should not emit) is an *unclassified* sample. It is
  counted wrong: it stays in ``n_samples`` and in the class's ``support``, so it lowers
  overall accuracy, kappa, recall, F1 and IoU of its reference class. No extra
  "unclassified" column is added to ``confusion``, so a row of ``confusion`` can sum to less
  than the class's ``support``; the difference is reported as ``n_unclassified``.

:func:`random_forest_baseline` gives the classic per-pixel random forest (Breiman 2001) to
compare deep models with.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import confusion_matrix

from staclearn.errors import ConfigError, LabelError

__all__ = [
    "ClassificationMetrics",
    "compute_metrics",
    "write_report",
    "write_evaluation",
    "summary",
    "plot_confusion_matrix",
    "random_forest_baseline",
]

# Pixels per prediction chunk of the random forest: bounds the (n, n_classes) float64
# probability arrays each tree allocates to a few tens of MB.
_RF_CHUNK_PIXELS = 1 << 18
# Largest value range mapped to class indices with a look-up table (8 MB of int64).
_LUT_MAX = 1 << 20


@dataclass(frozen=True, eq=False)
class ClassificationMetrics:
    """Accuracy of one class map against a reference map.

    Built by :func:`compute_metrics`. Per-class dictionaries are keyed by class name, in
    matrix order. A per-class value is ``NaN`` when undefined (``None`` in :meth:`to_dict`):
    precision of a class never predicted, recall of a class absent from the reference, F1
    and IoU of a class absent from both.

    ``eq=False`` because the ``confusion`` array has no single truth value; compare
    :meth:`to_dict` outputs instead.
    """

    class_values: tuple[int, ...]
    """Class values in matrix order."""
    class_names: tuple[str, ...]
    """Class names, same order as ``class_values``."""
    confusion: np.ndarray
    """(K, K) int64 pixel counts, rows = reference (truth), columns = predicted; read-only."""
    overall_accuracy: float
    """Correct samples / ``n_samples`` (unclassified predictions count wrong), in [0, 1]."""
    kappa: float
    """Cohen's (1960) kappa, in [-1, 1]; NaN when chance agreement is 1 (one class only)."""
    precision: dict[str, float]
    """TP / (TP + FP) per class (user's accuracy); NaN for a class never predicted."""
    recall: dict[str, float]
    """TP / support per class (producer's accuracy); NaN for a class absent from reference."""
    f1: dict[str, float]
    """2 TP / (2 TP + FP + FN) per class; NaN only for a class absent from both maps."""
    iou: dict[str, float]
    """TP / (TP + FP + FN) per class (Jaccard index); NaN only for a class absent from both."""
    miou: float
    """Mean IoU over the classes present in the reference (support > 0)."""
    macro_f1: float
    """Mean F1 over the classes present in the reference (support > 0)."""
    support: dict[str, int]
    """Reference pixel count per class, unclassified predictions included."""
    n_samples: int
    """Number of samples compared (reference != ``ignore_index``)."""

    @property
    def n_unclassified(self) -> int:
        """Samples whose predicted value is not one of ``class_values`` (counted wrong)."""
        return int(self.n_samples - self.confusion.sum())

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (lists, ints, floats; ``None`` for NaN).

        Returns:
            Dict with every field plus ``n_unclassified``. ``json.dumps(d, allow_nan=False)``
            succeeds on it.
        """
        return {
            "class_values": [int(v) for v in self.class_values],
            "class_names": list(self.class_names),
            "confusion": self.confusion.astype(np.int64).tolist(),
            "overall_accuracy": _json_float(self.overall_accuracy),
            "kappa": _json_float(self.kappa),
            "precision": {k: _json_float(v) for k, v in self.precision.items()},
            "recall": {k: _json_float(v) for k, v in self.recall.items()},
            "f1": {k: _json_float(v) for k, v in self.f1.items()},
            "iou": {k: _json_float(v) for k, v in self.iou.items()},
            "miou": _json_float(self.miou),
            "macro_f1": _json_float(self.macro_f1),
            "support": {k: int(v) for k, v in self.support.items()},
            "n_samples": int(self.n_samples),
            "n_unclassified": self.n_unclassified,
        }


def compute_metrics(
    reference: ArrayLike,
    predicted: ArrayLike,
    class_values: Sequence[int],
    class_names: Sequence[str] | None = None,
    *,
    ignore_index: int | None = 255,
) -> ClassificationMetrics:
    """Compare a predicted class map with a reference map, pixel by pixel.

    The confusion matrix comes from :func:`sklearn.metrics.confusion_matrix`. Kappa is
    Cohen's (1960, "A coefficient of agreement for nominal scales") ``(p_o - p_e) /
    (1 - p_e)`` computed from that matrix plus the unclassified counts; it equals
    :func:`sklearn.metrics.cohen_kappa_score` on the same samples when every prediction is a
    class value. Precision, recall, F1 and IoU follow the usual per-class definitions
    (as torchmetrics' ``MulticlassJaccardIndex``/``MulticlassF1Score`` with
    ``average=None``); ``miou`` and ``macro_f1`` average over classes present in the
    reference, so a class missing from a test area does not count as 0 or 1.

    Nodata handling: samples where ``reference == ignore_index`` are dropped. A predicted
    value not in ``class_values`` (e.g. nodata 255 in the prediction) is *unclassified*: it
    stays in ``n_samples`` and in its reference class's ``support`` and counts as wrong for
    OA, kappa, recall, F1 and IoU, but is in no column of ``confusion`` (no extra column is
    added); :attr:`ClassificationMetrics.n_unclassified` counts these samples.

    Args:
        reference: Reference (truth) class map, any shape, integer or bool dtype.
        predicted: Predicted class map, same shape as ``reference``, integer or bool dtype.
        class_values: The K class values, in the order of the matrix rows and columns.
        class_names: K unique names for the classes; default ``str(value)``.
        ignore_index: Reference value of unlabelled samples to drop; ``None`` keeps all.

    Returns:
        The metrics, with a (K, K) int64 confusion matrix.

    Raises:
        ConfigError: ``reference`` and ``predicted`` shapes differ; ``class_values`` empty
            or with duplicates; ``class_names`` of the wrong length or with duplicates;
            ``ignore_index`` is one of ``class_values``.
        LabelError: An input has a non-integer dtype; the reference holds a value that is
            neither a class value nor ``ignore_index``; no sample is left after dropping
            ``ignore_index``.
    """
    ref = np.asarray(reference)
    pred = np.asarray(predicted)
    if ref.shape != pred.shape:
        raise ConfigError(
            f"reference has shape {ref.shape} but predicted has shape {pred.shape}; "
            "compare maps on the same grid (reproject the prediction onto the reference "
            "GeoBox first)."
        )
    for what, arr in (("reference", ref), ("predicted", pred)):
        if arr.dtype.kind not in "iub":
            raise LabelError(
                f"{what} has dtype {arr.dtype}, expected integer class values; replace NaN "
                "nodata by ignore_index and cast with .astype(np.uint8) (or a wider int)."
            )
    values, names = _check_classes(class_values, class_names, ignore_index)
    k = len(values)

    ref = ref.ravel().astype(np.int64, copy=False)
    pred = pred.ravel().astype(np.int64, copy=False)
    if ignore_index is not None:
        keep = ref != ignore_index
        ref, pred = ref[keep], pred[keep]
    if ref.size == 0:
        raise LabelError(
            f"no sample left to compare: every reference pixel equals ignore_index="
            f"{ignore_index}; check that the reference map covers the predicted area and "
            "that ignore_index is the reference's unlabelled value."
        )

    ref_idx = _class_index(ref, values)
    unknown = ref_idx == k
    if unknown.any():
        bad = np.unique(ref[unknown])[:10].tolist()
        raise LabelError(
            f"the reference holds values {bad} that are not in class_values "
            f"{list(values)} nor ignore_index={ignore_index}; add them to class_values or "
            "set them to ignore_index."
        )
    pred_idx = _class_index(pred, values)  # K = unclassified

    full = confusion_matrix(ref_idx, pred_idx, labels=np.arange(k + 1))[:k].astype(np.int64)
    cm = np.ascontiguousarray(full[:, :k])
    cm.setflags(write=False)

    n = int(ref.size)
    tp = np.diag(cm).astype(np.float64)
    support = full.sum(axis=1).astype(np.float64)  # unclassified included
    predicted_count = cm.sum(axis=0).astype(np.float64)
    fp = predicted_count - tp
    fn = support - tp

    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted_count > 0, tp / predicted_count, np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
        f1_den = 2 * tp + fp + fn
        f1 = np.where(f1_den > 0, 2 * tp / f1_den, np.nan)
        iou_den = tp + fp + fn
        iou = np.where(iou_den > 0, tp / iou_den, np.nan)

    p_o = float(tp.sum()) / n
    # The unclassified column has no matching row, so it adds nothing to chance agreement.
    p_e = float(np.dot(support, predicted_count)) / (n * n)
    kappa = (p_o - p_e) / (1.0 - p_e) if p_e < 1.0 else math.nan

    present = support > 0  # at least one, as n > 0 and every reference sample is a class
    return ClassificationMetrics(
        class_values=values,
        class_names=names,
        confusion=cm,
        overall_accuracy=p_o,
        kappa=float(kappa),
        precision=_per_class(names, precision),
        recall=_per_class(names, recall),
        f1=_per_class(names, f1),
        iou=_per_class(names, iou),
        miou=float(iou[present].mean()),
        macro_f1=float(f1[present].mean()),
        support={name: int(s) for name, s in zip(names, support, strict=True)},
        n_samples=n,
    )


def write_report(
    results: Mapping[str, ClassificationMetrics],
    out_dir: str | os.PathLike[str],
    *,
    name: str = "evaluation",
) -> tuple[Path, Path]:
    """Write a JSON report and a confusion-matrix figure comparing several models.

    ``{out_dir}/{name}.json`` holds ``{"models": {model: metrics.to_dict()}, "comparison":
    [{"model", "overall_accuracy", "kappa", "macro_f1", "miou", "n_samples"}, ...]}``, one
    comparison record per model in ``results`` order (``None`` for NaN).

    ``{out_dir}/{name}_confusion.png`` has one panel per model, side by side: cell colour is
    the row-normalised count (count / reference support, so the diagonal is the recall),
    the count is written in each cell (``12.3k``/``4.5M`` above 10 000), class names label
    the axes (reference in rows, predicted in columns), and the title gives OA and
    macro-F1. It is drawn on a standalone :class:`matplotlib.figure.Figure` (Agg canvas), so
    pyplot's global state and backend are left alone.

    Each file is written to a temporary name in ``out_dir`` and moved into place with
    :func:`os.replace`, so a reader never sees a half-written file.

    Args:
        results: Metrics per model name, e.g. ``{"unet": m1, "random_forest": m2}``.
        out_dir: Folder to write to; created if missing.
        name: File name stem, without folder or extension.

    Returns:
        ``(json_path, png_path)``.

    Raises:
        ConfigError: ``results`` is empty, or ``name`` is empty or contains a path separator.
        OSError: ``out_dir`` cannot be created or written.
    """
    if not results:
        raise ConfigError("results is empty; pass at least one {model_name: metrics} entry.")
    if not name or name in {".", ".."} or any(sep in name for sep in ("/", "\\", os.sep)):
        raise ConfigError(
            f"name={name!r} must be a plain file stem such as 'evaluation'; put folders in "
            "out_dir."
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    report = {
        "models": {str(model): m.to_dict() for model, m in results.items()},
        "comparison": [
            {
                "model": str(model),
                "overall_accuracy": _json_float(m.overall_accuracy),
                "kappa": _json_float(m.kappa),
                "macro_f1": _json_float(m.macro_f1),
                "miou": _json_float(m.miou),
                "n_samples": int(m.n_samples),
            }
            for model, m in results.items()
        ],
    }
    text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    json_path = out / f"{name}.json"
    _atomic_write(json_path, lambda fh: fh.write(text.encode("utf-8")))

    fig = _confusion_figure(results)
    png_path = out / f"{name}_confusion.png"
    _atomic_write(png_path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    return json_path, png_path


def summary(m: ClassificationMetrics) -> dict[str, Any]:
    """The headline figures of one model for cards and Items: OA, kappa, macro-F1, mIoU,
    per-class F1 and the number of samples (``None`` for NaN)."""
    d = m.to_dict()
    return {
        "overall_accuracy": _json_float(m.overall_accuracy),
        "kappa": _json_float(m.kappa),
        "macro_f1": _json_float(m.macro_f1),
        "miou": _json_float(m.miou),
        "f1": d["f1"],
        "n_samples": int(m.n_samples),
    }


def write_evaluation(
    parts: Mapping[str, Mapping[str, ClassificationMetrics]],
    out_dir: str | os.PathLike[str],
    *,
    split: Mapping[str, Any] | None = None,
    name: str = "evaluation",
) -> tuple[Path, dict[str, Path]]:
    """Write ``{name}.json`` with the figures of each part kept apart, and one confusion figure per part.

    The JSON is ``{"test": <report>, "validation": <report>, "split": split}`` where each
    ``<report>`` is what :func:`write_report` writes for that part (``models`` +
    ``comparison``). Only the ``test`` figures are measured on ground that no choice
    (epoch, threshold, class weights, normalisation) has seen; ``validation`` figures are
    from the part that made those choices and are optimistic. The figures go to
    ``{name}_confusion.png`` (test, or the first part when there is no test part) and
    ``{name}_<part>_confusion.png`` for the others.

    Args:
        parts: ``{"test": {model: metrics}, "validation": {model: metrics}}``; empty parts
            are left out.
        out_dir: folder, created if missing.
        split: the split description (:func:`staclearn.splits.split_description`).
        name: file stem.

    Returns:
        ``(json_path, {part: png_path})``.

    Raises:
        ConfigError: no part holds a model, or a bad ``name``.
    """
    parts = {k: v for k, v in parts.items() if v}
    if not parts:
        raise ConfigError("parts is empty; pass {'test': {model: metrics}, 'validation': {...}}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    pngs: dict[str, Path] = {}
    main = "test" if "test" in parts else next(iter(parts))
    for part, results in parts.items():
        stem = name if part == main else f"{name}_{part}"
        j, png = write_report(results, out, name=stem)
        report[part] = json.loads(j.read_text(encoding="utf-8"))
        if part != main:
            j.unlink()
        pngs[part] = png
    if split is not None:
        report["split"] = dict(split)
    text = json.dumps(report, indent=2, allow_nan=False, default=str) + "\n"
    json_path = out / f"{name}.json"
    _atomic_write(json_path, lambda fh: fh.write(text.encode("utf-8")))
    return json_path, pngs


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


def _check_classes(
    class_values: Sequence[int],
    class_names: Sequence[str] | None,
    ignore_index: int | None,
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Validate class values and names; return them as tuples."""
    values = tuple(int(v) for v in class_values)
    if not values:
        raise ConfigError("class_values is empty; pass the K class values, e.g. [0, 1, 2].")
    if len(set(values)) != len(values):
        raise ConfigError(f"class_values {list(values)} has duplicates; list each class once.")
    if ignore_index is not None and ignore_index in values:
        raise ConfigError(
            f"ignore_index={ignore_index} is also a class value; use a value outside "
            f"class_values {list(values)} (e.g. 255) or ignore_index=None."
        )
    if class_names is None:
        names = tuple(str(v) for v in values)
    else:
        names = tuple(str(n) for n in class_names)
        if len(names) != len(values):
            raise ConfigError(
                f"{len(names)} class_names for {len(values)} class_values; give one name "
                "per class value, in the same order."
            )
    if len(set(names)) != len(names):
        raise ConfigError(f"class_names {list(names)} has duplicates; names must be unique.")
    return values, names


def _class_index(x: np.ndarray, values: tuple[int, ...]) -> np.ndarray:
    """Map (N,) int64 class values to matrix indices 0..K-1, and any other value to K."""
    v = np.asarray(values, dtype=np.int64)
    lo, hi = int(x.min()), int(x.max())
    if hi - lo < _LUT_MAX:
        # Look-up table over the data's value range: much faster than searchsorted for
        # uint8/uint16 maps of millions of pixels.
        lut = np.full(hi - lo + 1, len(v), dtype=np.int64)
        inside = (v >= lo) & (v <= hi)
        lut[v[inside] - lo] = np.flatnonzero(inside)
        return lut[x - lo]
    order = np.argsort(v)
    pos = np.clip(np.searchsorted(v, x, sorter=order), 0, len(v) - 1)
    idx = order[pos]
    return np.where(v[idx] == x, idx, len(v))


def _per_class(names: tuple[str, ...], arr: np.ndarray) -> dict[str, float]:
    """Pair (K,) floats with class names."""
    return {name: float(a) for name, a in zip(names, arr, strict=True)}


def _json_float(x: float) -> float | None:
    """Float for JSON, ``None`` for NaN/inf (JSON has no NaN)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _check_mask(mask: np.ndarray, what: str, shape: tuple[int, int]) -> np.ndarray:
    """Return ``mask`` as a bool array after checking its shape and dtype."""
    m = np.asarray(mask)
    if m.shape != shape:
        raise ConfigError(f"{what} has shape {m.shape}; expected the image's (H, W) {shape}.")
    if m.dtype != np.bool_:
        raise ConfigError(
            f"{what} has dtype {m.dtype}; pass a bool mask (e.g. {what} = arr == value)."
        )
    return m


def _compact_count(c: int) -> str:
    """Short text for a cell count: exact below 10 000, then 12.3k / 4.5M."""
    if c < 10_000:
        return str(c)
    if c < 1_000_000:
        return f"{c / 1e3:.1f}k"
    return f"{c / 1e6:.1f}M"


def plot_confusion_matrix(results: Mapping[str, ClassificationMetrics] | ClassificationMetrics) -> Figure:
    """Row-normalised confusion matrices (counts written in the cells), one panel per model.

    The figure ``write_report`` saves as ``<name>_confusion.png``; in a notebook it displays
    itself.

    Args:
        results: ``{model name: metrics}`` or one :class:`ClassificationMetrics`.

    Returns:
        A matplotlib Figure (not attached to pyplot's global state).
    """
    if isinstance(results, ClassificationMetrics):
        results = {"model": results}
    return _confusion_figure(results)


def _confusion_figure(results: Mapping[str, ClassificationMetrics]) -> Figure:
    """Draw one row-normalised confusion-matrix panel per model, side by side."""
    k_max = max(len(m.class_values) for m in results.values())
    side = max(3.5, 0.5 * k_max + 1.8)
    fig = Figure(figsize=(side * len(results) + 1.0, side + 0.6), layout="constrained")
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    image = None
    for ax, (model, m) in zip(axes, results.items(), strict=True):
        k = len(m.class_values)
        support = np.array([m.support[n] for n in m.class_names], dtype=np.float64)
        frac = np.zeros((k, k))
        np.divide(m.confusion, support[:, None], out=frac, where=support[:, None] > 0)
        image = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
        fontsize = max(5.0, min(10.0, 60.0 / k))
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    _compact_count(int(m.confusion[i, j])),
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color="white" if frac[i, j] > 0.5 else "black",
                )
        ax.set_xticks(range(k), labels=m.class_names, rotation=45, ha="right")
        ax.set_yticks(range(k), labels=m.class_names)
        xlabel = "Predicted"
        if m.n_unclassified:
            xlabel += f" ({m.n_unclassified} unclassified)"
        ax.set_xlabel(xlabel)
        ax.set_ylabel("Reference")
        ax.set_title(f"{model}\nOA {m.overall_accuracy:.3f} | macro-F1 {m.macro_f1:.3f}")
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8, label="fraction of reference row")
    return fig


def _atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` through a temporary file in the same folder and :func:`os.replace`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
