"""show_batch / show_results: the pixels drawn are the chips' bands and the classes' colours."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from staclearn.errors import ConfigError
from staclearn.data.labels import ClassInfo
from staclearn.viz.plots import class_colours, rgb_image, show_batch, show_results

CLASSES = (ClassInfo(0, "no change", "000000"), ClassInfo(1, "change", "FF0000"))


def _chips(n: int = 5, c: int = 3, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = torch.from_numpy(rng.uniform(0, 100, (c, 16, 16)).astype(np.float32))
        mask = torch.zeros(16, 16, dtype=torch.int64)
        mask[4:8, 4:8] = 1
        mask[0, 0] = 255  # unlabelled: drawn as the image
        out.append((img, mask))
    return out


def test_class_colours_and_rgb_stretch():
    assert class_colours(CLASSES).tolist() == [[0, 0, 0], [1, 0, 0]]
    assert class_colours([ClassInfo(0, "a"), ClassInfo(1, "b")])[0] == pytest.approx([0x1F / 255, 0x77 / 255, 0xB4 / 255], abs=0.01)  # tab10
    band = np.arange(101, dtype=np.float32).reshape(1, 1, 101).repeat(3, 0)
    rgb = rgb_image(band)
    assert rgb.shape == (1, 101, 3) and rgb[0, 2, 0] == 0 and rgb[0, 98, 0] == 1
    assert rgb[0, 50, 0] == pytest.approx((50 - 2) / 96)
    with pytest.raises(ConfigError, match=r"rgb band indices \[0, 1, 5\] do not exist in a 3-band chip"):
        rgb_image(band, (0, 1, 5))


def test_show_batch_draws_masks_in_the_class_colours():
    chips = _chips()
    fig = show_batch(chips, classes=CLASSES, n=4, ncols=2, alpha=0.5, seed=1)
    drawn = [ax for ax in fig.axes if ax.images]
    assert len(drawn) == 4
    i = int(drawn[0].get_title().lstrip("#"))
    shown = np.asarray(drawn[0].images[0].get_array())
    rgb = rgb_image(chips[i][0])
    assert shown[5, 5] == pytest.approx(0.5 * rgb[5, 5] + 0.5 * np.array([1, 0, 0]))  # change, red
    assert shown[10, 10] == pytest.approx(0.5 * rgb[10, 10])  # no change, black
    assert shown[0, 0] == pytest.approx(rgb[0, 0])  # unlabelled: the image only
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["no change", "change"]


def test_show_batch_of_change_chips_draws_both_dates():
    chips = _chips(3, c=6)
    fig = show_batch(chips, classes=CLASSES, n=3, dates=True)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert len(titles) == 6 and titles[0].endswith("before") and titles[1].endswith("after")
    before = np.asarray(fig.axes[0].images[0].get_array())
    assert before == pytest.approx(rgb_image(chips[0][0][:3]))  # the before date, no overlay


class Threshold(torch.nn.Module):
    """Stand-in model: change where band 0 exceeds 50."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x[:, 0] - 50.0
        return torch.stack([-d, d], 1)


def test_show_results_shows_truth_and_prediction():
    chips = _chips(4)
    fig = show_results(Threshold(), chips, classes=CLASSES, n=2, alpha=1.0)
    rows = [fig.axes[k : k + 3] for k in range(0, 6, 3)]
    assert [ax.get_title() for ax in rows[0]][1:] == ["truth", "prediction"]
    i = int(rows[0][0].get_title().lstrip("#"))
    pred = np.asarray(rows[0][2].images[0].get_array())
    expected = (chips[i][0][0].numpy() > 50)
    assert np.array_equal(pred[..., 0] == 1, expected)  # alpha 1: red exactly where predicted change
    with pytest.raises(ConfigError, match="classes="):
        show_results(Threshold(), chips)


def test_show_results_of_a_classifier_titles_truth_prediction_and_confidence():
    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[0.0, np.log(3.0)]]).repeat(x.shape[0], 1)

    chips = [(img, torch.tensor(0)) for img, _ in _chips(2)]
    fig = show_results(Fixed(), chips, classes=CLASSES, n=1)
    assert fig.axes[0].get_title().endswith(": no change / change (0.75)")
