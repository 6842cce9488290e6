"""Segmentation training: :class:`Trainer` (per-pixel cross-entropy or a given loss, kornia
augmentation, validation OA / mIoU / IoU per class with torchmetrics), median-frequency
:func:`class_weights` and :func:`train_ensemble` (members from different seeds, averaged).
The loop itself is :class:`staclearn.training.trainer.BaseTrainer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Trainer", "EpochRecord", "class_weights", "train_ensemble"]

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from staclearn.chips.augment import Augmentation
from staclearn.data.labels import IGNORE_INDEX
from staclearn.errors import ConfigError
from staclearn.training.trainer import BaseTrainer


@dataclass(frozen=True)
class EpochRecord:
    """Figures of one epoch.

    Attributes:
        epoch: 1-based epoch number.
        train_loss: mean cross-entropy over labelled training pixels.
        valid_loss: same on validation chips (NaN without validation data).
        valid_accuracy: overall accuracy of labelled validation pixels.
        valid_miou: mean IoU over classes present in validation labels.
        lr: learning rate at the end of the epoch.
        seconds: wall time of the epoch.
        valid_iou: IoU per class name (the model's ``spec.classes``, else ``"0"``, ``"1"``,
            ...); NaN for a class absent from the validation labels; empty without
            validation data.
    """

    epoch: int
    train_loss: float
    valid_loss: float
    valid_accuracy: float
    valid_miou: float
    lr: float
    seconds: float
    valid_iou: dict[str, float] = field(default_factory=dict)


def class_weights(dataset: Dataset, num_classes: int, *, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Inverse-frequency class weights from a dataset's masks (``median frequency balancing``,
    Eigen & Fergus 2015): ``w_k = median(f) / f_k``; classes absent from the dataset get 0.

    Returns:
        ``(K,) float32``.
    """
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for i in range(len(dataset)):  # type: ignore[arg-type]
        mask = dataset[i][1]
        m = mask[mask != ignore_index]
        counts += torch.bincount(m.flatten(), minlength=num_classes)[:num_classes].double()
    freq = counts / counts.sum().clamp(min=1)
    present = freq > 0
    w = torch.zeros(num_classes, dtype=torch.float64)
    w[present] = freq[present].quantile(0.5) / freq[present]
    return w.float()


class Trainer(BaseTrainer):
    """Train a segmentation model on chip datasets.

    Args:
        model: ``(B, C, H, W) -> (B, K, H, W)`` logits.
        train: dataset of ``(image (C,H,W) float32, mask (H,W) int64)``.
        valid: validation dataset (same form) or ``None``.
        num_classes: K.
        batch_size: chips per batch.
        ignore_index: mask value left out of loss and metrics.
        weights: ``None`` (plain cross-entropy), ``"balanced"`` (:func:`class_weights` of
            ``train``, median-frequency), ``"sqrt"`` (their square root: a milder balancing)
            or a ``(K,)`` tensor.
        loss: a module ``(logits (B, K, H, W), mask (B, H, W) int64) -> scalar`` used instead
            of the weighted cross-entropy (e.g. cross-entropy + Dice for rare classes); it
            must leave ``ignore_index`` pixels out itself, and ``weights`` must then be
            ``None`` (the loss carries its own).
        label_smoothing: cross-entropy label smoothing in [0, 1) (Szegedy et al. 2016);
            softens the targets of noisy labels.
        augment: a module ``(image, mask) -> (image, mask)`` applied to each training batch on
            the device (default :class:`staclearn.chips.augment.Augmentation`); ``False`` for none.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
        seed: seeds weight init order, shuffling / sampling and augmentation.
        checkpoint: where the best weights are written (safetensors) after each improving
            epoch; ``None`` keeps them in memory only.
        num_workers: DataLoader worker processes.
        sampling: ``None`` or ``"balanced"``: draw chips weighted by the rarest class they
            hold (:mod:`staclearn.chips.sampling`; reads every training mask once).
        oversample: class index -> factor >= 1 for chips holding that class.

    Raises:
        ConfigError: empty training set, bad ``weights``, both ``weights`` and ``loss``,
            unknown ``sampling`` or a bad ``oversample``.
    """

    record_type = EpochRecord
    default_monitor = "valid_miou"

    def __init__(
        self,
        model: nn.Module,
        train: Dataset,
        valid: Dataset | None = None,
        *,
        num_classes: int,
        batch_size: int = 16,
        ignore_index: int = IGNORE_INDEX,
        weights: str | torch.Tensor | None = None,
        loss: nn.Module | None = None,
        label_smoothing: float = 0.0,
        augment: nn.Module | bool = True,
        device: str | torch.device = "auto",
        seed: int = 0,
        checkpoint: str | os.PathLike[str] | None = None,
        num_workers: int = 0,
        sampling: str | None = None,
        oversample: Mapping[int, float] | None = None,
    ) -> None:
        if len(train) == 0:  # type: ignore[arg-type]
            raise ConfigError("The training set is empty: export chips with labels in training blocks first.")
        if loss is not None and weights is not None:
            raise ConfigError("Pass class weights to the loss module itself when giving loss=; leave weights=None.")
        if isinstance(weights, str) and weights not in ("balanced", "sqrt"):
            raise ConfigError(f"weights must be None, 'balanced', 'sqrt' or a tensor, got {weights!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        super().__init__(
            model, train, valid, num_classes=num_classes, batch_size=batch_size, ignore_index=ignore_index,
            device=device, seed=seed, checkpoint=checkpoint, num_workers=num_workers, sampling=sampling,
            oversample=oversample,
        )  # fmt: skip
        if isinstance(weights, str):
            balanced = class_weights(train, num_classes, ignore_index=ignore_index)
            weights = balanced if weights == "balanced" else balanced.sqrt()
        self.class_weights = weights
        self.loss_fn = (
            loss.to(self.device)
            if loss is not None
            else nn.CrossEntropyLoss(
                weight=weights.to(self.device) if weights is not None else None,
                ignore_index=ignore_index,
                label_smoothing=label_smoothing,
            )
        )
        self.augment = Augmentation() if augment is True else (augment or None)
        spec_classes = getattr(getattr(model, "spec", None), "classes", None)
        self.class_names = (
            [c.name for c in spec_classes] if spec_classes and len(spec_classes) == num_classes else [str(k) for k in range(num_classes)]
        )

    @property
    def best_miou(self) -> float:
        """The monitored figure of the best epoch (its validation mIoU by default)."""
        return self.best_score

    def _batch_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.augment is not None:
            x, y = self.augment(x, y)
        logits = self.model(x)
        return self.loss_fn(logits, y) if (y != self.ignore_index).any() else logits.sum() * 0.0

    def _validate(self) -> dict[str, Any]:
        if self.valid_loader is None:
            nan = float("nan")
            return {"valid_loss": nan, "valid_accuracy": nan, "valid_miou": nan, "valid_iou": {}}
        from torchmetrics.classification import MulticlassStatScores

        # one metrics path for both trainers: torchmetrics counts true / false positives and
        # negatives per class over the labelled pixels (ignore_index dropped) on the device;
        # overall accuracy and IoU per class are float32 ratios of those exact counts, as
        # torchmetrics' MulticlassAccuracy(average="micro") / MulticlassJaccardIndex(average="none")
        # give (validate_args=False skips their per-batch torch.unique)
        stats = MulticlassStatScores(
            self.num_classes, average="none", ignore_index=self.ignore_index, validate_args=False
        ).to(self.device)
        self.model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for x, y in self.valid_loader:
                x, y = x.to(self.device), y.to(self.device)
                logits = self.model(x)
                count = int((y != self.ignore_index).sum())
                if count:
                    total += float(self.loss_fn(logits, y)) * count
                    n += count
                stats.update(logits.argmax(1), y)
        tp, fp, _, fn, support = stats.compute().cpu().unbind(1)
        present = support > 0
        accuracy = tp.sum().float() / support.sum().float() if support.sum() > 0 else torch.tensor(0.0)
        union = (tp + fp + fn).float()
        per_class = torch.where(union > 0, tp.float() / union.clamp(min=1), torch.zeros_like(union))
        miou = float(per_class[present].mean()) if present.any() else float("nan")
        ious = {name: float(per_class[c]) if present[c] else float("nan") for c, name in enumerate(self.class_names)}
        return {"valid_loss": total / max(n, 1), "valid_accuracy": float(accuracy), "valid_miou": miou, "valid_iou": ious}


def train_ensemble(
    build: Callable[[int], nn.Module],
    train: Dataset,
    valid: Dataset | None = None,
    *,
    members: int,
    seed: int = 0,
    epochs: int,
    lr: float,
    fit_kwargs: Mapping[str, Any] | None = None,
    on_member: Callable[[int, Trainer], None] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    **trainer_kwargs: Any,
) -> tuple[nn.Module, list[Trainer]]:
    """Train ``members`` copies of a segmentation model from different seeds and average them.

    Member ``m`` is built by ``build(member_seed)`` after ``torch.manual_seed(member_seed)``
    with ``member_seed = seed * 1000 + m`` and trained by its own :class:`Trainer`
    (``seed=member_seed``, ``trainer_kwargs``) with ``fit(epochs, lr, **fit_kwargs)``. With
    more than one member the result is a :class:`staclearn.models.segmentation.SegmentationEnsemble`
    (mean of the members' softmax; one module, one state dict); with one, the model itself.

    Args:
        build: ``member_seed -> model`` (e.g. ``lambda s: build_model(...)``); every member
            must have the same ``spec``.
        train: training dataset.
        valid: validation dataset or ``None``.
        members: number of members, >= 1.
        seed: base seed.
        epochs: epochs per member.
        lr: one-cycle peak learning rate.
        fit_kwargs: further :meth:`Trainer.fit` arguments (``weight_decay``, ``keep_best``...).
        on_member: called with ``(m, trainer)`` after member ``m`` is trained.
        state_dir: folder where member ``m`` writes its full training state
            (:mod:`staclearn.training.checkpoint`) after every epoch, as
            ``member{m}.safetensors`` (``fit(state_path=...)``); ``None`` writes none.
        resume: continue from the states in ``state_dir``: a member whose state file exists
            resumes after its last saved epoch (``fit(resume_from=...)``; a finished member is
            restored without training), the others train from the start. On the CPU the
            result equals that of an uninterrupted run bit for bit.
        **trainer_kwargs: :class:`Trainer` arguments (``num_classes``, ``batch_size``,
            ``weights``, ``augment``, ``label_smoothing``, ``device``...).

    Returns:
        ``(model, trainers)``: the model in eval mode and each member's trainer (history,
        best epoch).

    Raises:
        ConfigError: ``members < 1``, members of different specs, or ``resume`` without
            ``state_dir``; plus :class:`Trainer`'s.
        CheckpointError: a member's state in ``state_dir`` was written for another model,
            ``epochs``, ``lr`` or batches per epoch (see :meth:`Trainer.fit`).
    """
    from staclearn.models.segmentation import SegmentationEnsemble

    if members < 1:
        raise ConfigError(f"members must be >= 1, got {members}")
    if resume and state_dir is None:
        raise ConfigError("resume=True needs the state_dir the interrupted run wrote its training states to.")
    trainers: list[Trainer] = []
    for m in range(members):
        member_seed = seed * 1000 + m
        torch.manual_seed(member_seed)
        model = build(member_seed)
        trainer = Trainer(model, train, valid, seed=member_seed, **trainer_kwargs)
        kwargs = dict(fit_kwargs or {})
        if state_dir is not None:
            state = Path(state_dir) / f"member{m}.safetensors"
            kwargs["state_path"] = state
            if resume and state.is_file():
                kwargs["resume_from"] = state
        trainer.fit(epochs, lr, **kwargs)
        trainers.append(trainer)
        if on_member is not None:
            on_member(m, trainer)
    models = [t.model for t in trainers]
    model = SegmentationEnsemble.from_members(models) if members > 1 else models[0]
    return model.eval(), trainers
