"""Chip grid, spatial block split and chip export on seeded synthetic rasters."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox

from staclearn.chips.pixel import VALID, ChipDataset, band_statistics, block_split, chip_windows, export_chips
from staclearn.errors import ConfigError, LabelError
from staclearn.data.labels import IGNORE_INDEX


@pytest.mark.parametrize("shape,tile,stride", [((443, 489), 64, 32), ((100, 37), 64, 64), ((128, 128), 32, 20)])
def test_chip_grid_covers_every_pixel(shape, tile, stride):
    cover = np.zeros(shape, dtype=int)
    wins = chip_windows(shape, tile, stride)
    for w in wins:
        cover[w.toslices()] += 1
        assert w.row_off + w.height <= shape[0] and w.col_off + w.width <= shape[1]
    assert cover.min() >= 1
    # windows are full tiles wherever the raster is at least one tile large
    assert all(w.height == min(tile, shape[0]) and w.width == min(tile, shape[1]) for w in wins)


def test_chip_grid_rejects_bad_sizes():
    with pytest.raises(ConfigError):
        chip_windows((10, 10), 0)


def _sparse_labels(seed: int = 0, shape=(256, 256), k: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.full(shape, IGNORE_INDEX, np.uint8)
    for _ in range(60):
        r, c = rng.integers(0, shape[0] - 8), rng.integers(0, shape[1] - 8)
        labels[r : r + 6, c : c + 6] = rng.integers(0, k)
    return labels


def test_block_split_is_spatially_blocked_and_balanced():
    labels = _sparse_labels()
    split = block_split(labels, block_size=32, valid_fraction=0.3, seed=1)
    # constant inside every 32 px block
    blocks = split.reshape(8, 32, 8, 32)
    assert (blocks.min(axis=(1, 3)) == blocks.max(axis=(1, 3))).all()
    labelled = labels != IGNORE_INDEX
    share = (split[labelled] == VALID).mean()
    assert 0.2 < share < 0.45
    # every class on both sides
    for k in range(4):
        assert ((labels == k) & (split == VALID)).any() and ((labels == k) & (split != VALID)).any()
    # seeded: same split twice
    assert (block_split(labels, block_size=32, valid_fraction=0.3, seed=1) == split).all()


def test_block_split_without_labels_raises():
    with pytest.raises(LabelError):
        block_split(np.full((64, 64), IGNORE_INDEX, np.uint8), block_size=16)


def test_export_chips_geoboxes_and_disjoint_labels(tmp_path):
    rng = np.random.default_rng(0)
    labels = _sparse_labels()
    labels[:8, :8] = 1
    image = rng.normal(100, 10, (3, 256, 256)).astype(np.float32)
    image[:, :5, :5] = -9999
    gbox = GeoBox((256, 256), Affine(10, 0, 500000, 0, -10, 4000000), "EPSG:32633")
    split = block_split(labels, block_size=32, seed=0)
    index = export_chips(image, labels, split, gbox, tmp_path, tile_size=64, stride=32, min_labelled=0.001, nodata=-9999)
    assert set(index.split) == {"train", "valid"}
    seen = {"train": np.zeros(labels.shape, bool), "valid": np.zeros(labels.shape, bool)}
    for row in index.itertuples():
        with rasterio.open(tmp_path / row.image) as src:
            chip = src.read()
            # the chip's geotransform is the parent GeoBox sliced at the chip window
            assert src.transform == gbox.affine @ Affine.translation(row.col_off, row.row_off)
            assert src.crs.to_epsg() == 32633
        sl = (slice(row.row_off, row.row_off + row.height), slice(row.col_off, row.col_off + row.width))
        assert np.array_equal(chip, image[(slice(None), *sl)])
        with rasterio.open(tmp_path / row.label) as src:
            lab = src.read(1)
        seen[row.split][sl] |= lab != IGNORE_INDEX
        assert row.labelled_fraction == pytest.approx((lab != IGNORE_INDEX).mean())
        assert tuple(row.geometry.bounds) == pytest.approx(tuple(gbox[sl].boundingbox))
    # no labelled pixel is used by both splits, and all labelled pixels are used
    assert not (seen["train"] & seen["valid"]).any()
    assert ((seen["train"] | seen["valid"]) == (labels != IGNORE_INDEX)).all()

    ds = ChipDataset(tmp_path / "chips.parquet", "train", fill=[100, 100, 100])
    x, y = ds[0]
    assert x.shape == (3, 64, 64) and x.dtype.is_floating_point and y.dtype.is_signed
    mean, std = band_statistics(tmp_path / "chips.parquet")
    assert mean == pytest.approx([100, 100, 100], abs=0.5)
    assert std == pytest.approx([10, 10, 10], abs=0.5)
    # nodata pixels (top-left 5x5) are filled with the band mean and masked out
    corner = [i for i in range(len(ds)) if ds.index.row_off[i] == 0 and ds.index.col_off[i] == 0]
    assert corner, "the top-left chip holds labels in this seeded raster"
    x, y = ds[corner[0]]
    assert (x[:, :5, :5] == 100).all() and (y[:5, :5] == IGNORE_INDEX).all()
