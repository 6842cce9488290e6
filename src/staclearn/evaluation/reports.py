"""Accuracy reports: JSON of the metrics per model and part, and confusion-matrix figures.

Each part (test, validation) is kept apart: only the test figures come from ground that no
choice has seen (see :func:`write_evaluation`).
"""

from __future__ import annotations

__all__ = ['write_report', 'write_evaluation', 'plot_confusion_matrix']

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from staclearn._io import atomic_write
from staclearn.errors import ConfigError
from staclearn.evaluation.metrics import ClassificationMetrics, _json_float


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
    atomic_write(json_path, lambda fh: fh.write(text.encode("utf-8")))

    fig = _confusion_figure(results)
    png_path = out / f"{name}_confusion.png"
    atomic_write(png_path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    return json_path, png_path


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
        split: the split description (:func:`staclearn.data.splits.split_description`).
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
    atomic_write(json_path, lambda fh: fh.write(text.encode("utf-8")))
    return json_path, pngs


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
