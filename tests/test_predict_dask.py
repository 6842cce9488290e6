"""Tiled prediction on Dask: chunks with overlap on a 2-worker LocalCluster equal one process."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_coords

from staclearn.errors import ConfigError
from staclearn.data.labels import ClassInfo
from staclearn.models.segmentation import build_model, save_weights
from staclearn.inference.raster import CLASS_MAP_NODATA, predict_class_map, predict_probabilities

distributed = pytest.importorskip("distributed")

from staclearn.inference.dask import predict_dask

BANDS = ("blue", "green", "red", "nir")


def _cube(h: int = 128, w: int = 128, chunk: int = 64) -> xr.DataArray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    data = (np.sin(xx / 9.0) + np.cos(yy / 13.0))[None] + rng.normal(0, 0.3, (4, h, w))
    data = (1000 + 300 * data).astype(np.float32)
    data[:, 40:50, 30:45] = 0.0  # a nodata hole
    gbox = GeoBox((h, w), Affine(10, 0, 500000, 0, -10, 4000000), "EPSG:32633")
    cube = xr.DataArray(data, dims=("band", "y", "x"), coords={"band": list(BANDS), **xr_coords(gbox)}, attrs={"nodata": 0.0})
    return cube.chunk({"y": chunk, "x": chunk})


@pytest.fixture(scope="module")
def model_and_weights(tmp_path_factory):
    torch.manual_seed(0)
    classes = (ClassInfo(0, "background"), ClassInfo(1, "water"), ClassInfo(2, "forest"))
    model = build_model(BANDS, classes, mean=[1000.0] * 4, std=[300.0] * 4, encoder="resnet18", encoder_depth=3).eval()
    path = save_weights(model, tmp_path_factory.mktemp("w") / "unet.safetensors")
    return model, path


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, distributed.Client(cluster) as c:
        yield c


def test_dask_threaded_scheduler_equals_single_process_with_a_cut(model_and_weights):
    model, weights = model_and_weights
    cube = _cube()
    kw = {"tile_size": 48, "padding": 8, "batch_size": 4, "blend": "none", "device": "cpu"}
    got = predict_dask(weights, model.spec, cube, output="probabilities", **kw).compute(scheduler="synchronous")
    single = predict_probabilities(model, cube, **kw)
    np.testing.assert_allclose(got.values, single.values, atol=1e-4)  # NaN in the same places


@pytest.mark.slow  # starting two worker processes that import torch takes ~20 s on 2 cores
def test_dask_on_two_workers_equals_single_process(model_and_weights, client):
    model, weights = model_and_weights
    cube = _cube()
    kw = {"tile_size": 48, "padding": 8, "batch_size": 4}  # cores of 32 px: 2 per 64-px chunk
    lazy = predict_dask(weights, model.spec, cube, output="probabilities", device="cpu", torch_threads=1, **kw)
    assert isinstance(lazy.data, __import__("dask.array").array.Array)
    graph_bytes = len(pickle.dumps(dict(lazy.data.__dask_graph__())))
    assert graph_bytes < weights.stat().st_size / 20  # the weights are not in the task graph
    got = lazy.compute()
    loads = client.run(lambda: __import__("staclearn.inference.cache", fromlist=["cache_info"]).cache_info())
    assert len(loads) == 2 and all(info.misses <= 1 for info in loads.values())  # one load per worker
    single = predict_probabilities(model, cube, device="cpu", **kw)
    assert got.odc.geobox == single.odc.geobox and list(got["class"].values) == [0, 1, 2]
    assert np.array_equal(np.isnan(got.values), np.isnan(single.values))  # the nodata hole
    diff = np.abs(np.nan_to_num(got.values) - np.nan_to_num(single.values))
    # away from chunk boundaries (the tiles are the same): equal to float rounding
    far = np.ones((128, 128), bool)
    far[60:68] = far[:, 60:68] = False
    assert diff[:, far].max() < 1e-4
    # within padding / 2 of a chunk boundary the linear blend becomes a cut: close, not equal
    assert 0 < diff.max() < 0.5

    # with blend="none" (a cut at every core edge) the tiles and the stitching are the same
    cut = predict_dask(weights, model.spec, cube, blend="none", device="cpu", torch_threads=1, **kw).compute()
    assert cut.dtype == np.uint8 and cut.attrs["nodata"] == CLASS_MAP_NODATA
    single_cut = predict_class_map(model, cube, blend="none", device="cpu", **kw)
    assert np.array_equal(cut.values, single_cut.values)
    assert (cut.values[40:50, 30:45] == CLASS_MAP_NODATA).all()
    loads = client.run(lambda: __import__("staclearn.inference.cache", fromlist=["cache_info"]).cache_info())
    assert sum(info.misses for info in loads.values()) <= 2 and sum(info.hits for info in loads.values()) >= 1

def test_dask_needs_a_dask_cube_and_big_enough_chunks(model_and_weights):
    model, weights = model_and_weights
    with pytest.raises(ConfigError, match="Dask-backed"):
        predict_dask(weights, model.spec, _cube().compute())
    with pytest.raises(ConfigError, match="smaller than padding"):
        predict_dask(weights, model.spec, _cube(chunk=16), padding=32)


def test_dask_model_cache_is_keyed_by_the_weights_content(model_and_weights, tmp_path):
    """A copy of the weights under another path reuses the loaded model; new weights at the same path are loaded."""
    import os
    import shutil

    from staclearn.inference import cache

    model, weights = model_and_weights
    cube = _cube(64, 64, 64)
    kw = {"output": "probabilities", "tile_size": 48, "padding": 8, "batch_size": 4, "device": "cpu"}
    path = tmp_path / "w.safetensors"
    copy = tmp_path / "copy" / "w.safetensors"
    copy.parent.mkdir()
    shutil.copy(weights, path)
    shutil.copy(weights, copy)
    cache.clear_model_cache()
    a = predict_dask(path, model.spec, cube, **kw).compute(scheduler="synchronous")
    b = predict_dask(copy, model.spec, cube, **kw).compute(scheduler="synchronous")
    assert cache.cache_info().misses == 1 and cache.cache_info().hits >= 1
    np.testing.assert_array_equal(a.values, b.values)

    torch.manual_seed(1)
    retrained = build_model(BANDS, model.spec.classes, mean=[1000.0] * 4, std=[300.0] * 4, encoder="resnet18", encoder_depth=3).eval()
    stat = path.stat()
    save_weights(retrained, path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new stamp even on a coarse clock
    c = predict_dask(path, model.spec, cube, **kw).compute(scheduler="synchronous")
    assert cache.cache_info().misses == 2
    expected = predict_probabilities(retrained, cube, tile_size=48, padding=8, batch_size=4, device="cpu")
    np.testing.assert_allclose(c.values, expected.values, atol=1e-4)
    cache.clear_model_cache()
