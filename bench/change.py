"""Benchmark: change detection on real OSCD cities, leave one city out, beside change vector analysis.

For each test city (all eleven of ``catalogs/oscd`` by default) and each training seed,
:func:`staclearn.workflows.change.run_change` trains a change model on the other cities but two,
chooses its epoch and its decision threshold on those two validation cities (20 % of the
non-test cities, drawn with ``--split-seed``, the same for every training seed), and
evaluates it on the test city beside change vector analysis (threshold fitted on the same
training cities). The recipe is :class:`staclearn.workflows.change.ChangeConfig`'s defaults unless a
flag says otherwise. The test city is used for nothing but the figures. The pairs are loaded once and
shared by every run.

Prints one line per (test city, seed): precision / recall / F1 / IoU of the change class for
the model (at its validation threshold) and for CVA, F1 at the plain 0.5 cut, the threshold,
and the training seconds; then per city the mean over seeds, then mean +- sd over cities x
seeds for the model and CVA, and how precision and recall move with the threshold on each
unseen city (also drawn, one panel per city, in ``precision_recall.png`` of the output folder).
Run by hand (not in CI):

    .venv/bin/python bench/change.py                      # 11 cities x seeds 0 1, the defaults of ChangeConfig
    .venv/bin/python bench/change.py --quick              # 3 cities x 1 seed
    .venv/bin/python bench/change.py --cities paris rennes --seeds 0 --architecture Unet --epochs 40

Targets (issue 13): mean F1(change) >= 0.55, >= CVA + 0.15, and not below CVA on any city.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from staclearn.data.pairs import group_pairs, load_pair
from staclearn.data.search import open_items
from staclearn.evaluation.cva import change_vector_magnitude
from staclearn.workflows.change import ChangeConfig, run_change

CATALOG = Path(__file__).parents[1] / "catalogs" / "oscd" / "catalog.json"
CITIES = (
    "aguasclaras", "beihai", "beirut", "bercy", "bordeaux", "cupertino", "nantes", "paris", "pisa", "rennes", "saclay_e",
)
QUICK_CITIES = ("beirut", "bercy", "nantes")
D = ChangeConfig()


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} +- {sd:.3f}"


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cities = sorted({r["test_city"] for r in rows})
    cols = min(4, len(cities))
    nrows = -(-len(cities) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.0 * nrows), squeeze=False)
    for ax in axes.ravel()[len(cities):]:
        ax.axis("off")
    for ax, city in zip(axes.ravel(), cities, strict=False):
        for r in (r for r in rows if r["test_city"] == city):
            pr = r["pr"]
            (line,) = ax.plot(pr["recall"], pr["precision"], "-", lw=1, label=f"seed {r['seed']}")
            ax.plot(r["recall"], r["precision"], "o", color=line.get_color())
            ax.plot(r["recall_at_0.5"], r["precision_at_0.5"], "s", mfc="none", color=line.get_color())
        c = next(r for r in rows if r["test_city"] == city)
        ax.plot(c["cva_recall"], c["cva_precision"], "^", color="#333333", label="CVA")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="recall", ylabel="precision", title=f"{city} (unseen)")
        ax.grid(alpha=0.3)
    axes.ravel()[0].legend(fontsize=7)
    fig.suptitle("Change class on each test city: curve over p in 0.05..0.95; o validation threshold, [] 0.5, ^ CVA", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def report(rows: list[dict], out: Path | None = None) -> None:
    """Print the per-city, threshold and mean +- sd tables of benchmark rows (and draw the PR panels in ``out``)."""
    cities = list(dict.fromkeys(r["test_city"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    print("\n| test city | seed | valid | thr | P | R | F1 | IoU | CVA P | CVA R | CVA F1 | CVA IoU | F1@0.5 | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["test_city"], r["seed"])):
        print(f"| {r['test_city']} | {r['seed']} | {','.join(r['valid_cities'])} | {r['threshold']:.3f} | "
              + " | ".join(f"{r[k]:.3f}" for k in ("precision", "recall", "f1", "iou", "cva_precision", "cva_recall",
                                                    "cva_f1", "cva_iou", "f1_at_0.5"))
              + f" | {r['train_s']:.0f} |")
    print("\nper city (mean over seeds): model F1 / CVA F1 / difference")
    below = []
    for city in cities:
        rs = [r for r in rows if r["test_city"] == city]
        f, cv = statistics.mean(r["f1"] for r in rs), statistics.mean(r["cva_f1"] for r in rs)
        if f < cv:
            below.append(city)
        print(f"  {city:12s} {f:.3f}  {cv:.3f}  {f - cv:+.3f}")
    print("\nprecision / recall of change against the threshold on the unseen cities (mean over seeds):")
    grid = rows[0]["pr"]["threshold"]
    show = [i for i, t in enumerate(grid) if round(t, 2) in (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)]
    print("  " + " " * 12 + "  ".join(f"p>={grid[i]:.1f} P/R  " for i in show))
    for city in cities:
        rs = [r for r in rows if r["test_city"] == city]
        cells = [
            f"{np.mean([r['pr']['precision'][i] for r in rs]):.2f}/{np.mean([r['pr']['recall'][i] for r in rs]):.2f}   "
            for i in show
        ]
        print(f"  {city:12s}" + "  ".join(cells))
    n = f"{len(cities)} test cities x {len(seeds)} seeds"
    train_s = [r["train_s"] for r in rows]
    print(f"\nmodel  P {_mean_sd([r['precision'] for r in rows])}  R {_mean_sd([r['recall'] for r in rows])}  "
          f"F1 {_mean_sd([r['f1'] for r in rows])}  IoU {_mean_sd([r['iou'] for r in rows])}  ({n})")
    print(f"CVA    P {_mean_sd([r['cva_precision'] for r in rows])}  R {_mean_sd([r['cva_recall'] for r in rows])}  "
          f"F1 {_mean_sd([r['cva_f1'] for r in rows])}  IoU {_mean_sd([r['cva_iou'] for r in rows])}")
    print(f"model F1 at p>=0.5 (no threshold choice): {_mean_sd([r['f1_at_0.5'] for r in rows])}")
    print(f"model - CVA F1: {statistics.mean(r['f1'] - r['cva_f1'] for r in rows):+.3f}; cities below CVA: {below or 'none'}")
    print(f"training seconds: {_mean_sd(train_s)} per run, {sum(train_s):.0f} in all; whole runs "
          f"{_mean_sd([r['total_s'] for r in rows])} s each")
    if out is not None:
        _plot(rows, out / "precision_recall.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"test cities {list(QUICK_CITIES)}, seed 0")
    p.add_argument("--cities", nargs="+", default=None, help="test cities, one run each (default: all eleven)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds, one run each (default 0 1)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the drawing of the validation cities")
    p.add_argument("--fusion", default=D.fusion, choices=["early", "siam-diff"])
    p.add_argument("--architecture", default=D.architecture, choices=["Unet", "PixelConvNet"])
    p.add_argument("--width", type=int, default=D.width)
    p.add_argument("--layers", type=int, default=D.layers)
    p.add_argument("--kernel", type=int, default=D.kernel)
    p.add_argument("--encoder", default=D.encoder)
    p.add_argument("--encoder-depth", type=int, default=D.encoder_depth)
    p.add_argument("--epochs", type=int, default=D.epochs)
    p.add_argument("--patience", type=int, default=D.patience)
    p.add_argument("--lr", type=float, default=D.lr)
    p.add_argument("--batch-size", type=int, default=D.batch_size)
    p.add_argument("--tile-size", type=int, default=D.tile_size)
    p.add_argument("--stride", type=int, default=D.stride)
    p.add_argument("--class-weights", default=D.class_weights or "none", choices=["balanced", "sqrt", "none"])
    p.add_argument("--dice", type=float, default=D.dice)
    p.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=D.standardize,
                   help="z-score each date by its own band statistics")
    p.add_argument("--date-swap", type=float, default=D.date_swap)
    p.add_argument("--radiometric", type=float, default=D.radiometric)
    p.add_argument("--oversample-change", type=float, default=D.oversample_change)
    p.add_argument("--threshold", type=float, default=None, help="fixed decision threshold (default: chosen on the validation city)")
    p.add_argument("--bands", nargs="+", default=list(D.bands))
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine may be shared)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temp folder)")
    p.add_argument("--jsonl", type=Path, default=None, help="append one JSON line per run here")
    p.add_argument("--report", type=Path, nargs="+", default=None,
                   help="print the tables of the runs in these --jsonl files (e.g. folds run in parallel) and exit")
    args = p.parse_args()
    if args.report:
        rows = [json.loads(line) for path in args.report for line in path.read_text(encoding="utf-8").splitlines() if line]
        report(rows, args.out)
        return
    cities = args.cities or (list(QUICK_CITIES) if args.quick else list(CITIES))
    seeds = args.seeds or ([0] if args.quick else [0, 1])
    epochs = args.epochs
    torch.set_num_threads(args.threads)
    root = args.out or Path(tempfile.mkdtemp(prefix="staclearn-change-bench-"))
    root.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    groups = group_pairs(open_items(CATALOG), D.city_property)
    pairs = {}
    for city, g in groups.items():
        b, a, lab = load_pair(g.before, g.after, bands=args.bands, label_item=g.labels, resampling=D.resampling)
        pairs[city] = (b.load(), a.load(), lab)
    magnitudes = {city: change_vector_magnitude(b, a) for city, (b, a, _) in pairs.items()}
    print(f"loaded {len(pairs)} cities in {time.perf_counter() - t0:.0f} s", flush=True)

    rows: list[dict] = []
    for city in cities:
        for seed in seeds:
            config = dataclasses.replace(
                D, test_cities=(city,), split_seed=args.split_seed, bands=tuple(args.bands), fusion=args.fusion,
                architecture=args.architecture, width=args.width, layers=args.layers, kernel=args.kernel,
                tile_size=args.tile_size, stride=args.stride, encoder=args.encoder, encoder_depth=args.encoder_depth,
                epochs=epochs, patience=args.patience, lr=args.lr, batch_size=args.batch_size,
                class_weights=None if args.class_weights == "none" else args.class_weights, dice=args.dice,
                standardize=args.standardize, date_swap=args.date_swap, radiometric=args.radiometric,
                oversample_change=args.oversample_change, threshold=args.threshold, seed=seed, device=args.device,
            )
            t1 = time.perf_counter()
            r = run_change(CATALOG, root / city / f"seed{seed}", config, progress=False, log=lambda _: None, pairs=pairs,
                           magnitudes=magnitudes, overwrite=True)  # a rerun with the same --out replaces its runs
            m, c = r.test_metrics[city]["model"], r.test_metrics[city]["cva"]
            curves = r.precision_recall["test"][city]
            half = curves["model_at_0.5"]
            row = {
                "test_city": city, "seed": seed, "valid_cities": list(r.valid_cities), "threshold": r.threshold,
                "precision": m.precision["change"], "recall": m.recall["change"], "f1": m.f1["change"], "iou": m.iou["change"],
                "cva_precision": c.precision["change"], "cva_recall": c.recall["change"], "cva_f1": c.f1["change"],
                "cva_iou": c.iou["change"],
                "precision_at_0.5": half["precision"][0], "recall_at_0.5": half["recall"][0], "f1_at_0.5": half["f1"][0],
                "valid_f1": r.valid_pooled["model"].f1["change"], "cva_threshold": r.cva_threshold,
                "epochs_run": len(r.history), "train_s": r.timings["train"], "total_s": time.perf_counter() - t1,
                "pr": curves["model"],
            }
            rows.append(row)
            print(
                f"{city:12s} seed {seed}  valid {','.join(r.valid_cities):12s} thr {r.threshold:.3f}  "
                f"model P {row['precision']:.3f} R {row['recall']:.3f} F1 {row['f1']:.3f} IoU {row['iou']:.3f}  |  "
                f"CVA P {row['cva_precision']:.3f} R {row['cva_recall']:.3f} F1 {row['cva_f1']:.3f} IoU {row['cva_iou']:.3f}  |  "
                f"F1@0.5 {row['f1_at_0.5']:.3f}  train {row['train_s']:.0f} s",
                flush=True,
            )
            if args.jsonl:
                with args.jsonl.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({**row, "settings": {**vars(args), "out": str(root), "jsonl": str(args.jsonl)}}) + "\n")

    report(rows, root)
    print(f"settings: {vars(args)}; epochs {epochs}; seeds {seeds}; wall {time.perf_counter() - t0:.0f} s; peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; runs and precision_recall.png in {root}")


if __name__ == "__main__":
    main()
