"""Building damage: footprint chips, object classifier, training, inference and the workflow.

Synthetic seeded scenes where a case needs known pixels; the real xBD Santa Rosa tiles and
the Joplin pre (EPSG:26915) / post (EPSG:4326) tiles from ../shared/data otherwise.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pystac
import pytest
import rasterio
import torch
from affine import Affine
from pyproj import Transformer
from shapely.geometry import Polygon, box
from torch.utils.data import Dataset

from staclearn.models.classifier import ClassifierSpec, ObjectClassifier, build_classifier
from staclearn.training.objects import ClassifierTrainer, inverse_frequency_weights
from staclearn.inference.objects import classify_objects, probability_column
from staclearn.workflows.damage import BASELINE_NAME, DamageConfig, run_damage
from staclearn.data.xbd import find_xbd_tiles, split_tiles, tile_folds
from staclearn.errors import (
    BandMismatchError,
    ConfigError,
    EmptyDataError,
    FootprintWarning,
    ImageryNotFoundError,
    RunExistsError,
    SplitError,
)
from staclearn.evaluation.metrics import compute_metrics
from staclearn.chips.object_dataset import FootprintChipDataset, chip_band_statistics
from staclearn.chips.objects import FootprintChipReader, chip_geobox, export_footprint_chips
from staclearn.data.footprints import (
    XBD_BINARY,
    assign_classes,
    read_footprints,
    read_xbd_labels,
)
from staclearn.data.labels import ClassInfo
from staclearn.models.segmentation import load_weights, save_weights

XBD = Path("data") / "damage" / "xbd_santarosa"
JOPLIN = Path("data") / "damage" / "joplin_unlabeled"
RES = 5e-6  # degrees, ~0.44 m (lon) x 0.56 m (lat) at 38.5 N, as the xBD tiles
X0, Y0 = -122.74, 38.48  # upper-left corner of the synthetic scenes


# ----------------------------------------------------------------------------- helpers


def _write(path: Path, data: np.ndarray, crs: str, transform: Affine) -> Path:
    with rasterio.open(
        path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
        dtype=data.dtype, crs=crs, transform=transform,
    ) as dst:  # fmt: skip
        dst.write(data)
    return path


def _building(col: int, row: int, w: int, h: int) -> Polygon:
    """Polygon of the pixel block [row, row+h) x [col, col+w) of the synthetic scene."""
    return box(X0 + col * RES, Y0 - (row + h) * RES, X0 + (col + w) * RES, Y0 - row * RES)


def _scene(tmp_path: Path, name: str = "post", size: int = 400, seed: int = 0) -> tuple[Path, list[Polygon], np.ndarray]:
    """EPSG:4326 RGB uint8 scene: noisy grey ground, bright 'intact' and dark 'burnt' roofs."""
    rng = np.random.default_rng(seed)
    data = rng.integers(60, 80, size=(3, size, size)).astype(np.uint8)
    blocks = [(40, 40, 30, 20, 220), (200, 60, 24, 24, 20), (100, 250, 40, 30, 220), (300, 300, 20, 30, 20)]
    polys = []
    for col, row, w, h, v in blocks:
        data[:, row : row + h, col : col + w] = v
        polys.append(_building(col, row, w, h))
    path = _write(tmp_path / f"{name}.tif", data, "EPSG:4326", Affine(RES, 0, X0, 0, -RES, Y0))
    return path, polys, data


def _bilinear(src: rasterio.io.DatasetReader, arr: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Independent bilinear sample of ``arr`` (C, H, W) at source-CRS points (GDAL pixel centres)."""
    col, row = ~src.transform * (xs, ys)  # the xBD tiles' fitted transforms are slightly rotated
    col, row = np.asarray(col) - 0.5, np.asarray(row) - 0.5
    c0, r0 = np.floor(col).astype(int), np.floor(row).astype(int)
    fc, fr = col - c0, row - r0
    a = arr.astype(np.float64)
    return (
        a[:, r0, c0] * (1 - fr) * (1 - fc) + a[:, r0, c0 + 1] * (1 - fr) * fc
        + a[:, r0 + 1, c0] * fr * (1 - fc) + a[:, r0 + 1, c0 + 1] * fr * fc
    )  # fmt: skip


def _check_chip_pixels(chip: np.ndarray, gbox, image: Path, rng: np.random.Generator, n: int = 60) -> float:
    """Max |chip - bilinear(source)| over ``n`` random interior chip pixels (DN)."""
    rows = rng.integers(2, chip.shape[1] - 2, n)
    cols = rng.integers(2, chip.shape[2] - 2, n)
    x, y = gbox.affine * (cols + 0.5, rows + 0.5)
    with rasterio.open(image) as src:
        arr = src.read()
        sx, sy = Transformer.from_crs(str(gbox.crs), src.crs.to_wkt(), always_xy=True).transform(x, y)
        ref = _bilinear(src, arr, np.asarray(sx), np.asarray(sy))
    return float(np.abs(chip[:, rows, cols].astype(np.float64) - ref).max())


@pytest.fixture
def xbd_dir(shared_dir: Path) -> Path:
    d = shared_dir / XBD
    if not d.is_dir():
        pytest.skip(f"needs {d}")
    return d


@pytest.fixture
def joplin_dir(shared_dir: Path) -> Path:
    d = shared_dir / JOPLIN
    if not d.is_dir():
        pytest.skip(f"needs {d}")
    return d


# ----------------------------------------------------------------------------- chips


def test_chip_geobox_centred_on_footprint_with_buffer_in_metres():
    poly = _building(40, 40, 30, 20)
    gbox = chip_geobox(poly, "EPSG:4326", chip_size=64, buffer_m=10.0)
    assert gbox.crs.epsg == 32610 and gbox.shape.yx == (64, 64)
    m = gpd.GeoSeries([poly], crs=4326).to_crs(32610)
    minx, miny, maxx, maxy = m.total_bounds
    side = max(maxx - minx, maxy - miny) + 20.0
    assert gbox.resolution.x * 64 == pytest.approx(side, abs=1e-6)
    assert -gbox.resolution.y == pytest.approx(gbox.resolution.x)
    col, row = ~gbox.affine * (m.centroid.x[0], m.centroid.y[0])
    assert abs(col - 32) < 1 and abs(row - 32) < 1
    with pytest.raises(ConfigError, match="empty geometry"):
        chip_geobox(Polygon(), "EPSG:4326", chip_size=64, buffer_m=1)


def test_chip_pixels_centre_and_mask_outside(tmp_path):
    post, polys, _ = _scene(tmp_path)
    gdf = gpd.GeoDataFrame({"uid": ["a", "b", "c", "d"]}, geometry=polys, crs="EPSG:4326")
    with FootprintChipReader(gdf, post, chip_size=64, buffer_m=5.0) as reader:
        assert reader.bands == ("post_b1", "post_b2", "post_b3") and reader.dtype == np.uint8
        chip = reader.read(0)
        assert chip.shape == (3, 64, 64) and chip.dtype == np.uint8
        assert _check_chip_pixels(chip, reader.geoboxes[0], post, np.random.default_rng(0)) <= 1.0
    bright = np.argwhere(chip[0] > 150)
    assert np.abs(bright.mean(0) - 31.5).max() < 1.0  # the roof is centred
    # roof extent: 30 x 20 px of ~0.44 x 0.56 m => ~13.1 x 11.1 m, chip side 13.1 + 10 m
    res = reader.geoboxes[0].resolution.x
    assert res * 64 == pytest.approx(30 * RES * 87_300 + 10, rel=0.01)
    with FootprintChipReader(gdf, post, chip_size=64, buffer_m=5.0, mask_outside=0.0) as reader:
        masked = reader.read(0)
    assert (masked[:, :4, :4] == 0).all() and (masked[:, 29:35, 29:35] == 220).all()
    with FootprintChipReader(gdf, post, chip_size=64, buffer_m=5.0, mask_outside=0.5) as reader:
        half = reader.read(0)
    assert np.abs(half[:, :4, :4].astype(int) - np.round(chip[:, :4, :4] * 0.5)).max() <= 1


def test_export_index_statuses_and_dataset(tmp_path):
    post, polys, _ = _scene(tmp_path)
    far = box(-122.70, 38.47, -122.6999, 38.4701)  # 3 km east of the scene
    gdf = gpd.GeoDataFrame(
        {"uid": ["a", "b", "c", "d", "far", "empty"], "subtype": ["no-damage", "destroyed", "no-damage", "un-classified", "destroyed", "destroyed"],
         "tile": "t1"},
        geometry=[*polys, far, Polygon()], crs="EPSG:4326",
    )  # fmt: skip
    with pytest.warns(FootprintWarning, match="empty geometry"):
        labelled, report = assign_classes(gdf, "subtype", XBD_BINARY)
    assert report == {"un-classified": ["d"], "empty_geometry": ["empty"]}
    with pytest.warns(FootprintWarning, match=r"1 footprints lie outside the post imagery.*\['far'\]"):
        index = export_footprint_chips(labelled, {"t1": post}, tmp_path / "out", chip_size=32, buffer_m=5.0, split={"t1": "train"})
    assert index["footprint_id"].tolist() == ["a", "b", "c", "d", "far", "empty"]
    assert index["status"].tolist() == ["ok", "ok", "ok", "excluded", "outside_imagery", "empty_geometry"]
    assert index["class_value"].tolist() == [0, 1, 0, -1, 1, -1]
    assert index["chip"].notna().tolist() == [True, True, True, False, False, False]
    assert (index["split"] == "train").all() and (index["tile"] == "t1").all()
    back = gpd.read_parquet(tmp_path / "out" / "chips.parquet")
    assert len(back) == 6 and back.crs.to_epsg() == 4326 and back.geometry.iloc[0].equals(polys[0])
    meta = json.loads((tmp_path / "out" / "chips.json").read_text())
    assert meta["bands"] == ["post_b1", "post_b2", "post_b3"] and meta["chip_size"] == 32
    with rasterio.open(tmp_path / "out" / index["chip"].iloc[1]) as src:
        assert src.count == 3 and src.shape == (32, 32) and src.crs.to_epsg() == 32610
        assert list(src.transform)[:6] == pytest.approx(index["chip_transform"].iloc[1])
        assert src.descriptions == ("post_b1", "post_b2", "post_b3")
    ds = FootprintChipDataset(tmp_path / "out" / "chips.parquet", "train")
    assert len(ds) == 3 and ds.targets.tolist() == [0, 1, 0]
    img, target = ds[1]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and target.dtype == torch.int64 and int(target) == 1
    assert float(img[:, 14:18, 14:18].mean()) == pytest.approx(20.0, abs=1)  # burnt roof
    assert len(FootprintChipDataset(tmp_path / "out", "valid")) == 0
    mean, std = chip_band_statistics(tmp_path / "out", "train")
    pixels = np.stack([ds[i][0].numpy() for i in range(3)]).transpose(1, 0, 2, 3).reshape(3, -1)
    assert mean == pytest.approx(pixels.mean(1)) and std == pytest.approx(pixels.std(1), rel=1e-5)
    with pytest.raises(ImageryNotFoundError, match="missing.tif"):
        FootprintChipReader(gdf, tmp_path / "missing.tif")


def test_santa_rosa_chips_geolocated_and_outside_tiles_reported(xbd_dir):
    gdf = read_footprints(read_xbd_labels(sorted((xbd_dir / "labels").glob("*_post_disaster.json"))))
    post = xbd_dir / "images" / "santa-rosa-wildfire_00000012_post_disaster.tif"
    with pytest.warns(FootprintWarning, match="2193 footprints lie outside the post imagery"):
        reader = FootprintChipReader(gdf, post, chip_size=128, buffer_m=5.0)
    with reader:
        ok = reader.status == "ok"
        assert ok.sum() == 172 == (gdf["tile"] == "santa-rosa-wildfire_00000012").sum()
        assert (gdf.loc[ok, "tile"] == "santa-rosa-wildfire_00000012").all()
        # every chip GeoBox: bbox (in UTM 10N) + 2 x buffer, centred on the bbox
        m = gdf.to_crs(32610).bounds.to_numpy()
        side = np.maximum(m[:, 2] - m[:, 0], m[:, 3] - m[:, 1]) + 10.0
        assert reader.metric_crs == "EPSG:32610"
        assert np.allclose([g.resolution.x * 128 for g in reader.geoboxes], side)
        cx, cy = (m[:, 0] + m[:, 2]) / 2, (m[:, 1] + m[:, 3]) / 2
        centre = np.array([~g.affine * (x, y) for g, x, y in zip(reader.geoboxes, cx, cy, strict=True)])
        assert np.abs(centre - 64).max() < 1e-6
        with rasterio.open(post) as src:
            image_box = box(*src.bounds)
        rng = np.random.default_rng(1)
        interior = [i for i in np.flatnonzero(ok) if reader.geoboxes[i].extent.to_crs(4326).geom.within(image_box)]
        assert len(interior) > 100
        for i in rng.choice(interior, 5, replace=False):
            # interior chips only: an edge chip's off-image part is 0, not the bilinear value
            assert _check_chip_pixels(reader.read(int(i)), reader.geoboxes[i], post, rng) <= 1.0


def test_joplin_pre_post_in_different_crs_on_one_geobox(joplin_dir, tmp_path):
    pre = joplin_dir / "pre" / "tile_1361-10160.tif"  # EPSG:26915, 0.6 m
    post = joplin_dir / "post" / "tile_32524-5137.tif"  # EPSG:4326
    centres = [(-94.4900, 37.0705), (-94.4915, 37.0700), (-94.4885, 37.0712)]
    polys = [box(x - 8e-5, y - 6e-5, x + 8e-5, y + 6e-5) for x, y in centres]
    fp = gpd.GeoDataFrame({"bid": ["p0", "p1", "p2"]}, geometry=polys, crs="EPSG:4326")
    in_3857, in_26915 = fp.to_crs(3857), fp.to_crs(26915)
    index = export_footprint_chips(read_footprints(in_3857, id_field="bid"), post, tmp_path / "j", pre=pre, chip_size=128, buffer_m=5.0)
    assert index["status"].tolist() == ["ok"] * 3 and index.crs.to_epsg() == 3857
    with FootprintChipReader(in_26915, post, pre=pre, chip_size=128, buffer_m=5.0) as r26915:
        assert r26915.bands == ("post_b1", "post_b2", "post_b3", "pre_b1", "pre_b2", "pre_b3")
        for i in range(3):
            # the footprint CRS does not change the chip GeoBox
            assert list(r26915.geoboxes[i].affine)[:6] == pytest.approx(index["chip_transform"].iloc[i], abs=1e-6)
    rng = np.random.default_rng(2)
    for i in range(3):
        with rasterio.open(tmp_path / "j" / index["chip"].iloc[i]) as src:
            chip = src.read()
            assert src.count == 6 and src.crs.to_epsg() == 32615
            from odc.geo.geobox import GeoBox

            gbox = GeoBox.from_rio(src)
        # both halves sit where their own (differently projected) source puts these coordinates
        assert _check_chip_pixels(chip[:3], gbox, post, rng) <= 1.0
        assert _check_chip_pixels(chip[3:], gbox, pre, rng) <= 1.0


def test_joplin_footprints_outside_imagery_are_kept(joplin_dir, tmp_path):
    fp = read_footprints(joplin_dir / "bldg_polys_msft_footprints.gpkg")
    assert len(fp) == 77 and fp.crs.to_epsg() == 4326
    pre = joplin_dir / "pre" / "tile_1361-10160.tif"
    post = joplin_dir / "post" / "tile_32524-5137.tif"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = export_footprint_chips(fp, post, tmp_path / "j", pre=pre, chip_size=32)
    msgs = [str(w.message) for w in caught if issubclass(w.category, FootprintWarning)]
    # the footprints lie west of both tiles; one touches the post tile's west edge only
    assert any(m.startswith("76 footprints lie outside the post imagery") for m in msgs)
    assert any(m.startswith("1 footprints lie outside the pre imagery") for m in msgs)
    assert len(index) == 77 and (index["status"] == "outside_imagery").all() and index["chip"].isna().all()
    assert index["footprint_id"].tolist() == [str(i) for i in range(77)]


# ----------------------------------------------------------------------------- classifier


SPEC_CLASSES = (ClassInfo(0, "not destroyed"), ClassInfo(1, "destroyed"))


def _classifier(seed: int = 0, bands=("post_b1", "post_b2", "post_b3"), chip_size: int = 32) -> ObjectClassifier:
    torch.manual_seed(seed)
    return build_classifier(bands, SPEC_CLASSES, mean=[70.0] * len(bands), std=[60.0] * len(bands), chip_size=chip_size, buffer_m=5.0)


def test_classifier_spec_roundtrip_and_weights(tmp_path):
    model = _classifier().eval()
    spec = model.spec
    assert spec.in_channels == 3 and spec.num_classes == 2 and not spec.stack_pre and spec.pretrained is None
    d = json.loads(json.dumps(spec.to_dict()))
    assert ClassifierSpec.from_dict(d).to_dict() == d and ClassifierSpec.from_dict(d).bands == spec.bands
    x = torch.rand(2, 3, 32, 32) * 255
    out = model(x)
    assert out.shape == (2, 2) and out.dtype == torch.float32
    path = save_weights(model, tmp_path / "m.safetensors")
    other = load_weights(ObjectClassifier(spec), path).eval()
    assert torch.equal(other(x), out) and torch.equal(other.mean.flatten(), torch.full((3,), 70.0))
    six = _classifier(bands=("post_b1", "post_b2", "post_b3", "pre_b1", "pre_b2", "pre_b3"))
    assert six.spec.stack_pre and six.eval()(torch.zeros(1, 6, 32, 32)).shape == (1, 2)
    with pytest.raises(ConfigError, match="Unknown timm model"):
        build_classifier(["a"], SPEC_CLASSES, mean=[0], std=[1], model_name="resnet_nope")
    with pytest.raises(ConfigError, match="mean/std"):
        build_classifier(["a", "b"], SPEC_CLASSES, mean=[0], std=[1])


def test_inverse_frequency_weights():
    w = inverse_frequency_weights([0, 0, 0, 1], 3)
    assert w.tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1), 0.0])
    assert inverse_frequency_weights([0, 1, 0, 1], 2).tolist() == [1.0, 1.0]


class _Chips(Dataset):
    """Seeded chips: class 1 = dark roof in the centre, class 0 = bright roof."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.targets = (torch.rand(n, generator=g) < 0.35).long().numpy()
        self.x = 60 + 20 * torch.rand(n, 3, 32, 32, generator=g)
        for i, t in enumerate(self.targets):
            self.x[i, :, 10:22, 10:22] = 20.0 if t else 220.0

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.x[i], torch.tensor(int(self.targets[i]))


class _Tiny(torch.nn.Module):
    """Stand-in classifier (one conv + pooling) so the loop test is fast on 2 CPU cores."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(128, 2),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - 70.0) / 60.0)


def test_trainer_learns_records_per_class_metrics_and_is_seeded(tmp_path):
    train, valid = _Chips(48, 0), _Chips(24, 1)

    def run():
        t = ClassifierTrainer(
            _Tiny(), train, valid, classes=SPEC_CLASSES, batch_size=8, seed=3, checkpoint=tmp_path / "best.safetensors"
        )
        return t, t.fit(4, 3e-2)

    t1, h1 = run()
    _, h2 = run()
    assert [r.train_loss for r in h1] == [r.train_loss for r in h2]
    assert h1[-1].train_loss < h1[0].train_loss
    assert t1.class_weights.tolist() == pytest.approx(inverse_frequency_weights(train.targets, 2).tolist())
    assert t1.best_epoch == int(np.argmax([r.valid_macro_f1 for r in h1])) + 1
    best = h1[t1.best_epoch - 1]
    assert set(best.valid_f1) == {"not destroyed", "destroyed"} and best.valid_n == 24
    # the record's figures are those of the restored best weights
    with torch.no_grad():
        pred = t1.model(valid.x).argmax(1).numpy()
    m = compute_metrics(valid.targets, pred, [0, 1], ["not destroyed", "destroyed"], ignore_index=None)
    assert m.f1 == pytest.approx(best.valid_f1, nan_ok=True) and m.macro_f1 == pytest.approx(best.valid_macro_f1)
    assert best.valid_macro_f1 > 0.9  # a dark vs bright roof is learnt in 4 epochs
    reloaded = load_weights(_Tiny(seed=9), tmp_path / "best.safetensors").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(valid.x).argmax(1), t1.model(valid.x).argmax(1))
    assert json.dumps(t1.history_table())  # JSON-ready


def test_trainer_validation_metrics_match_compute_metrics(tmp_path):
    """The validation figures (torchmetrics counts) equal compute_metrics' exactly (NaN where a ratio is undefined), every epoch."""
    train, valid = _Chips(40, 0), _Chips(20, 1)
    names = ["not destroyed", "destroyed"]
    seen = []

    def check(record, trainer):
        trainer.model.eval()
        with torch.no_grad():
            pred = trainer.model(valid.x).argmax(1).numpy()
        m = compute_metrics(valid.targets, pred, [0, 1], names, ignore_index=None)
        assert record.valid_accuracy == m.overall_accuracy and record.valid_macro_f1 == m.macro_f1
        for got, want in ((record.valid_precision, m.precision), (record.valid_recall, m.recall), (record.valid_f1, m.f1)):
            assert got == pytest.approx(want, nan_ok=True, rel=0, abs=0)
        seen.append(record.epoch)

    t = ClassifierTrainer(_Tiny(), train, valid, classes=SPEC_CLASSES, batch_size=8, seed=5)
    t.fit(3, 3e-2, on_epoch=lambda r: check(r, t), keep_best=False)
    assert seen == [1, 2, 3]

    class _Always0(torch.nn.Module):  # never predicts "destroyed": its precision is undefined
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([torch.ones(len(x)), torch.zeros(len(x))], 1) + 0 * self.w

    r = ClassifierTrainer(_Always0(), train, valid, classes=SPEC_CLASSES, batch_size=8)._validate()
    m = compute_metrics(valid.targets, np.zeros(len(valid), dtype=np.int64), [0, 1], names, ignore_index=None)
    assert np.isnan(r["valid_precision"]["destroyed"]) and np.isnan(m.precision["destroyed"])
    for key, want in (("valid_precision", m.precision), ("valid_recall", m.recall), ("valid_f1", m.f1)):
        assert r[key] == pytest.approx(want, nan_ok=True, rel=0, abs=0)
    assert r["valid_macro_f1"] == m.macro_f1 and r["valid_accuracy"] == m.overall_accuracy


def test_classify_objects_keeps_every_row_and_attribute(tmp_path):
    post, polys, _ = _scene(tmp_path)
    pre, _, _ = _scene(tmp_path, "pre", seed=1)
    fp = gpd.GeoDataFrame(
        {"bid": ["a", "b", "c", "d", "far", "empty"], "height": [3.0, 4.5, 6.0, 2.5, 8.0, 1.0],
         "class_value": [0, 1, 0, 1, 1, 0]},
        geometry=[*polys, box(-122.70, 38.47, -122.6999, 38.4701), Polygon()], crs="EPSG:4326",
    ).to_crs(32610).set_index(pd.Index([10, 11, 12, 13, 14, 15]))  # fmt: skip
    model = _classifier()
    with pytest.warns(FootprintWarning):
        out = classify_objects(model, fp, post, id_field="bid", batch_size=3, device="cpu", out_path=tmp_path / "o.parquet")
    assert len(out) == 6 and out.index.tolist() == [10, 11, 12, 13, 14, 15] and out.crs.to_epsg() == 32610
    assert out["height"].tolist() == fp["height"].tolist() and out.geometry.geom_equals(fp.geometry).all()
    assert out["class_value_input"].tolist() == [0, 1, 0, 1, 1, 0]  # a reference column is kept, renamed
    assert out["status"].tolist() == ["ok"] * 4 + ["outside_imagery", "empty_geometry"]
    assert out["class_value"].isna().tolist() == [False] * 4 + [True, True]
    assert str(out["class_value"].dtype) == "Int64"
    probs = out[[probability_column(c.name) for c in SPEC_CLASSES]].to_numpy()
    assert list(out.columns[-4:-1]) == ["confidence", "prob_not_destroyed", "prob_destroyed"]
    assert np.allclose(probs[:4].sum(1), 1.0) and np.isnan(probs[4:]).all()
    assert np.allclose(out["confidence"][:4], probs[:4].max(1)) and out["confidence"][4:].isna().all()
    assert out["class_value"][:4].tolist() == probs[:4].argmax(1).tolist()
    assert out["class_name"].tolist()[:4] == [SPEC_CLASSES[k].name for k in probs[:4].argmax(1)]
    assert out["class_name"].tolist()[4:] == [None, None]
    back = gpd.read_parquet(tmp_path / "o.parquet")
    assert len(back) == 6 and back["bid"].tolist() == fp["bid"].tolist() and back["class_value"].isna().sum() == 2
    assert not list(tmp_path.glob(".*.tmp"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FootprintWarning)
        classify_objects(model, fp, post, id_field="bid", device="cpu", out_path=tmp_path / "o.geojson", driver="GeoJSON")
        gj = gpd.read_file(tmp_path / "o.geojson")
        assert len(gj) == 6 and gj.crs.to_epsg() == 4326 and gj["status"].tolist() == out["status"].tolist()
        with pytest.raises(BandMismatchError, match="pass the pre-event"):
            classify_objects(_classifier(bands=("post_b1", "post_b2", "post_b3", "pre_b1", "pre_b2", "pre_b3")), fp, post)
        with pytest.raises(BandMismatchError, match="post bands only"):
            classify_objects(model, fp, post, pre=pre)
        one_band = _classifier(bands=("post_b1",))
        with pytest.raises(BandMismatchError, match="give 3 channels"):
            classify_objects(one_band, fp, post)
        with pytest.raises(ConfigError, match="driver"):
            classify_objects(model, fp, post, driver="Shapefile")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- workflow


def _tile_frame(per_tile: dict[str, tuple[int, int]]) -> gpd.GeoDataFrame:
    """Footprints of synthetic tiles: ``{tile: (n intact, n destroyed)}``."""
    tiles, values = [], []
    for t, (n0, n1) in per_tile.items():
        tiles += [t] * (n0 + n1)
        values += [0] * n0 + [1] * n1
    return gpd.GeoDataFrame({"tile": tiles, "class_value": values}, geometry=[box(0, 0, 1, 1)] * len(values), crs="EPSG:4326")


# 10 tiles like Santa Rosa's: intact-only, destroyed-only and mixed tiles
TEN = {f"x_{i:08d}": c for i, c in enumerate([(50, 0), (40, 0), (0, 30), (0, 20), (10, 10), (30, 5), (5, 25), (60, 0), (0, 8), (20, 20)])}


def test_split_tiles_three_parts_whole_tiles_stratified():
    fp = _tile_frame(TEN)
    s = split_tiles(fp, test_fraction=0.2, valid_fraction=0.25, split_seed=0)
    assert sorted(s) == sorted(TEN) and set(s.values()) == {"train", "valid", "test"}
    parts = {p: [t for t, v in s.items() if v == p] for p in ("train", "valid", "test")}
    assert len(parts["test"]) == 2 and len(parts["valid"]) == 2 and len(parts["train"]) == 6  # 0.2 x 10, 0.25 x 8
    for p in ("test", "valid", "train"):  # stratified: every part holds intact and destroyed buildings
        assert set(fp.loc[fp["tile"].isin(parts[p]), "class_value"]) == {0, 1}, (p, parts[p])
    assert s == split_tiles(fp, test_fraction=0.2, valid_fraction=0.25, split_seed=0)
    assert any(split_tiles(fp, split_seed=k) != s for k in (1, 2, 3))
    # test tiles given: kept, validation drawn from the rest, a bare number matches
    given = split_tiles(fp, test_tiles=["00000002", "x_00000005"], valid_fraction=0.25, split_seed=0)
    assert {t for t, v in given.items() if v == "test"} == {"x_00000002", "x_00000005"}
    assert sum(v == "valid" for v in given.values()) == 2
    with pytest.raises(SplitError, match=r"Test tile '00000042' matches no tile; give a tile id"):
        split_tiles(fp, test_tiles=["00000042"])
    with pytest.raises(SplitError, match=r"both test and validation"):
        split_tiles(fp, test_tiles=["00000002"], valid_tiles=["00000002"])
    with pytest.raises(SplitError, match="at least 2 tiles must remain"):
        split_tiles(fp, test_tiles=[t for t in TEN][:9])
    with pytest.raises(SplitError, match="at least 3 tiles"):
        split_tiles(_tile_frame({"a": (1, 1), "b": (1, 1)}))
    assert issubclass(SplitError, ConfigError)


@pytest.fixture
def xbd_footprints(xbd_dir) -> gpd.GeoDataFrame:
    fp = read_footprints(read_xbd_labels(sorted((xbd_dir / "labels").glob("*_post_disaster.json"))))
    return assign_classes(fp, "subtype", "xbd_destroyed")[0]


def _regions_3857(xbd_dir: Path, tile: str, path: Path) -> Path:
    """A GeoJSON polygon in EPSG:3857 (Web Mercator metres) around the image of ``tile``."""
    with rasterio.open(xbd_dir / "images" / f"santa-rosa-wildfire_{tile}_post_disaster.tif") as src:
        ring = gpd.GeoSeries([box(*src.bounds)], crs=src.crs).to_crs(3857).buffer(-5.0)  # just inside the tile
    gpd.GeoDataFrame({"name": [f"around {tile}"]}, geometry=ring, crs=3857).to_file(path, driver="GeoJSON")
    assert "3857" in path.read_text()  # the file really is in another CRS
    return path


def test_split_tiles_test_regions_in_another_crs(xbd_dir, xbd_footprints, tmp_path):
    regions = _regions_3857(xbd_dir, "00000066", tmp_path / "test_area.geojson")
    s = split_tiles(xbd_footprints, test_regions=regions, split_seed=0)
    assert [t for t, v in s.items() if v == "test"] == ["santa-rosa-wildfire_00000066"]
    assert sum(v == "valid" for v in s.values()) == round(0.2 * 32)
    # the same area as a WGS84 bbox, and given together with a tile id
    with rasterio.open(xbd_dir / "images" / "santa-rosa-wildfire_00000021_post_disaster.tif") as src:
        w, so, e, n = src.bounds
    both = split_tiles(xbd_footprints, test_regions=(w + 1e-5, so + 1e-5, e - 1e-5, n - 1e-5), test_tiles=["00000066"])
    assert sorted(t for t, v in both.items() if v == "test") == ["santa-rosa-wildfire_00000021", "santa-rosa-wildfire_00000066"]
    far = tmp_path / "far.geojson"
    gpd.GeoDataFrame(geometry=[box(-10.0, 40.0, -9.9, 40.1)], crs=4326).to_file(far, driver="GeoJSON")
    with pytest.raises(SplitError, match=r"No building centroid .* lies in .*far\.geojson; check the regions' CRS"):
        split_tiles(xbd_footprints, test_regions=far)
    with pytest.raises(SplitError, match=r"missing\.geojson does not exist"):
        split_tiles(xbd_footprints, test_regions=tmp_path / "missing.geojson")
    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(SplitError, match=r"No geometry in .*empty\.geojson; test regions need at least one polygon"):
        split_tiles(xbd_footprints, test_regions=empty)


def test_tile_folds_whole_tiles_each_with_both_classes(xbd_footprints):
    folds = tile_folds(xbd_footprints, 3, seed=0)
    flat = [t for f in folds for t in f]
    assert len(folds) == 3 and len(flat) == len(set(flat)) == 33  # disjoint, every tile
    for f in folds:
        counts = xbd_footprints.loc[xbd_footprints["tile"].isin(f), "class_value"].value_counts()
        assert counts[1] >= 100 and counts[0] >= 500  # ~1/3 of the 507 destroyed and 1851 others
    assert tile_folds(xbd_footprints, 3, seed=0) == folds
    with pytest.raises(SplitError, match="k=1 folds"):
        tile_folds(xbd_footprints, 1)


def _xbd_copy(xbd_dir: Path, root: Path, tiles: list[str]) -> Path:
    """An xBD folder of ``tiles``: label files copied (so they can be made bad), images linked."""
    (root / "labels").mkdir(parents=True)
    (root / "images").mkdir()
    for t in tiles:
        for phase in ("pre", "post"):
            name = f"santa-rosa-wildfire_{t}_{phase}_disaster"
            shutil.copy(xbd_dir / "labels" / f"{name}.json", root / "labels" / f"{name}.json")
            (root / "images" / f"{name}.tif").symlink_to(xbd_dir / "images" / f"{name}.tif")
    return root


@pytest.mark.realdata
def test_run_damage_refuses_a_non_empty_run_folder_before_reading(xbd_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "evaluation.json").write_text("{}")
    with pytest.raises(RunExistsError, match=r"Run folder .*run is not empty \(it holds evaluation.json.*overwrite=True"):
        run_damage(tmp_path / "no-such-folder", out, DamageConfig(device="cpu"), log=lambda _: None)
    assert (out / "evaluation.json").read_text() == "{}"  # untouched
    with pytest.raises(ConfigError, match="is a file"):
        run_damage(xbd_dir, out / "evaluation.json", DamageConfig(device="cpu"), log=lambda _: None)


@pytest.mark.realdata
def test_run_damage_empty_tile_labels_named_and_no_run_folder_left(xbd_dir, tmp_path):
    """A real label file emptied of its buildings: a named EmptyDataError, and no half-made run folder."""
    data = _xbd_copy(xbd_dir, tmp_path / "xbd", ["00000021", "00000066", "00000212"])
    bad = data / "labels" / "santa-rosa-wildfire_00000066_post_disaster.json"
    doc = json.loads(bad.read_text())
    doc["features"]["lng_lat"] = []
    bad.write_text(json.dumps(doc))
    with pytest.raises(EmptyDataError, match=r"santa-rosa-wildfire_00000066_post_disaster\.json holds no building polygon.*--tile"):
        run_damage(data, tmp_path / "run", DamageConfig(device="cpu"), log=lambda _: None)
    assert not (tmp_path / "run").exists()
    # overwrite=True lets a non-empty folder through the check: the same input error follows, files kept
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "history.json").write_text("{}")
    with pytest.raises(EmptyDataError):
        run_damage(data, tmp_path / "old", DamageConfig(device="cpu"), log=lambda _: None, overwrite=True)
    assert (tmp_path / "old" / "history.json").exists()


SMALL_TILES = ["00000021", "00000028", "00000068", "00000113", "00000212"]  # 120 buildings, mixed tiles


@pytest.mark.realdata
@pytest.mark.slow
def test_run_damage_test_regions_honoured_and_never_trained_on(xbd_dir, tmp_path):
    regions = _regions_3857(xbd_dir, "00000021", tmp_path / "test_area.geojson")
    config = DamageConfig(class_map="xbd_destroyed", chip_size=32, epochs=2, test_regions=regions, valid_tiles=("00000113",), seed=0, device="cpu")
    r = run_damage(xbd_dir, tmp_path / "run", config, tiles=SMALL_TILES, log=lambda _: None)
    assert r.test_tiles == ["santa-rosa-wildfire_00000021"] and r.valid_tiles == ["santa-rosa-wildfire_00000113"]
    assert r.train_tiles == [f"santa-rosa-wildfire_{t}" for t in ("00000028", "00000068", "00000212")]
    record = json.loads((tmp_path / "run" / "split.json").read_text())
    assert record == r.split and record["tiles"]["test"] == r.test_tiles and record["unit"] == "buildings"
    assert record["test_regions"] == str(regions) and record["split_seed"] is None  # every part given
    # 21: 5 intact + 6 destroyed (+2 un-classified); 113: 30 + 10; 28 + 68 + 212: 26 + 41 (+1 minor)
    assert record["counts"] == {
        "train": {"not destroyed": 27, "destroyed": 40}, "valid": {"not destroyed": 30, "destroyed": 10},
        "test": {"not destroyed": 5, "destroyed": 6},
    }  # fmt: skip
    # no test building in any training or validation chip
    index = gpd.read_parquet(r.chips_index)
    test_ids = set(index.loc[index["tile"] == "santa-rosa-wildfire_00000021", "footprint_id"])
    assert set(index.loc[index["split"] == "test", "footprint_id"]) == test_ids and len(test_ids) == 13
    train_ids = set(FootprintChipDataset(r.chips_index, "train").index["footprint_id"])
    valid_ids = set(FootprintChipDataset(r.chips_index, "valid").index["footprint_id"])
    assert len(train_ids) == r.n_train == 67 and len(valid_ids) == 40
    assert not (test_ids & train_ids) and not (test_ids & valid_ids) and not (train_ids & valid_ids)
    # the test figures are the test buildings', the validation figures the validation buildings'
    pred = gpd.read_parquet(r.predictions)
    assert pred["part"].value_counts().to_dict() == {"valid": 40, "test": 13}
    assert set(pred.loc[pred["part"] == "test", "footprint_id"]) == test_ids and "label_status" in pred
    for part, m in (("test", r.test_metrics), ("valid", r.valid_metrics)):
        scored = pred[(pred["part"] == part) & (pred["reference_value"] >= 0)]
        expected = pd.crosstab(scored["reference_value"], scored["class_value"]).reindex(index=[0, 1], columns=[0, 1], fill_value=0)
        assert m.confusion.tolist() == expected.to_numpy().tolist()
    assert r.n_test == 11 == r.test_metrics.n_samples == r.baseline_metrics.n_samples and r.n_valid == 40
    assert r.test_metrics.confusion.sum(1).tolist() == [5, 6] == r.baseline_metrics.confusion.sum(1).tolist()
    report = json.loads(r.evaluation_json.read_text())
    assert set(report) == {"test", "validation", "split"} and report["split"] == record
    assert set(report["test"]["models"]) == {"resnet18", BASELINE_NAME} and set(report["validation"]["models"]) == {"resnet18"}
    assert report["test"]["models"]["resnet18"]["confusion"] == r.test_metrics.confusion.tolist()
    assert report["validation"]["models"]["resnet18"]["confusion"] == r.valid_metrics.confusion.tolist()
    assert report["test"]["models"][BASELINE_NAME]["n_samples"] == 11
    # the kept epoch is the best by validation macro-F1, never by test figures
    assert r.best_epoch == int(np.argmax([h.valid_macro_f1 for h in r.history])) + 1
    assert r.history[r.best_epoch - 1].valid_macro_f1 == pytest.approx(r.valid_metrics.macro_f1)
    # normalisation statistics are the training chips'
    train_px = np.stack([FootprintChipDataset(r.chips_index, "train")[i][0].numpy() for i in range(r.n_train)])
    assert r.spec.mean == pytest.approx(train_px.transpose(1, 0, 2, 3).reshape(6, -1).mean(1), rel=1e-5)
    # the card and the per-building Item carry the test and validation figures and the split record
    cat = pystac.Catalog.from_file(str(r.catalog))
    items = {i.id: i for i in cat.get_items(recursive=True)}
    for item in (items["run-model"], items["run-buildings"]):
        metrics = item.properties["staclearn:metrics"]
        assert set(metrics) == {"test", "validation"} and set(metrics["test"]) == {"resnet18", BASELINE_NAME}
        assert metrics["test"]["resnet18"]["n_samples"] == 11 and metrics["validation"]["resnet18"]["n_samples"] == 40
        assert metrics["test"]["resnet18"]["f1"] == report["test"]["models"]["resnet18"]["f1"]
        assert item.properties["staclearn:split"] == record


@pytest.mark.realdata
@pytest.mark.slow
def test_run_damage_training_seed_keeps_the_split(xbd_dir, tmp_path):
    runs = []
    for seed in (0, 1):
        config = DamageConfig(chip_size=32, epochs=1, split_seed=3, seed=seed, device="cpu")
        runs.append(run_damage(xbd_dir, tmp_path / f"s{seed}", config, tiles=SMALL_TILES, log=lambda _: None))
    a, b = runs
    assert a.split == b.split and a.split["split_seed"] == 3 and len(a.test_tiles) == 1 and len(a.valid_tiles) == 1
    ia, ib = gpd.read_parquet(a.chips_index), gpd.read_parquet(b.chips_index)
    assert ia["split"].tolist() == ib["split"].tolist() and set(ia["split"]) == {"train", "valid", "test"}
    assert a.history[0].train_loss != b.history[0].train_loss  # the training seed did change the training


@pytest.mark.realdata
@pytest.mark.slow
def test_run_damage_on_santa_rosa(xbd_dir, tmp_path):
    tiles = ["00000021", "00000066", "00000089", "00000113"]
    config = DamageConfig(chip_size=64, buffer_m=10.0, epochs=2, batch_size=32, test_tiles=("00000021",), valid_tiles=("00000113",), seed=0, device="cpu")
    r = run_damage(xbd_dir, tmp_path / "run", config, tiles=tiles, log=lambda _: None)
    assert r.test_tiles == ["santa-rosa-wildfire_00000021"] and r.valid_tiles == ["santa-rosa-wildfire_00000113"]
    assert r.train_tiles == ["santa-rosa-wildfire_00000066", "santa-rosa-wildfire_00000089"]
    assert set(r.tiles) == {f"santa-rosa-wildfire_{t}" for t in tiles}
    assert r.tiles["santa-rosa-wildfire_00000021"].pre_image.name == "santa-rosa-wildfire_00000021_pre_disaster.tif"
    # 13 + 160 + 195 + 40 buildings; tile 21 holds the 2 un-classified ones
    index = gpd.read_parquet(r.chips_index)
    assert len(index) == 408 and index["status"].value_counts().to_dict() == {"ok": 406, "excluded": 2}
    assert r.excluded == {"un-classified": index.loc[index["status"] == "excluded", "footprint_id"].tolist()}
    assert set(index.loc[index["split"] == "test", "tile"]) == {"santa-rosa-wildfire_00000021"}
    assert r.n_train == 355 and len(r.history) == 2 and r.best_epoch in (1, 2)
    pred = gpd.read_parquet(r.predictions)
    assert len(pred) == 53 and pred["status"].eq("ok").all() and pred["class_value"].notna().all()
    test = pred[pred["part"] == "test"]
    assert test["reference_value"].value_counts().to_dict() == {1: 6, 0: 5, -1: 2}
    m = r.test_metrics
    assert r.n_test == m.n_samples == 11 == int(m.confusion.sum()) and m.confusion.sum(1).tolist() == [5, 6]
    cm = m.confusion
    for k, name in enumerate(["undamaged", "damaged"]):
        tp, fp_, fn = cm[k, k], cm[:, k].sum() - cm[k, k], cm[k, :].sum() - cm[k, k]
        assert 0.0 <= m.f1[name] <= 1.0 and m.f1[name] == pytest.approx(2 * tp / (2 * tp + fp_ + fn))
    assert r.confusion_png.name == "evaluation_confusion.png" and r.confusion_png.stat().st_size > 1000
    assert (tmp_path / "run" / "evaluation_validation_confusion.png").exists()
    # the saved weights + spec rebuild the model and give the same per-building probabilities
    spec = ClassifierSpec.from_dict(json.loads(r.spec_path.read_text()))
    assert spec.to_dict() == r.spec.to_dict() and spec.chip_size == 64 and spec.extra["test_tiles"] == r.test_tiles
    model = load_weights(ObjectClassifier(spec), r.weights_path)
    tile = r.tiles["santa-rosa-wildfire_00000021"]
    assert spec.stack_pre and len(spec.bands) == 6  # pre image stacked by default
    again = classify_objects(model, test.drop(columns=["class_value", "class_name", "confidence", "status"]),
                             tile.post_image, pre=tile.pre_image, device="cpu")  # fmt: skip
    assert np.allclose(again["prob_damaged"], test["prob_damaged"], atol=1e-5)
    assert find_xbd_tiles(xbd_dir).keys() >= r.tiles.keys() and len(find_xbd_tiles(xbd_dir)) == 33
