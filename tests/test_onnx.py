"""ONNX artifact in the model card, engine choice and tile_size="auto" (staclearn.inference.engines, staclearn.inference.raster)."""

from __future__ import annotations

import builtins
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from staclearn.inference.engines import ONNX_ASSET, OnnxModel, export_onnx, load_onnx_model
from staclearn.stac.onnx import add_onnx_artifact
from staclearn.errors import ModelCardError, StaclearnWarning, UnsafeWeightsError
from staclearn.data.labels import ClassInfo
from staclearn.stac.modelcard import load_model, model_card, read_card
from staclearn.models.segmentation import build_model, save_weights
from staclearn.inference._tiling import POP_PX, Grid
from staclearn.inference.raster import auto_tile_size, predict_class_map, predict_to_cog

pytest.importorskip("onnxruntime")

CLASSES = [ClassInfo(i, f"class{i}") for i in range(1, 6)]
# Documented agreement between the ONNX Runtime and PyTorch class maps of one model on the same
# tiles: the engines differ by float rounding (max |logit difference| ~1e-3 on these models), so
# only pixels whose two best classes are that close can change.
AGREEMENT = 0.999


def _card(tmp: Path, model: torch.nn.Module, *, tile_size: int = 256) -> Path:
    weights = save_weights(model, tmp / "model" / "weights.safetensors")
    card = model_card(model, str(weights.resolve()), id="test-model", tile_size=tile_size)
    add_onnx_artifact(card, model)
    path = tmp / "model" / "card.json"
    path.write_text(json.dumps(card.to_dict()))
    return path


@pytest.fixture(scope="module")
def nc(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """The NC Landsat scene as a cube + a seeded random-weights U-Net card with its ONNX artifact."""
    from staclearn.data.cube import load_cube
    from staclearn.data.labels import split_label_items
    from staclearn.data.search import open_items

    shared = Path(__file__).parents[1].parent / "shared"
    if not (shared / "data" / "landcover" / "nc_landsat7" / "landsat_multiband.tif").exists():
        pytest.skip("needs ../shared/data/landcover/nc_landsat7")
    imagery, _ = split_label_items(open_items(Path(__file__).parents[1] / "catalogs" / "nc-landsat" / "catalog.json"))
    cube = load_cube(imagery).isel(time=0).load()
    values = cube.values.reshape(cube.sizes["band"], -1)
    ok = values[0] != cube.attrs["nodata"]
    torch.manual_seed(0)
    model = build_model(
        [str(b) for b in cube.band.values], CLASSES, mean=values[:, ok].mean(1), std=values[:, ok].std(1),
        encoder="resnet18",
    ).eval()
    tmp = tmp_path_factory.mktemp("nc-card")
    return cube, model, _card(tmp, model)


def test_onnx_round_trip_from_the_card_matches_pytorch_on_nc(nc):
    cube, model, card = nc
    onnx_model = load_model(card, engine="onnx")
    torch_model = load_model(card, engine="torch")
    assert isinstance(onnx_model, OnnxModel) and onnx_model.engine == "onnx"
    assert onnx_model.provider == "CPUExecutionProvider"
    assert torch_model.engine == "torch" and not isinstance(torch_model, OnnxModel)
    assert onnx_model.spec == torch_model.spec
    kw = {"tile_size": 256, "padding": 32, "batch_size": 2, "device": "cpu"}
    a = predict_class_map(onnx_model, cube, **kw).values
    b = predict_class_map(torch_model, cube, **kw).values
    assert a.shape == (443, 489)
    assert (a == 255).sum() == (b == 255).sum() > 0  # the scene's nodata, the same in both
    agree = float((a == b).mean())
    assert agree >= AGREEMENT, agree
    x = torch.from_numpy(cube.values[:, 160:288, 160:288].copy())[None]
    assert (x != cube.attrs["nodata"]).all()
    with torch.inference_mode():
        want = torch_model(x)
        diff = (onnx_model(x) - want).abs().max().item()
    assert diff < 1e-4 * want.abs().max().item() + 1e-3


def test_card_with_two_model_assets_validates_offline(nc, shared_dir):
    from staclearn.stac.validate import validate

    _, _, card_path = nc
    card = read_card(card_path)
    models = {k: a for k, a in card.assets.items() if "mlm:model" in (a.roles or [])}
    assert set(models) == {"weights", ONNX_ASSET}
    onnx_asset = models[ONNX_ASSET]
    assert onnx_asset.extra_fields["mlm:artifact_type"] == "torch.onnx.export"
    assert onnx_asset.extra_fields["staclearn:onnx_input"]["shape"] == [-1, 5, -1, -1]
    assert onnx_asset.extra_fields["staclearn:onnx_output"]["shape"] == [-1, 5, -1, -1]
    assert Path(onnx_asset.get_absolute_href()).with_suffix("").name == "weights"
    report = validate(card, shared_dir / "schemas")
    assert any("mlm" in s for s in report.validated)


def test_engine_auto_prefers_onnx_and_falls_back_without_onnxruntime(nc, monkeypatch):
    _, model, card = nc
    assert load_model(card, engine="auto").engine == "onnx"
    real_import = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto falls back silently
        auto = load_model(card, engine="auto")
    assert auto.engine == "torch" and not isinstance(auto, OnnxModel)
    with pytest.warns(StaclearnWarning, match="onnxruntime is not installed"):
        asked = load_model(card, engine="onnx")
    assert asked.engine == "torch"


def test_card_without_onnx_asset_falls_back_and_onnx_engine_on_a_torch_model(nc, tmp_path):
    cube, model, card_path = nc
    d = json.loads(Path(card_path).read_text())
    del d["assets"][ONNX_ASSET]
    bare = tmp_path / "card.json"
    bare.write_text(json.dumps(d))
    assert load_model(bare, engine="auto").engine == "torch"
    with pytest.warns(StaclearnWarning, match="no ONNX asset"):
        load_model(bare, engine="onnx")
    # engine="onnx" in predict_* exports a PyTorch module on the fly
    part = cube.isel(y=slice(0, 96), x=slice(0, 128))
    a = predict_class_map(model, part, tile_size=96, padding=16, engine="onnx").values
    b = predict_class_map(model, part, tile_size=96, padding=16, engine="torch").values
    assert (a == b).mean() >= AGREEMENT


def test_onnx_file_is_checked_before_loading(nc, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    _, _, card_path = nc
    card = read_card(card_path)
    # a graph with a custom-domain operator is refused (custom operators can load native code)
    node = helper.make_node("Evil", ["input"], ["logits"], domain="com.example")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 5, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5, 32, 32])],
    )
    evil = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "evil.onnx"
    onnx.save(evil, path)
    asset = card.assets[ONNX_ASSET]
    asset.href = str(path)
    asset.extra_fields.pop("staclearn:sha256")
    with pytest.raises(UnsafeWeightsError, match="com.example"):
        load_onnx_model(card, None)
    # a file that does not match the card's checksum is refused
    asset.extra_fields["staclearn:sha256"] = "0" * 64
    with pytest.raises(ModelCardError, match="SHA-256"):
        load_onnx_model(card, None)


def test_change_model_and_classifier_export(tmp_path):
    from staclearn.models.change import build_change_model
    from staclearn.models.classifier import build_classifier
    from staclearn.inference.engines import _check_graph

    torch.manual_seed(0)
    siam = build_change_model(["red", "nir"], mean=[0.0] * 4, std=[1.0] * 4, fusion="siam-diff").eval()
    clf = build_classifier(["r", "g", "b"], CLASSES[:3], mean=[0.0] * 3, std=[1.0] * 3, chip_size=64).eval()
    for model, x in ((siam, torch.randn(2, 4, 64, 96)), (clf, torch.randn(3, 3, 64, 64))):
        data = export_onnx(model, tmp_path / f"{type(model).__name__}.onnx").read_bytes()
        _check_graph(data, "test")
        onnx_model = OnnxModel(data, model.spec)
        with torch.inference_mode():
            want = model(x)
        got = onnx_model(x)
        assert got.shape == want.shape
        assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.99
        assert (got - want).abs().max().item() < 1e-2


def test_tile_size_auto_fits_the_memory_budget():
    kw = {"padding": 64, "stride": 32, "bands": 4, "classes": 7, "batch_size": 4, "bytes_per_px": 500.0, "prefetch": 2}

    def memory(t: int, b: int, w: int) -> float:  # the estimate auto_tile_size documents
        return b * t * t * (500 + 4 * 4 * 4) + 8 * (t + 64) * w * 4 + 7 * POP_PX * 4

    small = auto_tile_size((4096, 4096), memory_budget_mb=256, **kw)
    large = auto_tile_size((4096, 4096), memory_budget_mb=2048, **kw)
    wide = auto_tile_size((4096, 16384), memory_budget_mb=256, **kw)
    for (t, b), w in ((small, 4096), (large, 4096), (wide, 16384)):
        assert t % 32 == 0 and t > 128 and 1 <= b <= 4
    assert memory(*small, 4096) <= 256 * 2**20
    assert memory(*wide, 16384) <= 256 * 2**20
    assert memory(*large, 4096) <= 2048 * 2**20
    assert large[0] > small[0] > wide[0]  # a bigger budget buys bigger tiles; a wider raster smaller ones

    def pushed(t: int) -> int:
        g = Grid.make(4096, 4096, t, 64, 32, "none")
        return g.n_tiles * g.tile_shape[0] * g.tile_shape[1]

    assert pushed(large[0]) < pushed(small[0])
    assert pushed(large[0]) < 0.8 * pushed(512)  # a fifth fewer pixels through the model than 512 px tiles
    fits = [t for t in range(160, small[0] + 1, 32) if memory(t, 1, 4096) <= 256 * 2**20]
    assert pushed(small[0]) == min(pushed(t) for t in fits)  # the fewest pixels among the tiles that fit
    # a raster smaller than a tile: one tile, never larger than the padded raster
    t, _ = auto_tile_size((100, 120), memory_budget_mb=2048, **kw)
    assert t == 256


def test_predict_to_cog_auto_tiles_and_onnx_model(nc, tmp_path):
    import rasterio

    cube, _, card = nc
    onnx_model = load_model(card, engine="onnx")
    res = predict_to_cog(onnx_model, cube, tmp_path / "cm.tif", padding=32, memory_budget_mb=64, device="cpu")
    ref = predict_class_map(onnx_model, cube, tile_size=res_tile(cube, onnx_model, 64), padding=32, device="cpu").values
    with rasterio.open(res.class_map) as src:
        out = src.read(1)
    assert res.tiles_total > 1
    assert (out == ref).mean() >= AGREEMENT  # same tiles; ONNX Runtime may round differently per batch size


def res_tile(cube, model, budget: float) -> int:
    from staclearn.inference.engines import tile_bytes_per_px

    t, _ = auto_tile_size(
        (cube.sizes["y"], cube.sizes["x"]), padding=32, stride=32, bands=5, classes=5, batch_size=8,
        bytes_per_px=tile_bytes_per_px(model), memory_budget_mb=budget,
    )
    return t


def test_cli_export_onnx_and_predict_engine(nc, tmp_path):
    from typer.testing import CliRunner

    from staclearn.cli import app

    _, _, card_path = nc
    d = json.loads(Path(card_path).read_text())
    del d["assets"][ONNX_ASSET]
    card = Path(card_path).parent / "card-no-onnx.json"
    card.write_text(json.dumps(d))
    res = CliRunner().invoke(app, ["export-onnx", str(card)])
    assert res.exit_code == 0, res.output
    again = read_card(card)
    assert again.assets[ONNX_ASSET].extra_fields["mlm:artifact_type"] == "torch.onnx.export"
    assert Path(again.assets[ONNX_ASSET].get_absolute_href()).exists()
    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "predict", "--model", str(card), "--catalog", str(Path(__file__).parents[1] / "catalogs" / "nc-landsat" / "catalog.json"),
        "--out", str(out), "--engine", "onnx", "--device", "cpu", "--padding", "32",
    ])
    assert res.exit_code == 0, res.output
    assert "engine: onnx" in res.output
    assert (out / "class_map.tif").exists()
