"""The training loop with task hooks: one-cycle schedule, best checkpoint, early stopping, resume.

:class:`BaseTrainer` is the loop; a task supplies its loss and its validation metrics as
hooks (``_batch_loss``, ``_validate``, ``record_type``): the segmentation
:class:`staclearn.training.segmentation.Trainer` and the object classifier's
:class:`staclearn.training.objects.ClassifierTrainer`.

``Trainer(model, train, valid).fit(epochs, lr)`` mirrors arcgis.learn / fastai's
``fit(epochs, lr)``: the learning rate follows the one-cycle policy (Smith & Topin 2018,
``torch.optim.lr_scheduler.OneCycleLR``) with AdamW; unlabelled pixels (``ignore_index``)
are left out of the loss and the metrics; after every epoch the validation loss, overall
accuracy, mIoU and IoU per class are recorded and the weights of the best epoch (highest
validation mIoU, or another monitored figure) are kept and restored at the end.

The conveniences arcgis.learn users expect live in :class:`BaseTrainer`, shared with the
object classifier's :class:`staclearn.training.objects.ClassifierTrainer`:

- ``lr_find()``: the learning-rate range test (:mod:`staclearn.training.lr_finder`);
- ``fit(..., patience=, monitor=, min_delta=)``: early stopping (as Keras' and Lightning's
  ``EarlyStopping``);
- ``fit(..., state_path=)`` / ``fit(..., resume_from=)`` / ``resume()``: a full training
  checkpoint after each epoch and resuming the same one-cycle run (:mod:`staclearn.training.checkpoint`);
- ``sampling="balanced"`` / ``oversample={k: f}``: chips holding rare classes drawn more
  often (:mod:`staclearn.chips.sampling`);
- ``metrics_table()``: the per-epoch figures as a pandas DataFrame.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from staclearn.training.checkpoint import TrainingState, capture_rng, load_training_state, restore_rng, save_training_state
from staclearn.errors import CheckpointError, ConfigError
from staclearn.data.labels import IGNORE_INDEX
from staclearn.training.lr_finder import LRFindResult
from staclearn.models.segmentation import save_weights
from staclearn.chips.sampling import balanced_sampler, class_presence, sample_weights
from staclearn.training.device import resolve_device, seed_everything

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["BaseTrainer"]


def _is_better(value: float, best: float, *, mode: str, min_delta: float) -> bool:
    # NaN (no validation data) counts as better, so the last epoch is kept, as before
    if math.isnan(value) or math.isnan(best):
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


class BaseTrainer:
    """The training loop shared by :class:`~staclearn.training.segmentation.Trainer` (segmentation) and
    :class:`staclearn.training.objects.ClassifierTrainer` (one label per chip).

    AdamW (``foreach=True``) with the one-cycle learning-rate policy, seeded shuffling or
    class-balanced sampling, the best epoch's weights kept, early stopping, a resumable
    training checkpoint and the learning-rate range test. A subclass sets ``record_type``
    (a frozen dataclass with ``epoch``, ``train_loss``, ``lr``, ``seconds`` and its
    ``valid_*`` fields) and ``default_monitor``, and implements ``_batch_loss(x, y)`` (the
    loss of one training batch on the device, augmentation included) and ``_validate()``
    (the ``valid_*`` fields of the epoch record).

    Args:
        model: the network.
        train: training dataset of ``(image, label)`` samples.
        valid: validation dataset (same form) or ``None``.
        num_classes: K.
        batch_size: chips per batch.
        ignore_index: label value of unlabelled pixels (``None``: every value is a class).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
        seed: seeds weight init order, shuffling / sampling and augmentation.
        checkpoint: where the best weights are written (safetensors) after each improving
            epoch; ``None`` keeps them in memory only.
        num_workers: DataLoader worker processes.
        sampling: ``None`` (shuffle, each chip once per epoch) or ``"balanced"`` (draw chips
            with replacement, weighted by their rarest class; :mod:`staclearn.chips.sampling`).
        oversample: class index -> factor >= 1: chips holding that class are drawn about that
            many times as often (with replacement); combines with ``sampling="balanced"``.

    Raises:
        ConfigError: empty training set, unknown ``sampling`` or a bad ``oversample``.
    """

    record_type: ClassVar[type]
    default_monitor: ClassVar[str]
    default_progress: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        train: Dataset,
        valid: Dataset | None = None,
        *,
        num_classes: int,
        batch_size: int,
        ignore_index: int | None = IGNORE_INDEX,
        device: str | torch.device = "auto",
        seed: int = 0,
        checkpoint: str | os.PathLike[str] | None = None,
        num_workers: int = 0,
        sampling: str | None = None,
        oversample: Mapping[int, float] | None = None,
    ) -> None:
        if sampling not in (None, "balanced"):
            raise ConfigError(f"sampling must be None or 'balanced', got {sampling!r}")
        self.generator = seed_everything(seed)
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.batch_size = batch_size
        self.sampling = sampling
        #: what :meth:`fit` ran with (optimizer, schedule, lr, epochs, batch size, ...), for the model card
        self.hyperparameters: dict[str, Any] = {}
        self.sample_weights: np.ndarray | None = None
        order: dict[str, Any] = {"shuffle": True, "generator": self.generator}
        if sampling is not None or oversample:
            self.sample_weights = sample_weights(
                self._class_presence(train), balanced=sampling == "balanced", oversample=oversample
            )
            order = {"sampler": balanced_sampler(self.sample_weights, self.generator)}
        self.train_loader = DataLoader(
            train, batch_size=batch_size, num_workers=num_workers, drop_last=len(train) > batch_size, **order  # type: ignore[arg-type]
        )
        self.valid_loader = (
            DataLoader(valid, batch_size=batch_size, shuffle=False, num_workers=num_workers)
            if valid is not None and len(valid) > 0  # type: ignore[arg-type]
            else None
        )
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.history: list[Any] = []
        self.best_epoch: int | None = None
        self.best_score: float = float("nan")
        self.stopped_epoch: int | None = None

    # hooks ---------------------------------------------------------------------------------

    def _class_presence(self, dataset: Dataset) -> np.ndarray:
        return class_presence(dataset, self.num_classes, ignore_index=self.ignore_index)

    def _batch_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _validate(self) -> dict[str, Any]:
        raise NotImplementedError

    # loop ----------------------------------------------------------------------------------

    def _optimizer(self, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        # foreach: one fused kernel per parameter list instead of a Python loop over tensors
        return torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=weight_decay, foreach=True)

    def _check_monitor(self, monitor: str, patience: int | None, min_delta: float) -> str:
        # with postponed annotations a field's type is its source text
        names = {f.name for f in fields(self.record_type) if f.type in ("float", float)} - {"lr", "seconds"}
        if monitor not in names:
            raise ConfigError(f"monitor must be one of {sorted(names)}, got {monitor!r}")
        if patience is not None:
            if patience < 1:
                raise ConfigError(f"patience must be >= 1 epoch, got {patience}")
            if monitor.startswith("valid_") and self.valid_loader is None:
                raise ConfigError(f"Early stopping on {monitor!r} needs validation data; pass valid= or monitor='train_loss'.")
        if min_delta < 0:
            raise ConfigError(f"min_delta must be >= 0, got {min_delta}")
        return "min" if "loss" in monitor else "max"

    def fit(
        self,
        epochs: int,
        lr: float = 1e-3,
        *,
        weight_decay: float = 1e-4,
        progress: bool | None = None,
        on_epoch: Callable[[Any], None] | None = None,
        keep_best: bool = True,
        monitor: str | None = None,
        patience: int | None = None,
        min_delta: float = 0.0,
        state_path: str | os.PathLike[str] | None = None,
        resume_from: str | os.PathLike[str] | None = None,
    ) -> list[Any]:
        """Train for ``epochs`` with a one-cycle learning-rate schedule peaking at ``lr``.

        Args:
            epochs: passes over the training chips (the length of the one-cycle schedule).
            lr: maximum learning rate of the one-cycle schedule (see :meth:`lr_find`).
            weight_decay: AdamW weight decay.
            progress: show a tqdm progress bar per epoch (default: the trainer's).
            on_epoch: called with each epoch record.
            keep_best: restore the weights of the best epoch by ``monitor`` at the end.
                Choosing the epoch on the validation set makes its figures optimistic;
                ``False`` keeps the last epoch.
            monitor: record field that picks the best epoch and drives early stopping
                (default ``"valid_miou"`` for :class:`~staclearn.training.segmentation.Trainer`, ``"valid_macro_f1"`` for
                the classifier); fields with ``loss`` in their name are minimised, others
                maximised. Without validation data a ``valid_*`` figure is NaN and the
                last epoch counts as best.
            patience: stop after this many epochs without improvement of ``monitor``
                (early stopping as Keras' / Lightning's ``EarlyStopping``); ``None`` never
                stops early. The one-cycle schedule keeps its planned length, so a stopped
                run ends before its learning rate has annealed.
            min_delta: an epoch improves only when ``monitor`` beats the best so far by more
                than this.
            state_path: write the full training state (weights, best weights, optimizer,
                scheduler, history, random generators; :mod:`staclearn.training.checkpoint`) here
                after every epoch, to resume from.
            resume_from: a file written through ``state_path``: continue that run after its
                last saved epoch, with the same schedule. ``epochs`` and ``lr`` must be those
                of the saved run (or use :meth:`resume`).

        Returns:
            The history, one record per epoch of this run (also in ``self.history``; a
            resumed run includes the saved epochs). The model ends in eval mode with the
            weights of the best epoch by ``monitor`` (earliest on ties; the last epoch with
            ``keep_best=False``); ``best_epoch`` names it, ``best_score`` gives its figure and
            ``stopped_epoch`` the epoch early stopping ended on (``None`` if it did not).

        Raises:
            ConfigError: ``epochs < 1``, unknown ``monitor``, ``patience < 1``, early
                stopping on a validation figure without validation data.
            CheckpointError: ``resume_from`` is missing, holds no training state, or was
                written for another model, trainer, ``epochs``, ``lr`` or batches per epoch.
            UnsafeWeightsError: ``resume_from`` is not a safetensors file.
        """
        from tqdm.auto import tqdm

        if epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {epochs}")
        monitor = monitor or self.default_monitor
        mode = self._check_monitor(monitor, patience, min_delta)
        progress = self.default_progress if progress is None else progress
        steps = len(self.train_loader)
        opt = self._optimizer(lr, weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, epochs=epochs, steps_per_epoch=steps)
        self.history, self.best_epoch, self.best_score, self.stopped_epoch = [], None, float("nan"), None
        self.hyperparameters = {
            "optimizer": "AdamW",
            "weight_decay": weight_decay,
            "lr": lr,
            "lr_schedule": "one-cycle",
            "epochs": epochs,
            "batch_size": self.batch_size,
            "steps_per_epoch": steps,
            "monitor": monitor,
            "patience": patience,
            "keep_best": keep_best,
            "sampling": self.sampling or "shuffle",
        }
        best_state: dict[str, torch.Tensor] | None = None
        bad_epochs, start, stopped = 0, 1, False
        if resume_from is not None:
            state = load_training_state(resume_from)
            info = state.info
            self._check_resumable(info, resume_from, epochs=epochs, lr=lr, steps=steps)
            try:
                self.model.load_state_dict(state.model)
                if state.best_model is not None:
                    best_state = {k: v.to(self.device) for k, v in state.best_model.items()}
                opt.load_state_dict(state.optimizer)
            except (RuntimeError, ValueError, KeyError) as err:
                raise CheckpointError(f"{os.fspath(resume_from)!r} was written for another model: {err}") from err
            sched.load_state_dict(state.scheduler)
            restore_rng(state.rng, self.generator)
            self.history = [self.record_type(**r) for r in info["history"]]
            self.best_epoch, self.best_score = info["best_epoch"], float(info["best_score"])
            bad_epochs, stopped = int(info["bad_epochs"]), bool(info["stopped"])
            self.stopped_epoch = info["epoch"] if stopped else None
            start = epochs + 1 if stopped else int(info["epoch"]) + 1
        for epoch in range(start, epochs + 1):
            t0 = time.perf_counter()
            self.model.train()
            total, n = 0.0, 0
            bar = tqdm(self.train_loader, desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False)
            for x, y in bar:
                loss = self._batch_loss(x.to(self.device), y.to(self.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * x.shape[0]
                n += x.shape[0]
                bar.set_postfix(loss=f"{loss.item():.3f}")
            valid = self._validate()
            rec = self.record_type(
                epoch=epoch, train_loss=total / max(n, 1), lr=opt.param_groups[0]["lr"], seconds=time.perf_counter() - t0, **valid
            )
            self.history.append(rec)
            value = float(getattr(rec, monitor))
            if _is_better(value, self.best_score, mode=mode, min_delta=min_delta):
                self.best_score, self.best_epoch, bad_epochs = value, epoch, 0
                best_state = copy.deepcopy(self.model.state_dict())
                if self.checkpoint is not None:
                    save_weights(self.model, self.checkpoint)
            else:
                bad_epochs += 1
            stopped = patience is not None and bad_epochs >= patience
            if state_path is not None:
                info = {
                    "trainer": type(self).__name__, "epoch": epoch, "epochs": epochs, "lr": lr,
                    "weight_decay": weight_decay, "steps_per_epoch": steps, "monitor": monitor,
                    "patience": patience, "min_delta": min_delta, "keep_best": keep_best,
                    "best_epoch": self.best_epoch, "best_score": self.best_score, "bad_epochs": bad_epochs,
                    "stopped": stopped, "history": [asdict(r) for r in self.history],
                }  # fmt: skip
                save_training_state(
                    TrainingState(self.model.state_dict(), best_state, opt.state_dict(), sched.state_dict(), capture_rng(self.generator), info),
                    state_path,
                )
            if on_epoch is not None:
                on_epoch(rec)
            if stopped:
                self.stopped_epoch = epoch
                break
        if not keep_best:
            self.best_epoch = self.history[-1].epoch
            self.best_score = float(getattr(self.history[-1], monitor))
            if self.checkpoint is not None:
                save_weights(self.model, self.checkpoint)
        elif best_state is not None:
            self.model.load_state_dict(best_state)
        self.model.eval()
        return self.history

    def _check_resumable(self, info: dict[str, Any], path: str | os.PathLike[str], *, epochs: int, lr: float, steps: int) -> None:
        name = os.fspath(path)
        if info.get("trainer") != type(self).__name__:
            raise CheckpointError(f"{name!r} was written by a {info.get('trainer')}, not a {type(self).__name__}.")
        if info["epochs"] != epochs or not math.isclose(info["lr"], lr, rel_tol=1e-12):
            raise CheckpointError(
                f"{name!r} continues fit(epochs={info['epochs']}, lr={info['lr']}), not fit(epochs={epochs}, lr={lr}); "
                "pass the saved values (or call resume()) to keep the same one-cycle schedule."
            )
        if info["steps_per_epoch"] != steps:
            raise CheckpointError(
                f"{name!r} was written with {info['steps_per_epoch']} batches per epoch, this trainer has {steps}; "
                "use the same training chips and batch_size."
            )

    def resume(
        self,
        path: str | os.PathLike[str],
        *,
        progress: bool | None = None,
        on_epoch: Callable[[Any], None] | None = None,
        state_path: str | os.PathLike[str] | None = None,
    ) -> list[Any]:
        """Continue the run saved in ``path`` with its own settings (epochs, lr, weight decay,
        monitor, patience, min_delta, keep_best): ``fit(..., resume_from=path)``.

        Args:
            path: a file written by ``fit(state_path=...)``.
            progress: show a tqdm progress bar per epoch.
            on_epoch: called with each new epoch record.
            state_path: where to keep writing the training state (e.g. ``path`` itself).

        Returns:
            The full history, saved epochs included.

        Raises:
            CheckpointError, UnsafeWeightsError: as :meth:`fit` with ``resume_from``.
        """
        info = load_training_state(path).info
        return self.fit(
            info["epochs"], info["lr"], weight_decay=info["weight_decay"], progress=progress, on_epoch=on_epoch,
            keep_best=info["keep_best"], monitor=info["monitor"], patience=info["patience"], min_delta=info["min_delta"],
            state_path=state_path, resume_from=path,
        )  # fmt: skip

    def lr_find(
        self,
        start_lr: float = 1e-7,
        end_lr: float = 10.0,
        num_iter: int = 100,
        *,
        weight_decay: float = 1e-4,
        beta: float = 0.98,
        diverge: float = 4.0,
        progress: bool = False,
    ) -> LRFindResult:
        """Learning-rate range test (Smith 2017; fastai / arcgis.learn ``lr_find``).

        Trains on up to ``num_iter`` training batches (cycling over the chips) with AdamW
        while the learning rate grows exponentially, ``lr_i = start_lr * (end_lr /
        start_lr) ** (i / (num_iter - 1))``; records each batch's loss and its debiased
        exponential moving average (``beta``, as fastai); stops when that smoothed loss
        exceeds ``diverge`` times its minimum or is not finite (fastai: 4x). Afterwards the
        model's weights and buffers, its train/eval mode and every random generator are put
        back as they were, so the test changes nothing for a following :meth:`fit`.

        Args:
            start_lr: first learning rate.
            end_lr: last learning rate.
            num_iter: batches at most.
            weight_decay: AdamW weight decay.
            beta: smoothing factor of the loss's moving average, in [0, 1).
            diverge: stop when the smoothed loss exceeds this multiple of its minimum.
            progress: show a tqdm progress bar.

        Returns:
            An :class:`~staclearn.training.lr_finder.LRFindResult`; its ``suggested_lr`` (fastai's
            "valley") is a maximum rate for :meth:`fit`, and ``plot()`` draws the curve.

        Raises:
            ConfigError: ``start_lr`` not in (0, ``end_lr``), ``num_iter < 2``, ``beta``
                outside [0, 1) or ``diverge <= 1``.
        """
        from tqdm.auto import tqdm

        if not 0 < start_lr < end_lr:
            raise ConfigError(f"Need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
        if num_iter < 2:
            raise ConfigError(f"num_iter must be >= 2, got {num_iter}")
        if not 0 <= beta < 1 or not diverge > 1:
            raise ConfigError(f"Need 0 <= beta < 1 and diverge > 1, got {beta} and {diverge}")
        saved = copy.deepcopy(self.model.state_dict())
        was_training = self.model.training
        rng = capture_rng(self.generator)
        opt = self._optimizer(start_lr, weight_decay)
        lrs: list[float] = []
        smooth: list[float] = []
        raw: list[float] = []
        avg, best, diverged = 0.0, math.inf, False
        batches = iter(self.train_loader)
        try:
            self.model.train()
            for i in tqdm(range(num_iter), desc="lr_find", disable=not progress, leave=False):
                lr = start_lr * (end_lr / start_lr) ** (i / (num_iter - 1))
                for group in opt.param_groups:
                    group["lr"] = lr
                try:
                    x, y = next(batches)
                except StopIteration:
                    batches = iter(self.train_loader)
                    x, y = next(batches)
                loss = self._batch_loss(x.to(self.device), y.to(self.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                value = float(loss.item())
                avg = beta * avg + (1 - beta) * value
                s = avg / (1 - beta ** (i + 1))
                lrs.append(lr)
                raw.append(value)
                smooth.append(s)
                best = min(best, s)
                if not math.isfinite(s) or s > diverge * best:
                    diverged = True
                    break
        finally:
            self.model.load_state_dict(saved)
            self.model.train(was_training)
            restore_rng(rng, self.generator)
        if len(lrs) < 2:
            raise ConfigError(f"The loss diverged at the first learning rate {start_lr}; lower start_lr.")
        return LRFindResult.from_losses(lrs, smooth, raw, diverged=diverged)

    # tables --------------------------------------------------------------------------------

    def history_table(self) -> list[dict[str, Any]]:
        """The history as a list of dicts (for JSON or a pandas DataFrame)."""
        return [asdict(r) for r in self.history]

    def metrics_table(self) -> pd.DataFrame:
        """The per-epoch figures as a table, as arcgis.learn prints after ``fit``.

        Returns:
            A pandas DataFrame indexed by ``epoch``, one column per scalar record field and
            one per class of each per-class field, named ``field[class name]`` (e.g.
            ``valid_iou[water]``); ``print(table.round(4))`` gives the plain-text table.
        """
        import pandas as pd

        rows = []
        for r in self.history:
            row: dict[str, Any] = {}
            for k, v in asdict(r).items():
                if isinstance(v, dict):
                    row.update({f"{k}[{name}]": x for name, x in v.items()})
                else:
                    row[k] = v
            rows.append(row)
        table = pd.DataFrame(rows)
        return table.set_index("epoch") if len(table) else table


