"""Tiled prediction: stitching onto the cube's GeoBox, padding, nodata, COG output."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_coords
from torch import nn

from staclearn.errors import BandMismatchError, ConfigError, StaclearnWarning
from staclearn.data.labels import ClassInfo
from staclearn.models.segmentation import ModelSpec
from staclearn.inference.raster import (
    CLASS_MAP_NODATA,
    predict_class_map,
    predict_probabilities,
    predict_to_cog,
)


class PixelModel(nn.Module):
    """1x1-conv stand-in (torchgeo's habit): class 1 where band 0 > band 1, else class 0."""

    def __init__(self, bands=("b1", "b2")) -> None:
        super().__init__()
        self.spec = ModelSpec("Unet", "none", tuple(bands), (ClassInfo(10, "low"), ClassInfo(20, "high")), (0.0,) * len(bands), (1.0,) * len(bands))
        self.conv = nn.Conv2d(len(bands), 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[1, 0] = 1.0
            self.conv.weight[1, 1] = -1.0

    def forward(self, x):
        return self.conv(x)


class ContextModel(PixelModel):
    """3x3 box filter: the prediction depends on neighbours, so tile edges matter."""

    def forward(self, x):
        return nn.functional.avg_pool2d(self.conv(x), 3, stride=1, padding=1, count_include_pad=False)


def _cube(h: int, w: int, seed: int = 0, nodata: float = -9999.0) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    data = rng.normal(0, 1, (1, 2, h, w)).astype(np.float32)
    data[0, :, 3:7, 5:9] = nodata
    gbox = GeoBox((h, w), Affine(30, 0, 600000, 0, -30, 5000000), "EPSG:32617")
    coords = {"time": [np.datetime64("2021-06-01")], "band": ["b1", "b2"], **xr_coords(gbox)}
    return xr.DataArray(data, dims=("time", "band", "y", "x"), coords=coords, attrs={"nodata": nodata}).chunk({"x": 64, "y": 64})


@pytest.mark.parametrize("h,w,tile,pad", [(150, 203, 64, 8), (40, 30, 256, 32), (97, 97, 96, 0)])
def test_stitched_prediction_is_exact_and_on_the_cube_geobox(h, w, tile, pad, tmp_path):
    cube = _cube(h, w)
    out = predict_class_map(PixelModel(), cube, tile_size=tile, padding=pad, batch_size=3, out_path=tmp_path / "cm.tif")
    assert out.odc.geobox == cube.odc.geobox
    x = cube.isel(time=0).values
    expected = np.where(x[0] > x[1], 20, 10).astype(np.uint8)
    nodata = (x == -9999).any(0)
    expected[nodata] = CLASS_MAP_NODATA
    assert np.array_equal(out.values, expected)
    with rasterio.open(tmp_path / "cm.tif") as src:
        assert src.crs.to_epsg() == 32617 and src.shape == (h, w) and src.nodata == CLASS_MAP_NODATA
        assert src.transform == cube.odc.geobox.affine
        assert np.array_equal(src.read(1), expected)
    assert not list(tmp_path.glob("*.tmp"))


def test_padding_discards_tile_edge_effects():
    cube = _cube(130, 130, seed=1)
    cube = cube.where(cube != -9999, 0.0)
    cube.attrs["nodata"] = -9999.0
    whole = predict_class_map(ContextModel(), cube, tile_size=160, padding=0)  # one tile: the reference
    padded = predict_class_map(ContextModel(), cube, tile_size=64, padding=8)
    unpadded = predict_class_map(ContextModel(), cube, tile_size=64, padding=0)
    inner = (slice(1, -1), slice(1, -1))  # the raster border itself is mirrored in both
    assert np.array_equal(padded.values[inner], whole.values[inner])
    assert (unpadded.values[inner] != whole.values[inner]).any()


def test_band_mismatch_and_bad_tiles():
    cube = _cube(64, 64)
    with pytest.raises(BandMismatchError, match="missing \\['b3'\\]"):
        predict_class_map(PixelModel(("b1", "b2", "b3")), cube)
    with pytest.raises(ConfigError):
        predict_class_map(PixelModel(), cube, tile_size=64, padding=32)


# --------------------------------------------------------------------------- blending, options


class ConstantModel(PixelModel):
    """The same logits everywhere, whatever the input."""

    def forward(self, x):
        logits = torch.tensor([0.3, 1.2]).view(1, 2, 1, 1)
        return logits.expand(x.shape[0], 2, x.shape[2], x.shape[3]).clone()


class PositionModel(PixelModel):
    """Logits that ramp across each tile: a caricature of tile-edge effects (seams when cut)."""

    def forward(self, x):
        ramp = torch.linspace(-2, 2, x.shape[3]).view(1, 1, 1, -1).expand(x.shape[0], 1, x.shape[2], -1)
        return torch.cat([torch.zeros_like(ramp), ramp], 1)


class CountingModel(nn.Module):
    """Counts tiles through ``model``; raises after ``fail_after`` forward calls."""

    def __init__(self, model, fail_after=None):
        super().__init__()
        self.inner, self.spec, self.tiles, self.calls, self.fail_after = model, model.spec, 0, 0, fail_after

    def forward(self, x):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.tiles += x.shape[0]
        return self.inner(x)


def _filled(h, w, seed=1):
    cube = _cube(h, w, seed=seed)
    cube = cube.where(cube != -9999, 0.0)
    cube.attrs["nodata"] = -9999.0
    return cube


def test_blending_gives_a_constant_model_a_constant_output():
    prob = predict_probabilities(ConstantModel(), _filled(150, 203), tile_size=64, padding=16, batch_size=4)
    expected = torch.tensor([0.3, 1.2]).softmax(0).numpy()
    np.testing.assert_allclose(prob.values, np.broadcast_to(expected[:, None, None], prob.shape), atol=1e-6)
    cmap = predict_class_map(ConstantModel(), _filled(150, 203), tile_size=64, padding=16)
    assert (cmap.values == 20).all()


def test_linear_blend_removes_seams_that_a_cut_leaves():
    cube = _filled(64, 300)
    kw = {"tile_size": 96, "padding": 16, "batch_size": 4}
    cut = predict_probabilities(PositionModel(), cube, blend="none", **kw).values[1]
    blended = predict_probabilities(PositionModel(), cube, **kw).values[1]
    jump_cut = np.abs(np.diff(cut, axis=1)).max()
    jump_blend = np.abs(np.diff(blended, axis=1)).max()
    smooth = np.abs(np.diff(cut[:, 2:62], axis=1)).max()  # inside the first core: the model's own slope
    assert jump_cut > 10 * smooth  # a seam at every core edge
    assert jump_blend < 0.2 * jump_cut
    assert np.allclose(blended.sum() / blended.size, cut.sum() / cut.size, atol=0.05)


def test_tta_of_an_equivariant_model_changes_nothing_and_runs_8_transforms():
    cube = _filled(100, 70)
    plain = predict_probabilities(PixelModel(), cube, tile_size=64, padding=8)
    counted = CountingModel(PixelModel())
    tta = predict_probabilities(counted, cube, tile_size=64, padding=8, test_time_augmentation=True)
    np.testing.assert_allclose(tta.values, plain.values, atol=1e-6)
    n_tiles = 3 * 2  # cores of 48 px: rows 0, 48, 52; columns 0, 22
    assert counted.tiles == 8 * n_tiles
    # a model that is not D4-equivariant is changed by TTA
    a = predict_probabilities(PositionModel(), cube, tile_size=64, padding=8).values
    b = predict_probabilities(PositionModel(), cube, tile_size=64, padding=8, test_time_augmentation=True).values
    assert np.abs(a - b).max() > 0.1


def test_predict_background_false_never_predicts_class_0():
    model = PixelModel()
    model.spec = ModelSpec("Unet", "none", ("b1", "b2"), (ClassInfo(0, "background"), ClassInfo(1, "thing")), (0.0, 0.0), (1.0, 1.0))
    cube = _cube(40, 50)
    with_bg = predict_class_map(model, cube, tile_size=64, padding=8)
    without = predict_class_map(model, cube, tile_size=64, padding=8, predict_background=False)
    nodata = with_bg.values == CLASS_MAP_NODATA
    assert (with_bg.values[~nodata] == 0).any()
    assert (without.values[~nodata] == 1).all()
    assert np.array_equal(without.values == CLASS_MAP_NODATA, nodata)
    with pytest.raises(ConfigError, match="value 0"):
        predict_class_map(PixelModel(), cube, predict_background=False)


class StrideCheckingModel(PixelModel):
    def forward(self, x):
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise RuntimeError(f"input {tuple(x.shape)} not a multiple of the stride")
        return super().forward(x)


def test_tile_size_not_a_multiple_of_the_stride_is_padded_up():
    model = StrideCheckingModel()
    object.__setattr__(model, "spec", ModelSpec("Unet", "none", ("b1", "b2"), model.spec.classes, (0.0, 0.0), (1.0, 1.0), encoder_depth=5))
    cube = _cube(90, 77)
    out = predict_class_map(model, cube, tile_size=50, padding=5, batch_size=2)
    x = cube.isel(time=0).values
    expected = np.where(x[0] > x[1], 20, 10).astype(np.uint8)
    expected[(x == -9999).any(0)] = CLASS_MAP_NODATA
    assert np.array_equal(out.values, expected)


class OomModel(PixelModel):
    """Raises CUDA's out-of-memory error for batches larger than 2 (on any device)."""

    def forward(self, x):
        if x.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20 GiB")
        return super().forward(x)


def test_out_of_memory_halves_the_batch_and_warns():
    cube = _cube(150, 203)
    expected = predict_class_map(PixelModel(), cube, tile_size=64, padding=8, batch_size=2)
    with pytest.warns(StaclearnWarning, match="retrying with batch_size") as record:
        out = predict_class_map(OomModel(), cube, tile_size=64, padding=8, batch_size=8)
    halvings = [str(w.message).split("batch_size=")[-1] for w in record if issubclass(w.category, StaclearnWarning)]
    assert halvings == ["4.", "2."]
    assert np.array_equal(out.values, expected.values)


# --------------------------------------------------------------------------- streaming to COG


def test_predict_to_cog_matches_in_memory_prediction(tmp_path):
    cube = _cube(150, 203)
    kw = {"tile_size": 64, "padding": 8, "batch_size": 3}
    res = predict_to_cog(ContextModel(), cube, tmp_path / "cm.tif", probabilities_path=tmp_path / "p.tif", **kw)
    cmap = predict_class_map(ContextModel(), cube, **kw)
    prob = predict_probabilities(ContextModel(), cube, **kw)
    assert res.tiles_total == res.tiles_predicted == 20 and res.tiles_skipped == 0
    with rasterio.open(res.class_map) as src:
        assert src.crs.to_epsg() == 32617 and src.transform == cube.odc.geobox.affine
        assert src.nodata == CLASS_MAP_NODATA and src.block_shapes[0] == (512, 512)
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert np.array_equal(src.read(1), cmap.values)
        assert (src.read(1)[3:7, 5:9] == CLASS_MAP_NODATA).all()  # the nodata hole
    with rasterio.open(res.probabilities) as src:
        assert src.count == 2 and src.dtypes[0] == "float32"
        np.testing.assert_allclose(src.read(), prob.values, atol=1e-6)
        assert np.isnan(src.read()[:, 3:7, 5:9]).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.tif", "p.tif"]  # no scratch files left


def test_predict_to_cog_smaller_than_a_tile(tmp_path):
    cube = _cube(40, 30)
    res = predict_to_cog(PixelModel(), cube, tmp_path / "cm.tif", tile_size=256, padding=32)
    x = cube.isel(time=0).values
    expected = np.where(x[0] > x[1], 20, 10).astype(np.uint8)
    expected[(x == -9999).any(0)] = CLASS_MAP_NODATA
    with rasterio.open(res.class_map) as src:
        assert np.array_equal(src.read(1), expected)


def test_interrupted_prediction_resumes_and_skips_finished_tiles(tmp_path):
    cube = _cube(150, 203)
    kw = {"tile_size": 64, "padding": 8, "batch_size": 3, "prefetch": 1}
    reference = predict_to_cog(ContextModel(), cube, tmp_path / "ref.tif", probabilities_path=tmp_path / "ref_p.tif", **kw)
    out, out_p = tmp_path / "cm.tif", tmp_path / "p.tif"
    interrupted = CountingModel(ContextModel(), fail_after=3)  # 9 tiles: tile row 0 (5 tiles) done
    with pytest.raises(KeyboardInterrupt):
        predict_to_cog(interrupted, cube, out, probabilities_path=out_p, **kw)
    assert not out.exists() and (tmp_path / "cm.tif.partial.tif").exists()
    again = CountingModel(ContextModel())
    res = predict_to_cog(again, cube, out, probabilities_path=out_p, **kw)
    assert res.tiles_skipped == 5 and res.tiles_predicted == again.tiles == 15
    with rasterio.open(out) as a, rasterio.open(reference.class_map) as b:
        assert np.array_equal(a.read(), b.read())
    with rasterio.open(out_p) as a, rasterio.open(reference.probabilities) as b:
        np.testing.assert_allclose(a.read(), b.read(), atol=1e-6)  # other batches: float rounding
    assert not list(tmp_path.glob("*.partial*")) and not list(tmp_path.glob("*.tmp"))


def test_resume_with_other_weights_starts_afresh(tmp_path):
    cube = _cube(150, 203)
    kw = {"tile_size": 64, "padding": 8, "batch_size": 3, "prefetch": 0}
    with pytest.raises(KeyboardInterrupt):
        predict_to_cog(CountingModel(ContextModel(), fail_after=3), cube, tmp_path / "cm.tif", **kw)
    other = ContextModel()
    with torch.no_grad():
        other.conv.weight.mul_(-1)
    counted = CountingModel(other)
    with pytest.warns(StaclearnWarning, match="starting afresh"):
        res = predict_to_cog(counted, cube, tmp_path / "cm.tif", **kw)
    assert res.tiles_skipped == 0 and counted.tiles == 20
    with rasterio.open(res.class_map) as src:
        assert np.array_equal(src.read(1), predict_class_map(other, cube, **kw).values)


def test_predict_to_cog_needs_an_output_and_a_crs(tmp_path):
    cube = _cube(64, 64)
    with pytest.raises(ConfigError, match="nothing to write"):
        predict_to_cog(PixelModel(), cube)
    bare = cube.drop_vars(["x", "y", "spatial_ref"], errors="ignore")
    with pytest.raises(ConfigError, match="no CRS"):
        predict_to_cog(PixelModel(), bare, tmp_path / "cm.tif")
