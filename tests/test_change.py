"""Change detection: pairs on one GeoBox, their errors, chips, models, prediction, CVA, OSCD acceptance.

Synthetic pairs are seeded rasters with change inserted in a known square; the acceptance
test runs the whole workflow on real OSCD cities (../shared/data, skipped where absent).
"""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import torch
import xarray as xr
from affine import Affine
from conftest import REPO, SHARED_DIR, make_item
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_coords

from staclearn.chips.augment import Augmentation
from staclearn.chips.pairs import export_change_chips
from staclearn.chips.pixel import ChipDataset, band_statistics
from staclearn.data.pairs import CHANGE_CLASSES, load_pair, load_png_pair, stack_pair
from staclearn.data.search import open_items
from staclearn.data.splits import CitySplit, split_cities
from staclearn.errors import (
    BandMismatchError,
    ConfigError,
    DateOrderError,
    GeoBoxMismatchError,
    NoGeoreferenceError,
    NoGeoreferenceWarning,
    NoOverlapError,
    SplitError,
    StaclearnWarning,
)
from staclearn.evaluation.change import fit_change_threshold
from staclearn.evaluation.cva import (
    change_vector_magnitude,
    cva_mask,
    fit_cva_threshold,
)
from staclearn.evaluation.metrics import compute_metrics
from staclearn.inference.change import predict_change
from staclearn.models.change import ChangeLoss, build_change_model, load_change_model
from staclearn.models.segmentation import (
    ModelSpec,
    SegmentationModel,
    SiameseDiffUnet,
    pair_band_names,
    save_weights,
)
from staclearn.stac.change import change_mask_item
from staclearn.stac.modelcard import load_model, model_card, spec_from_card
from staclearn.stac.validate import validate, validate_catalog
from staclearn.training.segmentation import Trainer
from staclearn.workflows.change import ChangeConfig, run_change

CRS = "EPSG:32631"
SIZE = 64
SQUARE = (slice(20, 34), slice(36, 50))  # rows, cols of the inserted change
OSCD = SHARED_DIR / "data" / "change" / "oscd"
LEVIR = SHARED_DIR / "data" / "change" / "levir_samples"
OSCD_CATALOG = REPO / "catalogs" / "oscd" / "catalog.json"
CHANGE_CLASSES_JSON = [
    {"value": 1, "name": "no change", "description": "no change"},
    {"value": 2, "name": "change", "description": "change"},
]


def _transform(x0: float = 500000.0, res: float = 10.0) -> Affine:
    return Affine(res, 0, x0, 0, -res, 5000000.0)


def _arrays(seed: int, square=SQUARE, shift=(300.0, -200.0, 250.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded before/after (3, 64, 64) float32 and the 1/2 change raster with change in ``square``."""
    rng = np.random.default_rng(seed)
    before = rng.normal(1000, 100, (3, SIZE, SIZE)).astype(np.float32)
    after = before + rng.normal(0, 20, before.shape).astype(np.float32)
    after[(slice(None), *square)] += np.asarray(shift, np.float32)[:, None, None]
    values = np.ones((SIZE, SIZE), np.uint8)
    values[square] = 2
    return before, after, values


def _label_item(tmp_path: Path, name: str, values: np.ndarray, *, crs: str | None = CRS, transform: Affine | None = None) -> pystac.Item:
    transform = transform or _transform()
    if crs is None:  # no georeference at all, like OSCD's original <city>-cm.tif
        path = tmp_path / f"{name}.tif"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path, "w", driver="GTiff", height=values.shape[0], width=values.shape[1], count=1, dtype="uint8") as dst:
                dst.write(values[None])
        item = pystac.Item(id=name, geometry=None, bbox=None, datetime=datetime(2021, 6, 1, tzinfo=UTC), properties={})
        item.add_asset("labels", pystac.Asset(href=str(path), roles=["labels"]))
    else:
        item = make_item(tmp_path, name, values[None], crs=crs, transform=transform, nodata=0, asset="labels", band_names=["labels"])
    item.assets["labels"].extra_fields["classification:classes"] = CHANGE_CLASSES_JSON
    item.properties["label:type"] = "raster"
    return item


def _pair_items(tmp_path: Path, name: str, seed: int, *, x0: float = 500000.0, square=SQUARE, nodata: float | None = None):
    before, after, values = _arrays(seed, square)
    if nodata is not None:
        before[:, :3, :5] = nodata  # a strip without data on the first date
    t = _transform(x0)
    b = make_item(tmp_path, f"{name}-t1", before, crs=CRS, transform=t, nodata=nodata)
    a = make_item(tmp_path, f"{name}-t2", after, crs=CRS, transform=t, nodata=nodata)
    a.datetime = datetime(2022, 6, 1, tzinfo=UTC)
    return b, a, _label_item(tmp_path, f"{name}-labels", values, transform=t)


def _cube(arr: np.ndarray, gbox: GeoBox, bands=("b1", "b2", "b3")) -> xr.DataArray:
    coords = {"time": [np.datetime64("2021-06-01")], "band": list(bands), **xr_coords(gbox)}
    return xr.DataArray(arr[None], dims=("time", "band", "y", "x"), coords=coords, attrs={"nodata": float("nan")})


def _synthetic_pairs(n: int) -> dict[str, tuple[xr.DataArray, xr.DataArray, xr.DataArray]]:
    """``n`` in-memory pairs, each with a 14 px change square at a seeded position."""
    pairs = {}
    for i in range(n):
        r0, c0 = np.random.default_rng(100 + i).integers(4, SIZE - 18, 2)
        square = (slice(r0, r0 + 14), slice(c0, c0 + 14))
        before, after, values = _arrays(i, square)
        gbox = GeoBox((SIZE, SIZE), _transform(500000.0 + 1000 * i), CRS)
        labels = xr.DataArray((values == 2).astype(np.uint8), dims=("y", "x"), coords=xr_coords(gbox))
        pairs[f"city{i}"] = (_cube(before, gbox), _cube(after, gbox), labels)
    return pairs


class DiffModel(torch.nn.Module):
    """Stand-in change model: change where band 1 rose by more than 150 between the dates."""

    def __init__(self) -> None:
        super().__init__()
        bands = tuple(pair_band_names(["b1", "b2", "b3"]))
        self.spec = ModelSpec("Unet", "none", bands, CHANGE_CLASSES, (0.0,) * 6, (1.0,) * 6, extra={"fusion": "early"})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = (x[:, 3] - x[:, 0] - 150.0) / 50.0
        return torch.stack([torch.zeros_like(d), d], 1)


# ------------------------------------------------------------------------------- load_pair


def test_load_pair_puts_dates_and_labels_on_one_geobox(tmp_path):
    b, a, lab = _pair_items(tmp_path, "p", 0, nodata=-1.0)
    before, after, labels = load_pair([b], [a], bands=["b1", "b2", "b3"], label_item=lab)
    gbox = GeoBox((SIZE, SIZE), _transform(), CRS)
    assert before.odc.geobox == after.odc.geobox == labels.odc.geobox == gbox
    assert before.dims == ("time", "band", "y", "x") and before.dtype == np.float32
    _, exp_a, values = _arrays(0)
    assert np.allclose(after.values[0], exp_a)
    assert np.isnan(before.values[0, :, :3, :5]).all() and np.isnan(before.attrs["nodata"])  # nodata -> NaN
    assert labels.dtype == np.uint8 and set(np.unique(labels.values)) == {0, 1}
    assert np.array_equal(labels.values, (values == 2).astype(np.uint8))  # OSCD 1/2 -> 0/1


def test_dates_in_the_wrong_order_are_refused(tmp_path):
    b, a, _ = _pair_items(tmp_path, "p", 0)
    with pytest.raises(DateOrderError, match=r"2022-06-01T00:00:00\+00:00.*later than.*2021-06-01T00:00:00\+00:00") as err:
        load_pair([a], [b], bands=["b1"])
    assert "p-t2" in str(err.value) and "allow_reversed=True" in str(err.value)
    before, _, _ = load_pair([a], [b], bands=["b1"], allow_reversed=True)
    assert before.sizes["band"] == 1


def test_pairs_that_do_not_overlap_are_refused(tmp_path):
    b, _, _ = _pair_items(tmp_path, "here", 0)
    _, a, _ = _pair_items(tmp_path, "there", 1, x0=600000.0)  # 100 km east
    with pytest.raises(NoOverlapError, match=r"before Items \['here-t1'\].*after Items \['there-t2'\].*do not overlap"):
        load_pair([b], [a], bands=["b1"])


def test_band_sets_that_differ_are_refused(tmp_path):
    before, after, _ = _arrays(0)
    b = make_item(tmp_path, "b", before, crs=CRS, transform=_transform())
    a = make_item(tmp_path, "a", after[:2], crs=CRS, transform=_transform(), band_names=["b1", "b2"])
    a.datetime = datetime(2022, 6, 1, tzinfo=UTC)
    with pytest.raises(BandMismatchError, match=r"after Items \['a'\] lack \['b3'\]") as err:
        load_pair([b], [a], bands=["b1", "b2", "b3"])
    assert "before Items ['b'] lack []" in str(err.value)
    assert load_pair([b], [a], bands=["b1", "b2"])[1].sizes["band"] == 2


def test_labels_in_another_grid_are_reprojected_nearest(tmp_path):
    b, a, _ = _pair_items(tmp_path, "p", 0)
    _, _, values = _arrays(0)
    fine = np.repeat(np.repeat(values, 2, 0), 2, 1)  # the same mask on a 5 m grid
    lab = _label_item(tmp_path, "fine", fine, transform=_transform(res=5.0))
    _, _, labels = load_pair([b], [a], bands=["b1"], label_item=lab)
    assert labels.shape == (SIZE, SIZE)
    assert np.array_equal(labels.values, (values == 2).astype(np.uint8))


def test_label_without_georeference_only_when_its_shape_is_the_grid(tmp_path):
    b, a, _ = _pair_items(tmp_path, "p", 0)
    _, _, values = _arrays(0)
    odd = _label_item(tmp_path, "odd", values[:50, :60], crs=None)
    with pytest.raises(GeoBoxMismatchError, match=r"'odd'.*no georeference.*\(50, 60\).*\(64, 64\)"):
        load_pair([b], [a], bands=["b1"], label_item=odd)
    same = _label_item(tmp_path, "same", values, crs=None)
    with pytest.warns(StaclearnWarning, match="no georeference"):
        _, _, labels = load_pair([b], [a], bands=["b1"], label_item=same)
    assert np.array_equal(labels.values, (values == 2).astype(np.uint8))


def test_unreadable_label_raster_and_png_are_named_errors(tmp_path):
    """A truncated label raster and a corrupt PNG raise staclearn errors that name the file."""
    from staclearn.errors import AssetReadError, ImageryNotFoundError

    b, a, labels = _pair_items(tmp_path, "p", 0)
    href = Path(labels.assets["labels"].get_absolute_href())
    href.write_bytes(href.read_bytes()[:200])  # truncated
    with pytest.raises(AssetReadError, match=r"'labels' of Item 'p-labels'.*cannot be read") as err:
        load_pair([b], [a], bands=["b1"], label_item=labels)
    assert (err.value.item_id, err.value.asset, err.value.href) == ("p-labels", "labels", str(href))
    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.raises(ImageryNotFoundError, match="a.png.*cannot be read"):
        load_png_pair(png, png)
    with pytest.raises(FileNotFoundError, match="does not exist"):  # ImageryNotFoundError is one
        load_png_pair(tmp_path / "missing.png", png)


def test_stack_pair_orders_before_then_after_and_checks_grids():
    pairs = _synthetic_pairs(2)
    before, after, _ = pairs["city0"]
    stacked = stack_pair(before, after)
    assert list(stacked.band.values) == ["t1:b1", "t1:b2", "t1:b3", "t2:b1", "t2:b2", "t2:b3"]
    assert np.array_equal(stacked.values[:3], before.values[0]) and np.array_equal(stacked.values[3:], after.values[0])
    assert stacked.odc.geobox == before.odc.geobox
    with pytest.raises(GeoBoxMismatchError, match="not on one GeoBox"):
        stack_pair(before, pairs["city1"][1])
    with pytest.raises(BandMismatchError):
        stack_pair(before, after.isel(band=[0, 1]))


def test_standardized_pair_is_z_scored_per_date_and_band():
    before, after, _ = _synthetic_pairs(1)["city0"]
    after = after * 3.0 + 500.0  # another season: brighter, more contrast
    z = stack_pair(before, after, standardize=True).values
    assert np.allclose(np.nanmean(z, axis=(1, 2)), 0.0, atol=1e-4)
    assert np.allclose(np.nanstd(z, axis=(1, 2)), 1.0, atol=1e-4)
    assert not np.allclose(z[:3], z[3:], atol=1e-3)  # the change square remains
    outside = np.ones((SIZE, SIZE), bool)
    outside[SQUARE] = False
    # the global gain and offset are gone: outside the change the dates nearly agree
    assert np.abs(z[3:, outside] - z[:3, outside]).mean() < 0.5


class RecordingModel(DiffModel):
    """Stand-in that remembers its inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        return super().forward(x)


def test_predict_change_standardizes_when_the_model_was_trained_so():
    before, after, _ = _synthetic_pairs(1)["city0"]
    model = RecordingModel()
    model.spec = ModelSpec(**{**model.spec.__dict__, "extra": {"fusion": "early", "standardize": True}})
    predict_change(model, before, after, tile_size=64, padding=0)
    expected = stack_pair(before, after, standardize=True).values
    assert np.allclose(model.seen[0].numpy(), expected, atol=1e-5)


# ------------------------------------------------------------------------- chips and augment


def test_export_change_chips_splits_by_city(tmp_path):
    pairs = _synthetic_pairs(3)
    index = export_change_chips(pairs, tmp_path, valid_cities=["city2"], tile_size=32, stride=32)
    assert sorted(index.city.unique()) == ["city0", "city1", "city2"]
    assert set(index[index.city == "city2"].split) == {"valid"} and set(index[index.city != "city2"].split) == {"train"}
    assert len(index) == 3 * 4 and index.crs.to_epsg() == 4326
    assert index.attrs["band_names"] == pair_band_names(["b1", "b2", "b3"])
    row = index[(index.city == "city1") & (index.row_off == 32) & (index.col_off == 0)].iloc[0]
    with rasterio.open(tmp_path / row["image"]) as src:
        chip = src.read()
        assert src.count == 6 and src.transform == Affine(*row["transform"])
    before, after, _ = pairs["city1"]
    assert np.array_equal(chip[:3], before.values[0, :, 32:, :32]) and np.array_equal(chip[3:], after.values[0, :, 32:, :32])
    ds = ChipDataset(tmp_path / "chips.parquet", "train")
    assert len(ds) == 8 and ds[0][0].shape == (6, 32, 32)
    with pytest.raises(ConfigError, match="not among the pairs"):
        export_change_chips(pairs, tmp_path / "x", valid_cities=["nowhere"])


def test_augmentation_keeps_both_dates_and_the_mask_aligned():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    before = torch.from_numpy(rng.normal(0, 1, (8, 3, 64, 64)).astype(np.float32))
    mask = torch.zeros((8, 64, 64), dtype=torch.int64)
    mask[:, 20:40, 10:30] = 1
    after = before + 10.0 * mask[:, None].float()  # change only inside the mask
    x, m = Augmentation(rotation=40, zoom=(0.8, 1.2), shift=0.2)(torch.cat([before, before], 1), mask)
    assert torch.equal(x[:, :3], x[:, 3:])  # identical dates stay identical: one transform for all channels
    assert (m != mask).float().mean() > 0.05  # and it did transform
    torch.manual_seed(1)
    x, m = Augmentation(rotation=40, zoom=(0.8, 1.2), shift=0.2)(torch.cat([before, after], 1), mask)
    changed = ((x[:, 3:] - x[:, :3]).mean(1) > 5.0).long()
    assert (changed == m).float().mean() > 0.97  # the change in the image moved with the mask


# ------------------------------------------------------------------------------- models, loss


def test_siamese_model_is_symmetric_and_blind_to_identical_dates():
    torch.manual_seed(0)
    model = build_change_model(["b1", "b2", "b3"], mean=[0.0] * 3, std=[1.0] * 3, fusion="siam-diff", encoder_depth=3).eval()
    assert isinstance(model, SiameseDiffUnet) and model.spec.bands == tuple(pair_band_names(["b1", "b2", "b3"]))
    assert model.spec.extra == {"fusion": "siam-diff", "dates": 2, "date_bands": ["b1", "b2", "b3"], "standardize": False}
    x1, x2 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(torch.cat([x1, x2], 1))
        swapped = model(torch.cat([x2, x1], 1))
        same = model(torch.cat([x1, x1], 1))
    assert out.shape == (2, 2, 32, 32)
    assert torch.allclose(out, swapped, atol=1e-5)  # |f1 - f2| does not care which date is first
    assert torch.allclose(same[0], same[1], atol=1e-5)  # zero differences: no trace of the image left
    early = build_change_model(["b1", "b2", "b3"], mean=np.arange(6.0), std=np.ones(6), encoder_depth=3)
    assert isinstance(early, SegmentationModel) and early.spec.in_channels == 6
    assert early.mean.flatten().tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ConfigError, match="fusion"):
        build_change_model(["b1"], mean=[0], std=[1], fusion="late")


def test_weights_round_trip_through_safetensors(tmp_path):
    torch.manual_seed(0)
    model = build_change_model(["b1", "b2"], mean=[1.0, 2.0], std=[3.0, 4.0], fusion="siam-diff", encoder_depth=3).eval()
    save_weights(model, tmp_path / "w.safetensors")
    again = load_change_model(json.loads(json.dumps(model.spec.to_dict())), tmp_path / "w.safetensors")
    x = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        assert isinstance(again, SiameseDiffUnet) and torch.equal(model(x), again(x))


def test_change_loss_ignores_unlabelled_pixels_and_adds_dice():
    mask = torch.tensor([[[0, 1], [255, 1]]])
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1] = torch.tensor([[-3.0, 3.0], [0.0, 3.0]])
    base = ChangeLoss()(logits, mask)
    moved = logits.clone()
    moved[0, :, 1, 0] = torch.tensor([9.0, -9.0])  # only the ignored pixel changes
    assert torch.equal(ChangeLoss()(moved, mask), base)
    ce = torch.nn.functional.cross_entropy(logits, mask, ignore_index=255)
    assert torch.isclose(base, ce)
    p = torch.sigmoid(torch.tensor([-3.0, 3.0, 3.0]))  # softmax of (0, l) = sigmoid(l)
    dice = (2 * (p[1] + p[2]) + 1) / (p.sum() + 2 + 1)
    assert torch.isclose(ChangeLoss(dice=0.5)(logits, mask), ce + 0.5 * (1 - dice))
    weighted = ChangeLoss(torch.tensor([1.0, 4.0]))(logits, mask)
    assert torch.isclose(weighted, torch.nn.functional.cross_entropy(logits, mask, weight=torch.tensor([1.0, 4.0]), ignore_index=255))


def test_trained_siamese_model_finds_the_change_square_of_an_unseen_pair(tmp_path):
    torch.set_num_threads(1)
    pairs = _synthetic_pairs(3)
    export_change_chips(pairs, tmp_path, valid_cities=["city2"], tile_size=32, stride=16)
    mean, std = band_statistics(tmp_path / "chips.parquet", "train")
    torch.manual_seed(0)
    model = build_change_model(["b1", "b2", "b3"], mean=mean, std=std, fusion="siam-diff", encoder_depth=3)
    train = ChipDataset(tmp_path / "chips.parquet", "train", fill=mean)
    Trainer(model, train, None, num_classes=2, batch_size=8, loss=ChangeLoss(dice=0.5), device="cpu", seed=0).fit(12, 3e-3, progress=False)
    before, after, labels = pairs["city2"]
    pred = predict_change(model, before, after, tile_size=64, padding=0, device="cpu")
    m = compute_metrics(labels.values, pred.mask.values, [0, 1], ["no change", "change"])
    assert m.f1["change"] > 0.85 and m.iou["change"] > 0.75


# ------------------------------------------------------------------------ card and Items


@pytest.mark.parametrize("fusion", ["early", "siam-diff"])
def test_change_card_has_one_mlm_input_per_date_and_rebuilds_the_model(tmp_path, fusion):
    torch.manual_seed(0)
    model = build_change_model(
        ["b1", "b2"], mean=[1.0, 2.0, 3.0, 4.0], std=[5.0, 6.0, 7.0, 8.0], fusion=fusion, encoder_depth=3
    ).eval()
    weights = save_weights(model, tmp_path / "w.safetensors")
    card = model_card(model, str(weights), id="change-model", tile_size=64)
    card.set_self_href(str(tmp_path / "card.json"))
    card.save_object(include_self_link=False)
    inputs = card.properties["mlm:input"]
    assert [i["name"] for i in inputs] == ["t1 (before)", "t2 (after)"]
    assert [i["bands"] for i in inputs] == [["b1", "b2"], ["b1", "b2"]]
    assert [[v["mean"] for v in i["value_scaling"]] for i in inputs] == [[1.0, 2.0], [3.0, 4.0]]
    assert "channels 0-1, then the after date's 2 bands as channels 2-3" in inputs[0]["description"]
    assert card.properties["mlm:output"][0]["classification:classes"][1]["name"] == "change"
    if (SHARED_DIR / "schemas").is_dir():
        report = validate(card.to_dict(), SHARED_DIR / "schemas")
        assert "https://stac-extensions.github.io/mlm/v1.5.2/schema.json" in report.validated
        # file:checksum's schema (file v2.1.0) is the only one ../shared/schemas may lack; nothing else is skipped
        file_schema = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
        assert report.skipped == (() if file_schema in report.validated else (file_schema,))
    spec = spec_from_card(card)
    assert spec.bands == ("t1:b1", "t1:b2", "t2:b1", "t2:b2") and spec.mean == (1.0, 2.0, 3.0, 4.0)
    again = load_model(tmp_path / "card.json")
    assert isinstance(again, SiameseDiffUnet if fusion == "siam-diff" else SegmentationModel)
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_change_mask_item_links_both_dates_and_refuses_masks_without_crs(tmp_path):
    b, a, _ = _pair_items(tmp_path, "p", 0)
    gbox = GeoBox((SIZE, SIZE), _transform(), CRS)
    mask = xr.DataArray(np.zeros((SIZE, SIZE), np.uint8), dims=("y", "x"), coords=xr_coords(gbox))
    from odc.geo.xr import assign_crs

    mask = assign_crs(mask, CRS)
    mask[:, :8] = 255  # nodata strip: not in the geometry
    item = change_mask_item("m.tif", mask, id="p-change", before=[b], after=[a], probability_href="p.tif")
    links = {link.title: link.href for link in item.links if link.rel == "derived_from"}
    assert set(links) == {"before: p-t1", "after: p-t2"}
    classes = item.assets["change_mask"].extra_fields["classification:classes"]
    assert [(c["value"], c["name"]) for c in classes] == [(0, "no change"), (1, "change")]
    assert item.properties["start_datetime"].startswith("2021-06-01") and item.properties["end_datetime"].startswith("2022-06-01")
    west, south, east, north = gbox[:, 8:].extent.to_crs("EPSG:4326").boundingbox
    assert item.bbox == pytest.approx([west, south, east, north], abs=1e-6)  # nodata columns left out
    assert item.assets["change_probability"].extra_fields["raster:bands"][0]["data_type"] == "float32"
    pixel = xr.DataArray(np.zeros((4, 4), np.uint8), dims=("y", "x"), coords={"y": np.arange(4) + 0.5, "x": np.arange(4) + 0.5})
    with pytest.raises(NoGeoreferenceError, match="'png-change' has no CRS.*cannot be published as a STAC Item"):
        change_mask_item("m.tif", pixel, id="png-change", before=[b], after=[a])


# --------------------------------------------------------------------------------- prediction


def test_predict_change_mask_probability_and_cogs(tmp_path):
    pairs = _synthetic_pairs(1)
    before, after, labels = pairs["city0"]
    before = before.copy(data=before.values.copy())
    before.values[0, :, 0:4, 0:6] = np.nan  # no data on the first date there
    pred = predict_change(
        DiffModel(), before, after, tile_size=48, padding=8, out_path=tmp_path / "change.tif", prob_path=tmp_path / "p.tif"
    )
    mask, prob = pred.mask.values, pred.probability.values
    assert mask.dtype == np.uint8 and prob.dtype == np.float32
    assert (mask[0:4, 0:6] == 255).all() and np.isnan(prob[0:4, 0:6]).all()
    ok = mask != 255
    assert np.array_equal(mask[ok], (prob[ok] > 0.5).astype(np.uint8))
    assert np.array_equal(mask[ok], labels.values[ok])  # the stand-in sees exactly the square
    only_mask = predict_change(DiffModel(), before, after, tile_size=48, padding=8).mask
    assert only_mask.odc.geobox == before.odc.geobox and np.array_equal(only_mask.values, mask)
    with rasterio.open(tmp_path / "change.tif") as m, rasterio.open(tmp_path / "p.tif") as p:
        assert m.crs.to_epsg() == 32631 and m.transform == before.odc.geobox.affine and m.nodata == 255
        assert np.array_equal(m.read(1), mask) and p.dtypes[0] == "float32"
        assert np.allclose(p.read(1), prob, equal_nan=True)


# ------------------------------------------------------------------------------------- CVA


def test_cva_finds_the_square_with_a_threshold_fitted_on_other_pairs():
    pairs = _synthetic_pairs(3)
    mags = {c: change_vector_magnitude(b, a) for c, (b, a, _) in pairs.items()}
    threshold, f1 = fit_cva_threshold([mags["city0"].values, mags["city1"].values], [pairs["city0"][2].values, pairs["city1"][2].values])
    assert f1 == 1.0
    predicted = cva_mask(mags["city2"], threshold)
    assert predicted.odc.geobox == pairs["city2"][0].odc.geobox
    assert np.array_equal(predicted.values, pairs["city2"][2].values)


def test_cva_threshold_maximises_f1_among_all_thresholds():
    rng = np.random.default_rng(0)
    labels = (rng.random((40, 40)) < 0.1).astype(np.uint8)
    mag = rng.normal(0, 1, (40, 40)) + 1.5 * labels
    labels[:2] = 255  # unlabelled rows are left out
    threshold, f1 = fit_cva_threshold([mag], [labels])

    def f1_at(t: float) -> float:
        return compute_metrics(labels, (mag >= t).astype(np.uint8), [0, 1]).f1["1"]

    assert f1 == pytest.approx(f1_at(threshold))
    assert f1 >= max(f1_at(t) for t in np.unique(mag[labels != 255])) - 1e-12


# ------------------------------------------------------------------------------ LEVIR (PNG)


@pytest.mark.realdata
def test_levir_png_pair_loads_without_georeference_trains_and_predicts(tmp_path):
    if not LEVIR.is_dir():
        pytest.skip("needs ../shared/data/change/levir_samples")
    names = ["test_2_0000_0000.png", "test_7_0256_0512.png"]
    pairs = {}
    for name in names:
        with pytest.warns(NoGeoreferenceWarning, match="no georeference.*cannot be written as COGs nor published as STAC Items"):
            pairs[name[:-4]] = load_png_pair(LEVIR / "A" / name, LEVIR / "B" / name, LEVIR / "label" / name)
    before, after, labels = pairs["test_2_0000_0000"]
    assert before.shape == (1, 3, 256, 256) and before.odc.crs is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(LEVIR / "label" / names[0]) as src:
            raw = src.read(1)
    assert set(np.unique(labels.values)) == {0, 1} and np.array_equal(labels.values, (raw == 255).astype(np.uint8))
    index = export_change_chips(pairs, tmp_path, valid_cities=[names[1][:-4]], tile_size=128, stride=128)
    assert index.crs is None and len(index) == 8
    mean, std = band_statistics(tmp_path / "chips.parquet", "train")
    torch.manual_seed(0)
    model = build_change_model(["red", "green", "blue"], mean=mean, std=std, encoder_depth=3)
    Trainer(model, ChipDataset(tmp_path / "chips.parquet", "train"), None, num_classes=2, batch_size=4, loss=ChangeLoss(), device="cpu").fit(1, progress=False)
    pred = predict_change(model, before, after, tile_size=128, padding=16, probability=True, device="cpu")
    assert pred.mask.shape == (256, 256) and set(np.unique(pred.mask.values)) <= {0, 1}
    assert pred.mask.odc.crs is None and np.isfinite(pred.probability.values).all()
    with pytest.raises(NoGeoreferenceError, match="no georeference"):
        predict_change(model, before, after, tile_size=128, padding=16, out_path=tmp_path / "m.tif")
    with pytest.raises(NoGeoreferenceError, match="cannot be published as a STAC Item"):
        change_mask_item("m.tif", pred.mask, id="levir", before=[], after=[])


# ------------------------------------------------------------------ split by city (catalog only)


@pytest.fixture(scope="module")
def oscd_groups():
    """``{city: PairItems}`` of the committed OSCD catalog (its JSON only: no pixels are read)."""
    from staclearn.data.pairs import group_pairs

    return group_pairs(open_items(OSCD_CATALOG), "staclearn:city")


OSCD_CITIES = ["aguasclaras", "beihai", "beirut", "bercy", "bordeaux", "cupertino", "nantes", "paris", "pisa", "rennes", "saclay_e"]


def test_drawn_split_is_whole_cities_and_depends_on_split_seed_only(oscd_groups):
    splits = {seed: split_cities(oscd_groups, split_seed=seed) for seed in range(6)}
    for seed, s in splits.items():
        assert isinstance(s, CitySplit) and s.split_seed == seed
        assert (len(s.train), len(s.valid), len(s.test)) == (7, 2, 2)  # 20 % of 11 and of 9 cities, rounded
        assert sorted([*s.train, *s.valid, *s.test]) == OSCD_CITIES
        assert s == split_cities(oscd_groups, split_seed=seed)  # same seed, same split
        assert s.as_dict() == {"train": list(s.train), "valid": list(s.valid), "test": list(s.test)}
    assert len({s.test for s in splits.values()}) > 1  # the seed does draw
    assert splits[0].test == ("paris", "pisa") and splits[0].valid == ("beirut", "saclay_e")
    assert "test and validation cities drawn with split_seed" in splits[0].method
    one = split_cities(oscd_groups, split_seed=0, test_count=1, valid_fraction=0.5)
    assert (len(one.train), len(one.valid), len(one.test)) == (5, 5, 1)
    small = {c: oscd_groups[c] for c in ("paris", "rennes", "bercy")}
    assert [len(p) for p in split_cities(small, split_seed=1).as_dict().values()] == [1, 1, 1]  # at least one each


def test_given_test_cities_and_item_ids_are_honoured(oscd_groups):
    s = split_cities(oscd_groups, test_items=["paris-labels", "nantes-20150821"], split_seed=3)
    assert s.test == ("nantes", "paris") and not {"nantes", "paris"} & set(s.valid) and len(s.valid) == 2
    assert s.split_seed == 3 and "validation cities drawn with split_seed, test cities given" in s.method
    s = split_cities(oscd_groups, test_cities=["bercy"], test_items=["rennes-20170621"], valid_cities=["paris"])
    assert (s.valid, s.test) == (("paris",), ("bercy", "rennes")) and len(s.train) == 8 and "nantes" in s.train
    assert s.split_seed is None and s.method == "whole cities; test and validation cities given"


def test_only_validation_cities_given_draws_test_cities_from_the_rest(oscd_groups):
    for seed in range(5):
        s = split_cities(oscd_groups, valid_cities=["bercy"], split_seed=seed)
        assert s.valid == ("bercy",) and len(s.test) == 2 and "bercy" not in s.test and len(s.train) == 8
    three = {c: oscd_groups[c] for c in ("paris", "rennes", "bercy")}
    s = split_cities(three, valid_cities=["bercy"])
    assert s.valid == ("bercy",) and len(s.test) == len(s.train) == 1
    with pytest.raises(SplitError, match=r"Cannot draw 1 test cities from \['paris'\].*keep a validation and a training city"):
        split_cities({c: oscd_groups[c] for c in ("paris", "bercy")}, valid_cities=["bercy"])


def test_bad_split_requests_name_what_was_asked_and_what_exists(oscd_groups):
    with pytest.raises(SplitError, match=r"test_cities \['atlantis'\] are not cities.*\['aguasclaras', 'beihai',.*'saclay_e'\]"):
        split_cities(oscd_groups, test_cities=["atlantis", "paris"])
    with pytest.raises(SplitError, match=r"valid_cities \['lyon'\] are not cities"):
        split_cities(oscd_groups, valid_cities=["lyon"])
    with pytest.raises(SplitError, match=r"test_items \['paris-2099'\] are not before, after or label Items.*'paris-20161130'"):
        split_cities(oscd_groups, test_items=["paris-2099"])
    with pytest.raises(SplitError, match=r"\['paris'\] are asked as both test and validation"):
        split_cities(oscd_groups, test_items=["paris-labels"], valid_cities=["paris"])
    with pytest.raises(SplitError, match="leave no training city"):
        split_cities(oscd_groups, test_cities=OSCD_CITIES[:3], valid_cities=OSCD_CITIES[3:])
    with pytest.raises(SplitError, match="Cannot draw 10 validation cities"):
        split_cities(oscd_groups, test_cities=["paris"], valid_count=10)
    with pytest.raises(SplitError, match="test_fraction"):
        split_cities(oscd_groups, test_fraction=1.5)
    with pytest.raises(SplitError, match=r"Cannot draw 2 test cities from \['bercy', 'paris'\]"):
        split_cities({c: oscd_groups[c] for c in ("paris", "bercy")}, test_count=2)


def test_run_change_and_the_cli_refuse_an_unknown_test_city_before_loading_anything(tmp_path):
    from typer.testing import CliRunner

    from staclearn.cli import app

    with pytest.raises(SplitError, match="atlantis"):
        run_change(OSCD_CATALOG, tmp_path / "run", ChangeConfig(test_cities=("atlantis",)), log=lambda _: None)
    assert not (tmp_path / "run").exists()  # the run folder is created only once the inputs are checked
    r = CliRunner().invoke(app, ["change", "run", "--catalog", str(OSCD_CATALOG), "--out", str(tmp_path / "cli"), "--test-item", "rome-labels"])
    assert r.exit_code == 2 and "SplitError" in r.output and "rome-labels" in r.output and "bercy-labels" in r.output


# ---------------------------------------------------------------------------- OSCD (real)


@pytest.fixture(scope="module")
def oscd_items() -> dict[str, pystac.Item]:
    if not (OSCD / "paris" / "dates.txt").is_file():
        pytest.skip("needs ../shared/data/change/oscd")
    return {i.id: i for i in open_items(OSCD_CATALOG)}


@pytest.mark.realdata
def test_oscd_original_mask_without_georeference(oscd_items, tmp_path):
    item = oscd_items["bercy-labels"].clone()
    item.assets["labels"].href = str(OSCD / "bercy" / "cm" / "bercy-cm.tif")  # the original, no georeference
    before, after = [oscd_items["bercy-20161130"]], [oscd_items["bercy-20170829"]]
    with pytest.warns(StaclearnWarning, match="no georeference"):
        _, _, original = load_pair(before, after, bands=["B02"], label_item=item)
    _, _, georef = load_pair(before, after, bands=["B02"], label_item=oscd_items["bercy-labels"])
    assert np.array_equal(original.values, georef.values) and int(georef.values.sum()) == 1046
    with pytest.raises(GeoBoxMismatchError, match=r"bercy-cm.tif\).*no georeference.*\(395, 360\) differs.*\(198, 180\)"):
        load_pair(before, after, bands=["B05"], label_item=item)  # loaded on the 20 m grid


OSCD_CONFIG = ChangeConfig(
    test_items=("bercy-20170829",), valid_cities=("rennes",), bands=("B02", "B03", "B04", "B08", "B05", "B11"),
    fusion="early", tile_size=64, stride=64, encoder_depth=5, epochs=2, batch_size=16, device="cpu", seed=0,
)


@pytest.fixture(scope="module")
def oscd_run(oscd_items, tmp_path_factory):
    """A small run: trained on paris, epoch chosen on rennes, tested and published on bercy (named by an Item id)."""
    torch.set_num_threads(1)
    items = [i for i in oscd_items.values() if i.properties["staclearn:city"] in ("paris", "rennes", "bercy")]
    return run_change(items, tmp_path_factory.mktemp("oscd") / "run", OSCD_CONFIG, progress=False, log=lambda _: None)


def _bbox(item: pystac.Item):
    from shapely.geometry import box

    return box(*item.bbox)


@pytest.mark.realdata
@pytest.mark.slow
def test_oscd_run_on_an_unseen_city(oscd_run):
    result, config = oscd_run, OSCD_CONFIG
    assert (result.train_cities, result.valid_cities, result.test_cities) == (("paris",), ("rennes",), ("bercy",))

    # the common GeoBox is the 10 m B02 grid of the city
    b02 = next((OSCD / "bercy" / "imgs_1").glob("*_B02.tif"))
    with rasterio.open(b02) as src, rasterio.open(result.change_masks["bercy"]) as cm:
        assert cm.shape == src.shape == (395, 360) and cm.transform.almost_equals(src.transform, 1e-12)
        assert cm.crs.to_epsg() == 4326 and cm.nodata == 255 and cm.dtypes[0] == "uint8"
        mask = cm.read(1)
    assert set(np.unique(mask)) <= {0, 1, 255}
    assert sorted(result.change_masks) == sorted(result.cva_masks) == ["bercy"]  # only test cities are written
    with rasterio.open(OSCD / "bercy" / "cm" / "bercy-cm_georef.tif") as src:
        truth = src.read(1)
    m, cva = result.test_metrics["bercy"]["model"], result.test_metrics["bercy"]["cva"]
    for metrics in (m, cva):
        assert metrics.n_samples == int(np.isin(truth, [1, 2]).sum()) == 142200
        assert metrics.confusion.sum() + metrics.n_unclassified == metrics.n_samples
        assert metrics.support == {"no change": 141154, "change": 1046}
        tp, fp, fn = metrics.confusion[1, 1], metrics.confusion[0, 1], metrics.confusion[1, 0] + 0
        fn += metrics.support["change"] - metrics.confusion[1].sum()  # unclassified change pixels
        assert metrics.f1["change"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m.confusion[:, 1].sum() == int((mask == 1).sum())  # the COG is what was evaluated
    # one test city: the pooled test figures are that city's
    assert result.test_pooled["model"].to_dict() == m.to_dict() and result.test_pooled["cva"].to_dict() == cva.to_dict()
    assert sorted(result.valid_metrics) == ["rennes"]
    assert result.valid_metrics["rennes"]["model"].support["change"] == result.split_record["counts"]["valid"]["change"] == 4932

    # the CVA threshold is the one that maximises F1 on the TRAINING cities only
    g = result.source_items["paris"]
    b, a, lab = load_pair(g.before, g.after, bands=list(config.bands), label_item=g.labels)
    threshold, f1 = fit_cva_threshold([change_vector_magnitude(b, a).values], [lab.values])
    assert result.cva_threshold == pytest.approx(threshold) and result.cva_train_f1 == pytest.approx(f1)
    with rasterio.open(result.cva_masks["bercy"]) as src:
        assert cva.confusion[:, 1].sum() == int((src.read(1) == 1).sum())

    # chips: training and validation cities only; no chip touches the test city
    import geopandas as gpd

    index = gpd.read_parquet(result.chips)
    assert set(index.city) == {"paris", "rennes"}
    assert set(index[index.city == "paris"].split) == {"train"} and set(index[index.city == "rennes"].split) == {"valid"}
    bercy = _bbox(result.source_items["bercy"].labels)
    assert not index.geometry.intersects(bercy).any()
    assert not any("bercy" in p.name for p in (result.chips.parent).rglob("*"))
    # the epoch was chosen on the validation chips: every epoch has a validation figure
    assert [r.epoch for r in result.history] == [1, 2] and all(np.isfinite(r.valid_miou) for r in result.history)

    # evaluation.json: test and validation apart, and the split record with pixel counts per part
    report = json.loads(result.evaluation.read_text())
    assert set(report) == {"test", "validation", "split", "threshold", "precision_recall"}
    assert report["threshold"]["cities"] == ["rennes"] and report["threshold"]["value"] == result.threshold
    assert set(report["precision_recall"]["test"]) == {"bercy"} and set(report["precision_recall"]["validation"]) == {"rennes"}
    assert set(report["test"]["models"]) == {"bercy early", "bercy cva", "pooled early", "pooled cva"}
    assert set(report["validation"]["models"]) == {"rennes early", "rennes cva", "pooled early", "pooled cva"}
    assert report["test"]["models"]["bercy early"]["confusion"] == m.confusion.tolist()
    assert report["validation"]["models"]["rennes cva"]["confusion"] == result.valid_metrics["rennes"]["cva"].confusion.tolist()
    split = report["split"]
    assert split == result.split_record
    assert split["cities"] == {"train": ["paris"], "valid": ["rennes"], "test": ["bercy"]}
    assert split["unit"] == "pixels" and split["split_seed"] is None and "given" in split["method"]
    assert split["counts"]["test"] == {"no change": 141154, "change": 1046}
    assert split["counts"]["train"]["change"] == int((lab.values == 1).sum())
    assert (result.out_dir / "evaluation_confusion.png").is_file() and (result.out_dir / "evaluation_validation_confusion.png").is_file()

    assert result.source_items["bercy"].before[0].id == "bercy-20161130"
    assert result.source_items["bercy"].after[0].id == "bercy-20170829"
    again = load_change_model(json.loads(result.spec.read_text()), result.weights)
    assert again.spec.bands == tuple(pair_band_names(config.bands))

    # published: catalog -> collection -> MLM card + one change-mask Item per TEST city, valid offline
    assert validate_catalog(result.catalog, SHARED_DIR / "schemas") == 5  # + the test city's polygons Item
    cat = pystac.Catalog.from_file(str(result.catalog))
    items = {i.id: i for i in cat.get_items(recursive=True)}
    assert sorted(items) == ["run-change-bercy", "run-change-bercy-polygons", "run-model"]
    polygons = items["run-change-bercy-polygons"]
    assert [link.get_absolute_href() for link in polygons.links if link.rel == "derived_from"][0].endswith("run-change-bercy.json")
    assert "onnx" in items["run-model"].assets  # the ONNX artifact beside the safetensors
    card, item = items["run-model"], items["run-change-bercy"]
    assert [i["name"] for i in card.properties["mlm:input"]] == ["t1 (before)", "t2 (after)"]
    assert all(i["bands"] == list(config.bands) for i in card.properties["mlm:input"])
    assert card.properties["start_datetime"].startswith("2016")  # paris, the one training city
    assert "test cities ['bercy']" in card.properties["mlm:hyperparameters"]["split"]
    training = {link.title for link in card.links if link.rel == "derived_from"}
    assert "training data: paris-labels" in training and not any("bercy" in t or "rennes" in t for t in training)
    card_metrics = card.properties["staclearn:metrics"]
    assert set(card_metrics) == {"test", "validation"}
    assert set(card_metrics["test"]) == {"bercy", "pooled"} and set(card_metrics["validation"]) == {"rennes", "pooled"}
    assert card_metrics["test"]["bercy"]["model"]["f1_change"] == pytest.approx(m.f1["change"])
    assert card_metrics["test"]["bercy"]["cva"]["n_samples"] == 142200
    assert card_metrics["validation"]["rennes"]["model"]["f1_change"] == pytest.approx(result.valid_metrics["rennes"]["model"].f1["change"])
    assert card.properties["staclearn:split"] == split
    assert item.properties["staclearn:metrics"] == {"test": card_metrics["test"]["bercy"]}
    assert item.properties["staclearn:split"] == split
    derived = {link.title for link in item.links if link.rel == "derived_from"}
    assert derived == {"before: bercy-20161130", "after: bercy-20170829", "model card: run-model"}
    assert item.properties["start_datetime"].startswith("2016-11-30") and item.properties["end_datetime"].startswith("2017-08-29")
    classes = item.assets["change_mask"].extra_fields["classification:classes"]
    assert [(c["value"], c["name"]) for c in classes] == [(0, "no change"), (1, "change")]
    # the card alone gives the same change mask
    model = load_model(card.get_self_href())
    b, a, _ = load_pair(result.source_items["bercy"].before, result.source_items["bercy"].after, bands=list(config.bands))
    with rasterio.open(item.assets["change_mask"].get_absolute_href()) as src:
        published = src.read(1)
    assert np.array_equal(predict_change(model, b, a, device="cpu").mask.values, published)
    assert np.array_equal(published, mask)


@pytest.mark.realdata
@pytest.mark.slow
def test_oscd_drawn_split_is_kept_when_only_the_training_seed_changes(oscd_items, oscd_groups, tmp_path):
    torch.set_num_threads(1)
    cities = ("paris", "rennes", "bercy")
    items = [i for i in oscd_items.values() if i.properties["staclearn:city"] in cities]
    runs = []
    for seed in (0, 1):
        config = ChangeConfig(
            split_seed=5, seed=seed, bands=("B02", "B04"), encoder_depth=3, epochs=1, batch_size=16, augment=False, device="cpu",
        )
        runs.append(run_change(items, tmp_path / f"seed{seed}", config, progress=False, log=lambda _: None))
    first, second = runs
    expected = split_cities({c: oscd_groups[c] for c in cities}, split_seed=5)
    assert first.split == second.split == expected and len(expected.test) == len(expected.valid) == 1
    assert first.split_record == second.split_record and first.split_record["split_seed"] == 5
    assert "drawn with split_seed" in first.split_record["method"]
    import geopandas as gpd

    for r in runs:
        index = gpd.read_parquet(r.chips)
        assert set(index.city) == {*expected.train, *expected.valid} and not set(index.city) & set(expected.test)
        assert set(index[index.split == "valid"].city) == set(expected.valid)
        assert sorted(r.items) == sorted(r.test_metrics) == list(expected.test)
    assert first.history[0].train_loss != second.history[0].train_loss  # the training seed did change the run
    assert json.loads(first.evaluation.read_text())["split"] == json.loads(second.evaluation.read_text())["split"]


@pytest.mark.realdata
@pytest.mark.slow
def test_cli_change_predict_from_the_card_with_one_search_and_two_date_ranges(oscd_run, tmp_path):
    from typer.testing import CliRunner

    from staclearn.cli import app

    card = next(link.href for link in oscd_run.items["bercy"].links if link.title == "model card: run-model")
    card = str((Path(oscd_run.items["bercy"].get_self_href()).parent / card).resolve())
    out = tmp_path / "pred"
    args = ["change", "predict", "--model", card, "--catalog", str(OSCD_CATALOG), "--bbox", "2.37,48.83,2.39,48.85",
            "--before", "2016-11-01/2016-12-31", "--after", "2017-08-01/2017-09-30", "--out", str(out), "--device", "cpu"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    with rasterio.open(out / "change_mask.tif") as a, rasterio.open(oscd_run.change_masks["bercy"]) as b:
        assert np.array_equal(a.read(1), b.read(1))  # same model, same pair, same mask
    item = next(pystac.Catalog.from_file(str(out / "catalog.json")).get_items(recursive=True))
    assert {link.title for link in item.links if link.rel == "derived_from"} == {
        "before: bercy-20161130", "after: bercy-20170829", "model card: run-model"
    }
    assert validate_catalog(out / "catalog.json", SHARED_DIR / "schemas") == 3
    # dates in the wrong order: a clear error naming the Items, exit code 2
    r = CliRunner().invoke(app, [*args[:8], "--before", "2017-08-01/2017-09-30", "--after", "2016-11-01/2016-12-31", *args[12:]])
    assert r.exit_code == 2 and "DateOrderError" in r.output and "bercy-20170829" in r.output


# ------------------------------------------------------------- grids, threshold (issue 13)


def test_pair_on_two_grids_aligns_pixel_exactly_on_the_grid_of_the_before_date(tmp_path):
    """Grid choice: the native grid of the before Items' finest band; the after date is
    resampled onto it by georeference. Here the after raster is larger, shifted by whole
    pixels and on a 5 m grid: every before pixel must get the after value of the same place."""
    rng = np.random.default_rng(7)
    world = rng.integers(0, 10000, (3, 90, 90)).astype(np.float32)  # a 10 m field, 90 x 90 px
    before = world[:, 10:74, 20:84]  # 64 x 64 px starting at row 10, column 20
    b = make_item(tmp_path, "grid-t1", before, crs=CRS, transform=_transform(500000.0 + 20 * 10.0) * Affine.translation(0, 10))
    after_10m = world[:, 4:84, 12:90]  # another extent: 80 x 78 px starting at row 4, column 12
    a = make_item(tmp_path, "grid-t2", after_10m, crs=CRS, transform=_transform(500000.0 + 12 * 10.0) * Affine.translation(0, 4))
    a.datetime = datetime(2022, 6, 1, tzinfo=UTC)
    fine = np.repeat(np.repeat(world[:, 2:88, 6:86], 2, 1), 2, 2)  # the same field on a 5 m grid, yet another extent
    f = make_item(tmp_path, "grid-t2-5m", fine, crs=CRS, transform=_transform(500000.0 + 6 * 10.0, res=5.0) * Affine.translation(0, 4))
    f.datetime = datetime(2022, 6, 1, tzinfo=UTC)
    for after_item, resampling in ((a, "nearest"), (a, "bilinear"), (f, "nearest"), (f, "average")):
        cube_b, cube_a, _ = load_pair([b], [after_item], bands=["b1", "b2", "b3"], resampling=resampling)
        assert cube_b.odc.geobox == cube_a.odc.geobox == GeoBox((SIZE, SIZE), b_transform(b), CRS)
        assert np.array_equal(cube_b.values[0], before)
        assert np.array_equal(cube_a.values[0], before), (after_item.id, resampling)  # pixel-exact


def b_transform(item: pystac.Item) -> Affine:
    with rasterio.open(item.assets["image"].href) as src:
        return src.transform


def _city_catalog(tmp_path: Path, n: int) -> list[pystac.Item]:
    """``n`` synthetic cities (64 x 64 px, 3 bands, a 14 px change square each) as STAC Items."""
    items = []
    for i in range(n):
        r0, c0 = np.random.default_rng(100 + i).integers(4, SIZE - 18, 2)
        b, a, lab = _pair_items(tmp_path, f"city{i}", i, x0=500000.0 + 1000 * i, square=(slice(r0, r0 + 14), slice(c0, c0 + 14)))
        for item in (b, a, lab):
            item.properties["staclearn:city"] = f"city{i}"
        items += [b, a, lab]
    return items


TINY = {
    "bands": ("b1", "b2", "b3"), "architecture": "PixelConvNet", "width": 8, "layers": 2, "tile_size": 32, "stride": 32,
    "epochs": 2, "batch_size": 8, "lr": 1e-2, "predict_tile_size": 64, "padding": 0, "device": "cpu", "standardize": True,
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    items = _city_catalog(tmp, 5)
    config = ChangeConfig(test_cities=("city0",), valid_cities=("city1", "city2"), **TINY)
    seen: list[list[np.ndarray]] = []
    import staclearn.workflows.change as change_module

    real = change_module.fit_change_threshold

    def spy(probabilities, labels, **kw):
        seen.append([np.asarray(lab) for lab in labels])
        return real(probabilities, labels, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(change_module, "fit_change_threshold", spy)
    try:
        torch.manual_seed(0)
        result = run_change(items, tmp / "run", config, progress=False, log=lambda _: None)
    finally:
        mp.undo()
    return result, seen, items, tmp


def test_run_change_refuses_a_non_empty_run_folder_unless_overwrite(tmp_path):
    """Issue 17: a run never writes into a folder that holds files, unless overwrite=True."""
    from staclearn.errors import RunExistsError

    (tmp_path / "data").mkdir()
    items = _city_catalog(tmp_path / "data", 3)
    config = ChangeConfig(test_cities=("city0",), valid_cities=("city1",), **{**TINY, "epochs": 1})
    out = tmp_path / "run"
    (out / "chips").mkdir(parents=True)
    (out / "notes.txt").write_text("an earlier run")
    (out / "chips" / "stale.tif").write_bytes(b"a chip of an earlier run")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    with pytest.raises(RunExistsError, match=r"run.*not empty.*overwrite"):
        run_change(items, out, config, progress=False, log=lambda _: None)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()} == before

    result = run_change(items, out, config, progress=False, log=lambda _: None, overwrite=True)
    assert result.catalog.is_file() and (out / "change_city0.tif").is_file() and (out / "model" / "spec.json").is_file()
    assert (out / "notes.txt").read_text() == "an earlier run"  # overwrite replaces the run's outputs only
    assert not (out / "chips" / "stale.tif").exists()  # an earlier run's chips do not mix with these


def test_threshold_is_chosen_on_the_validation_cities_without_the_test_city(tiny_run):
    result, seen, _, _ = tiny_run
    assert result.split.test == ("city0",) and result.split.valid == ("city1", "city2")
    assert len(seen) == 1 and len(seen[0]) == 2  # one choice, from the two validation cities' labels only
    _, _, test_labels = load_pair(*[[i for i in tiny_run[2] if i.id == f"city0-{k}"] for k in ("t1", "t2")], bands=["b1"],
                                  label_item=next(i for i in tiny_run[2] if i.id == "city0-labels"))
    for lab in seen[0]:
        assert not np.array_equal(lab, test_labels.values)  # the test city's change square is elsewhere
    # recomputed from the validation probabilities alone, it is the model's threshold
    probs = [predict_change(result.model, *load_pair(
        [i for i in tiny_run[2] if i.id == f"{c}-t1"], [i for i in tiny_run[2] if i.id == f"{c}-t2"], bands=list(TINY["bands"])
    )[:2], tile_size=64, padding=0, probability=True, threshold=0.5, device="cpu").probability.values for c in ("city1", "city2")]
    valid_labels = [lab for lab in seen[0]]
    assert result.threshold == pytest.approx(fit_change_threshold(probs, valid_labels)[0])
    assert 0.0 <= result.threshold <= 1.0 and "validation cities ['city1', 'city2']" in result.threshold_method
    assert "test cities took no part" in result.threshold_method
    # the test mask is the test probability cut at that threshold
    with rasterio.open(result.change_masks["city0"]) as m, rasterio.open(result.probabilities["city0"]) as p:
        assert np.array_equal(m.read(1) == 1, p.read(1) >= result.threshold)
    pr = result.precision_recall["test"]["city0"]
    assert len(pr["model"]["threshold"]) == 19 and pr["model_at_threshold"]["threshold"] == [result.threshold]
    assert (result.out_dir / "evaluation_precision_recall.png").stat().st_size > 1000
    assert json.loads(result.evaluation.read_text())["threshold"]["value"] == result.threshold


def test_card_round_trip_keeps_the_threshold_and_predict_applies_it(tiny_run, tmp_path):
    result, _, items, _ = tiny_run
    card_path = result.model_card.get_self_href()
    assert result.model_card.properties["staclearn:threshold"]["value"] == result.threshold
    assert result.model_card.properties["staclearn:threshold"]["cities"] == ["city1", "city2"]
    assert f"p(change) >= {result.threshold:.4f}" in result.model_card.properties["mlm:hyperparameters"]["decision_threshold"]
    spec = spec_from_card(result.model_card)
    assert spec.extra["threshold"] == result.threshold
    model = load_model(card_path)
    assert model.spec.extra["threshold"] == result.threshold
    b, a, _ = load_pair([i for i in items if i.id == "city0-t1"], [i for i in items if i.id == "city0-t2"], bands=["b1", "b2", "b3"])
    pred = predict_change(model, b, a, tile_size=64, padding=0, probability=True, device="cpu")
    assert pred.mask.attrs["threshold"] == result.threshold
    assert np.array_equal(pred.mask.values == 1, pred.probability.values >= result.threshold)
    low = predict_change(model, b, a, tile_size=64, padding=0, threshold=0.0, device="cpu")
    assert (low.mask.values == 1).all()  # an override wins over the card's
    with pytest.raises(ConfigError, match=r"threshold.*\[0, 1\]"):
        predict_change(model, b, a, threshold=1.5)
    assert result.items["city0"].properties["staclearn:threshold"]["value"] == result.threshold
    assert f">= {result.threshold:.4f}" in result.items["city0"].properties["processing:lineage"]
    assert "change_probability" in result.items["city0"].assets


def test_cli_change_predict_records_a_threshold_override(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from staclearn.cli import app

    result, _, items, _ = tiny_run
    collection = tmp_path / "items.json"
    pystac.ItemCollection([i for i in items if i.id in ("city0-t1", "city0-t2")]).save_object(str(collection))
    base = ["change", "predict", "--model", result.model_card.get_self_href(), "--catalog", str(collection),
            "--before", "2021-01-01/2021-12-31", "--after", "2022-01-01/2022-12-31", "--tile-size", "64", "--padding", "0",
            "--device", "cpu"]
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "card")])
    assert r.exit_code == 0, r.output
    item = next(pystac.Catalog.from_file(str(tmp_path / "card" / "catalog.json")).get_items(recursive=True))
    assert item.properties["staclearn:threshold"]["value"] == result.threshold
    assert "model card" in item.properties["staclearn:threshold"]["method"]
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "override"), "--threshold", "0.25"])
    assert r.exit_code == 0, r.output
    item = next(pystac.Catalog.from_file(str(tmp_path / "override" / "catalog.json")).get_items(recursive=True))
    assert item.properties["staclearn:threshold"] == {"value": 0.25, "method": "given with --threshold (the card's is "
                                                       f"{result.threshold:.4f})"}
    assert ">= 0.2500" in item.properties["processing:lineage"]
    with rasterio.open(tmp_path / "override" / "change_mask.tif") as m, rasterio.open(tmp_path / "override" / "change_probability.tif") as p:
        assert np.array_equal(m.read(1) == 1, p.read(1) >= 0.25)  # probability published beside the mask
