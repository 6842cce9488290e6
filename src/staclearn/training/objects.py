"""Object classification training: fit a classifier on footprint chips.

:class:`ClassifierTrainer` shares :class:`staclearn.training.trainer.BaseTrainer`'s loop (as
:class:`staclearn.training.segmentation.Trainer` does) for one label per chip: AdamW with the one-cycle
learning-rate policy (Smith & Topin 2018, ``torch.optim.lr_scheduler.OneCycleLR``); cross-entropy
weighted by inverse class frequency (``w_k = N / (K * n_k)``, scikit-learn's
``class_weight="balanced"``), since damage classes are imbalanced; kornia flips / rotation /
zoom / shift and a brightness / contrast / band-gain jitter on each training batch; after
every epoch, overall accuracy and precision, recall and F1 per class on the validation chips
(torchmetrics, as the segmentation trainer); the weights of the best epoch by macro-F1 are
kept and restored at the end (or the last epoch's); and the loop's ``lr_find``, early
stopping, resume and class-balanced sampling.

Classifying footprints with the trained model is :func:`staclearn.inference.objects.classify_objects`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from staclearn.chips.augment import Augmentation, RadiometricJitter
from staclearn.chips.sampling import targets_presence
from staclearn.data.labels import ClassInfo
from staclearn.errors import ConfigError
from staclearn.training.trainer import BaseTrainer

__all__ = [
    "ClassifierEpoch",
    "ClassifierTrainer",
    "default_augmentation",
    "inverse_frequency_weights",
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
            :class:`~staclearn.chips.object_dataset.FootprintChipDataset`.
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
        from torchmetrics.classification import MulticlassStatScores

        # torchmetrics accumulates the per-class counts on the device; the ratios are taken in
        # float64 with NaN where undefined (as compute_metrics: precision of a class never
        # predicted, recall of a class absent from validation), not torchmetrics' float32 zeros
        stats = MulticlassStatScores(self.num_classes, average="none").to(self.device)
        self.model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for x, y in self.valid_loader:
                x, y = x.to(self.device), y.to(self.device)
                logits = self.model(x)
                total += float(self.loss_fn(logits, y)) * len(y)
                n += len(y)
                stats.update(logits.argmax(1), y)
        tp, fp, _, fn, support = stats.compute().cpu().double().unbind(1)
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        precision = torch.where(tp + fp > 0, tp / (tp + fp), nan)
        recall = torch.where(support > 0, tp / support, nan)
        f1 = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), nan)
        present = support > 0
        return {
            "valid_loss": total / max(n, 1), "valid_accuracy": float(tp.sum() / max(n, 1)),
            "valid_macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
            "valid_precision": {c: float(v) for c, v in zip(names, precision, strict=True)},
            "valid_recall": {c: float(v) for c, v in zip(names, recall, strict=True)},
            "valid_f1": {c: float(v) for c, v in zip(names, f1, strict=True)}, "valid_n": n,
        }  # fmt: skip

    def history_table(self) -> list[dict[str, Any]]:
        """The history as JSON-ready dicts (``None`` for NaN)."""
        return [r.to_dict() for r in self.history]


