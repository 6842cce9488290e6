"""Training conveniences: lr_find, early stopping, resumable checkpoints, balanced sampling,
the per-epoch metrics table; for the segmentation Trainer and the object ClassifierTrainer,
on tiny seeded data with 1x1/3x3-conv stand-in models."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from staclearn.training.objects import ClassifierTrainer
from staclearn.errors import CheckpointError, ConfigError, UnsafeWeightsError
from staclearn.data.labels import IGNORE_INDEX, ClassInfo
from staclearn.training.lr_finder import LRFindResult, steepest_lr, valley_lr
from staclearn.models.segmentation import load_weights
from staclearn.chips.sampling import class_presence, sample_weights
from staclearn.training.segmentation import Trainer

matplotlib.use("Agg")

CLASSES = [ClassInfo(1, "dark"), ClassInfo(2, "bright")]
OBJECT_CLASSES = (ClassInfo(0, "not destroyed"), ClassInfo(1, "destroyed"))


class _TinySeg(nn.Module):
    """Stand-in segmentation model: 3x3 conv + BN + 1x1 conv, with a spec naming the classes."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1))
        self.spec = SimpleNamespace(classes=CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - 100.0) / 10.0)


class _TinyClassifier(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - 70.0) / 60.0)


def _segments(n: int = 16, seed: int = 0) -> TensorDataset:
    """Dark (0) / bright (1) blocks, 20 % of pixels labelled."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(n, 1, 4, 4, generator=g) > 0.5).float()
    mask = nn.functional.interpolate(mask, size=(16, 16), mode="nearest")[:, 0].long()
    image = 100 + 10 * (2 * mask[:, None].float() - 1) + torch.randn(n, 3, 16, 16, generator=g)
    sparse = mask.clone()
    sparse[torch.rand(sparse.shape, generator=g) > 0.2] = IGNORE_INDEX
    return TensorDataset(image, sparse)


class _Objects(Dataset):
    """One label per chip: class 1 = dark centre; ``n1`` of ``n`` chips are class 1."""

    def __init__(self, n: int, n1: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.targets = np.array([1] * n1 + [0] * (n - n1), dtype=np.int64)
        self.x = 60 + 20 * torch.rand(n, 3, 16, 16, generator=g)
        for i, t in enumerate(self.targets):
            self.x[i, :, 5:11, 5:11] = 20.0 if t else 220.0

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.x[i], torch.tensor(int(self.targets[i]))


def _seg_trainer(seed_model: int = 0, **kw) -> Trainer:
    kw = {"batch_size": 4, "seed": 5, "device": "cpu", "augment": False, **kw}
    return Trainer(_TinySeg(seed_model), _segments(16, 0), _segments(8, 1), num_classes=2, **kw)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# lr_find ----------------------------------------------------------------------------------


def test_valley_and_steepest_on_a_synthetic_curve():
    lrs = np.logspace(-7, 1, 100)
    i = np.arange(100)
    # nearly flat, falls steepest at 45.5 (tanh), bottoms out near 60, blows up after 75
    loss = 1.0 - 0.4 * (1 + np.tanh((i - 45.5) / 5.0)) + np.where(i > 75, 0.2 * (i - 75), 0.0)
    v, s = valley_lr(lrs, loss), steepest_lr(lrs, loss)
    assert s == 45  # the step 45 -> 46 is the steepest (centre of the tanh)
    # after dropping the first 10 points, the loss falls strictly over 10..75 (66 points), the
    # longest valley; fastai's rule puts the suggestion at -1 + int(66 / 3) + int(66 / 6)
    assert v == 10 - 1 + 22 + 11 == 42
    res = LRFindResult.from_losses(list(lrs), list(loss), list(loss), diverged=False)
    assert res.suggested_lr == pytest.approx(lrs[42]) and res.steepest_lr == pytest.approx(lrs[45])


def test_lr_find_restores_the_model_and_rngs_and_marks_the_suggestion(tmp_path):
    t = _seg_trainer()
    before = _weights(t.model)
    rng = torch.get_rng_state()
    gen = t.generator.get_state()
    res = t.lr_find(end_lr=1e3, num_iter=60)
    for k, v in _weights(t.model).items():
        assert torch.equal(v, before[k]), k  # weights and BN buffers as before
    assert torch.equal(torch.get_rng_state(), rng) and torch.equal(t.generator.get_state(), gen)
    assert t.model.training  # mode restored (a new model is in train mode)
    n = len(res.lrs)
    assert 10 <= n <= 60 and res.lrs[0] == pytest.approx(1e-7)
    # exponential schedule: constant ratio (1e10) ** (1 / 59) between steps
    assert np.allclose(res.lrs[1:] / res.lrs[:-1], 1e10 ** (1 / 59))
    assert res.diverged and n < 60  # towards lr 1e3 the loss blows up and the test stops
    assert res.losses[-1] > 4 * np.nanmin(res.losses[:-1])
    assert 1e-5 < res.suggested_lr < 1.0 and res.suggested_lr in res.lrs and res.steepest_lr in res.lrs
    # the smoothed loss is the debiased moving average of the raw loss
    avg = 0.98 * 0 + 0.02 * res.raw_losses[0]
    assert res.losses[0] == pytest.approx(avg / 0.02)

    ax = res.plot(show_steepest=True)
    marks = {ln.get_label().split(":")[0]: ln for ln in ax.get_lines()}
    assert ax.get_xscale() == "log" and set(marks) == {"smoothed loss", "valley", "steepest"}
    assert list(marks["valley"].get_xdata()) == [res.suggested_lr]
    assert marks["valley"].get_label() == f"valley: {res.suggested_lr:.2e}"

    # the test changes nothing for a later fit: same history as a trainer that did not run it
    h1 = [r.train_loss for r in t.fit(2, 1e-2, progress=False)]
    h2 = [r.train_loss for r in _seg_trainer().fit(2, 1e-2, progress=False)]
    assert h1 == h2


def test_lr_find_rejects_bad_ranges():
    t = _seg_trainer()
    with pytest.raises(ConfigError, match="start_lr < end_lr"):
        t.lr_find(1.0, 1e-3)
    with pytest.raises(ConfigError, match="num_iter"):
        t.lr_find(num_iter=1)


# early stopping and best epoch ------------------------------------------------------------


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    t = _seg_trainer(checkpoint=tmp_path / "best.safetensors")
    # mIoU can never improve by more than 1: epoch 1 is the best, and patience 2 stops at 3
    hist = t.fit(10, 1e-2, progress=False, patience=2, min_delta=1.0)
    assert [r.epoch for r in hist] == [1, 2, 3] and t.stopped_epoch == 3
    assert t.best_epoch == 1 and t.best_score == hist[0].valid_miou == t.best_miou
    best = load_weights(_TinySeg(seed=9), tmp_path / "best.safetensors")
    for k, v in best.state_dict().items():
        assert torch.equal(v, t.model.state_dict()[k])  # the model holds epoch 1's weights

    # monitoring a loss minimises it; without patience all epochs run
    t2 = _seg_trainer()
    h2 = t2.fit(3, 1e-2, progress=False, monitor="valid_loss")
    assert t2.best_epoch == int(np.argmin([r.valid_loss for r in h2])) + 1 and t2.stopped_epoch is None


def test_early_stopping_needs_a_validation_figure():
    t = Trainer(_TinySeg(), _segments(8), None, num_classes=2, batch_size=4, device="cpu")
    with pytest.raises(ConfigError, match="needs validation data"):
        t.fit(2, patience=1, progress=False)
    with pytest.raises(ConfigError, match="monitor must be one of"):
        t.fit(2, monitor="valid_f1", progress=False)
    hist = t.fit(3, 1e-2, patience=1, monitor="train_loss", progress=False)  # train loss is always there
    assert t.best_epoch == int(np.argmin([r.train_loss for r in hist])) + 1


# resume -----------------------------------------------------------------------------------


class _Interrupt(Exception):
    pass


def _interrupt_after(epoch: int):
    def on_epoch(rec) -> None:
        if rec.epoch == epoch:
            raise _Interrupt

    return on_epoch


def test_resume_repeats_the_uninterrupted_run(tmp_path):
    # augmentation on (kornia draws from torch's RNG) and shuffling: both must be restored
    straight = _seg_trainer(augment=True)
    h_straight = straight.fit(4, 1e-2, progress=False)

    state = tmp_path / "state.safetensors"
    first = _seg_trainer(augment=True)
    with pytest.raises(_Interrupt):
        first.fit(4, 1e-2, progress=False, state_path=state, on_epoch=_interrupt_after(2))
    resumed = _seg_trainer(seed_model=3, seed=11, augment=True)  # other init and seed: all comes from the file
    h_resumed = resumed.fit(4, 1e-2, progress=False, resume_from=state)

    assert [r.epoch for r in h_resumed] == [1, 2, 3, 4]
    # on the CPU the resumed run repeats the straight one bit for bit
    assert [r.train_loss for r in h_resumed] == [r.train_loss for r in h_straight]
    assert [r.lr for r in h_resumed] == [r.lr for r in h_straight]
    assert [r.valid_iou for r in h_resumed] == [r.valid_iou for r in h_straight]
    assert resumed.best_epoch == straight.best_epoch
    for k, v in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k


def test_resume_refuses_other_schedules_and_files(tmp_path):
    state = tmp_path / "state.safetensors"
    t = _seg_trainer(checkpoint=tmp_path / "best.safetensors")
    t.fit(2, 1e-2, progress=False, state_path=state)
    with pytest.raises(CheckpointError, match=r"continues fit\(epochs=2"):
        _seg_trainer().fit(3, 1e-2, progress=False, resume_from=state)
    with pytest.raises(CheckpointError, match="batches per epoch"):
        _seg_trainer(batch_size=8).fit(2, 1e-2, progress=False, resume_from=state)
    with pytest.raises(CheckpointError, match="weights only"):
        _seg_trainer().fit(2, 1e-2, progress=False, resume_from=tmp_path / "best.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        _seg_trainer().fit(2, 1e-2, progress=False, resume_from=tmp_path / "nope.safetensors")

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"state": Payload()}))
    with pytest.raises(UnsafeWeightsError):
        _seg_trainer().fit(2, 1e-2, progress=False, resume_from=tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    objects = _Objects(16, 4, 0)
    with pytest.raises(CheckpointError, match="written by a Trainer"):
        ClassifierTrainer(_TinyClassifier(), objects, classes=OBJECT_CLASSES, batch_size=4, device="cpu").fit(
            2, 1e-2, resume_from=state
        )
    # a finished run resumes to the same end without training further
    again = _seg_trainer(seed_model=4)
    hist = again.resume(state)
    assert [r.train_loss for r in hist] == [r.train_loss for r in t.history] and again.best_epoch == t.best_epoch
    for k, v in t.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[k], v)


def test_classifier_resume_with_balanced_sampling(tmp_path):
    train, valid = _Objects(40, 8, 0), _Objects(16, 6, 1)

    def trainer(seed_model: int = 0) -> ClassifierTrainer:
        return ClassifierTrainer(
            _TinyClassifier(seed_model), train, valid, classes=OBJECT_CLASSES, batch_size=8, weights=None,
            sampling="balanced", device="cpu", seed=2,
        )  # fmt: skip

    straight = trainer()
    h_straight = straight.fit(4, 3e-2, patience=3)
    state = tmp_path / "state.safetensors"
    with pytest.raises(_Interrupt):
        trainer().fit(4, 3e-2, patience=3, state_path=state, on_epoch=_interrupt_after(2))
    resumed = trainer(seed_model=1)
    h_resumed = resumed.resume(state)
    assert [r.train_loss for r in h_resumed] == [r.train_loss for r in h_straight]
    assert [r.valid_macro_f1 for r in h_resumed] == [r.valid_macro_f1 for r in h_straight]
    assert resumed.best_epoch == straight.best_epoch and resumed.best_macro_f1 == straight.best_macro_f1
    assert h_straight[-1].valid_macro_f1 > 0.9  # dark vs bright centre is learnt


# sampling ---------------------------------------------------------------------------------


def _rare_segments() -> TensorDataset:
    """20 chips: 16 all class 0, 4 half class 0 / half class 1 (unlabelled pixels too)."""
    mask = torch.zeros(20, 8, 8, dtype=torch.long)
    mask[16:, :, 4:] = 1
    mask[:, 0, :] = IGNORE_INDEX
    return TensorDataset(100 + torch.randn(20, 3, 8, 8, generator=torch.Generator().manual_seed(0)), mask)


def _drawn(trainer, epochs: int = 100) -> np.ndarray:
    counts = np.zeros(len(trainer.train_loader.dataset), dtype=np.int64)
    for _ in range(epochs):
        for i in trainer.train_loader.sampler:
            counts[i] += 1
    return counts


def test_balanced_sampling_draws_rare_class_chips_more_often():
    ds = _rare_segments()
    presence = class_presence(ds, 2)
    assert presence.sum(0).tolist() == [20, 4] and presence[:, 1].nonzero()[0].tolist() == [16, 17, 18, 19]
    # rarest class rule: 1/20 for the 16 class-0 chips, 1/4 for the 4 chips with class 1
    w = sample_weights(presence)
    assert w[:16] == pytest.approx([(1 / 20) / 1.8] * 16) and w[16:] == pytest.approx([(1 / 4) / 1.8] * 4)
    w3 = sample_weights(presence, balanced=False, oversample={1: 3})
    assert w3[16:].sum() == pytest.approx(12 / 28)

    plain = _drawn(Trainer(_TinySeg(), ds, None, num_classes=2, batch_size=4, device="cpu", seed=1))
    balanced = _drawn(Trainer(_TinySeg(), ds, None, num_classes=2, batch_size=4, device="cpu", seed=1, sampling="balanced"))
    over = _drawn(Trainer(_TinySeg(), ds, None, num_classes=2, batch_size=4, device="cpu", seed=1, oversample={1: 3}))
    again = _drawn(Trainer(_TinySeg(), ds, None, num_classes=2, batch_size=4, device="cpu", seed=1, sampling="balanced"))
    assert plain.tolist() == [100] * 20  # shuffling: every chip once per epoch
    assert balanced.tolist() == again.tolist()  # seeded
    share = {k: c[16:].sum() / c.sum() for k, c in (("plain", plain), ("balanced", balanced), ("over", over))}
    assert share["plain"] == 0.2
    assert share["balanced"] == pytest.approx(1 / 1.8, abs=0.03)  # 0.556: rare-class chips 2.8x as often
    assert share["over"] == pytest.approx(12 / 28, abs=0.03)  # 0.429: 2.1x as often
    with pytest.raises(ConfigError, match="sampling must be"):
        Trainer(_TinySeg(), ds, None, num_classes=2, device="cpu", sampling="equal")
    with pytest.raises(ConfigError, match="not a class index"):
        Trainer(_TinySeg(), ds, None, num_classes=2, device="cpu", oversample={2: 3})
    with pytest.raises(ConfigError, match=">= 1"):
        Trainer(_TinySeg(), ds, None, num_classes=2, device="cpu", oversample={1: 0.5})


def test_classifier_balanced_sampling_equalises_classes():
    objects = _Objects(48, 8, 0)  # 8 of class 1, 40 of class 0
    t = ClassifierTrainer(_TinyClassifier(), objects, classes=OBJECT_CLASSES, batch_size=8, device="cpu", sampling="balanced")
    assert t.sample_weights[:8] == pytest.approx([1 / 16] * 8) and t.sample_weights[8:] == pytest.approx([1 / 80] * 40)
    counts = _drawn(t, 50)
    assert counts[:8].sum() / counts.sum() == pytest.approx(0.5, abs=0.03)


# metrics table ----------------------------------------------------------------------------


def test_metrics_table_has_one_row_per_epoch_and_per_class_columns():
    t = _seg_trainer()
    hist = t.fit(2, 1e-2, progress=False)
    table = t.metrics_table()
    assert table.index.tolist() == [1, 2] and table.index.name == "epoch"
    assert {"train_loss", "valid_loss", "valid_miou", "valid_iou[dark]", "valid_iou[bright]"} <= set(table.columns)
    for r in hist:
        row = table.loc[r.epoch]
        assert row["valid_iou[dark]"] == r.valid_iou["dark"] and row["train_loss"] == r.train_loss
        assert r.valid_miou == pytest.approx(np.mean(list(r.valid_iou.values())))
    assert "valid_iou[bright]" in table.round(3).to_string()

    c = ClassifierTrainer(_TinyClassifier(), _Objects(16, 4, 0), _Objects(8, 3, 1), classes=OBJECT_CLASSES, batch_size=4, device="cpu")
    c.fit(1, 1e-2)
    ct = c.metrics_table()
    assert ct.index.tolist() == [1]
    assert ct.loc[1, "valid_f1[destroyed]"] == c.history[0].valid_f1["destroyed"] and ct.loc[1, "valid_n"] == 8
