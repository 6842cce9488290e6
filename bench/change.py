"""Benchmark: change detection on real OSCD cities, leave-one-city-out.

For each held-out city (all six by default), trains a change model on the other five
cities with :func:`staclearn.change.run_change`, evaluates it on the held-out city and
compares it with change vector analysis (threshold fitted on the five training cities).
Prints one JSON line per (fusion, city) with F1 / precision / recall / IoU of the change
class, then the mean F1 per fusion. Run by hand (not in CI):

    .venv/bin/python bench/change.py --fusion early siam-diff --epochs 40
    .venv/bin/python bench/change.py --cities paris rennes --threads 2

Targets: F1(change) >= 0.55 on unseen cities and >= CVA + 0.15.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from staclearn.change import ChangeConfig, run_change

CATALOG = Path(__file__).parents[1] / "catalogs" / "oscd" / "catalog.json"
CITIES = ("aguasclaras", "bercy", "bordeaux", "nantes", "paris", "rennes")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cities", nargs="+", default=list(CITIES), help="held-out cities, one run each")
    p.add_argument("--fusion", nargs="+", default=["early"], choices=["early", "siam-diff"])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--encoder-depth", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--tile-size", type=int, default=64)
    p.add_argument("--stride", type=int, default=64)
    p.add_argument("--class-weights", default="sqrt", choices=["balanced", "sqrt", "none"])
    p.add_argument("--dice", type=float, default=0.5)
    p.add_argument("--standardize", action="store_true", help="z-score each date by its own band statistics")
    p.add_argument("--bands", nargs="+", default=["B02", "B03", "B04", "B08", "B05", "B06", "B07", "B8A", "B11", "B12"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine may be shared)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temp folder)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root = args.out or Path(tempfile.mkdtemp(prefix="staclearn-change-bench-"))
    results: dict[str, list[dict]] = {}
    for fusion in args.fusion:
        for city in args.cities:
            config = ChangeConfig(
                valid_cities=(city,),
                bands=tuple(args.bands),
                fusion=fusion,
                tile_size=args.tile_size,
                stride=args.stride,
                encoder=args.encoder,
                encoder_depth=args.encoder_depth,
                epochs=args.epochs,
                lr=args.lr,
                batch_size=args.batch_size,
                class_weights=None if args.class_weights == "none" else args.class_weights,
                dice=args.dice,
                standardize=args.standardize,
                seed=args.seed,
                device=args.device,
            )
            t0 = time.perf_counter()
            r = run_change(CATALOG, root / fusion / city, config, progress=False, log=lambda _: None)
            m, c = r.metrics[city]["model"], r.metrics[city]["cva"]
            row = {
                "fusion": fusion,
                "city": city,
                "f1": m.f1["change"],
                "precision": m.precision["change"],
                "recall": m.recall["change"],
                "iou": m.iou["change"],
                "cva_f1": c.f1["change"],
                "cva_threshold": r.cva_threshold,
                "cva_train_f1": r.cva_train_f1,
                "train_s": r.timings["train"],
                "total_s": time.perf_counter() - t0,
            }
            results.setdefault(fusion, []).append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    for fusion, rows in results.items():
        f1 = statistics.mean(r["f1"] for r in rows)
        cva = statistics.mean(r["cva_f1"] for r in rows)
        print(f"{fusion:10s} mean F1(change) {f1:.3f}  CVA {cva:.3f}  ({len(rows)} held-out cities)")
    print(f"settings: {vars(args)}; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; runs in {root}")


if __name__ == "__main__":
    main()
