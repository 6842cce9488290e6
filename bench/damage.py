"""Benchmark: building-damage classification on the real xBD Santa Rosa tiles, unseen tiles.

Trains the footprint-chip classifier with whole tiles held out and prints, per fold, the F1
of *destroyed vs not destroyed* on the held-out tiles' buildings, the per-class precision /
recall / F1, the overall accuracy and the training time; then the mean over folds. Target:
F1(destroyed) >= 0.95 on unseen tiles. Run by hand (not in CI):

    .venv/bin/python bench/damage.py --epochs 15 --chip-size 64              # 3 rotating folds
    .venv/bin/python bench/damage.py --folds 00000012,00000066 --post-only   # one fold, no pre image

The held-out tiles are the test set, so the weights of the *last* epoch are scored (no
epoch is chosen on them) unless ``--keep-best`` is given.

The default folds pair a tile with mostly destroyed buildings with a mostly intact one, so
every held-out set holds both classes: (12, 66), (89, 74), (141, 21).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np

from staclearn.damage import DamageConfig, run_damage
from staclearn.evaluate import compute_metrics

DATA = Path(__file__).parents[1].parent / "shared" / "data" / "damage" / "xbd_santarosa"
FOLDS = ["00000012,00000066", "00000089,00000074", "00000141,00000021"]


def destroyed_f1(predictions: Path) -> tuple[float, float, float, int]:
    """Precision, recall, F1 of 'destroyed' (xBD subtype) vs every other labelled building."""
    pred = gpd.read_parquet(predictions)
    pred = pred[pred["reference_value"] >= 0]
    ref = (pred["subtype"] == "destroyed").to_numpy().astype(np.int64)
    hit = pred["class_name"].isin(["destroyed", "damaged"]).to_numpy().astype(np.int64)
    m = compute_metrics(ref, hit, [0, 1], ["not destroyed", "destroyed"], ignore_index=None)
    return m.precision["destroyed"], m.recall["destroyed"], m.f1["destroyed"], m.n_samples


def _rounded(obj):
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    return round(obj, 4) if isinstance(obj, float) else obj


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--folds", nargs="+", default=FOLDS, help="comma-separated validation tiles, one fold each")
    p.add_argument("--class-map", default="xbd_destroyed")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--chip-size", type=int, default=64)
    p.add_argument("--buffer-m", type=float, default=10.0)
    p.add_argument("--post-only", action="store_true", help="do not stack the pre-disaster image (3 channels)")
    p.add_argument("--mask-outside", type=float, default=None)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--keep-best",
        action="store_true",
        help="keep the epoch with the best held-out macro-F1 (optimistic: chosen on the test tiles); default: last epoch",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temp folder)")
    args = p.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="staclearn-damage-"))
    rows = []
    for fold in args.folds:
        valid = tuple(fold.split(","))
        config = DamageConfig(
            class_map=args.class_map,
            model_name=args.model,
            chip_size=args.chip_size,
            buffer_m=args.buffer_m,
            stack_pre=not args.post_only,
            mask_outside=args.mask_outside,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            valid_tiles=valid,
            keep_best=args.keep_best,
            seed=args.seed,
            device=args.device,
        )
        t0 = time.perf_counter()
        r = run_damage(args.data, root / f"fold_{'_'.join(valid)}", config, log=lambda _: None)
        prec, rec, f1, n = destroyed_f1(r.predictions)
        row = {
            "valid_tiles": list(valid),
            "n_train": r.n_train,
            "n_valid": n,
            "f1_destroyed": f1,
            "precision_destroyed": prec,
            "recall_destroyed": rec,
            "overall_accuracy": r.metrics.overall_accuracy,
            "per_class": {
                name: {
                    "precision": r.metrics.precision[name],
                    "recall": r.metrics.recall[name],
                    "f1": r.metrics.f1[name],
                    "support": r.metrics.support[name],
                }
                for name in r.metrics.class_names
            },
            "epoch_kept": r.best_epoch,
            "train_s": r.timings["train"],
            "total_s": time.perf_counter() - t0,
        }
        rows.append(row)
        print(json.dumps(_rounded(row)), flush=True)
    if len(rows) > 1:
        f1s = [r["f1_destroyed"] for r in rows]
        print(
            json.dumps(
                {
                    "folds": len(rows),
                    "f1_destroyed_mean": round(statistics.mean(f1s), 4),
                    "f1_destroyed_min": round(min(f1s), 4),
                    "n_valid_total": sum(r["n_valid"] for r in rows),
                    "train_s_total": round(sum(r["train_s"] for r in rows), 1),
                }
            )
        )
    print(f"runs in {root}")


if __name__ == "__main__":
    main()
