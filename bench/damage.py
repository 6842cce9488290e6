"""Benchmark: building-damage classification on the 33 real xBD Santa Rosa tiles, k-fold by whole tiles.

Cross-validation: the tiles are cut into ``--folds`` groups of whole tiles
(:func:`staclearn.data.xbd.tile_folds`, stratified so each fold holds destroyed and intact
buildings). For each fold and each training ``--seeds`` value, the fold is the test part
(``DamageConfig.test_tiles``), validation tiles are drawn from the other tiles
(``split_seed``, fixed, so the seeds vary the training only) and pick the epoch / stop early,
and the product's default model is trained through the public API (:func:`run_damage`). In
the same run, on exactly the same training buildings, the non-deep baseline
(:data:`staclearn.workflows.damage.BASELINE_NAME`: gradient boosting on per-building colour
statistics) is fitted and scored on the same test buildings.

Printed per fold x seed: precision, recall and F1 of the positive class (``destroyed`` with
``xbd_destroyed``, ``damaged`` with ``xbd_binary``) on the test buildings, for the model and
the baseline, and the training seconds; then per fold the mean over seeds, and the mean ± sd
over every fold x seed run. Target (issue 12): F1(destroyed) >= 0.95 in every fold (mean of
the seeds), precision and recall each >= 0.93. Run by hand (not in CI); one run of the
default settings takes a few minutes on one CPU thread:

    .venv/bin/python bench/damage.py                                   # 3 folds x 3 seeds, xbd_destroyed
    .venv/bin/python bench/damage.py --class-map xbd_binary --seeds 0  # damaged vs undamaged
    .venv/bin/python bench/damage.py --folds 3 --seeds 0 --mask-outside 0.3 --epochs 10   # try a setting
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from staclearn.workflows.damage import BASELINE_NAME, DamageConfig, run_damage
from staclearn.data.xbd import tile_folds
from staclearn.data.footprints import assign_classes, get_class_map, read_footprints, read_xbd_labels

DATA = Path(__file__).parents[1].parent / "shared" / "data" / "damage" / "xbd_santarosa"
DEFAULT = DamageConfig()
POSITIVE = {"xbd_destroyed": "destroyed", "xbd_binary": "damaged", "xbd_four": "destroyed"}


def _mean_sd(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.3f} ± {sd:.3f}"


def _prf(m, name: str) -> tuple[float, float, float]:
    return m.precision[name], m.recall[name], m.f1[name]


def _row_line(r: dict) -> str:
    m, b = r["model"], r["baseline"]
    return (
        f"{r['fold']:>4} {r['seed']:>4} {r['n_test']:>6} | {m['precision']:7.3f} {m['recall']:6.3f} {m['f1']:6.3f} | "
        f"{b['precision']:7.3f} {b['recall']:6.3f} {b['f1']:6.3f} | {r['best_epoch']!s:>2}/{r['epochs_run']:<2} {r['train_s']:7.0f}"
    )


HEADER = f"{'fold':>4} {'seed':>4} {'n_test':>6} | {'model P':>7} {'R':>6} {'F1':>6} | {'base P':>7} {'R':>6} {'F1':>6} | {'epoch':>5} {'train_s':>7}"


def report(rows: list[dict]) -> None:
    """Print per fold the mean ± sd over seeds, then the mean ± sd over every fold x seed run."""
    seeds = sorted({r["seed"] for r in rows})
    print(f"\nper fold, mean ± sd over seeds {seeds} (positive class on the test tiles):")
    for k in sorted({r["fold"] for r in rows}):
        rs = [r for r in rows if r["fold"] == k]
        parts = [f"{who} " + " ".join(f"{m[0].upper()} {_mean_sd([r[who][m] for r in rs])}" for m in ("precision", "recall", "f1")) for who in ("model", "baseline")]
        print(f"fold {k}: " + " | ".join(parts))
    print(f"\nall {len(rows)} runs, mean ± sd:")
    for who in ("model", "baseline"):
        print(f"{who if who == 'model' else BASELINE_NAME:>22}: " + ", ".join(f"{m} {_mean_sd([r[who][m] for r in rows])}" for m in ("precision", "recall", "f1")))
    print(f"training seconds per run: {_mean_sd([r['train_s'] for r in rows])}; baseline seconds {_mean_sd([r['baseline_s'] for r in rows])}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--folds", type=int, default=3, help="k folds of whole tiles")
    p.add_argument("--only-fold", type=int, nargs="*", default=None, help="run only these fold numbers (0-based)")
    p.add_argument("--fold-seed", type=int, default=0, help="seed of the fold assignment")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the validation draw inside each fold")
    p.add_argument("--class-map", default="xbd_destroyed")
    p.add_argument("--chip-size", type=int, default=DEFAULT.chip_size)
    p.add_argument("--buffer-m", type=float, default=DEFAULT.buffer_m)
    p.add_argument("--mask-outside", type=float, default=DEFAULT.mask_outside)
    p.add_argument("--no-mask", action="store_true", help="mask_outside=None")
    p.add_argument("--post-only", action="store_true", help="do not stack the pre-disaster image")
    p.add_argument("--model", default=DEFAULT.model_name)
    p.add_argument("--epochs", type=int, default=DEFAULT.epochs)
    p.add_argument("--patience", type=int, default=DEFAULT.patience)
    p.add_argument("--lr", type=float, default=DEFAULT.lr)
    p.add_argument("--no-class-weights", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temp folder)")
    p.add_argument("--summary-of", type=Path, nargs="+", default=None,
                   help="only print the table of bench.jsonl files written by earlier runs (e.g. one process per seed)")
    p.add_argument("--verbose", action="store_true", help="print run_damage's log lines (one per epoch) to stderr")
    args = p.parse_args()
    if args.summary_of:
        rows = [json.loads(line) for f in args.summary_of for line in f.read_text().splitlines() if line.strip()]
        rows.sort(key=lambda r: (r["fold"], r["seed"]))
        print(HEADER)
        for r in rows:
            print(_row_line(r))
        report(rows)
        return
    torch.set_num_threads(args.threads)
    root = args.out or Path(tempfile.mkdtemp(prefix="staclearn-damage-"))
    root.mkdir(parents=True, exist_ok=True)

    cmap = get_class_map(args.class_map)
    fp = read_footprints(read_xbd_labels(sorted((args.data / "labels").glob("*_post_disaster.json"))))
    fp, _ = assign_classes(fp, "subtype", cmap)
    folds = tile_folds(fp, args.folds, seed=args.fold_seed)
    positive = POSITIVE.get(args.class_map, cmap.classes[-1].name)
    config0 = dataclasses.replace(
        DEFAULT,
        class_map=args.class_map,
        chip_size=args.chip_size,
        buffer_m=args.buffer_m,
        mask_outside=None if args.no_mask else args.mask_outside,
        stack_pre=not args.post_only,
        model_name=args.model,
        epochs=args.epochs,
        patience=args.patience,
        lr=args.lr,
        class_weights=None if args.no_class_weights else DEFAULT.class_weights,
        split_seed=args.split_seed,
        device=args.device,
    )
    settings = {k: v for k, v in config0.to_dict().items() if k not in ("class_map", "exclude")}
    print(json.dumps({"class_map": args.class_map, "positive": positive, **settings}), flush=True)
    for k, f in enumerate(folds):
        n = fp[fp["tile"].isin(f)]["class_value"].value_counts().to_dict()
        print(f"fold {k}: {len(f)} tiles, labelled buildings per class value {n}", flush=True)
    print(HEADER)
    rows = []
    for k, fold in enumerate(folds):
        if args.only_fold is not None and k not in args.only_fold:
            continue
        for seed in args.seeds:
            config = dataclasses.replace(config0, test_tiles=tuple(fold), seed=seed)
            log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.verbose else (lambda _: None)
            r = run_damage(args.data, root / f"fold{k}_seed{seed}", config, log=log)
            mp, mr, mf = _prf(r.test_metrics, positive)
            bp, br, bf = _prf(r.baseline_metrics, positive)
            row = {
                "fold": k, "seed": seed, "test_tiles": len(fold), "valid_tiles": r.valid_tiles, "n_train": r.n_train,
                "n_test": r.n_test, "model": {"precision": mp, "recall": mr, "f1": mf}, "baseline": {"precision": bp, "recall": br, "f1": bf},
                "valid_f1": r.valid_metrics.f1[positive], "best_epoch": r.best_epoch, "epochs_run": len(r.history),
                "train_s": r.timings["train"], "baseline_s": r.timings["baseline"], "total_s": r.timings["total"],
            }  # fmt: skip
            rows.append(row)
            with open(root / "bench.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
            print(_row_line(row), flush=True)
    report(rows)
    print(f"runs in {root}")


if __name__ == "__main__":
    main()
