"""Benchmark: change detection on real OSCD cities, one test city per run (leave one city out).

For each test city (all eleven of ``catalogs/oscd`` by default) and each training seed, :func:`staclearn.change.run_change`
trains a change model on the other cities but one, chooses its epoch on that validation city
(drawn with ``--split-seed`` from the non-test cities, the same for every training seed),
and evaluates it on the test city beside change vector analysis (threshold fitted on the
training cities). Prints one JSON line per (fusion, test city, seed) with F1 / precision /
recall / IoU of the change class on the test city (and the validation city's F1 apart), then
the mean +- sd of the test F1 per fusion over cities x seeds. Run by hand (not in CI):

    .venv/bin/python bench/change.py --fusion early siam-diff --epochs 40 --seeds 0 1 2
    .venv/bin/python bench/change.py --cities paris rennes --threads 2

Targets: F1(change) >= 0.55 on test cities and >= CVA + 0.15.
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
CITIES = (
    "aguasclaras", "beihai", "beirut", "bercy", "bordeaux", "cupertino", "nantes", "paris", "pisa", "rennes", "saclay_e",
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cities", nargs="+", default=list(CITIES), help="test cities, one run each")
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
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds, one run each")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the drawing of the validation city")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine may be shared)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temp folder)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root = args.out or Path(tempfile.mkdtemp(prefix="staclearn-change-bench-"))
    results: dict[str, list[dict]] = {}
    for fusion in args.fusion:
        for city in args.cities:
            for seed in args.seeds:
                config = ChangeConfig(
                    test_cities=(city,),
                    split_seed=args.split_seed,
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
                    seed=seed,
                    device=args.device,
                )
                t0 = time.perf_counter()
                r = run_change(CATALOG, root / fusion / city / f"seed{seed}", config, progress=False, log=lambda _: None)
                m, c = r.test_metrics[city]["model"], r.test_metrics[city]["cva"]
                row = {
                    "fusion": fusion,
                    "test_city": city,
                    "seed": seed,
                    "valid_cities": list(r.valid_cities),
                    "f1": m.f1["change"],
                    "precision": m.precision["change"],
                    "recall": m.recall["change"],
                    "iou": m.iou["change"],
                    "cva_f1": c.f1["change"],
                    "valid_f1": r.valid_pooled["model"].f1["change"],
                    "cva_threshold": r.cva_threshold,
                    "cva_train_f1": r.cva_train_f1,
                    "train_s": r.timings["train"],
                    "total_s": time.perf_counter() - t0,
                }
                results.setdefault(fusion, []).append(row)
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    for fusion, rows in results.items():
        f1 = [r["f1"] for r in rows]
        cva = [r["cva_f1"] for r in rows]
        sd = statistics.stdev(f1) if len(f1) > 1 else 0.0
        cva_sd = statistics.stdev(cva) if len(cva) > 1 else 0.0
        print(
            f"{fusion:10s} test F1(change) {statistics.mean(f1):.3f} +- {sd:.3f}  CVA {statistics.mean(cva):.3f} +- {cva_sd:.3f}  "
            f"({len(args.cities)} test cities x {len(args.seeds)} seeds)"
        )
    print(f"settings: {vars(args)}; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; runs in {root}")


if __name__ == "__main__":
    main()
