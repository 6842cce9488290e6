"""Scoring change detection: the decision threshold, precision / recall against it, and the run's evaluation.

A change model's probabilities (or CVA's magnitudes) become a mask by ``score >= threshold``.
:func:`fit_change_threshold` chooses the threshold that maximises F1 of change on pooled
labelled pixels; :func:`precision_recall_table` gives precision, recall, F1 and IoU of change
at given thresholds, and :func:`plot_precision_recall` draws them, one panel per city.
:func:`score_change` measures the model's and CVA's masks per city and pooled per part
(test / validation) and :func:`write_change_evaluation` writes them to ``evaluation.json``
with their figures.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from staclearn._io import write_json
from staclearn.data.labels import IGNORE_INDEX
from staclearn.evaluation.cva import fit_cva_threshold
from staclearn.evaluation.metrics import ClassificationMetrics, compute_metrics, summary
from staclearn.evaluation.reports import write_evaluation

__all__ = [
    "fit_change_threshold",
    "precision_recall_table",
    "plot_precision_recall",
    "ChangeScores",
    "score_change",
    "change_figures",
    "write_change_evaluation",
]

#: Class values and names of change masks (:data:`staclearn.data.pairs.CHANGE_CLASSES`).
_VALUES, _NAMES = [0, 1], ["no change", "change"]


def fit_change_threshold(
    probabilities: Sequence[np.ndarray | xr.DataArray],
    labels: Sequence[np.ndarray | xr.DataArray],
    *,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[float, float]:
    """Choose the decision threshold on the change probability that maximises F1 of change.

    The same rule as the CVA threshold (:func:`staclearn.evaluation.cva.fit_cva_threshold`: all labelled, valid pixels
    pooled, every distinct probability a candidate, ``p >= threshold`` is change), applied
    to a change model's probabilities. :func:`staclearn.workflows.change.run_change` calls it on the **validation**
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


def plot_precision_recall(
    curves: Mapping[str, Mapping[str, Mapping[str, Mapping[str, list[float]]]]], threshold: float, path: Path
) -> Path:
    """Draw precision against recall of change, one panel per test (then validation) city.

    Each panel shows the model's curve over thresholds 0.05 to 0.95, its point at the
    decision threshold and at 0.5, and CVA's point at its own threshold (a standalone
    matplotlib ``Figure``: pyplot's state is left alone).

    Args:
        curves: ``{"test" | "validation": {city: {"model": table, "model_at_threshold": table,
            "model_at_0.5": table, "cva": table}}}`` of :func:`precision_recall_table`
            (:attr:`ChangeScores.curves`).
        threshold: the decision threshold on p(change), for the legend.
        path: PNG to write (its folder is created).

    Returns:
        ``path``.
    """
    from matplotlib.figure import (
        Figure,  # a standalone figure: pyplot's backend and state are left alone
    )

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


@dataclass
class ChangeScores:
    """Figures of a change model and of CVA against the labels (:func:`score_change`).

    Attributes:
        per_city: ``{part: {city: {"model": metrics, "cva": metrics}}}``.
        pooled: ``{part: {"model": metrics, "cva": metrics}}`` over all pixels of the part's cities.
        curves: ``{part: {city: {"model": table, "model_at_threshold": table, "model_at_0.5":
            table, "cva": table}}}`` of :func:`precision_recall_table`: the model's at
            thresholds 0.05 to 0.95, at its decision threshold and at 0.5; CVA's at its threshold.
    """

    per_city: dict[str, dict[str, dict[str, ClassificationMetrics]]] = field(default_factory=dict)
    pooled: dict[str, dict[str, ClassificationMetrics]] = field(default_factory=dict)
    curves: dict[str, dict[str, dict[str, dict[str, list[float]]]]] = field(default_factory=dict)


def score_change(
    parts: Mapping[str, Sequence[str]],
    labels: Mapping[str, np.ndarray | xr.DataArray],
    masks: Mapping[str, np.ndarray | xr.DataArray],
    probabilities: Mapping[str, np.ndarray | xr.DataArray],
    cva_masks: Mapping[str, np.ndarray | xr.DataArray],
    magnitudes: Mapping[str, np.ndarray | xr.DataArray],
    *,
    threshold: float,
    cva_threshold: float,
) -> ChangeScores:
    """Score the model's and CVA's change masks of each city, and pooled over each part.

    Args:
        parts: ``{part: cities}``, e.g. ``{"validation": [...], "test": [...]}``; an empty
            part gets empty figures.
        labels: ``(H, W)`` uint8 0 no change / 1 change / 255 unlabelled per city.
        masks: ``(H, W)`` uint8 model change masks per city (255 nodata).
        probabilities: ``(H, W)`` float probabilities of change per city (NaN nodata).
        cva_masks: ``(H, W)`` uint8 CVA masks per city (:func:`staclearn.evaluation.cva.cva_mask`).
        magnitudes: ``(H, W)`` float CVA magnitudes per city.
        threshold: the model's decision threshold on p(change).
        cva_threshold: CVA's threshold on the magnitude (standard deviations).

    Returns:
        A :class:`ChangeScores` (per-class metrics of classes 0 "no change" and 1 "change";
        unlabelled pixels left out).

    Raises:
        ConfigError: arrays of a city differ in shape (:func:`staclearn.evaluation.metrics.compute_metrics`).
        KeyError: a city of ``parts`` is missing from one of the mappings.
    """
    s = ChangeScores()
    for part, cities in parts.items():
        s.per_city[part], s.curves[part] = {}, {}
        refs, preds, cva_preds = [], [], []
        for city in cities:
            reference = np.asarray(labels[city])
            mask, cva, prob = np.asarray(masks[city]), np.asarray(cva_masks[city]), np.asarray(probabilities[city])
            s.per_city[part][city] = {
                "model": compute_metrics(reference, mask, _VALUES, _NAMES),
                "cva": compute_metrics(reference, cva, _VALUES, _NAMES),
            }
            s.curves[part][city] = {
                "model": precision_recall_table(prob, reference),
                "model_at_threshold": precision_recall_table(prob, reference, [threshold]),
                "model_at_0.5": precision_recall_table(prob, reference, [0.5]),
                "cva": precision_recall_table(np.asarray(magnitudes[city]), reference, [cva_threshold]),
            }
            refs.append(reference.ravel())
            preds.append(mask.ravel())
            cva_preds.append(cva.ravel())
        ref = np.concatenate(refs)
        s.pooled[part] = {
            "model": compute_metrics(ref, np.concatenate(preds), _VALUES, _NAMES),
            "cva": compute_metrics(ref, np.concatenate(cva_preds), _VALUES, _NAMES),
        }
    return s


def change_figures(metrics: Mapping[str, ClassificationMetrics]) -> dict[str, dict[str, Any]]:
    """Headline figures (:func:`staclearn.evaluation.metrics.summary`) plus the change class's
    F1, precision, recall and IoU, per model (``None`` for NaN): the ``staclearn:metrics`` of
    change cards and Items.

    Args:
        metrics: ``{model name: metrics}`` of two-class change masks (a class named ``"change"``).

    Returns:
        ``{model name: {figure: value}}``, JSON-ready.
    """

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
        for k, m in metrics.items()
    }


def write_change_evaluation(
    scores: ChangeScores,
    out_dir: Path,
    *,
    model_name: str,
    split: Mapping[str, Any],
    threshold: Mapping[str, Any],
) -> tuple[Path, dict[str, Path]]:
    """Write ``evaluation.json`` of a change run, its confusion figures and its precision / recall figure.

    The JSON is :func:`staclearn.evaluation.reports.write_evaluation`'s (``"test"``,
    ``"validation"`` and ``"split"`` apart; models ``"<city> <model_name>"`` / ``"<city> cva"``
    per city and ``"pooled <model_name>"`` / ``"pooled cva"``) plus ``"threshold"`` and
    ``"precision_recall"`` (:attr:`ChangeScores.curves`).

    Args:
        scores: the figures (:func:`score_change`) with parts ``"test"`` and ``"validation"``.
        out_dir: the run folder.
        model_name: the model's name in the report (the fusion, e.g. ``"early"``).
        split: ``staclearn:split`` (:func:`staclearn.data.splits.split_description`).
        threshold: ``{"value": p, "method": words, "cities": [...]}`` of the decision threshold.

    Returns:
        ``(evaluation.json, {part: confusion PNG, "precision_recall": PNG})``.

    Raises:
        ConfigError: no part holds a figure.
    """
    parts = {
        part: {
            **{f"{city} {model_name if k == 'model' else 'cva'}": v for city, d in scores.per_city[part].items() for k, v in d.items()},
            **{f"pooled {model_name if k == 'model' else 'cva'}": v for k, v in scores.pooled[part].items()},
        }
        for part in ("test", "validation")
    }
    json_path, pngs = write_evaluation(parts, out_dir, split=split, name="evaluation")
    evaluation = json.loads(json_path.read_text(encoding="utf-8"))
    evaluation["threshold"] = dict(threshold)
    evaluation["precision_recall"] = scores.curves
    write_json(json_path, evaluation)
    pngs["precision_recall"] = plot_precision_recall(
        scores.curves, threshold["value"], Path(out_dir) / "evaluation_precision_recall.png"
    )
    return json_path, pngs
