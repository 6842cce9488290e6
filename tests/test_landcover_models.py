"""Land-cover model options: spectral indices, PixelConvNet, seed ensembles, model-card round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from staclearn.errors import ConfigError
from staclearn.data.labels import IGNORE_INDEX, ClassInfo
from staclearn.models.segmentation import (
    PixelConvNet,
    SegmentationEnsemble,
    SegmentationModel,
    SpectralIndices,
    build_model,
    member_spec,
    model_from_spec,
    save_weights,
    spectral_index_statistics,
)
from staclearn.training.segmentation import Trainer

SCHEMAS = Path(__file__).parents[2] / "shared" / "schemas"
BANDS = ["b1", "b2", "b3", "b4", "b5"]
CLASSES = [ClassInfo(1, "forest"), ClassInfo(2, "water"), ClassInfo(3, "developed")]
IDX = ["ndvi", "ndwi", "mndwi", "ndbi"]


def _raster(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1, 200, size=(5, 6, 7)).astype(np.float32)


def _fcn(seed: int = 0, **extra):
    torch.manual_seed(seed)
    return build_model(
        BANDS, CLASSES, mean=[70, 60, 60, 60, 90], std=[10, 12, 20, 18, 30], architecture="PixelConvNet",
        encoder="none", extra={"width": 8, "layers": 2, "kernel": 3, "dropout": 0.1, "indices": IDX, **extra},
    )  # fmt: skip


def test_indices_match_the_formulas_on_a_seeded_raster():
    x = _raster()
    b1, b2, b3, b4, b5 = x.astype(np.float64)
    expected = np.stack([(b4 - b3) / (b4 + b3), (b2 - b4) / (b2 + b4), (b2 - b5) / (b2 + b5), (b5 - b4) / (b5 + b4)])
    got = SpectralIndices(BANDS, IDX)(torch.from_numpy(x)[None])[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # z-scored with the given statistics; a zero denominator gives 0
    z = SpectralIndices(BANDS, ["ndvi"], index_mean=[0.1], index_std=[0.5])(torch.from_numpy(x)[None])[0, 0].numpy()
    np.testing.assert_allclose(z, (expected[0] - 0.1) / 0.5, rtol=1e-5, atol=1e-5)
    zero = torch.zeros(1, 5, 2, 2)
    assert SpectralIndices(BANDS, ["ndvi"])(zero).abs().max() == 0
    # other band names through index_bands
    named = SpectralIndices(["red", "nir08"], ["ndvi"], index_bands={"red": "red", "nir": "nir08"})
    np.testing.assert_allclose(named(torch.from_numpy(x[[2, 3]])[None])[0, 0].numpy(), expected[0], rtol=1e-5, atol=1e-6)


def test_index_statistics_and_errors():
    x = _raster(1)
    mean, std = spectral_index_statistics(x.reshape(5, -1), BANDS, ["ndvi"])
    ndvi = (x[3].astype(np.float64) - x[2]) / (x[3].astype(np.float64) + x[2])
    assert mean[0] == pytest.approx(ndvi.mean(), rel=1e-5)
    assert std[0] == pytest.approx(ndvi.std(), rel=1e-4)
    with pytest.raises(ConfigError, match="Unknown spectral index"):
        SpectralIndices(BANDS, ["evi9"])
    with pytest.raises(ConfigError, match="nir"):
        SpectralIndices(["b1", "b2", "b3"], ["ndvi"])
    with pytest.raises(ConfigError):
        _fcn(kernel=2)


def test_pixel_conv_net_keeps_size_and_receptive_field():
    model = _fcn().eval()
    assert isinstance(model, PixelConvNet) and model.spec.stride == 1
    x = torch.from_numpy(_raster())[None].repeat(2, 1, 3, 3)  # (2, 5, 18, 21): any size
    out = model(x)
    assert out.shape == (2, 3, 18, 21)
    # 2 layers of 3x3: receptive field 5 px; a change 3 px away leaves the pixel unchanged
    y = x.clone()
    y[:, :, 9, 13] += 50
    diff = (model(y) - out).abs().amax(1)[0]
    assert diff[9, 10] == 0 and diff[9, 11] > 0


def test_ensemble_averages_member_probabilities_and_loads_one_state():
    members = [_fcn(s).eval() for s in range(3)]
    ens = SegmentationEnsemble.from_members(members)
    assert ens.spec.extra["members"] == 3 and member_spec(ens.spec).extra["members"] == 1
    x = torch.from_numpy(_raster())[None]
    with torch.no_grad():
        prob = torch.stack([m(x).softmax(1) for m in members]).mean(0)
        np.testing.assert_allclose(ens(x).softmax(1).numpy(), prob.numpy(), rtol=1e-5, atol=1e-6)
        rebuilt = model_from_spec(ens.spec).eval()
        rebuilt.load_state_dict(ens.state_dict())
        assert torch.equal(rebuilt(x), ens(x))
    with pytest.raises(ConfigError):
        SegmentationEnsemble.from_members([members[0], _fcn(0, width=4)])


def test_unet_with_indices():
    torch.manual_seed(0)
    model = build_model(BANDS, CLASSES, mean=[70] * 5, std=[20] * 5, encoder_depth=3, extra={"indices": ["ndvi", "ndwi"]})
    assert isinstance(model, SegmentationModel)
    assert model.net.encoder.conv1.in_channels == 7
    assert model.eval()(torch.rand(1, 5, 32, 32) * 100).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("members", [1, 2])
def test_card_round_trip_rebuilds_identical_model(tmp_path, members):
    from staclearn.stac.modelcard import load_model, model_card, spec_from_card

    models = [_fcn(s, index_mean=[0.1, -0.2, -0.1, 0.2], index_std=[0.2, 0.3, 0.25, 0.1]) for s in range(members)]
    # a few training steps so BatchNorm statistics and weights are not the initial ones
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 5, 16, 16, generator=g) * 150 + 10
    y = torch.randint(0, 3, (8, 16, 16), generator=g)
    y[torch.rand(y.shape, generator=g) > 0.3] = IGNORE_INDEX
    for i, m in enumerate(models):
        Trainer(m, TensorDataset(x, y), num_classes=3, batch_size=4, augment=False, device="cpu", seed=i).fit(2, 1e-2, progress=False)
    model = SegmentationEnsemble.from_members(models) if members > 1 else models[0].eval()
    weights = save_weights(model, tmp_path / "weights.safetensors")
    card = model_card(model, str(weights), id="lc-model", tile_size=64)
    card.set_self_href(str(tmp_path / "card.json"))
    card.save_object(include_self_link=False)
    spec = spec_from_card(card.to_dict())
    assert spec.to_dict() == model.spec.to_dict()
    props = card.properties
    assert props["mlm:architecture"] == "PixelConvNet"
    assert ("ensemble of 2 x " if members > 1 else "") + "PixelConvNet (2 x 3x3 conv, 8 channels)" in props["description"]
    assert "ndvi" in props["mlm:input"][0]["description"]
    if SCHEMAS.is_dir():
        from staclearn.stac.validate import validate

        report = validate(json.loads((tmp_path / "card.json").read_text()), SCHEMAS)
        assert "https://stac-extensions.github.io/mlm/v1.5.2/schema.json" in report.validated
    loaded = load_model(tmp_path / "card.json")
    assert type(loaded) is type(model)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_class_weight_options():
    from staclearn.training.segmentation import class_weights

    y = torch.tensor([[0] * 6 + [1] * 3 + [2] * 1])
    ds = TensorDataset(torch.zeros(1, 1, 1, 10), y.view(1, 1, 10))
    w = class_weights(ds, 3)
    np.testing.assert_allclose(w.numpy(), [0.5, 1.0, 3.0], rtol=1e-6)


def test_sqrt_weights_and_label_smoothing_reach_the_loss():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 5, 8, 8, generator=g) * 100
    y = torch.zeros(4, 8, 8, dtype=torch.long)
    y[:, :2] = 1
    y[:, 2:3] = 2  # frequencies 5/8, 2/8, 1/8
    ds = TensorDataset(x, y)
    t = Trainer(_fcn(), ds, num_classes=3, batch_size=2, weights="sqrt", label_smoothing=0.1, augment=False, device="cpu")
    np.testing.assert_allclose(t.class_weights.numpy(), np.sqrt([0.4, 1.0, 2.0]), rtol=1e-5)
    assert t.loss_fn.label_smoothing == pytest.approx(0.1)
    with pytest.raises(ConfigError):
        Trainer(_fcn(), ds, num_classes=3, batch_size=2, weights="inverse", device="cpu")
    with pytest.raises(ConfigError):
        Trainer(_fcn(), ds, num_classes=3, batch_size=2, label_smoothing=1.0, device="cpu")


def test_augmentation_with_radiometric_jitter_keeps_the_mask():
    from staclearn.chips.augment import Augmentation, RadiometricJitter

    torch.manual_seed(0)
    x = torch.rand(4, 5, 16, 16) * 100 + 10
    y = torch.randint(0, 3, (4, 16, 16))
    plain = Augmentation(rotation=0, zoom=(1.0, 1.0), shift=0, flips=False)
    img, m = plain(x, y)
    assert torch.equal(m, y) and torch.allclose(img, x)
    jit = Augmentation(rotation=0, zoom=(1.0, 1.0), shift=0, flips=False, radiometric=RadiometricJitter(p=1.0))
    img, m = jit(x, y)
    assert torch.equal(m, y)
    ratio = img.mean(dim=(1, 2, 3)) / x.mean(dim=(1, 2, 3))  # brightness x mean band gain, each 1 +- 0.2 / 0.1
    assert not torch.allclose(img, x) and bool(((ratio > 0.7) & (ratio < 1.35)).all())


def test_train_ensemble_and_index_statistics_from_pixels():
    from staclearn.training.segmentation import train_ensemble

    x = _raster(2)
    model = build_model(
        BANDS, CLASSES, mean=[70] * 5, std=[20] * 5, architecture="PixelConvNet", encoder="none",
        extra={"indices": ["ndvi"], "width": 4, "layers": 1}, index_pixels=x.reshape(5, -1),
    )  # fmt: skip
    assert model.spec.extra["index_mean"] == pytest.approx(spectral_index_statistics(x.reshape(5, -1), BANDS, ["ndvi"])[0])
    g = torch.Generator().manual_seed(0)
    xs = torch.rand(6, 5, 8, 8, generator=g) * 100 + 10
    ys = torch.randint(0, 3, (6, 8, 8), generator=g)
    seeds = []

    def build(seed):
        seeds.append(seed)
        return _fcn(seed, width=4)

    ens, trainers = train_ensemble(
        build, TensorDataset(xs, ys), members=2, seed=3, epochs=1, lr=1e-2, fit_kwargs={"keep_best": False, "progress": False},
        num_classes=3, batch_size=3, augment=False, device="cpu",
    )  # fmt: skip
    assert seeds == [3000, 3001] and len(trainers) == 2 and isinstance(ens, SegmentationEnsemble)
    assert not ens.training and ens.spec.extra["members"] == 2
    with torch.no_grad():
        assert torch.allclose(ens(xs).exp().sum(1), torch.ones(6, 8, 8), atol=1e-5)
