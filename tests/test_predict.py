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

from staclearn.errors import BandMismatchError, ConfigError
from staclearn.labels import ClassInfo
from staclearn.models import ModelSpec
from staclearn.predict import CLASS_MAP_NODATA, predict_class_map


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
