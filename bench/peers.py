"""Benchmark: staclearn's inference beside the tools a user would pick instead, in one run (issue 15).

The case is the one ``../shared/bench-peers`` sets up (its README): a 4096 x 4096, 4-band uint8
COG, an smp U-Net ResNet-34 with 7 classes and random weights seeded 0 (``common.build_model``),
normalisation ``(x / 255 - 0.45) / 0.25``, 64 px of context on each tile side, batch 4, 2
threads, a uint8 class map written to disk. Every method runs in its own process under
``/usr/bin/time -v`` (peak RSS = its "Maximum resident set size"), interleaved over
``--rounds`` rounds; the table gives medians.

* peers (in a Python 3.12 venv of their own, built here under ``--peers-dir`` from the shared
  ``requirements-lock.txt``, never in the project's venv): ``naive`` (rasterio window loop,
  512 px tiles), ``terratorch`` (TerraTorch 1.2.13 ``tiled_inference``), ``geoai``
  (geoai-py 0.43.1 ``predict_geotiff``). Each measures the bare forward (batch 4 of 512 px
  tiles, eager PyTorch) in its own process too.
* ``staclearn-onnx`` / ``staclearn-torch``: the project's venv; the same weights (the state
  dict of ``common.build_model()`` loaded into staclearn's ``SegmentationModel``, whose z-score
  ``mean=114.75, std=63.75`` is the peers' normalisation) are saved once, untimed, as a model
  card with its ONNX artifact (what training writes); the timed part is
  ``modelcard.load_model(card, engine=...)`` + :func:`staclearn.inference.raster.predict_to_cog` on the
  lazily opened raster with staclearn's defaults (``tile_size="auto"``, linear blend) and the
  case's context (``padding=64``) and batch (4). Before the run the process times the bare
  forward of the engine it uses on the tile shape it chose ("fraction of bare forward" =
  pixels pushed through the model per second end to end / that rate).
* ``staclearn-onnx-1g``: the same with ``memory_budget_mb=1024`` (bigger tiles, more memory).
* Agreement: the share of pixels whose class equals the eager-PyTorch reference: the naive
  loop's map (eager PyTorch, 512 px tiles, cut at the core), and for ``staclearn-onnx`` also
  ``staclearn-torch``'s (same tiles and blending, so only the engine differs).

``--wide-rows N`` adds a run of each staclearn engine on a 16384 x 16384 mosaic of the same
input (a VRT of 4 x 4 copies), predicting its first N rows at full width: the peak RSS shows
whether memory grows with the raster.

Run by hand (not in CI), e.g.::

    python bench/peers.py --rounds 2                  # builds /tmp/peers once (minutes)
    python bench/peers.py --rounds 1 --size 3072      # a crop: 3072 = 8 x 384 (the peers' stride) = 6 x 512
    python bench/peers.py --rounds 1 --methods staclearn-onnx naive --wide-rows 1152
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "bench-peers"
PEERS = {"naive": "naive.py", "terratorch": "peer_terratorch.py", "geoai": "peer_geoai.py"}
OURS = ("staclearn-onnx", "staclearn-torch", "staclearn-onnx-1g")
BUDGET_1G = 1024  # staclearn-onnx-1g: tile_size="auto" with a 1 GiB budget instead of the default
METHODS = (*PEERS, *OURS)
BANDS = ("b1", "b2", "b3", "b4")


# --------------------------------------------------------------------------- setup


def build_peers(work: Path) -> Path:
    """Copy the peer runners to ``work`` and build their venv (Python 3.12, locked pins), once."""
    work.mkdir(parents=True, exist_ok=True)
    for f in SHARED.iterdir():
        if f.is_file():
            shutil.copy2(f, work / f.name)
    py = work / "venv" / "bin" / "python"
    if not (work / "venv" / ".staclearn-bench-ok").exists():
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True).stdout.strip()
        base = Path(root) / "versions" / "3.12.1" / "bin" / "python3.12"
        if not py.exists():
            subprocess.run([str(base), "-m", "venv", str(work / "venv")], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(work / "requirements-lock.txt")], check=True)
        (work / "venv" / ".staclearn-bench-ok").write_text("ok\n")
    if not (work / "data" / "input_4096.tif").exists():
        subprocess.run([str(py), "make_input.py"], cwd=work, check=True, env={**os.environ, "PERF_SIZE": "4096"})
    return py


def crop_input(work: Path, size: int) -> Path:
    """The top-left ``size`` square of the 4096 px input, same blocks and compression (PERF_INPUT)."""
    import rasterio
    from rasterio.windows import Window

    src = work / "data" / "input_4096.tif"
    if size >= 4096:
        return src
    path = work / "data" / f"input_{size}.tif"
    if not path.exists():
        with rasterio.open(src) as ds:
            prof = dict(ds.profile, width=size, height=size, driver="GTiff", tiled=True, blockxsize=512, blockysize=512)
            data = ds.read(window=Window(0, 0, size, size))
        with rasterio.open(path, "w", **prof) as dst:
            dst.write(data)
    return path


def wide_input(work: Path, n: int = 4) -> Path:
    """A ``4096 n`` square VRT mosaic of the 4096 px input (n x n copies)."""
    import rasterio

    src = work / "data" / "input_4096.tif"
    path = work / "data" / f"input_{4096 * n}.vrt"
    with rasterio.open(src) as ds:
        t = ds.transform
        size = ds.width
    bands = []
    for b in range(1, 5):
        sources = "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="1">{src.name}</SourceFilename><SourceBand>{b}</SourceBand>'
            f'<SrcRect xOff="0" yOff="0" xSize="{size}" ySize="{size}"/>'
            f'<DstRect xOff="{j * size}" yOff="{i * size}" xSize="{size}" ySize="{size}"/></SimpleSource>'
            for i in range(n) for j in range(n)
        )
        bands.append(f'<VRTRasterBand dataType="Byte" band="{b}">{sources}</VRTRasterBand>')
    path.write_text(
        f'<VRTDataset rasterXSize="{size * n}" rasterYSize="{size * n}"><SRS>EPSG:26918</SRS>'
        f"<GeoTransform>{t.c}, {t.a}, 0, {t.f}, 0, {t.e}</GeoTransform>{''.join(bands)}</VRTDataset>"
    )
    return path


def make_card(work: Path) -> Path:
    """The peers' seeded weights as a staclearn model card with its ONNX artifact (untimed, once)."""
    card_path = work / "staclearn" / "card.json"
    if card_path.exists():
        return card_path
    sys.path.insert(0, str(work))
    import common  # the peers' module: build_model() with the seeded weights

    from staclearn.stac.onnx import add_onnx_artifact
    from staclearn.data.labels import ClassInfo
    from staclearn.stac.modelcard import model_card
    from staclearn.models.segmentation import build_model, save_weights

    ref = common.build_model()
    model = build_model(
        BANDS, [ClassInfo(i, f"class{i}") for i in range(common.NCLS)], mean=[0.45 * 255] * 4, std=[0.25 * 255] * 4,
        encoder="resnet34",
    ).eval()
    model.net.load_state_dict(ref.state_dict())
    weights = save_weights(model, work / "staclearn" / "weights.safetensors")
    card = model_card(model, str(weights), id="bench-peers-unet-r34", tile_size=512)
    add_onnx_artifact(card, model)
    card_path.write_text(json.dumps(card.to_dict(), indent=1))
    return card_path


# --------------------------------------------------------------------------- staclearn worker (project venv)


def worker(args: argparse.Namespace) -> None:
    import resource

    import torch

    torch.set_num_threads(args.threads)
    import odc.geo.xr  # noqa: F401  (the .odc accessor)
    import rioxarray

    from staclearn.stac.modelcard import load_model
    from staclearn.inference._tiling import Grid
    from staclearn.inference.engines import tile_bytes_per_px
    from staclearn.inference.raster import DEFAULT_MEMORY_BUDGET_MB, auto_tile_size, predict_to_cog

    engine = args.worker.split("-")[1]
    budget = BUDGET_1G if args.worker.endswith("-1g") else DEFAULT_MEMORY_BUDGET_MB
    t_load = time.perf_counter()
    model = load_model(args.card, engine=engine)
    t_load = time.perf_counter() - t_load
    cube = rioxarray.open_rasterio(args.input, chunks={"band": -1, "y": 512, "x": 2048})
    cube = cube.assign_coords(band=list(BANDS))
    cube.attrs = {"nodata": None}
    if args.rows:
        cube = cube.isel(y=slice(0, args.rows))
    h, w = cube.sizes["y"], cube.sizes["x"]
    bpp = tile_bytes_per_px(model)
    tile, batch = auto_tile_size((h, w), padding=args.padding, stride=32, bands=4, classes=7,
                                 batch_size=args.batch, bytes_per_px=bpp, memory_budget_mb=budget)
    grid = Grid.make(h, w, tile, args.padding, 32, "linear")
    # bare forward of the engine on the chosen tiles (and a warm-up), as the peers do before their run
    x = torch.rand(batch, 4, *grid.tile_shape) * 255
    cl = engine == "torch"
    if cl:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    ts = []
    with torch.inference_mode():
        model(x)
        for _ in range(args.forward_iters):
            t0 = time.perf_counter()
            model(x)
            ts.append(time.perf_counter() - t0)
    fwd_px_s = batch * grid.tile_shape[0] * grid.tile_shape[1] / median(ts)
    del x
    out = Path(args.out)
    res = predict_to_cog(model, cube, out, padding=args.padding, batch_size=args.batch, resume=False, device="cpu",
                         memory_budget_mb=budget)
    pushed = res.tiles_predicted * grid.tile_shape[0] * grid.tile_shape[1]
    rec = {
        "method": args.worker, "e2e_s": res.seconds, "mpx_s": h * w / res.seconds / 1e6, "rows": h, "width": w,
        "tile": tile, "batch": batch, "tile_shape": list(grid.tile_shape), "tiles": res.tiles_predicted, "kept": h * w / pushed,
        "bare_forward_input_mpx_s": fwd_px_s / 1e6, "fraction_of_bare_forward": pushed / res.seconds / fwd_px_s,
        "bytes_per_px": bpp, "load_s": t_load, "provider": getattr(model, "provider", "torch (channels_last)"),
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print("RESULT " + json.dumps(rec), flush=True)


# --------------------------------------------------------------------------- driver


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict:
    """Run ``cmd`` under /usr/bin/time -v; its RESULT json + peak RSS (MB)."""
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=cwd, env=env, capture_output=True, text=True)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    if p.returncode or not lines:
        return {"error": (p.stderr or p.stdout)[-1500:]}
    rec = json.loads(lines[-1][7:])
    rec["peak_rss_mb"] = int(m.group(1)) / 1024 if m else None
    return rec


def agreement(a: Path, b: Path, rows: int | None = None) -> float | None:
    import rasterio

    if not (a.exists() and b.exists()):
        return None
    with rasterio.open(a) as x, rasterio.open(b) as y:
        n = min(x.height, y.height, rows or x.height)
        win = ((0, n), (0, min(x.width, y.width)))
        return float((x.read(1, window=win) == y.read(1, window=win)).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers-dir", type=Path, default=Path("/tmp/peers"), help="scratch folder outside the repo")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--size", type=int, default=4096, help="a top-left crop of the input (PERF_INPUT / PERF_SIZE), px")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--wide-rows", type=int, default=0, help="also run staclearn on the first N rows of a 16384 px wide mosaic")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--padding", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--forward-iters", type=int, default=2)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--card", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--rows", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    work = args.peers_dir.resolve()
    py = build_peers(work)
    card = make_card(work)
    src = crop_input(work, args.size)
    outd = work / "out"
    outd.mkdir(exist_ok=True)
    env = {**os.environ, "PERF_RESULTS": "results_issue15.jsonl", "OMP_NUM_THREADS": str(args.threads),
           "PERF_INPUT": str(src), "PERF_SIZE": str(min(args.size, 4096))}
    runs: dict[str, list[dict]] = {m: [] for m in args.methods}

    def ours(method: str, inp: Path, rows: int, tag: str) -> dict:
        cmd = [sys.executable, __file__, "--worker", method, "--card", str(card), "--input", str(inp),
               "--out", str(outd / f"{method}{tag}.tif"), "--rows", str(rows), "--threads", str(args.threads),
               "--padding", str(args.padding), "--batch", str(args.batch), "--forward-iters", str(args.forward_iters)]
        return timed(cmd, ROOT, env)

    for rnd in range(args.rounds):
        order = args.methods if rnd % 2 == 0 else list(reversed(args.methods))  # interleaved, alternating order
        for m in order:
            rec = ours(m, src, 0, "") if m in OURS else timed([str(py), PEERS[m]], work, env)
            rec["round"] = rnd
            runs[m].append(rec)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items()}), flush=True)
    wide = {}
    if args.wide_rows:
        big = wide_input(work)
        for m in args.methods:
            if m in OURS:
                wide[m] = ours(m, big, args.wide_rows, "_16384")
                print(json.dumps({"wide": m, **wide[m]}), flush=True)

    # ---- table
    outs = {"naive": outd / "naive.tif", "terratorch": outd / "terratorch.tif", "geoai": outd / "geoai_predict_geotiff.tif",
            **{m: outd / f"{m}.tif" for m in OURS}}
    med = {m: {k: median(r[k] for r in rs if k in r) for k in ("mpx_s", "peak_rss_mb")}
           for m, rs in runs.items() if any("mpx_s" in r for r in rs)}
    best_peer = max((med[m]["mpx_s"] for m in PEERS if m in med), default=None)
    print("\n| method | output Mpx/s (runs) | ratio to best peer | fraction of bare forward | peak RSS MB | agreement with naive (eager PyTorch) | agreement with staclearn-torch (onnx-1g: with staclearn-onnx) |")
    print("|---|---|---|---|---|---|---|")
    for m, rs in runs.items():
        if m not in med:
            print(f"| {m} | error: {rs[-1].get('error', '')[-200:]!r} |  |  |  |  |  |")
            continue
        ok = [r for r in rs if "mpx_s" in r]
        if m in OURS:
            frac = median(r["fraction_of_bare_forward"] for r in ok)
            bare = f"{frac:.2f} (engine {median(r['bare_forward_input_mpx_s'] for r in ok):.3f} input Mpx/s at {ok[0]['tile_shape']}, kept {ok[0]['kept']:.2f})"
        else:
            lim = median(r["limit_b4_mpx_s"] for r in ok)
            bare = f"{med[m]['mpx_s'] / lim:.2f} of input rate (eager b4 {lim:.3f} input Mpx/s)"
        ratio = med[m]["mpx_s"] / best_peer if best_peer else float("nan")
        a1 = agreement(outs[m], outs["naive"]) if m != "naive" else 1.0
        a2 = agreement(outs[m], outs["staclearn-torch"]) if m == "staclearn-onnx" else None
        if m == "staclearn-onnx-1g":  # other tiles than staclearn-torch: compare with the default-budget ONNX map
            a2 = agreement(outs[m], outs["staclearn-onnx"])
        each = ", ".join(f"{r['mpx_s']:.3f}" for r in ok)
        print(f"| {m} | {med[m]['mpx_s']:.3f} ({each}) | {ratio:.2f} | {bare} | "
              f"{med[m]['peak_rss_mb']:.0f} | {a1 if a1 is None else f'{a1:.4%}'} | {'' if a2 is None else f'{a2:.4%}'} |")
    for m, r in wide.items():
        base = med.get(m, {}).get("peak_rss_mb")
        if "peak_rss_mb" in r:
            print(f"\n16384 px wide, first {args.wide_rows} rows, {m}: {r['mpx_s']:.3f} Mpx/s, tile {r['tile']}, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB" + (f" ({r['peak_rss_mb'] / base - 1:+.1%} vs the {args.size}² run)" if base else ""))
        else:
            print(f"\n16384 wide {m}: error {r.get('error', '')[-300:]}")
    with open(outd / "issue15_runs.json", "w") as f:
        json.dump({"runs": runs, "wide": wide}, f, indent=1)


if __name__ == "__main__":
    main()
