"""Models (U-Net + normalisation, safetensors) and the training loop, on tiny seeded data."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from staclearn.errors import UnsafeWeightsError
from staclearn.data.labels import IGNORE_INDEX, ClassInfo
from staclearn.models.segmentation import build_model, load_weights, save_weights
from staclearn.training.segmentation import Trainer, class_weights

CLASSES = [ClassInfo(1, "dark"), ClassInfo(2, "bright")]


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(["b1", "b2", "b3"], CLASSES, mean=[100, 100, 100], std=[10, 10, 10], encoder="resnet18", encoder_depth=3)


def _dataset(n: int = 12, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(n, 1, 8, 8, generator=g) > 0.5).long()
    mask = torch.nn.functional.interpolate(mask.float(), size=(32, 32), mode="nearest")[:, 0].long()
    image = 100 + 10 * (2 * mask[:, None].float() - 1) + torch.randn(n, 3, 32, 32, generator=g)
    sparse = mask.clone()
    sparse[torch.rand(sparse.shape, generator=g) > 0.2] = IGNORE_INDEX  # 20 % labelled, as sparse labels
    return TensorDataset(image, sparse)


def test_normalisation_is_part_of_the_model_and_saved(tmp_path):
    model = _model()
    assert model.spec.in_channels == 3 and model.spec.num_classes == 2 and model.spec.stride == 8
    out = model.eval()(torch.full((1, 3, 32, 32), 100.0))
    assert out.shape == (1, 2, 32, 32) and out.dtype == torch.float32
    path = save_weights(model, tmp_path / "w.safetensors")
    other = load_weights(_model(seed=1), path).eval()
    assert torch.equal(other.mean, model.mean) and torch.equal(other.std.flatten(), torch.tensor([10.0, 10.0, 10.0]))
    x = torch.randn(2, 3, 32, 32) * 10 + 100
    assert torch.equal(other(x), model(x))


def test_pickled_weights_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(pickle.dumps({"state": Payload()}))
    torch.save(_model().state_dict(), tmp_path / "weights.pt")
    for path in (bad, tmp_path / "weights.pt"):
        with pytest.raises(UnsafeWeightsError, match="not a safetensors file"):
            load_weights(_model(), path)
    assert not (tmp_path / "pwned").exists()


def test_class_weights_median_frequency():
    ds = TensorDataset(torch.zeros(2, 1, 2, 2), torch.tensor([[[0, 0], [0, 1]], [[0, 0], [255, 255]]]))
    w = class_weights(ds, 3)
    # frequencies 5/6 and 1/6, median of present = 0.5; absent class gets 0
    assert w.tolist() == pytest.approx([0.5 / (5 / 6), 0.5 / (1 / 6), 0.0])


def test_fit_learns_and_is_seeded(tmp_path):
    train, valid = _dataset(16, 0), _dataset(8, 1)

    def run():
        t = Trainer(_model(), train, valid, num_classes=2, batch_size=4, weights="balanced", seed=7, checkpoint=tmp_path / "best.safetensors")
        hist = t.fit(6, 1e-2, progress=False)
        return t, hist

    t1, h1 = run()
    _, h2 = run()
    assert [r.train_loss for r in h1] == [r.train_loss for r in h2]  # seedable
    assert h1[-1].train_loss < h1[0].train_loss
    assert t1.best_epoch == int(np.argmax([r.valid_miou for r in h1])) + 1
    assert max(r.valid_accuracy for r in h1) > 0.9  # bright vs dark is easy
    assert (tmp_path / "best.safetensors").exists()
    # one-cycle: the LR ends far below its peak
    assert h1[-1].lr < 1e-3
