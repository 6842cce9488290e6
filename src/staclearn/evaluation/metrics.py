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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import confusion_matrix

from staclearn.errors import ConfigError, LabelError

__all__ = ["ClassificationMetrics", "compute_metrics", "summary"]

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


