"""The openEO UDF (staclearn.udf) run by openEO's own local UDF runner on the real NC Landsat-7 scene.

``openeo.udf.execute_local_udf`` executes the module from its source text exactly as a
back-end does (function lookup by signature included). The model is an untrained, seeded
U-Net published as an MLM card: the tests compare runs with each other and with
:func:`staclearn.inference.raster.predict_class_map`, which needs a fixed model, not a good one.

The U-Net is one encoder stage deep (stride 2, receptive field about 15 px), so a chunk's
32 px overlap holds all the context a pixel's prediction depends on, and the chunked run
must equal the whole-scene run exactly. (A deeper or trained U-Net sees far beyond any
practical overlap and its chunked map differs along seams; and a network that downsamples
is not shift-equivariant, so every tile must start at a multiple of its stride - which is
why the scene is cropped to even sizes below.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

openeo_udf = pytest.importorskip("openeo.udf", reason="openeo is not installed (pip install -e '.[dev]')")

import staclearn.udf as udf_module
from staclearn.data.cube import load_cube
from staclearn.errors import BandMismatchError, ConfigError
from staclearn.data.labels import classes_from_item
from staclearn.stac.modelcard import load_model, model_card
from staclearn.models.segmentation import build_model, save_weights
from staclearn.inference.raster import predict_class_map
from staclearn.data.search import open_items

pytestmark = pytest.mark.realdata

BANDS = ["b1", "b2", "b3", "b4", "b5"]
UDF_CODE = Path(udf_module.__file__).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def nc(tmp_path_factory):
    """The NC scene as staclearn loads it, the same data as an openEO cube, and a published card."""
    from conftest import NC_CATALOG, SHARED_DIR

    if not (SHARED_DIR / "data" / "landcover" / "nc_landsat7" / "landsat_multiband.tif").exists():
        pytest.skip("needs ../shared/data/landcover/nc_landsat7 (the NC Landsat-7 scene)")
    items = open_items(NC_CATALOG)
    imagery = [i for i in items if i.id == "nc-landsat7-2000"]
    classes = classes_from_item(next(i for i in items if i.id == "nc-landsat7-labels"), "labels")
    cube = load_cube(imagery, bands=BANDS).compute()
    values = cube.isel(time=0).values
    ok = (values != cube.attrs["nodata"]).all(0)
    mean, std = values[:, ok].mean(1), values[:, ok].std(1)
    torch.manual_seed(0)
    model = build_model(BANDS, classes, mean=mean, std=std, encoder="resnet18", encoder_depth=1).eval()
    out = tmp_path_factory.mktemp("udf")
    weights = save_weights(model, out / "weights.safetensors")
    card = model_card(model, str(weights), id="nc-untrained", tile_size=256)
    card_path = out / "card.json"
    card_path.write_text(json.dumps(card.to_dict(include_self_link=False)))
    # an openEO cube: dims (t, bands, y, x), band labels as coordinate, NaN where no data
    oe = cube.where(cube != cube.attrs["nodata"]).rename({"time": "t", "band": "bands"})
    oe = xr.DataArray(oe.values, dims=oe.dims, coords={"t": oe.t.values, "bands": BANDS, "y": oe.y.values, "x": oe.x.values})
    return cube, oe, card_path, classes, ~ok


def _run(cube: xr.DataArray, context: dict) -> xr.DataArray:
    import openeo

    result = openeo_udf.execute_local_udf(openeo.UDF(UDF_CODE, context=context), cube)
    return result.get_datacube_list()[0].get_array()


def test_udf_equals_predict_class_map(nc):
    cube, oe, card_path, classes, nodata = nc
    got = _run(oe, {"model": str(card_path), "tile_size": 256, "padding": 32})
    assert got.dims == ("t", "bands", "y", "x") and got.shape == (1, 1, 443, 489)
    assert list(got.bands.values) == ["class"] and got.dtype == np.uint8
    assert np.array_equal(got.y.values, oe.y.values) and np.array_equal(got.x.values, oe.x.values)
    expected = predict_class_map(load_model(card_path), cube, tile_size=256, padding=32)
    assert np.array_equal(got.values[0, 0], expected.values)
    values = got.values[0, 0]
    assert ((values == 255) == nodata).all()  # nodata exactly where a band is NaN
    assert set(np.unique(values[~nodata])) <= {c.value for c in classes}


def test_chunked_like_apply_neighborhood_matches_unchunked(nc):
    """Chunks of ``size + 2 * overlap`` px at multiples of ``size``, overlap trimmed, mosaicked."""
    _cube, oe, card_path, _classes, nodata = nc
    # even sizes: every tile of both runs (the last one snapped to the edge) starts on the stride
    oe, nodata = oe.isel(y=slice(0, 442), x=slice(0, 488)), nodata[:442, :488]
    ctx = {"model": str(card_path), "tile_size": 256, "padding": 32}
    whole = _run(oe, ctx).values[0, 0]
    size, overlap = 128, 32
    h, w = oe.sizes["y"], oe.sizes["x"]
    mosaic = np.full((h, w), 254, dtype=np.uint8)
    n_chunks = 0
    for y0 in range(0, h, size):
        for x0 in range(0, w, size):
            ya, xa = max(y0 - overlap, 0), max(x0 - overlap, 0)
            yb, xb = min(y0 + size + overlap, h), min(x0 + size + overlap, w)
            chunk = oe.isel(y=slice(ya, yb), x=slice(xa, xb))
            res = _run(chunk, ctx)
            assert res.shape == (1, 1, yb - ya, xb - xa)  # same size as the chunk, overlap included
            assert np.array_equal(res.x.values, chunk.x.values)
            core = res.values[0, 0, y0 - ya : y0 - ya + min(size, h - y0), x0 - xa : x0 - xa + min(size, w - x0)]
            mosaic[y0 : y0 + size, x0 : x0 + size] = core
            n_chunks += 1
    assert n_chunks == 4 * 4 and not (mosaic == 254).any()
    assert ((mosaic == 255) == nodata).all()
    assert len(np.unique(whole[~nodata])) >= 3
    assert np.array_equal(mosaic, whole), f"{(mosaic != whole).mean():.4%} of pixels differ"


def test_udf_without_model_href(nc):
    _cube, oe, _card, _classes, _ = nc
    with pytest.raises(ConfigError, match=r"context\['model'\]"):
        _run(oe.isel(y=slice(0, 64), x=slice(0, 64)), {"tile_size": 64})
    with pytest.raises(ConfigError, match="Unknown UDF context key"):
        _run(oe.isel(y=slice(0, 64), x=slice(0, 64)), {"model": "card.json", "tilesize": 64})


def test_udf_cube_without_the_card_bands(nc):
    _cube, oe, card_path, _classes, _ = nc
    small = oe.isel(y=slice(0, 64), x=slice(0, 64))
    s2_labels = small.assign_coords(bands=["B02", "B03", "B04", "B08", "B11"])
    with pytest.raises(BandMismatchError, match=r"lacks band\(s\) \['b1', 'b2', 'b3', 'b4', 'b5'\]"):
        _run(s2_labels, {"model": str(card_path)})
    with pytest.raises(BandMismatchError, match=r"\['b5'\]"):
        _run(small.isel(bands=slice(0, 4)), {"model": str(card_path)})
    # renaming openEO labels to card names makes the same cube usable; extra bands are ignored
    mapping = dict(zip(["B02", "B03", "B04", "B08", "B11"], BANDS, strict=True))
    extra = xr.concat([s2_labels, s2_labels.isel(bands=[0]).assign_coords(bands=["B12"])], "bands")
    renamed = _run(extra, {"model": str(card_path), "bands": mapping, "tile_size": 64, "padding": 8})
    plain = _run(small, {"model": str(card_path), "tile_size": 64, "padding": 8})
    assert np.array_equal(renamed.values, plain.values)


def test_udf_keeps_every_date_and_accepts_staclearn_dims(nc):
    _cube, oe, card_path, _classes, _ = nc
    small = oe.isel(y=slice(0, 96), x=slice(0, 96))
    two = xr.concat([small, small.assign_coords(t=small.t.values + np.timedelta64(1, "D"))], "t")
    ctx = {"model": str(card_path), "tile_size": 96, "padding": 16}
    res = _run(two, ctx)
    assert res.shape == (2, 1, 96, 96) and np.array_equal(res.t.values, two.t.values)
    assert np.array_equal(res.values[0], res.values[1])
    direct = udf_module.apply_datacube(small.isel(t=0).rename(bands="band"), ctx)  # no t, staclearn's band dim
    assert direct.dims == ("band", "y", "x") and np.array_equal(direct.values[0], res.values[0, 0])


def test_apply_metadata_relabels_bands(nc):
    from openeo.metadata import BandDimension, CubeMetadata, SpatialDimension, TemporalDimension

    _cube, _oe, card_path, _classes, _ = nc
    md = CubeMetadata(
        dimensions=[
            TemporalDimension(name="t", extent=None),
            BandDimension(name="bands", bands=[]).append_band("b1"),
            SpatialDimension(name="x", extent=[0, 1]),
            SpatialDimension(name="y", extent=[0, 1]),
        ]
    )
    out = udf_module.apply_metadata(md, {"model": str(card_path)})
    assert out.band_names == ["class"]


def test_udf_change_model_on_a_real_oscd_pair_equals_predict_change(tmp_path):
    """A two-date cube (t = before, after) through a siamese change card gives predict_change's mask."""
    from conftest import REPO, SHARED_DIR

    from staclearn.models.change import build_change_model
    from staclearn.data.pairs import load_pair
    from staclearn.inference.change import predict_change

    if not (SHARED_DIR / "data" / "change" / "oscd" / "bercy").is_dir():
        pytest.skip("needs ../shared/data/change/oscd")
    items = {i.id: i for i in open_items(REPO / "catalogs" / "oscd" / "catalog.json")}
    bands = ["B02", "B03", "B04", "B08"]
    before, after, _ = load_pair([items["bercy-20161130"]], [items["bercy-20170829"]], bands=bands)
    before, after = before.compute(), after.compute()
    torch.manual_seed(0)
    model = build_change_model(bands, mean=[1200.0] * 4, std=[400.0] * 4, fusion="siam-diff", encoder_depth=3).eval()
    card = model_card(model, str(save_weights(model, tmp_path / "w.safetensors")), id="bercy-change", tile_size=256)
    card_path = tmp_path / "card.json"
    card_path.write_text(json.dumps(card.to_dict(include_self_link=False)))
    both = xr.concat([before, after], "time").rename({"time": "t", "band": "bands"})
    oe = xr.DataArray(both.values, dims=both.dims, coords={"t": both.t.values, "bands": bands, "y": both.y.values, "x": both.x.values})
    got = _run(oe, {"model": str(card_path), "tile_size": 256, "padding": 32})
    assert got.dims == ("t", "bands", "y", "x") and list(got.bands.values) == ["change"]
    assert got.t.values.tolist() == both.t.values[-1:].tolist()  # one mask, dated by the after date
    expected = predict_change(load_model(card_path), before, after, tile_size=256, padding=32, device="cpu").mask
    assert np.array_equal(got.values[0, 0], expected.values)
    assert set(np.unique(expected.values)) <= {0, 1}
    with pytest.raises(Exception, match="exactly 2 dates"):
        _run(oe.isel(t=[0]), {"model": str(card_path)})


def _card(model, weights: Path, path: Path, card_id: str) -> Path:
    card = model_card(model, str(weights), id=card_id, tile_size=256)
    path.write_text(json.dumps(card.to_dict(include_self_link=False)))
    return path


def test_model_cache_is_keyed_by_the_weights_content(tmp_path):
    """Two copies of the same weights share one cached model; new weights at the same path give a new one."""
    import os
    import shutil

    from staclearn.data.labels import ClassInfo
    from staclearn.inference import cache

    classes = (ClassInfo(0, "background"), ClassInfo(1, "water"))
    torch.manual_seed(0)
    model = build_model(BANDS, classes, mean=[0.0] * 5, std=[1.0] * 5, encoder="resnet18", encoder_depth=1).eval()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    weights_a = save_weights(model, tmp_path / "a" / "w.safetensors")
    weights_b = Path(shutil.copy(weights_a, tmp_path / "b" / "w.safetensors"))
    card_a = _card(model, weights_a, tmp_path / "a" / "card.json", "a")
    card_b = _card(model, weights_b, tmp_path / "b" / "card.json", "b")

    udf_module.clear_model_cache()
    first = udf_module._cached_model(str(card_a))
    assert udf_module._cached_model(str(card_b)) is first  # same content under another path: one model
    assert udf_module._cached_model(str(card_a)) is first
    info = cache.cache_info()
    assert (info.misses, info.hits, info.currsize) == (1, 2, 1)

    torch.manual_seed(1)
    retrained = build_model(BANDS, classes, mean=[0.0] * 5, std=[1.0] * 5, encoder="resnet18", encoder_depth=1).eval()
    stat = weights_a.stat()
    save_weights(retrained, weights_a)
    os.utime(weights_a, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new stamp even on a coarse clock
    _card(retrained, weights_a, tmp_path / "a" / "card.json", "a")  # republished: the card records the new checksum
    second = udf_module._cached_model(str(card_a))
    assert second is not first and cache.cache_info().misses == 2
    for name, t in retrained.state_dict().items():
        assert torch.equal(second.state_dict()[name].cpu(), t)
    assert udf_module._cached_model(str(card_b)) is first  # the copy still holds the old weights

    udf_module.clear_model_cache()
    assert cache.cache_info() == cache.CacheInfo(0, 0, cache.MAX_MODELS, 0)
