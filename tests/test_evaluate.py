"""Tests for staclearn.evaluation.metrics on hand-computed matrices and a seeded synthetic raster."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from matplotlib.image import imread
from sklearn.metrics import cohen_kappa_score

from staclearn.errors import ConfigError, LabelError
from staclearn.evaluation.metrics import ClassificationMetrics, compute_metrics
from staclearn.evaluation.baselines import random_forest_baseline
from staclearn.evaluation.reports import write_report

# Hand-made 3-class case, classes (1, 2, 5) named water/tree/built; rows = reference.
#
#               pred water  tree  built | support
#   ref water        5       1     0    |   6
#   ref tree         2       3     0    |   5
#   ref built        0       1     3    |   4
#   predicted        7       5     3    |  n = 15
#
# OA = (5 + 3 + 3) / 15 = 11/15
# p_e = (6*7 + 5*5 + 4*3) / 15^2 = 79/225 ; kappa = (165/225 - 79/225) / (1 - 79/225) = 86/146
# precision: water 5/7, tree 3/5, built 3/3
# recall:    water 5/6, tree 3/5, built 3/4
# F1 = 2TP/(2TP+FP+FN): water 10/(10+2+1) = 10/13, tree 6/(6+2+2) = 6/10, built 6/(6+0+1) = 6/7
# IoU = TP/(TP+FP+FN):  water 5/8, tree 3/7, built 3/4
MATRIX = np.array([[5, 1, 0], [2, 3, 0], [0, 1, 3]])
VALUES = (1, 2, 5)
NAMES = ("water", "tree", "built")


def _pairs(matrix: np.ndarray, values: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Reference and predicted (N,) uint8 samples reproducing ``matrix``."""
    ref, pred = [], []
    for i, vi in enumerate(values):
        for j, vj in enumerate(values):
            ref += [vi] * int(matrix[i, j])
            pred += [vj] * int(matrix[i, j])
    return np.array(ref, dtype=np.uint8), np.array(pred, dtype=np.uint8)


@pytest.fixture
def hand_metrics() -> ClassificationMetrics:
    ref, pred = _pairs(MATRIX, VALUES)
    # any shape is accepted: use a (3, 5) map
    return compute_metrics(ref.reshape(3, 5), pred.reshape(3, 5), VALUES, NAMES)


def test_hand_computed_three_classes(hand_metrics: ClassificationMetrics) -> None:
    m = hand_metrics
    assert m.class_values == VALUES
    assert m.class_names == NAMES
    assert m.confusion.dtype == np.int64
    np.testing.assert_array_equal(m.confusion, MATRIX)
    assert m.n_samples == 15
    assert m.n_unclassified == 0
    assert m.overall_accuracy == pytest.approx(11 / 15)
    assert m.kappa == pytest.approx(86 / 146)
    assert m.precision == pytest.approx({"water": 5 / 7, "tree": 3 / 5, "built": 1.0})
    assert m.recall == pytest.approx({"water": 5 / 6, "tree": 3 / 5, "built": 3 / 4})
    assert m.f1 == pytest.approx({"water": 10 / 13, "tree": 0.6, "built": 6 / 7})
    assert m.iou == pytest.approx({"water": 5 / 8, "tree": 3 / 7, "built": 3 / 4})
    assert m.macro_f1 == pytest.approx((10 / 13 + 0.6 + 6 / 7) / 3)
    assert m.miou == pytest.approx((5 / 8 + 3 / 7 + 3 / 4) / 3)
    assert m.support == {"water": 6, "tree": 5, "built": 4}


def test_kappa_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    ref = rng.integers(0, 4, size=500)
    pred = np.where(rng.random(500) < 0.7, ref, rng.integers(0, 4, size=500))
    m = compute_metrics(ref, pred, [0, 1, 2, 3])
    assert m.kappa == pytest.approx(cohen_kappa_score(ref, pred))


def test_matrix_follows_class_values_order() -> None:
    ref, pred = _pairs(MATRIX, VALUES)
    m = compute_metrics(ref, pred, (5, 1, 2))
    assert m.class_names == ("5", "1", "2")
    np.testing.assert_array_equal(m.confusion, [[3, 0, 1], [0, 5, 1], [0, 2, 3]])
    assert m.recall["5"] == pytest.approx(3 / 4)


def test_ignore_index_drops_reference_samples(hand_metrics: ClassificationMetrics) -> None:
    ref, pred = _pairs(MATRIX, VALUES)
    # unlabelled reference pixels with any prediction, even nodata, change nothing
    ref_pad = np.concatenate([ref, np.full(7, 255, np.uint8)])
    pred_pad = np.concatenate([pred, np.array([1, 2, 5, 255, 1, 1, 0], np.uint8)])
    m = compute_metrics(ref_pad, pred_pad, VALUES, NAMES)
    assert m.to_dict() == hand_metrics.to_dict()

    # a custom ignore value
    ref_pad[-7:] = 0
    m0 = compute_metrics(ref_pad, pred_pad, VALUES, NAMES, ignore_index=0)
    assert m0.to_dict() == hand_metrics.to_dict()

    # with ignore_index=None the 255s are unknown reference values
    ref_pad[-7:] = 255
    with pytest.raises(LabelError, match="not in class_values"):
        compute_metrics(ref_pad, pred_pad, VALUES, NAMES, ignore_index=None)


def test_unclassified_predictions_count_wrong() -> None:
    # 4 water pixels predicted water, 2 water pixels predicted nodata 255, 4 tree correct
    ref = np.array([1] * 6 + [2] * 4, np.uint8)
    pred = np.array([1] * 4 + [255] * 2 + [2] * 4, np.uint8)
    m = compute_metrics(ref, pred, (1, 2), ("water", "tree"))
    np.testing.assert_array_equal(m.confusion, [[4, 0], [0, 4]])
    assert m.n_samples == 10
    assert m.n_unclassified == 2
    assert m.support == {"water": 6, "tree": 4}
    assert m.overall_accuracy == pytest.approx(0.8)
    assert m.recall["water"] == pytest.approx(4 / 6)
    assert m.precision["water"] == pytest.approx(1.0)
    assert m.f1["water"] == pytest.approx(8 / 10)  # 2TP / (2TP + FP 0 + FN 2)
    assert m.iou["water"] == pytest.approx(4 / 6)
    # p_o = 0.8, p_e = (6*4 + 4*4) / 100 = 0.4 ; kappa = 0.4 / 0.6
    assert m.kappa == pytest.approx(2 / 3)


def test_class_absent_from_reference() -> None:
    # reference has no "built" (5), prediction has one false "built"
    ref = np.array([1, 1, 1, 2, 2, 2], np.uint8)
    pred = np.array([1, 1, 5, 2, 2, 1], np.uint8)
    m = compute_metrics(ref, pred, VALUES, NAMES)
    np.testing.assert_array_equal(m.confusion, [[2, 0, 1], [1, 2, 0], [0, 0, 0]])
    assert m.support["built"] == 0
    assert math.isnan(m.recall["built"])
    assert m.precision["built"] == 0.0
    assert m.f1["built"] == 0.0 and m.iou["built"] == 0.0
    # water: TP 2 FP 1 FN 1 -> F1 4/6, IoU 2/4 ; tree: TP 2 FP 0 FN 1 -> F1 4/5, IoU 2/3
    assert m.macro_f1 == pytest.approx((4 / 6 + 4 / 5) / 2)
    assert m.miou == pytest.approx((2 / 4 + 2 / 3) / 2)
    d = m.to_dict()
    assert d["recall"]["built"] is None
    assert d["confusion"][2] == [0, 0, 0]


def test_class_never_predicted_has_undefined_precision() -> None:
    ref = np.array([1, 1, 2, 2], np.uint8)
    pred = np.array([1, 1, 1, 1], np.uint8)
    m = compute_metrics(ref, pred, (1, 2))
    assert math.isnan(m.precision["2"])
    assert m.recall["2"] == 0.0 and m.f1["2"] == 0.0
    assert m.kappa == pytest.approx(0.0)
    assert m.to_dict()["precision"]["2"] is None


def test_single_class_perfect_kappa_is_undefined() -> None:
    m = compute_metrics(np.ones(5, np.uint8), np.ones(5, np.uint8), (1,))
    assert m.overall_accuracy == 1.0
    assert math.isnan(m.kappa)
    assert m.to_dict()["kappa"] is None


def test_input_errors() -> None:
    a = np.zeros((2, 3), np.uint8)
    with pytest.raises(ConfigError, match="shape"):
        compute_metrics(a, np.zeros((3, 2), np.uint8), [0])
    with pytest.raises(LabelError, match="no sample left"):
        compute_metrics(np.full((2, 2), 255, np.uint8), np.zeros((2, 2), np.uint8), [0, 1])
    with pytest.raises(LabelError, match="dtype"):
        compute_metrics(a.astype(np.float32), a, [0])
    with pytest.raises(ConfigError, match="duplicates"):
        compute_metrics(a, a, [0, 0])
    with pytest.raises(ConfigError, match="class_names"):
        compute_metrics(a, a, [0, 1], ["a"])
    with pytest.raises(ConfigError, match="ignore_index"):
        compute_metrics(a, a, [0, 255])
    with pytest.raises(ConfigError, match="empty"):
        compute_metrics(a, a, [])


def test_write_report_json_round_trip_and_png(tmp_path, hand_metrics) -> None:
    ref = np.array([1] * 6 + [2] * 4, np.uint8)
    pred = np.array([1] * 4 + [255] * 2 + [2] * 4, np.uint8)
    other = compute_metrics(ref, pred, (1, 2, 5), NAMES)
    results = {"unet": hand_metrics, "random_forest": other}
    json_path, png_path = write_report(results, tmp_path / "reports", name="landcover")

    assert json_path == tmp_path / "reports" / "landcover.json"
    assert png_path == tmp_path / "reports" / "landcover_confusion.png"
    with json_path.open() as fh:
        report = json.load(fh)
    assert report["models"] == {k: m.to_dict() for k, m in results.items()}
    assert report["models"]["unet"]["kappa"] == pytest.approx(86 / 146)
    assert report["models"]["random_forest"]["recall"]["built"] is None
    assert [row["model"] for row in report["comparison"]] == ["unet", "random_forest"]
    assert report["comparison"][0] == {
        "model": "unet",
        "overall_accuracy": pytest.approx(11 / 15),
        "kappa": pytest.approx(86 / 146),
        "macro_f1": pytest.approx((10 / 13 + 0.6 + 6 / 7) / 3),
        "miou": pytest.approx((5 / 8 + 3 / 7 + 3 / 4) / 3),
        "n_samples": 15,
    }

    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(png_path)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    h, w = pixels.shape[:2]
    assert h > 200 and w > 1.5 * h  # two panels side by side
    assert pixels[..., :3].std() > 0.05  # not a blank canvas
    # atomic writes leave no temporary file behind
    assert sorted(p.name for p in json_path.parent.iterdir()) == [
        "landcover.json",
        "landcover_confusion.png",
    ]


def test_write_report_errors(tmp_path, hand_metrics) -> None:
    with pytest.raises(ConfigError, match="empty"):
        write_report({}, tmp_path)
    with pytest.raises(ConfigError, match="file stem"):
        write_report({"m": hand_metrics}, tmp_path, name="a/b")


def _synthetic_scene(seed: int = 0):
    """(4, 48, 48) float32 image with 3 separable classes in vertical stripes."""
    rng = np.random.default_rng(seed)
    h = w = 48
    truth = np.zeros((h, w), np.uint8)
    truth[:, 16:32] = 1
    truth[:, 32:] = 3  # non-contiguous class values
    means = {0: [0.1, 0.2, 0.3, 0.4], 1: [0.4, 0.1, 0.5, 0.2], 3: [0.3, 0.5, 0.1, 0.6]}
    image = np.empty((4, h, w), np.float32)
    for value, mean in means.items():
        sel = truth == value
        image[:, sel] = np.asarray(mean, np.float32)[:, None]
    image += rng.normal(0.0, 0.03, image.shape).astype(np.float32)
    return rng, truth, image


def test_random_forest_baseline_separable_classes() -> None:
    rng, truth, image = _synthetic_scene()
    labels = truth.copy()
    labels[rng.random(truth.shape) < 0.1] = 255  # unlabelled pixels
    train = rng.random(truth.shape) < 0.2
    nodata = np.zeros(truth.shape, bool)
    nodata[:4, :4] = True
    image[:, 40, 40] = np.nan  # non-finite band value is treated as nodata too

    out = random_forest_baseline(
        image, labels, train, nodata_mask=nodata, n_estimators=30, seed=0, n_jobs=1
    )
    assert out.dtype == np.uint8 and out.shape == truth.shape
    assert (out[nodata] == 255).all()
    assert out[40, 40] == 255
    assert set(np.unique(out[~nodata]).tolist()) <= {0, 1, 3, 255}

    held_out = (labels != 255) & ~train & ~nodata
    m = compute_metrics(np.where(held_out, labels, 255).astype(np.uint8), out, (0, 1, 3))
    assert m.n_samples == int(held_out.sum())
    assert m.overall_accuracy > 0.95
    # unlabelled pixels are predicted too
    unlabelled = (labels == 255) & ~nodata
    unlabelled[40, 40] = False
    assert (out[unlabelled] == truth[unlabelled]).mean() > 0.95

    # a fixed seed gives the same map
    again = random_forest_baseline(
        image, labels, train, nodata_mask=nodata, n_estimators=30, seed=0, n_jobs=1
    )
    np.testing.assert_array_equal(out, again)


def test_random_forest_baseline_errors() -> None:
    _, truth, image = _synthetic_scene()
    train = np.ones(truth.shape, bool)
    with pytest.raises(LabelError, match="no labelled training pixel"):
        random_forest_baseline(image, np.full(truth.shape, 255, np.uint8), train)
    with pytest.raises(ConfigError, match=r"\(C, H, W\)"):
        random_forest_baseline(image[0], truth, train)
    with pytest.raises(ConfigError, match="labels has shape"):
        random_forest_baseline(image, truth[:-1], train)
    with pytest.raises(ConfigError, match="bool"):
        random_forest_baseline(image, truth, train.astype(np.uint8))
    with pytest.raises(ConfigError, match="0-255"):
        random_forest_baseline(image, truth, train, ignore_index=-1)


def test_wide_value_range_int64_classes() -> None:
    # values spread over > 2**20 take the sorted-search path instead of the look-up table
    big = 10**9
    ref = np.array([-big, -big, 0, big, big], np.int64)
    pred = np.array([-big, 0, 0, big, 7], np.int64)
    m = compute_metrics(ref, pred, (big, -big, 0), ignore_index=None)
    np.testing.assert_array_equal(m.confusion, [[1, 0, 0], [0, 1, 1], [0, 0, 1]])
    assert m.n_unclassified == 1
    assert m.overall_accuracy == pytest.approx(3 / 5)
