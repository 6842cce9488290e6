"""Training loop: one-cycle schedule, ignore index, class weights, best checkpoint.

``Trainer(model, train, valid).fit(epochs, lr)`` mirrors arcgis.learn / fastai's
``fit(epochs, lr)``: the learning rate follows the one-cycle policy (Smith & Topin 2018,
``torch.optim.lr_scheduler.OneCycleLR``) with AdamW; unlabelled pixels (``ignore_index``)
are left out of the loss and the metrics; after every epoch the validation loss, overall
accuracy and mIoU are recorded and the weights of the best epoch (highest validation mIoU)
are kept and restored at the end.
"""

from __future__ import annotations

import copy
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from staclearn.augment import Augmentation
from staclearn.errors import ConfigError
from staclearn.labels import IGNORE_INDEX
from staclearn.models import save_weights

__all__ = ["Trainer", "EpochRecord", "seed_everything", "class_weights", "resolve_device"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; returns a torch Generator for the DataLoader shuffling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then the CPU."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


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
    """

    epoch: int
    train_loss: float
    valid_loss: float
    valid_accuracy: float
    valid_miou: float
    lr: float
    seconds: float


class Trainer:
    """Train a segmentation model on chip datasets.

    Args:
        model: ``(B, C, H, W) -> (B, K, H, W)`` logits.
        train: dataset of ``(image (C,H,W) float32, mask (H,W) int64)``.
        valid: validation dataset (same form) or ``None``.
        num_classes: K.
        batch_size: chips per batch.
        ignore_index: mask value left out of loss and metrics.
        weights: ``None`` (plain cross-entropy), ``"balanced"`` (:func:`class_weights` of
            ``train``) or a ``(K,)`` tensor.
        loss: a module ``(logits (B, K, H, W), mask (B, H, W) int64) -> scalar`` used instead
            of the weighted cross-entropy (e.g. cross-entropy + Dice for rare classes); it
            must leave ``ignore_index`` pixels out itself, and ``weights`` must then be
            ``None`` (the loss carries its own).
        augment: a module ``(image, mask) -> (image, mask)`` applied to each training batch on
            the device (default :class:`staclearn.augment.Augmentation`); ``False`` for none.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
        seed: seeds weight init order, shuffling and augmentation.
        checkpoint: where the best weights are written (safetensors) after each improving
            epoch; ``None`` keeps them in memory only.
        num_workers: DataLoader worker processes.

    Raises:
        ConfigError: empty training set, bad ``weights``, or both ``weights`` and ``loss``.
    """

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
        augment: nn.Module | bool = True,
        device: str | torch.device = "auto",
        seed: int = 0,
        checkpoint: str | os.PathLike[str] | None = None,
        num_workers: int = 0,
    ) -> None:
        if len(train) == 0:  # type: ignore[arg-type]
            raise ConfigError("The training set is empty: export chips with labels in training blocks first.")
        self.generator = seed_everything(seed)
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.batch_size = batch_size
        self.train_loader = DataLoader(
            train, batch_size=batch_size, shuffle=True, generator=self.generator, num_workers=num_workers, drop_last=len(train) > batch_size  # type: ignore[arg-type]
        )
        self.valid_loader = (
            DataLoader(valid, batch_size=batch_size, shuffle=False, num_workers=num_workers)
            if valid is not None and len(valid) > 0  # type: ignore[arg-type]
            else None
        )
        if loss is not None and weights is not None:
            raise ConfigError("Pass class weights to the loss module itself when giving loss=; leave weights=None.")
        if isinstance(weights, str):
            if weights != "balanced":
                raise ConfigError(f"weights must be None, 'balanced' or a tensor, got {weights!r}")
            weights = class_weights(train, num_classes, ignore_index=ignore_index)
        self.class_weights = weights
        self.loss_fn = (
            loss.to(self.device)
            if loss is not None
            else nn.CrossEntropyLoss(weight=weights.to(self.device) if weights is not None else None, ignore_index=ignore_index)
        )
        self.augment = Augmentation() if augment is True else (augment or None)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.history: list[EpochRecord] = []
        self.best_epoch: int | None = None
        self.best_miou: float = -1.0

    def _evaluate(self) -> tuple[float, float, float]:
        from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

        acc = MulticlassAccuracy(self.num_classes, average="micro", ignore_index=self.ignore_index).to(self.device)
        iou = MulticlassJaccardIndex(self.num_classes, average="none", ignore_index=self.ignore_index).to(self.device)
        self.model.eval()
        total, n = 0.0, 0
        present = torch.zeros(self.num_classes, dtype=torch.bool, device=self.device)
        with torch.no_grad():
            for x, y in self.valid_loader:
                x, y = x.to(self.device), y.to(self.device)
                logits = self.model(x)
                labelled = int((y != self.ignore_index).sum())
                if labelled:
                    total += float(self.loss_fn(logits, y)) * labelled
                    n += labelled
                pred = logits.argmax(1)
                acc.update(pred, y)
                iou.update(pred, y)
                present |= torch.bincount(y[y != self.ignore_index], minlength=self.num_classes)[: self.num_classes] > 0
        per_class = iou.compute()
        miou = float(per_class[present].mean()) if present.any() else float("nan")
        return total / max(n, 1), float(acc.compute()), miou

    def fit(
        self,
        epochs: int,
        lr: float = 1e-3,
        *,
        weight_decay: float = 1e-4,
        progress: bool = True,
        on_epoch: Callable[[EpochRecord], None] | None = None,
    ) -> list[EpochRecord]:
        """Train for ``epochs`` with a one-cycle learning-rate schedule peaking at ``lr``.

        Args:
            epochs: passes over the training chips.
            lr: maximum learning rate of the one-cycle schedule.
            weight_decay: AdamW weight decay.
            progress: show a tqdm progress bar per epoch.
            on_epoch: called with each :class:`EpochRecord`.

        Returns:
            The history, one record per epoch (also in ``self.history``). The model ends with
            the weights of the best validation epoch (the last one without validation data).
        """
        from tqdm.auto import tqdm

        if epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {epochs}")
        opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, epochs=epochs, steps_per_epoch=len(self.train_loader)
        )
        best_state = None
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            self.model.train()
            total, n = 0.0, 0
            bar = tqdm(self.train_loader, desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False)
            for x, y in bar:
                x, y = x.to(self.device), y.to(self.device)
                if self.augment is not None:
                    x, y = self.augment(x, y)
                logits = self.model(x)
                loss = self.loss_fn(logits, y) if (y != self.ignore_index).any() else logits.sum() * 0.0
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * x.shape[0]
                n += x.shape[0]
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if self.valid_loader is not None:
                vloss, vacc, vmiou = self._evaluate()
            else:
                vloss, vacc, vmiou = float("nan"), float("nan"), float("nan")
            rec = EpochRecord(epoch, total / max(n, 1), vloss, vacc, vmiou, opt.param_groups[0]["lr"], time.perf_counter() - t0)
            self.history.append(rec)
            score = vmiou if not np.isnan(vmiou) else float(epoch)
            if score > self.best_miou:
                self.best_miou, self.best_epoch = score, epoch
                best_state = copy.deepcopy(self.model.state_dict())
                if self.checkpoint is not None:
                    save_weights(self.model, self.checkpoint)
            if on_epoch is not None:
                on_epoch(rec)
        if best_state is not None:
            self.model.load_state_dict(best_state)
        self.model.eval()
        return self.history

    def history_table(self) -> list[dict[str, float]]:
        """The history as a list of dicts (for JSON or a pandas DataFrame)."""
        return [asdict(r) for r in self.history]
