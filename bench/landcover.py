"""Benchmark: the land-cover workflow on the real NC Landsat-7 scene.

Prints overall accuracy and macro-F1 of the U-Net and of the per-pixel RandomForest on the
same spatially blocked split, the training time and the inference throughput (Mpx/s), for
one or more settings. Run by hand (not in CI):

    .venv/bin/python bench/landcover.py --epochs 60 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
from pathlib import Path

from staclearn.landcover import LandCoverConfig, run_landcover

CATALOG = Path(__file__).parents[1] / "catalogs" / "nc-landsat" / "catalog.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--tile-size", type=int, default=64)
    p.add_argument("--stride", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temp folder)")
    args = p.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="staclearn-bench-"))
    rows = []
    for seed in args.seeds:
        config = LandCoverConfig(
            bands=("b1", "b2", "b3", "b4", "b5"),
            epochs=args.epochs,
            encoder=args.encoder,
            lr=args.lr,
            tile_size=args.tile_size,
            stride=args.stride,
            seed=seed,
        )
        r = run_landcover(CATALOG, root / f"seed{seed}", config, progress=False, log=lambda _: None)
        row = {
            "seed": seed,
            "unet_oa": r.metrics["unet"].overall_accuracy,
            "unet_macro_f1": r.metrics["unet"].macro_f1,
            "unet_miou": r.metrics["unet"].miou,
            "rf_oa": r.metrics["random_forest"].overall_accuracy,
            "rf_macro_f1": r.metrics["random_forest"].macro_f1,
            "train_s": r.timings["train"],
            "predict_mpx_s": r.timings["predict_mpx_per_s"],
            "n_valid_px": r.metrics["unet"].n_samples,
        }
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if len(rows) > 1:
        for k in ("unet_oa", "unet_macro_f1", "rf_oa", "rf_macro_f1"):
            vals = [r[k] for r in rows]
            print(f"{k:14s} mean {statistics.mean(vals):.3f}  sd {statistics.stdev(vals):.3f}")
    print(f"settings: {vars(args)}; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; runs in {root}")


if __name__ == "__main__":
    main()
