"""Object classification: train a classifier on footprint chips, then classify footprints.

:class:`ClassifierTrainer` shares :class:`staclearn.training.trainer.BaseTrainer`'s loop (as
:class:`staclearn.training.trainer.Trainer` does) for one label per chip: AdamW with the one-cycle
learning-rate policy (Smith & Topin 2018, ``torch.optim.lr_scheduler.OneCycleLR``); cross-entropy weighted by inverse class frequency
(``w_k = N / (K * n_k)``, scikit-learn's ``class_weight="balanced"``), since damage classes
are imbalanced; kornia flips / rotation / zoom / shift and a brightness / contrast /
band-gain jitter on each training batch; after every epoch, precision, recall and F1 per
class on the validation chips (:func:`staclearn.evaluation.metrics.compute_metrics`); the weights of
the best epoch by macro-F1 are kept and restored at the end (or the last epoch's); and the
loop's ``lr_find``, early stopping, resume and class-balanced sampling.

:func:`classify_objects` cuts a chip per footprint exactly as training did (chip size,
buffer, masking from the model's :class:`~staclearn.models.classifier.ClassifierSpec`), runs the
model in batches and returns every input footprint with its attributes, its predicted class,
the softmax probability of each class and a ``status``; footprints without a chip (empty
geometry, outside the imagery) stay in the output with a null class.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import pystac
import torch
from torch import nn
from torch.utils.data import Dataset

from staclearn.chips.augment import Augmentation, RadiometricJitter
from staclearn.models.classifier import ObjectClassifier
from staclearn.errors import BandMismatchError, ConfigError
from staclearn.evaluation.metrics import compute_metrics
from staclearn.chips.objects import FootprintChipReader, Imagery
from staclearn.data.footprints import STATUS_OK, read_footprints
from staclearn.data.labels import ClassInfo
from staclearn.chips.sampling import targets_presence
from staclearn.training.trainer import BaseTrainer
from staclearn.training.device import resolve_device

__all__ = [
    "ClassifierEpoch",
    "ClassifierTrainer",
    "default_augmentation",
    "inverse_frequency_weights",
    "classify_objects",
    "probability_column",
    "write_objects",
]


def default_augmentation() -> Callable[[torch.Tensor], torch.Tensor]:
    """The default training augmentation of object chips, ``(B, C, H, W) -> (B, C, H, W)``.

    Geometric (:class:`staclearn.chips.augment.Augmentation`: flips, rotation +-30 deg, zoom
    0.9-1.1, shift 5 %), then radiometric (:class:`staclearn.chips.augment.RadiometricJitter`:
    brightness and contrast +-20 %, band gains +-10 %), so that neither a building's
    orientation nor one scene's colours are learnt.
    """
    geometric = Augmentation(rotation=30.0, zoom=(0.9, 1.1), shift=0.05)
    radiometric = RadiometricJitter()

    def augment(x: torch.Tensor) -> torch.Tensor:
        return radiometric(geometric.images(x))

    return augment


def inverse_frequency_weights(targets: Sequence[int] | np.ndarray, num_classes: int) -> torch.Tensor:
    """Class weights ``w_k = N / (K_present * n_k)`` (scikit-learn ``class_weight="balanced"``).

    Args:
        targets: ``(N,)`` integer class indices ``0..num_classes-1``.
        num_classes: K.

    Returns:
        ``(K,) float32``; 1.0 for every class when balanced, 0.0 for a class absent from
        ``targets``.

    Raises:
        ConfigError: no target, or a target outside ``0..K-1``.
    """
    t = np.asarray(targets, dtype=np.int64)
    if t.size == 0:
        raise ConfigError("No training target: cannot compute class weights.")
    if t.min() < 0 or t.max() >= num_classes:
        raise ConfigError(f"Targets must be class indices in 0..{num_classes - 1}, got {t.min()}..{t.max()}")
    counts = np.bincount(t, minlength=num_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(num_classes, dtype=np.float64)
    w[present] = t.size / (present.sum() * counts[present])
    return torch.tensor(w, dtype=torch.float32)


@dataclass(frozen=True)
class ClassifierEpoch:
    """Figures of one epoch of object-classifier training.

    Attributes:
        epoch: 1-based epoch number.
        train_loss: mean (class-weighted) cross-entropy over training chips.
        valid_loss: same on validation chips (NaN without validation data).
        valid_accuracy: overall accuracy on validation chips.
        valid_macro_f1: mean F1 over the classes present in validation.
        valid_precision: precision per class name (NaN for a class never predicted).
        valid_recall: recall per class name (NaN for a class absent from validation).
        valid_f1: F1 per class name.
        valid_n: number of validation chips.
        lr: learning rate at the end of the epoch.
        seconds: wall time of the epoch.
    """

    epoch: int
    train_loss: float
    valid_loss: float
    valid_accuracy: float
    valid_macro_f1: float
    valid_precision: dict[str, float]
    valid_recall: dict[str, float]
    valid_f1: dict[str, float]
    valid_n: int
    lr: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``None`` for NaN)."""

        def clean(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, float) and not math.isfinite(v):
                return None
            return v

        return {k: clean(v) for k, v in asdict(self).items()}


def _targets(dataset: Dataset) -> Sequence[int] | np.ndarray:
    # FootprintChipDataset keeps its targets; other datasets are read once
    targets = getattr(dataset, "targets", None)
    return targets if targets is not None else [int(dataset[i][1]) for i in range(len(dataset))]  # type: ignore[arg-type]


class ClassifierTrainer(BaseTrainer):
    """Train an object classifier on chip datasets.

    The loop (AdamW + one-cycle, best epoch kept, early stopping, resumable training
    state, ``lr_find``, class-balanced sampling, ``metrics_table``) is
    :class:`staclearn.training.trainer.BaseTrainer`'s; this class adds the classifier's loss,
    augmentation and per-class precision / recall / F1.

    Args:
        model: ``(B, C, H, W) -> (B, K)`` logits, e.g. an
            :class:`~staclearn.models.classifier.ObjectClassifier`.
        train: dataset of ``(image (C,H,W) float32, class index () int64)``, e.g.
            :class:`~staclearn.chips.objects.FootprintChipDataset`.
        valid: validation dataset (same form) or ``None``.
        classes: classes in logit order; default ``model.spec.classes``.
        batch_size: chips per batch.
        weights: ``"balanced"`` (:func:`inverse_frequency_weights` of ``train``'s targets),
            ``None`` (plain cross-entropy) or a ``(K,)`` tensor.
        augment: ``True`` for :func:`default_augmentation` (geometric + radiometric) on each
            training batch on the device; a callable ``(B,C,H,W) -> (B,C,H,W)``; ``False``
            for none.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
        seed: seeds initialisation order, shuffling / sampling and augmentation.
        checkpoint: where the best weights are written (safetensors) after each improving
            epoch; ``None`` keeps them in memory only.
        num_workers: DataLoader worker processes.
        sampling: ``None`` or ``"balanced"``: draw chips with probability ``1 / n_k`` of
            their class, so every class is drawn equally often in expectation
            (:mod:`staclearn.chips.sampling`); use it instead of, not with, ``weights="balanced"``,
            or rare classes are boosted twice.
        oversample: class index (logit order) -> factor >= 1: chips of that class are drawn
            about that many times as often.

    Raises:
        ConfigError: empty training set, no classes, bad ``weights``, unknown ``sampling`` or
            a bad ``oversample``.
    """

    record_type = ClassifierEpoch
    default_monitor = "valid_macro_f1"
    default_progress = False

    def __init__(
        self,
        model: nn.Module,
        train: Dataset,
        valid: Dataset | None = None,
        *,
        classes: Sequence[ClassInfo] | None = None,
        batch_size: int = 32,
        weights: str | torch.Tensor | None = "balanced",
        augment: bool | Callable[[torch.Tensor], torch.Tensor] = True,
        device: str | torch.device = "auto",
        seed: int = 0,
        checkpoint: str | os.PathLike[str] | None = None,
        num_workers: int = 0,
        sampling: str | None = None,
        oversample: Mapping[int, float] | None = None,
    ) -> None:
        if len(train) == 0:  # type: ignore[arg-type]
            raise ConfigError("The training set is empty: export chips of labelled training footprints first.")
        if classes is None:
            spec = getattr(model, "spec", None)
            if spec is None:
                raise ConfigError("Pass classes= for a model without a .spec")
            classes = spec.classes
        if isinstance(weights, str) and weights != "balanced":
            raise ConfigError(f"weights must be None, 'balanced' or a tensor, got {weights!r}")
        self.classes = tuple(classes)
        super().__init__(
            model, train, valid, num_classes=len(self.classes), batch_size=batch_size, ignore_index=None,
            device=device, seed=seed, checkpoint=checkpoint, num_workers=num_workers, sampling=sampling,
            oversample=oversample,
        )  # fmt: skip
        if isinstance(weights, str):
            weights = inverse_frequency_weights(_targets(train), self.num_classes)
        self.class_weights = weights
        self.loss_fn = nn.CrossEntropyLoss(weight=weights.to(self.device) if weights is not None else None)
        if augment is True:
            augment = default_augmentation()
        self.augment: Callable[[torch.Tensor], torch.Tensor] | None = augment or None

    @property
    def best_macro_f1(self) -> float:
        """The monitored figure of the best epoch (its validation macro-F1 by default)."""
        return self.best_score

    def _class_presence(self, dataset: Dataset) -> np.ndarray:
        return targets_presence(_targets(dataset), self.num_classes)

    def _batch_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.augment is not None:
            x = self.augment(x)
        return self.loss_fn(self.model(x), y)

    def _validate(self) -> dict[str, Any]:
        names = [c.name for c in self.classes]
        if self.valid_loader is None:
            nan = {k: float("nan") for k in names}
            return {
                "valid_loss": float("nan"), "valid_accuracy": float("nan"), "valid_macro_f1": float("nan"),
                "valid_precision": nan, "valid_recall": dict(nan), "valid_f1": dict(nan), "valid_n": 0,
            }  # fmt: skip
        self.model.eval()
        total, n = 0.0, 0
        refs, preds = [], []
        with torch.no_grad():
            for x, y in self.valid_loader:
                x, y = x.to(self.device), y.to(self.device)
                logits = self.model(x)
                total += float(self.loss_fn(logits, y)) * len(y)
                n += len(y)
                refs.append(y.cpu().numpy())
                preds.append(logits.argmax(1).cpu().numpy())
        values = np.array([c.value for c in self.classes], dtype=np.int64)
        m = compute_metrics(
            values[np.concatenate(refs)],
            values[np.concatenate(preds)],
            values.tolist(),
            names,
            ignore_index=None,
        )
        return {
            "valid_loss": total / max(n, 1), "valid_accuracy": m.overall_accuracy, "valid_macro_f1": m.macro_f1,
            "valid_precision": dict(m.precision), "valid_recall": dict(m.recall), "valid_f1": dict(m.f1), "valid_n": n,
        }  # fmt: skip

    def history_table(self) -> list[dict[str, Any]]:
        """The history as JSON-ready dicts (``None`` for NaN)."""
        return [r.to_dict() for r in self.history]


def probability_column(name: str) -> str:
    """Column holding the probability of class ``name``: ``prob_`` + the lower-cased name with
    runs of non-alphanumerics as ``_`` (``"not destroyed"`` -> ``"prob_not_destroyed"``)."""
    return "prob_" + re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def write_objects(
    gdf: gpd.GeoDataFrame,
    path: str | os.PathLike[str],
    driver: Literal["GeoParquet", "GeoJSON"] = "GeoParquet",
) -> Path:
    """Write a GeoDataFrame atomically (temporary name in the same folder, then ``os.replace``).

    Args:
        gdf: the table.
        path: output file.
        driver: ``"GeoParquet"`` (CRS kept) or ``"GeoJSON"`` (reprojected to EPSG:4326, as
            RFC 7946 requires).

    Returns:
        ``path``.

    Raises:
        ConfigError: unknown driver.
    """
    if driver not in ("GeoParquet", "GeoJSON"):
        raise ConfigError(f"driver must be 'GeoParquet' or 'GeoJSON', got {driver!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if driver == "GeoParquet":
            gdf.to_parquet(tmp)
        else:
            gdf.to_crs("EPSG:4326").to_file(tmp, driver="GeoJSON")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def classify_objects(
    model: ObjectClassifier,
    footprints: gpd.GeoDataFrame | str | os.PathLike[str] | pystac.Item,
    post: Imagery,
    *,
    pre: Imagery | None = None,
    chip_size: int | None = None,
    buffer_m: float | None = None,
    batch_size: int = 32,
    device: str | torch.device = "auto",
    out_path: str | os.PathLike[str] | None = None,
    driver: Literal["GeoParquet", "GeoJSON"] = "GeoParquet",
    tile_field: str = "tile",
    asset: str | None = None,
    id_field: str | None = None,
) -> gpd.GeoDataFrame:
    """Classify every footprint from its post (and pre) image chip.

    Chips are cut with :class:`~staclearn.chips.objects.FootprintChipReader` using the
    model's ``spec`` (chip size, buffer, ``mask_outside``) unless overridden.

    Args:
        model: a trained classifier (put in eval mode on ``device``).
        footprints: GeoDataFrame or anything :func:`~staclearn.data.footprints.read_footprints`
            reads, in any CRS.
        post: post-event image(s): one source or a mapping tile id -> source.
        pre: pre-event image(s); required when the model was trained with pre bands.
        chip_size: chip edge in pixels; default ``model.spec.chip_size``.
        buffer_m: context in metres; default ``model.spec.buffer_m``.
        batch_size: chips per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
        out_path: file to write the result to (atomically); ``None`` writes nothing.
        driver: ``"GeoParquet"`` or ``"GeoJSON"`` (then in EPSG:4326).
        tile_field: tile id column, when ``post``/``pre`` are mappings.
        asset: image asset key of Items.
        id_field: id column of the footprints (see ``read_footprints``).

    Returns:
        Every input footprint, in input order, with its geometry (input CRS) and attributes,
        ``footprint_id``, and: ``class_value`` (nullable ``Int64``), ``class_name`` (str or
        ``None``), ``confidence`` (softmax probability of the predicted class, float, NaN
        without prediction), one ``prob_<class name>`` float column per class (see
        :func:`probability_column`) and ``status`` (``"ok"``, ``"empty_geometry"``,
        ``"outside_imagery"``). Input columns with these names are kept renamed
        ``<name>_input`` (e.g. the reference ``class_value``).

    Raises:
        BandMismatchError: the images' bands (or the presence of ``pre``) differ from the
            model's input bands.
        ConfigError: unknown driver, bad chip settings.
        FootprintsNotFoundError, FieldNotFoundError, DuplicateIdError, ImageryNotFoundError,
        AssetNotFoundError: as :func:`~staclearn.data.footprints.read_footprints` and
            :class:`~staclearn.chips.objects.FootprintChipReader`.
    """
    if driver not in ("GeoParquet", "GeoJSON"):
        raise ConfigError(f"driver must be 'GeoParquet' or 'GeoJSON', got {driver!r}")
    spec = model.spec
    if spec.stack_pre and pre is None:
        raise BandMismatchError(
            f"The model takes pre and post bands {list(spec.bands)}: pass the pre-event image(s) as pre=."
        )
    if pre is not None and not spec.stack_pre:
        raise BandMismatchError(f"The model takes post bands only {list(spec.bands)}: do not pass pre=.")
    gdf = read_footprints(footprints, id_field=id_field)
    classes = spec.classes
    prob_cols = [probability_column(c.name) for c in classes]
    if len(set(prob_cols)) != len(prob_cols):
        raise ConfigError(f"Class names {[c.name for c in classes]} give duplicate columns {prob_cols}")
    new_cols = ["class_value", "class_name", "confidence", *prob_cols, "status"]
    gdf = gdf.rename(columns={c: f"{c}_input" for c in new_cols if c in gdf.columns})
    with FootprintChipReader(
        gdf,
        post,
        pre=pre,
        chip_size=chip_size or spec.chip_size,
        buffer_m=spec.buffer_m if buffer_m is None else buffer_m,
        mask_outside=spec.mask_outside,
        tile_field=tile_field,
        asset=asset,
    ) as reader:
        if reader.bands and len(reader.bands) != spec.in_channels:
            raise BandMismatchError(
                f"The images give {len(reader.bands)} channels {list(reader.bands)} but the model takes "
                f"{spec.in_channels} {list(spec.bands)}; use imagery with the model's bands."
            )
        dev = resolve_device(device)
        model = model.to(dev).eval()
        n = len(gdf)
        probs = np.full((n, len(classes)), np.nan, dtype=np.float64)
        ok = np.flatnonzero(reader.status == STATUS_OK)
        with torch.no_grad():
            for start in range(0, len(ok), batch_size):
                rows = ok[start : start + batch_size]
                x = torch.from_numpy(np.stack([reader.read(int(i)).astype(np.float32) for i in rows])).to(dev)
                probs[rows] = torch.softmax(model(x), dim=1).cpu().double().numpy()
        status = reader.status.astype(str)
    has = ~np.isnan(probs).any(axis=1)
    best = np.where(has, np.nan_to_num(probs, nan=-1.0).argmax(axis=1), -1)
    values = np.array([c.value for c in classes], dtype=np.int64)
    out = gdf.copy()
    out["class_value"] = pd.array(np.where(has, values[best], 0), dtype="Int64")
    out.loc[~has, "class_value"] = pd.NA
    out["class_name"] = pd.Series([classes[b].name if h else None for b, h in zip(best, has, strict=True)], index=out.index, dtype=object)
    out["confidence"] = np.where(has, probs[np.arange(n), np.maximum(best, 0)], np.nan)
    for k, col in enumerate(prob_cols):
        out[col] = probs[:, k]
    out["status"] = status
    if out_path is not None:
        write_objects(out, out_path, driver)
    return out
