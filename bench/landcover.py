"""Benchmark: land-cover models on the real NC Landsat-7 scene, by spatial cross-validation.

Folds: the scene is cut into square blocks (64 px and 96 px by default) and each
checkerboard parity of a blocking is one fold's TEST part (used for nothing but scoring); the
other half trains. Inside it, whole 32 px blocks holding about 20 % of its labels are the
validation part (epoch selection), drawn with ``split_seed`` (default: the run's seed, so the
seed spread includes the validation draw; ``--split-seed N`` fixes it). Every step is the
product's (``staclearn.workflows.landcover.run_landcover``): ``open_items`` -> ``load_cube`` ->
``load_label_raster`` -> ``block_split(test_mask=...)`` -> ``export_chips`` (test imagery
masked out of every chip) -> ``band_statistics`` of the training chips -> ``build_model`` ->
``Trainer.fit`` (best validation mIoU kept) -> ``predict_class_map`` on the whole cube ->
``compute_metrics`` on the test part. Beside each model a RandomForest (500 trees on the five
band values, ``random_state = seed``) is fitted on exactly the same training pixels
(``random_forest_baseline``) and scored on the same test pixels.

``--recipe product`` (the default) runs ``run_landcover`` itself, with its defaults (what
``staclearn landcover run`` trains), the checkerboard half given as test regions. Other
recipes (``--recipe``, several allowed) are named settings in ``RECIPES``, run through the same
steps with the library's functions; ``--list`` prints them. Each fold x seed prints one JSON line; the summary gives mean +- sd over all runs and the
standard deviation across seeds (per fold, then its mean and max). Run by hand (not in CI):

    .venv/bin/python bench/landcover.py --split-seed 0      # the product's default, 4 folds x 3 seeds
    .venv/bin/python bench/landcover.py --recipe unet --folds 64:0 96:1 --seeds 0 --epochs 5

Results (2 shared CPU cores, torch 1 thread, 2026-12-02; --split-seed 0; 4 folds x 3 seeds = 12 runs;
mean +- sd over the runs; seed sd = sd across seeds within a fold, max over folds):

    recipe                          OA model       macro-F1       OA RF          F1 RF          seed sd OA/F1  > RF
    unet (product default)          0.595+-0.147   0.466+-0.135   0.638+-0.052   0.475+-0.078   0.221/0.146    5/12
    fcn16-idx-sqrt-ls-last-ens5     0.706+-0.070   0.553+-0.081   0.638+-0.052   0.475+-0.078   0.009/0.031    12/12

Fold 64:0 holds all 265 water pixels in its test half (no water to train on): OA there is at most 0.78.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

CATALOG = Path(__file__).parents[1] / "catalogs" / "nc-landsat" / "catalog.json"
BANDS = ("b1", "b2", "b3", "b4", "b5")

_UNET = {
    "architecture": "Unet", "encoder": "resnet18", "encoder_depth": 5, "extra": {},
    "epochs": 30, "lr": 3e-3, "batch_size": 16, "class_weights": "balanced", "augment": True,
    "weight_decay": 1e-4, "members": 1, "tile_size": 64, "stride": 32, "keep_best": True, "label_smoothing": 0.0,
}  # fmt: skip
_FCN = {
    **_UNET, "architecture": "PixelConvNet", "encoder": "none", "encoder_depth": 0,
    "extra": {"width": 32, "layers": 3, "kernel": 3, "dropout": 0.1},
    "epochs": 30, "lr": 3e-3, "weight_decay": 1e-2,
}  # fmt: skip
_IDX = ["ndvi", "ndwi", "mndwi", "ndbi"]

RECIPES: dict[str, dict[str, Any]] = {
    # the product default (LandCoverConfig)
    "unet": _UNET,
    # smaller U-Net
    "unet3": {**_UNET, "encoder_depth": 3},
    # small fully convolutional nets, receptive field layers*(kernel-1)+1
    "fcn": _FCN,
    "fcn-idx": {**_FCN, "extra": {**_FCN["extra"], "indices": _IDX}},
    "fcn-idx-noweights": {**_FCN, "extra": {**_FCN["extra"], "indices": _IDX}, "class_weights": None},
    "fcn-idx-noaug": {**_FCN, "extra": {**_FCN["extra"], "indices": _IDX}, "augment": False},
    "fcn1-idx": {**_FCN, "extra": {**_FCN["extra"], "indices": _IDX, "layers": 2, "kernel": 1}},
    "fcn5-idx": {**_FCN, "extra": {**_FCN["extra"], "indices": _IDX, "layers": 2, "kernel": 5}},
    "fcn-idx-ens5": {**_FCN, "extra": {**_FCN["extra"], "indices": _IDX}, "members": 5},
    "unet3-idx": {**_UNET, "encoder_depth": 3, "extra": {"indices": _IDX}},
    "fcn16-idx": {**_FCN, "extra": {**_FCN["extra"], "width": 16, "indices": _IDX}},
    "fcn16-idx-nw": {**_FCN, "extra": {**_FCN["extra"], "width": 16, "indices": _IDX}, "class_weights": None},
    "fcn16-idx-k1": {**_FCN, "extra": {**_FCN["extra"], "width": 16, "kernel": 1, "indices": _IDX}},
    "fcn16-idx-sqrt-ls": {**_FCN, "extra": {**_FCN["extra"], "width": 16, "indices": _IDX}, "class_weights": "sqrt", "label_smoothing": 0.1},
    "fcn16-idx-last": {**_FCN, "extra": {**_FCN["extra"], "width": 16, "indices": _IDX}, "keep_best": False},
    "fcn16-idx-last-ens5": {**_FCN, "extra": {**_FCN["extra"], "width": 16, "indices": _IDX}, "keep_best": False, "members": 5},
    "fcn16-idx-sqrt-ls-last-ens5": {
        **_FCN, "extra": {**_FCN["extra"], "width": 16, "indices": _IDX}, "keep_best": False, "members": 5,
        "class_weights": "sqrt", "label_smoothing": 0.1,
    },  # fmt: skip
    "fcn16-idx-sqrt-ls-jit": {
        **_FCN, "extra": {**_FCN["extra"], "width": 16, "indices": _IDX}, "class_weights": "sqrt", "label_smoothing": 0.1,
        "jitter": (0.1, 0.1, 0.1),
    },  # fmt: skip
    "fcn16-idx-sqrt-ls-last": {
        **_FCN, "extra": {**_FCN["extra"], "width": 16, "indices": _IDX}, "keep_best": False,
        "class_weights": "sqrt", "label_smoothing": 0.1,
    },  # fmt: skip
    "fcn16-idx-l4": {**_FCN, "extra": {**_FCN["extra"], "width": 16, "layers": 4, "indices": _IDX}},
}


def checkerboard(shape: tuple[int, int], block: int, parity: int) -> np.ndarray:
    """``(H, W)`` bool: True on the blocks of ``block`` px whose ``(row + col) % 2 == parity``."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy // block + xx // block) % 2) == parity


def load_scene() -> dict[str, Any]:
    """The NC scene through the library, as ``run_landcover`` loads it."""
    from staclearn.data.cube import load_cube, valid_mask
    from staclearn.data.labels import IGNORE_INDEX, load_label_raster
    from staclearn.data.labels import split_label_items
    from staclearn.data.search import open_items

    imagery, label_items = split_label_items(open_items(CATALOG))
    cube = load_cube(imagery, bands=BANDS, engine="odc")
    image = np.asarray(cube.isel(time=0).values, dtype=np.float32)
    nodata = cube.attrs.get("nodata")
    labels_da = load_label_raster(label_items[0], cube.odc.geobox, asset="labels")
    ok = valid_mask(image, nodata)
    labels = np.where(ok, labels_da.values, IGNORE_INDEX).astype(np.uint8)
    return {"cube": cube, "image": image, "nodata": nodata, "labels": labels, "ok": ok, "classes": labels_da.attrs["classes"]}


def _in_memory(index_path: Path, split: str, fill: np.ndarray) -> TensorDataset:
    from staclearn.chips.pixel import ChipDataset

    ds = ChipDataset(index_path, split, fill=fill)
    if len(ds) == 0:
        return TensorDataset(torch.zeros(0, len(BANDS), 1, 1), torch.zeros(0, 1, 1, dtype=torch.long))
    xs, ys = zip(*(ds[i] for i in range(len(ds))), strict=True)
    return TensorDataset(torch.stack(xs), torch.stack(ys))


def run_one(
    scene: dict[str, Any], test_mask: np.ndarray, recipe: dict[str, Any], seed: int, work: Path, *, rf: bool = True,
    split_seed: int | None = None,
) -> dict[str, Any]:
    """One fold x seed: the product's steps with the recipe's model and training settings."""
    from staclearn.chips.pixel import band_statistics, block_split, export_chips
    from staclearn.evaluation.metrics import compute_metrics
    from staclearn.evaluation.baselines import random_forest_baseline
    from staclearn.data.labels import IGNORE_INDEX, indices_to_values
    from staclearn.models.segmentation import build_model
    from staclearn.inference.raster import CLASS_MAP_NODATA, predict_class_map
    from staclearn.data.splits import TEST, TRAIN
    from staclearn.training.segmentation import train_ensemble

    image, labels, ok, classes, cube = scene["image"], scene["labels"], scene["ok"], scene["classes"], scene["cube"]
    names = [c.name for c in classes]
    values = [c.value for c in classes]
    split = block_split(labels, block_size=32, valid_fraction=0.2, test_mask=test_mask, seed=seed if split_seed is None else split_seed)
    index = export_chips(
        image, labels, split, cube.odc.geobox, work / "chips", tile_size=recipe["tile_size"], stride=recipe["stride"],
        min_labelled=0.002, nodata=scene["nodata"], band_names=list(BANDS),
    )  # fmt: skip
    index_path = work / "chips" / "chips.parquet"
    mean, std = band_statistics(index_path, "train")
    train_px = (split == TRAIN) & ok  # training part only: no validation, no test pixel
    train_ds, valid_ds = _in_memory(index_path, "train", mean), _in_memory(index_path, "valid", mean)
    t0 = time.perf_counter()
    model, trainers = train_ensemble(
        lambda _seed: build_model(
            BANDS, classes, mean=mean, std=std, architecture=recipe["architecture"], encoder=recipe["encoder"],
            encoder_depth=recipe["encoder_depth"], extra=recipe["extra"], index_pixels=image[:, train_px],
        ),
        train_ds, valid_ds, members=recipe["members"], seed=seed, epochs=recipe["epochs"], lr=recipe["lr"],
        fit_kwargs={"weight_decay": recipe["weight_decay"], "keep_best": recipe["keep_best"], "progress": False},
        **_trainer_kwargs(len(classes), recipe),
    )  # fmt: skip
    best_epochs = [t.best_epoch for t in trainers]
    train_s = time.perf_counter() - t0
    class_map = predict_class_map(model.eval(), cube, tile_size=256, padding=32, batch_size=4, device="cpu")
    label_values = indices_to_values(labels, classes)
    test_ref = np.where((split == TEST) & (labels != IGNORE_INDEX), label_values, IGNORE_INDEX).astype(np.uint8)
    met = compute_metrics(test_ref, class_map.values, values, names)
    row: dict[str, Any] = {
        "oa": met.overall_accuracy, "f1": met.macro_f1, "train_s": train_s, "best_epoch": best_epochs,
        "n_test": met.n_samples, "n_train_px": int(((split == TRAIN) & (labels != IGNORE_INDEX)).sum()),
        "n_train_chips": len(train_ds), "n_valid_chips": len(valid_ds),
        "confusion": met.confusion.tolist(),
    }  # fmt: skip
    if rf:
        train_mask = (split == TRAIN) & (labels != IGNORE_INDEX)
        t1 = time.perf_counter()
        rf_idx = random_forest_baseline(image, labels, train_mask, nodata_mask=~ok, n_estimators=500, seed=seed, n_jobs=1)
        rf_met = compute_metrics(test_ref, indices_to_values(rf_idx, classes, nodata=CLASS_MAP_NODATA), values, names)
        row.update(rf_oa=rf_met.overall_accuracy, rf_f1=rf_met.macro_f1, rf_s=time.perf_counter() - t1, rf_confusion=rf_met.confusion.tolist())
    return row


def run_product(scene: dict[str, Any], test_mask: np.ndarray, seed: int, work: Path, *, split_seed: int | None = None, **overrides: Any) -> dict[str, Any]:
    """One fold x seed through ``run_landcover`` itself with its defaults: the checkerboard
    half as the user's test regions (a mask on the label grid), validation blocks of 32 px."""
    from staclearn.workflows.landcover import LandCoverConfig, run_landcover

    config = LandCoverConfig(
        test_regions=test_mask, split_seed=seed if split_seed is None else split_seed, seed=seed, block_size=32,
        valid_fraction=0.2, rf_estimators=500, device="cpu", onnx=False, vectorize=False, **overrides,
    )  # fmt: skip
    result = run_landcover(CATALOG, work / "run", config, progress=False, log=lambda _: None)
    m, rf = result.metrics["test"]["model"], result.metrics["test"]["random_forest"]
    return {
        "oa": m.overall_accuracy, "f1": m.macro_f1, "train_s": result.timings["train"], "n_test": m.n_samples,
        "rf_oa": rf.overall_accuracy, "rf_f1": rf.macro_f1, "rf_s": result.timings.get("random_forest"),
        "confusion": m.confusion.tolist(), "rf_confusion": rf.confusion.tolist(),
    }  # fmt: skip


def _trainer_kwargs(num_classes: int, recipe: dict[str, Any]) -> dict[str, Any]:
    from staclearn.chips.augment import Augmentation, RadiometricJitter

    augment = recipe["augment"]
    if recipe.get("jitter"):
        j = recipe["jitter"]  # brightness, contrast, band gain amounts
        augment = Augmentation(radiometric=RadiometricJitter(brightness=j[0], contrast=j[1], band_gain=j[2]))
    return {
        "num_classes": num_classes, "batch_size": recipe["batch_size"], "weights": recipe["class_weights"],
        "augment": augment, "label_smoothing": recipe["label_smoothing"], "device": "cpu",
    }  # fmt: skip


def summarise(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """Mean +- sd over all runs, and the sd across seeds per fold (mean and max)."""
    out: dict[str, Any] = {"recipe": name, "runs": len(rows)}
    keys = [k for k in ("oa", "f1", "rf_oa", "rf_f1", "train_s") if k in rows[0]]
    for k in keys:
        vals = [r[k] for r in rows]
        out[k] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
    folds = sorted({r["fold"] for r in rows})
    for k in ("oa", "f1"):
        sds = [statistics.stdev([r[k] for r in rows if r["fold"] == f]) for f in folds if sum(r["fold"] == f for r in rows) > 1]
        if sds:
            out[f"{k}_seed_sd_mean"], out[f"{k}_seed_sd_max"] = statistics.mean(sds), max(sds)
    if "rf_oa" in rows[0]:
        out["beats_rf_every_run"] = all(r["oa"] > r["rf_oa"] and r["f1"] > r["rf_f1"] for r in rows)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", nargs="+", default=["product"], help="'product' (run_landcover with its defaults) or names in RECIPES")
    p.add_argument("--folds", nargs="+", default=["64:0", "64:1", "96:0", "96:1"], help="BLOCK:PARITY of the test checkerboard")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--members", type=int, default=None, help="override the recipe's ensemble members")
    p.add_argument("--split-seed", type=int, default=None, help="seed of the validation blocks (default: each run's seed)")
    p.add_argument("--no-rf", action="store_true", help="skip the RandomForest")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--jsonl", type=Path, default=None, help="append each run's JSON line here")
    p.add_argument("--list", action="store_true", help="print the recipes and exit")
    args = p.parse_args()
    if args.list:
        for k, v in RECIPES.items():
            print(k, json.dumps(v))
        return
    torch.set_num_threads(args.threads)
    scene = load_scene()
    shape = scene["labels"].shape
    for name in args.recipe:
        recipe = dict(RECIPES[name]) if name != "product" else {"epochs": None, "members": None}
        if args.epochs is not None:
            recipe["epochs"] = args.epochs
        if args.members is not None:
            recipe["members"] = args.members
        rows = []
        for fold in args.folds:
            block, parity = (int(v) for v in fold.split(":"))
            test_mask = checkerboard(shape, block, parity)
            for seed in args.seeds:
                with tempfile.TemporaryDirectory(prefix="staclearn-bench-") as tmp:
                    if name == "product":
                        over = {k: v for k, v in (("epochs", args.epochs), ("members", args.members)) if v is not None}
                        row = run_product(scene, test_mask, seed, Path(tmp), split_seed=args.split_seed, **over)
                    else:
                        row = run_one(scene, test_mask, recipe, seed, Path(tmp), rf=not args.no_rf, split_seed=args.split_seed)
                row = {"recipe": name, "fold": fold, "seed": seed, "epochs": recipe["epochs"], "members": recipe["members"], **row}
                rows.append(row)
                short = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items() if "confusion" not in k}
                print(json.dumps(short), flush=True)
                if args.jsonl:
                    with args.jsonl.open("a") as f:
                        f.write(json.dumps(row) + "\n")
        s = summarise(rows, name)
        txt = "  ".join(
            f"{k} {v[0]:.3f}+-{v[1]:.3f}" if isinstance(v, tuple) else f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in s.items()
        )
        print("SUMMARY " + txt, flush=True)


if __name__ == "__main__":
    main()
