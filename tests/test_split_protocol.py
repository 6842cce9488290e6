"""The train / validation / test protocol of the land-cover workflow.

Synthetic seeded rasters for the split functions and the epoch selection; the real NC
Landsat-7 scene (../shared/data) for the workflow: test regions in another CRS are honoured,
no test pixel reaches a chip, the training seed does not move the split, and the card and
class-map Item carry the test figures.
"""

from __future__ import annotations

import json
import warnings
from unittest import mock

import geopandas as gpd
import numpy as np
import pystac
import pytest
import rasterio
import torch
from affine import Affine
from odc.geo.geobox import GeoBox
from shapely.geometry import box

from staclearn.chips.pixel import ChipDataset, block_split, export_chips
from staclearn.errors import NodataLabelsWarning, SplitError
from staclearn.data.labels import IGNORE_INDEX
from staclearn.data.splits import TEST, TRAIN, VALID, part_counts, read_regions, regions_mask


def _labels(seed: int = 0, shape=(192, 160), k: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.full(shape, IGNORE_INDEX, np.uint8)
    for _ in range(60):  # sparse labelled patches, as field-survey labels are
        r, c = rng.integers(0, shape[0] - 6), rng.integers(0, shape[1] - 6)
        lab[r : r + 6, c : c + 6] = rng.integers(0, k)
    return lab


def test_block_split_three_parts_are_disjoint_blocks_and_depend_on_the_split_seed_only():
    lab = _labels()
    split = block_split(lab, block_size=32, valid_fraction=0.25, test_fraction=0.3, seed=3)
    assert set(np.unique(split)) == {TRAIN, VALID, TEST}
    for r in range(0, lab.shape[0], 32):  # every part is made of whole blocks
        for c in range(0, lab.shape[1], 32):
            assert len(np.unique(split[r : r + 32, c : c + 32])) == 1
    labelled = lab != IGNORE_INDEX
    share_test = (split[labelled] == TEST).mean()
    assert 0.2 < share_test < 0.45
    counts = part_counts(lab, split, ["a", "b", "c", "d"])
    assert sum(sum(v.values()) for v in counts.values()) == int(labelled.sum())
    assert all(counts["train"][k] > 0 for k in "abcd")  # every class is trained on
    assert (block_split(lab, block_size=32, valid_fraction=0.25, test_fraction=0.3, seed=3) == split).all()
    assert not (block_split(lab, block_size=32, valid_fraction=0.25, test_fraction=0.3, seed=4) == split).all()
    # without a test part the split is train / validation only, as before
    assert set(np.unique(block_split(lab, block_size=32, valid_fraction=0.25, seed=3))) == {TRAIN, VALID}


def test_block_split_honours_a_test_mask_and_refuses_an_empty_one():
    lab = _labels(1)
    mask = np.zeros(lab.shape, bool)
    mask[10:90, 20:70] = True  # not block-aligned
    split = block_split(lab, block_size=32, test_mask=mask, seed=0)
    assert ((split == TEST) == mask).all()
    empty = np.zeros(lab.shape, bool)
    empty[0:1, 0:1] = True
    lab2 = lab.copy()
    lab2[0, 0] = IGNORE_INDEX
    with pytest.raises(SplitError, match="no labelled pixel"):
        block_split(lab2, block_size=32, test_mask=empty)


def _utm_geobox(shape=(100, 120)) -> GeoBox:
    return GeoBox(shape, Affine(30.0, 0, 500_000.0, 0, -30.0, 4_000_000.0), "EPSG:32617")


def test_regions_in_another_crs_are_honoured(tmp_path):
    gbox = _utm_geobox()
    # pixels rows 20..49, cols 40..79 of the UTM grid, as a polygon written in EPSG:3857
    x0, y1 = 500_000.0 + 40 * 30, 4_000_000.0 - 20 * 30
    x1, y0 = 500_000.0 + 80 * 30, 4_000_000.0 - 50 * 30
    poly = gpd.GeoSeries([box(x0 + 1, y0 + 1, x1 - 1, y1 - 1)], crs="EPSG:32617")
    path = tmp_path / "test.geojson"
    poly.to_crs("EPSG:3857").to_file(path)
    mask = regions_mask(path, gbox)
    expected = np.zeros(gbox.shape.yx, bool)
    expected[20:50, 40:80] = True
    # reprojection to Web Mercator and back bends the edges by < 1 pixel
    assert (mask ^ expected).sum() <= 2 * (30 + 40)
    assert mask[22:48, 42:78].all() and mask.sum() == pytest.approx(expected.sum(), rel=0.05)
    # the same as a WGS84 bbox
    wgs = poly.to_crs("EPSG:4326").total_bounds
    mask_bbox = regions_mask(list(wgs), gbox)
    assert mask_bbox[22:48, 42:78].all() and not mask_bbox[:15].any()
    # and as GeoParquet
    poly.to_crs("EPSG:4326").to_frame("geometry").to_parquet(tmp_path / "test.parquet")
    assert (regions_mask(tmp_path / "test.parquet", gbox) == regions_mask(path, gbox)).mean() > 0.99
    with pytest.raises(SplitError, match="does not exist"):
        read_regions(tmp_path / "missing.geojson")
    with pytest.raises(SplitError, match="No pixel"):
        regions_mask([10.0, 10.0, 10.1, 10.1], gbox)


def test_mask_raster_on_another_grid_is_reprojected(tmp_path):
    gbox = _utm_geobox()
    coarse = np.zeros((50, 60), np.uint8)
    coarse[10:25, 20:40] = 1  # = rows 20..49, cols 40..79 at 30 m
    path = tmp_path / "mask.tif"
    with rasterio.open(path, "w", driver="GTiff", height=50, width=60, count=1, dtype="uint8", crs="EPSG:32617",
                       transform=Affine(60.0, 0, 500_000.0, 0, -60.0, 4_000_000.0)) as dst:
        dst.write(coarse[None])
    mask = regions_mask(path, gbox)
    expected = np.zeros(gbox.shape.yx, bool)
    expected[20:50, 40:80] = True
    assert (mask == expected).all()


def test_no_test_pixel_reaches_a_training_or_validation_chip(tmp_path):
    lab = _labels(2, shape=(128, 128))
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, (3, 128, 128)).astype(np.float32)
    gbox = _utm_geobox((128, 128))
    split = block_split(lab, block_size=32, valid_fraction=0.25, test_fraction=0.3, seed=0)
    index = export_chips(image, lab, split, gbox, tmp_path, tile_size=48, stride=16, nodata=-9999.0)
    assert set(index.split) <= {"train", "valid"}
    masked = 0
    for row in index.itertuples():
        sl = (slice(row.row_off, row.row_off + row.height), slice(row.col_off, row.col_off + row.width))
        test_px = split[sl] == TEST
        with rasterio.open(tmp_path / row.image) as src, rasterio.open(tmp_path / row.label) as lsrc:
            img, chip_lab = src.read(), lsrc.read(1)
        assert (img[:, test_px] == -9999.0).all()  # no test imagery
        assert (chip_lab[test_px] == IGNORE_INDEX).all()  # no test label
        assert (img[:, ~test_px] == image[(slice(None), *sl)][:, ~test_px]).all()  # the rest intact
        assert row.test_pixels_masked == int(test_px.sum())
        masked += int(test_px.sum())
    assert masked > 0  # chips did straddle test blocks
    # and the dataset turns masked pixels into the fill value with no label
    ds = ChipDataset(tmp_path / "chips.parquet", "train", fill=[100.0, 100.0, 100.0])
    x, y = ds[0]
    assert torch.isfinite(x).all() and x.shape == (3, 48, 48)


def test_epoch_selection_uses_validation_only():
    """Validation and test disagree on purpose (test labels are the validation labels
    swapped), so scoring on test would keep another epoch; the trainer keeps the best
    validation epoch and never sees test."""
    from staclearn.training.segmentation import Trainer

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 8, 8, generator=g)
    y = (x[:, 0] > 0).long()
    train = torch.utils.data.TensorDataset(x, y)
    xv = torch.randn(8, 1, 8, 8, generator=g)
    valid = torch.utils.data.TensorDataset(xv, (xv[:, 0] > 0).long())
    test_y = 1 - (xv[:, 0] > 0).long()
    model = Tiny()
    with torch.no_grad():  # start inverted: validation improves, test gets worse
        model.conv.weight.fill_(-1.0)
        model.conv.weight[1].fill_(1.0)
        model.conv.weight[0].fill_(1.0)
        model.conv.bias.zero_()
    trainer = Trainer(model, train, valid, num_classes=2, batch_size=8, augment=False, device="cpu", seed=0)
    test_acc = []

    def score_test(_record) -> None:
        with torch.no_grad():
            test_acc.append(float((trainer.model(xv).argmax(1) == test_y).float().mean()))

    history = trainer.fit(6, 0.3, progress=False, on_epoch=score_test)
    valid_miou = [r.valid_miou for r in history]
    assert trainer.best_epoch == int(np.argmax(valid_miou)) + 1
    assert int(np.argmax(test_acc)) + 1 != trainer.best_epoch  # test would have chosen otherwise


# --- the workflow on the real NC scene -------------------------------------------------------


@pytest.fixture(scope="module")
def nc_runs(tmp_path_factory):
    from conftest import NC_CATALOG, SHARED_DIR

    if not (SHARED_DIR / "data" / "landcover" / "nc_landsat7" / "landsat_multiband.tif").exists():
        pytest.skip("needs ../shared/data/landcover/nc_landsat7 (the NC Landsat-7 scene)")
    from staclearn.workflows.landcover import LandCoverConfig, run_landcover

    root = tmp_path_factory.mktemp("split")
    # test regions: a polygon around the east part of the scene, written in WGS84 (the
    # imagery is in EPSG:32119, NC State Plane)
    with rasterio.open(SHARED_DIR / "data" / "landcover" / "nc_landsat7" / "landsat_multiband.tif") as src:
        b = src.bounds
        poly = box(b.left + 0.6 * (b.right - b.left), b.bottom + 0.2 * (b.top - b.bottom), b.right, b.top)
        crs = src.crs
    regions = gpd.GeoSeries([poly], crs=crs).to_crs("EPSG:4326")
    regions_path = root / "test_regions.geojson"
    regions.to_frame("geometry").to_file(regions_path)
    runs = {}
    for seed in (0, 1):
        config = LandCoverConfig(epochs=1, members=1, rf_estimators=20, seed=seed, split_seed=5, test_regions=str(regions_path), device="cpu")
        # record the warn() calls themselves: catch_warnings is process-wide and not thread-safe, so a
        # thread left by an earlier test that enters its own catch_warnings can swallow the record
        with mock.patch.object(warnings, "warn", wraps=warnings.warn) as warn:
            runs[seed] = run_landcover(NC_CATALOG, root / f"seed{seed}", config, progress=False, log=lambda _: None)
        named = [str(c.args[0]) for c in warn.call_args_list if len(c.args) > 1 and c.args[1] is NodataLabelsWarning]
        assert len(named) == 1 and "168 labelled pixels of 'nc-landsat7-labels'" in named[0], named
    return runs, poly, crs


def test_test_regions_in_wgs84_are_honoured_and_never_chipped(nc_runs):
    runs, poly, crs = nc_runs
    result = runs[0]
    with rasterio.open(result.class_map) as src:
        transform, shape = src.transform, src.shape
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    xs, ys = rasterio.transform.xy(transform, rows.ravel(), cols.ravel())
    inside = gpd.GeoSeries(gpd.points_from_xy(xs, ys), crs=crs).within(poly).to_numpy().reshape(shape)
    index = gpd.read_parquet(result.out_dir / "chips" / "chips.parquet")
    for row in index.itertuples():
        sl = (slice(row.row_off, row.row_off + row.height), slice(row.col_off, row.col_off + row.width))
        with rasterio.open(result.out_dir / "chips" / row.label) as lsrc, rasterio.open(result.out_dir / "chips" / row.image) as isrc:
            assert (lsrc.read(1)[inside[sl]] == IGNORE_INDEX).all()
            assert (isrc.read()[:, inside[sl]] == isrc.nodata).all()
        # up to pixels cut by the polygon edge (reprojected via WGS84), the count is that of the polygon
        assert abs(row.test_pixels_masked - int(inside[sl].sum())) <= 2 * (row.height + row.width)
    counts = result.split["counts"]
    # independent count of the labelled pixels inside the polygon
    with rasterio.open(result.out_dir / "baseline_rf.tif") as src:  # same grid
        assert src.shape == shape
    assert sum(counts["test"].values()) == result.metrics["test"]["model"].n_samples > 100
    assert result.split["method"].startswith("test: user test regions")
    assert result.split["labels_dropped_on_nodata"] == 168


def test_training_seed_keeps_the_split(nc_runs):
    runs, _, _ = nc_runs
    a, b = (gpd.read_parquet(runs[s].out_dir / "chips" / "chips.parquet") for s in (0, 1))
    assert list(a.chip_id) == list(b.chip_id) and list(a.split) == list(b.split)
    assert runs[0].split == runs[1].split
    wa = (runs[0].out_dir / "model" / "weights.safetensors").read_bytes()
    wb = (runs[1].out_dir / "model" / "weights.safetensors").read_bytes()
    assert wa != wb  # the seed did change the model


def test_card_and_class_map_item_carry_test_figures(nc_runs):
    result = nc_runs[0][0]
    cat = pystac.Catalog.from_file(str(result.catalog))
    items = {i.id: i for i in cat.get_items(recursive=True)}
    card, pred = items[f"{result.out_dir.name}-model"], items[f"{result.out_dir.name}-class-map"]
    report = json.loads((result.out_dir / "evaluation.json").read_text())
    for item in (card, pred):
        m = item.properties["staclearn:metrics"]
        assert set(m) == {"test", "validation"}
        assert m["test"]["model"]["overall_accuracy"] == pytest.approx(report["test"]["models"]["model"]["overall_accuracy"])
        assert m["test"]["random_forest"]["macro_f1"] == pytest.approx(report["test"]["models"]["random_forest"]["macro_f1"])
        assert item.properties["staclearn:split"]["counts"] == report["split"]["counts"]
    assert card.properties["mlm:hyperparameters"]["split_seed"] == 5
