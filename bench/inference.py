"""Benchmark: inference at scale with a U-Net on a 4-band raster (issue 6).

For each raster size, in one run, each method in its own subprocess (so peak memory is
per method; the peak is the resident set of the subprocess *and its children*, sampled
every 0.1 s with psutil, so Dask workers count):

* ``forward``   - the bare model forward pass on random tiles of the same size and batch:
  the limit on this machine. Reported as the Mpx/s the tiles of the measured area would give.
* ``staclearn`` - :func:`staclearn.inference.raster.predict_to_cog` on the raster read lazily
  (rioxarray, dask chunks): read -> normalise -> forward -> stitch (linear blend) -> class-map COG.
* ``naive``     - a plain rasterio window loop: same model, tiles, padding, batch; argmax of
  each tile's core into a full-size in-memory array, written as a GeoTIFF at the end.
* ``dask1`` / ``dask2`` - :func:`staclearn.inference.dask.predict_dask` on a LocalCluster of 1 / 2
  single-threaded worker processes (torch 1 thread each), blocks streamed to a GeoTIFF on the
  client, then a COG. Cluster start-up and the first model load are timed apart.
* ``terratorch`` - TerraTorch's ``tiled_inference``, if ``terratorch`` is importable.

``--rows N`` predicts only the first N rows (full width) of a raster; throughput is then that
of the part, and the peak memory still shows whether it grows with the raster's width and
height (the COG conversion at the end covers the part only). Every JSON line says what was
measured. Run by hand (not in CI), e.g.:

    python bench/inference.py --sizes 4096 --threads 2
    python bench/inference.py --sizes 16384 --rows 576 --methods forward staclearn naive

On a CUDA machine the same command runs on the GPU (``--device auto``), with autocast.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "out"
BANDS = ("blue", "green", "red", "nir")
METHODS = ("forward", "staclearn", "naive", "dask1", "dask2", "terratorch")


def make_raster(size: int) -> Path:
    """A smooth 4-band uint16 raster with noise, tiled 512 px, deflate (written once, cached)."""
    import rasterio
    from rasterio.transform import from_origin

    path = OUT / f"raster_{size}.tif"
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.tif")
    rng = np.random.default_rng(0)
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 4, "dtype": "uint16", "nodata": 0,
        "crs": "EPSG:32633", "transform": from_origin(500000, 4000000, 10, 10), "tiled": True,
        "blockxsize": 512, "blockysize": 512, "compress": "deflate", "predictor": 2, "zlevel": 1,
        "bigtiff": "IF_SAFER",
    }
    with rasterio.open(tmp, "w", **profile) as dst:
        xx = np.arange(size)[None, :]
        for y0 in range(0, size, 512):
            yy = np.arange(y0, min(y0 + 512, size))[:, None]
            base = 1000 + 400 * (np.sin(xx / 97.0) + np.cos(yy / 131.0))
            for b in range(4):
                data = base * (1 + 0.1 * b) + rng.normal(0, 50, (yy.shape[0], size))
                dst.write(np.clip(data, 1, 65535).astype(np.uint16), b + 1, window=((y0, y0 + yy.shape[0]), (0, size)))
    os.replace(tmp, path)
    return path


def build(encoder: str, classes: int):
    import torch

    from staclearn.data.labels import ClassInfo
    from staclearn.models.segmentation import build_model

    torch.manual_seed(0)
    cls = [ClassInfo(i, f"class{i}") for i in range(classes)]
    return build_model(BANDS, cls, mean=[1000.0] * 4, std=[400.0] * 4, encoder=encoder, encoder_weights=None).eval()


def open_cube(path: Path, rows: int | None, chunk: int):
    import odc.geo.xr  # noqa: F401  (the .odc accessor)
    import rioxarray

    cube = rioxarray.open_rasterio(path, chunks={"band": -1, "y": chunk, "x": chunk})
    cube = cube.assign_coords(band=list(BANDS))
    cube.attrs = {"nodata": 0}
    return cube.isel(y=slice(0, rows)) if rows else cube


def grid_for(args, h: int, w: int):
    from staclearn.inference._tiling import Grid

    return Grid.make(h, w, args.tile_size, args.padding, 32, "linear")


# --------------------------------------------------------------------------- methods (children)


def run_forward(args, path: Path, h: int, w: int) -> dict:
    import torch

    from staclearn.training.device import resolve_device

    dev = resolve_device(args.device)
    model = build(args.encoder, args.classes).to(dev)
    grid = grid_for(args, h, w)
    x = torch.randn(args.batch_size, 4, *grid.tile_shape, device=dev) * 400 + 1000
    amp = dev.type == "cuda"

    def step() -> None:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            model(x).float().softmax(1).argmax(1).cpu()

    step()  # warm-up
    n = min(args.forward_batches, -(-grid.n_tiles // args.batch_size))
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    dt = time.perf_counter() - t0
    tiles_s = n * args.batch_size / dt
    return {"tiles_per_s": tiles_s, "mpx_s": tiles_s * h * w / grid.n_tiles / 1e6, "seconds": dt, "tiles": n * args.batch_size}


def run_staclearn(args, path: Path, h: int, w: int) -> dict:
    from staclearn.inference.raster import predict_to_cog

    model = build(args.encoder, args.classes)
    cube = open_cube(path, args.rows, args.chunk)
    out = OUT / f"staclearn_{path.stem}.tif"
    res = predict_to_cog(
        model, cube, out, tile_size=args.tile_size, padding=args.padding, batch_size=args.batch_size,
        device=args.device, resume=False,
    )
    return {"mpx_s": h * w / res.seconds / 1e6, "seconds": res.seconds, "tiles": res.tiles_predicted}


def run_naive(args, path: Path, h: int, w: int) -> dict:
    import rasterio
    import torch
    from rasterio.windows import Window

    from staclearn.training.device import resolve_device

    dev = resolve_device(args.device)
    model = build(args.encoder, args.classes).to(dev)
    grid = grid_for(args, h, w)
    th, tw = grid.tile_shape
    p = args.padding
    t0 = time.perf_counter()
    out = np.zeros((h, w), np.uint8)
    tiles = [(r, c) for r in grid.rows for c in grid.cols]
    amp = dev.type == "cuda"
    with rasterio.open(path) as src:
        profile = src.profile
        for i in range(0, len(tiles), args.batch_size):
            batch = tiles[i : i + args.batch_size]
            x = np.stack([src.read(window=Window(c[0] - p, r[0] - p, tw, th), boundless=True, fill_value=0) for r, c in batch])
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                pred = model(torch.from_numpy(x.astype(np.float32)).to(dev)).argmax(1).cpu().numpy()
            for (r, c), pr in zip(batch, pred, strict=True):
                out[r[0] : r[1], c[0] : c[1]] = pr[p : p + r[1] - r[0], p : p + c[1] - c[0]]
    profile.update(count=1, dtype="uint8", nodata=255, height=h, width=w, compress="deflate")
    with rasterio.open(OUT / f"naive_{path.stem}.tif", "w", **profile) as dst:
        dst.write(out, 1)
    dt = time.perf_counter() - t0
    return {"mpx_s": h * w / dt / 1e6, "seconds": dt, "tiles": len(tiles)}


def run_dask(args, path: Path, h: int, w: int, workers: int) -> dict:
    import distributed
    import rasterio
    from rasterio.windows import Window

    from staclearn.inference.dask import predict_dask
    from staclearn.models.segmentation import save_weights
    from staclearn.inference.raster import write_cog

    model = build(args.encoder, args.classes)
    weights = save_weights(model, OUT / f"{args.encoder}.safetensors")
    core = args.tile_size - 2 * args.padding
    chunk = core * max(1, args.chunk // core)  # a multiple of the core: the tiles of one process
    cube = open_cube(path, args.rows, chunk)
    t_start = time.perf_counter()
    with distributed.LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, memory_limit=0
    ) as cluster, distributed.Client(cluster) as client:
        client.run(lambda: __import__("staclearn.inference.dask"))
        startup = time.perf_counter() - t_start
        t0 = time.perf_counter()
        lazy = predict_dask(weights, model.spec, cube, tile_size=args.tile_size, padding=args.padding,
                            batch_size=args.batch_size, device=args.device, torch_threads=1)
        blocks = lazy.data.to_delayed()
        starts_y = np.cumsum((0,) + lazy.data.chunks[0])
        starts_x = np.cumsum((0,) + lazy.data.chunks[1])
        futures = {}
        for i, row in enumerate(blocks):
            for j, blk in enumerate(row):
                futures[client.compute(blk)] = (i, j)
        partial = OUT / f"dask{workers}_{path.stem}.partial.tif"
        with rasterio.open(path) as src:
            profile = src.profile
        profile.update(count=1, dtype="uint8", nodata=255, height=h, width=w, compress=None, tiled=True)
        with rasterio.open(partial, "w", **profile) as dst:
            for fut in distributed.as_completed(list(futures)):
                i, j = futures.pop(fut)
                data = fut.result()
                dst.write(data, 1, window=Window(starts_x[j], starts_y[i], data.shape[1], data.shape[0]))
                del fut
        write_cog(partial, OUT / f"dask{workers}_{path.stem}.tif")
        partial.unlink()
        dt = time.perf_counter() - t0
    return {"mpx_s": h * w / dt / 1e6, "seconds": dt, "startup_s": startup, "workers": workers, "chunk": chunk}


def run_terratorch(args, path: Path, h: int, w: int) -> dict:
    try:
        from terratorch.tasks.tiled_inference import tiled_inference
    except Exception as err:  # noqa: BLE001 - any import failure means: not available here
        return {"skipped": f"terratorch not importable ({type(err).__name__}: {err}); it needs lightning, "
                "torchgeo<0.10, torchvision and more, which were not installed to keep torch unchanged"}
    import torch

    from staclearn.training.device import resolve_device

    dev = resolve_device(args.device)
    model = build(args.encoder, args.classes).to(dev)
    cube = open_cube(path, args.rows, args.chunk)
    t0 = time.perf_counter()
    x = torch.from_numpy(cube.values.astype(np.float32))[None]
    with torch.no_grad():
        pred = tiled_inference(model, x, out_channels=args.classes, h_crop=args.tile_size, w_crop=args.tile_size,
                               h_stride=args.tile_size - 2 * args.padding, w_stride=args.tile_size - 2 * args.padding,
                               batch_size=args.batch_size, device=dev)
    pred.argmax(1)
    dt = time.perf_counter() - t0
    return {"mpx_s": h * w / dt / 1e6, "seconds": dt}


# --------------------------------------------------------------------------- driver


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    path = make_raster(args.size)
    h = min(args.rows or args.size, args.size)
    w = args.size
    fn = {"forward": run_forward, "staclearn": run_staclearn, "naive": run_naive, "terratorch": run_terratorch,
          "dask1": lambda *a: run_dask(*a, workers=1), "dask2": lambda *a: run_dask(*a, workers=2)}[args.worker]
    res = fn(args, path, h, w)
    print("RESULT " + json.dumps(res), flush=True)


def measure(args, method: str, size: int) -> dict:
    import psutil

    cmd = [sys.executable, __file__, "--worker", method, "--size", str(size), "--rows", str(args.rows or 0),
           "--encoder", args.encoder, "--tile-size", str(args.tile_size), "--padding", str(args.padding),
           "--batch-size", str(args.batch_size), "--device", args.device, "--threads", str(args.threads),
           "--classes", str(args.classes), "--chunk", str(args.chunk), "--forward-batches", str(args.forward_batches)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            procs = [ps, *ps.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.1)
    out, err = proc.communicate()
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"error": (err or out)[-2000:]}
    res = json.loads(lines[-1][7:])
    res["peak_rss_mb"] = peak / 2**20
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--encoder", default="resnet34")
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--tile-size", type=int, default=256)
    p.add_argument("--padding", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2, help="torch threads of single-process methods")
    p.add_argument("--chunk", type=int, default=576, help="dask chunk edge of the lazy raster (px; dask runs round it to a multiple of the core)")
    p.add_argument("--rows", type=int, default=0, help="predict only the first N rows (0: all)")
    p.add_argument("--forward-batches", type=int, default=20, help="batches timed for 'forward'")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        child(args)
        return
    import torch

    for size in args.sizes:
        make_raster(size)
        h = min(args.rows or size, size)
        base = None
        speeds = {}
        for method in args.methods:
            res = measure(args, method, size)
            if method == "forward" and "mpx_s" in res:
                base = res["mpx_s"]
            row = {"size": size, "method": method, "rows_measured": h, "px_measured": h * size,
                   "part_of_raster": h < size, "encoder": args.encoder, "tile": args.tile_size,
                   "padding": args.padding, "batch": args.batch_size, "device": args.device,
                   "cuda": torch.cuda.is_available(), "threads": args.threads, **res}
            if base and "mpx_s" in res:
                row["ratio_to_forward"] = res["mpx_s"] / base
            speeds[method] = res.get("mpx_s")
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        ratios = {}
        if speeds.get("staclearn") and speeds.get("naive"):
            ratios["staclearn_over_naive"] = round(speeds["staclearn"] / speeds["naive"], 3)
        if speeds.get("dask1") and speeds.get("dask2"):
            ratios["dask2_over_dask1"] = round(speeds["dask2"] / speeds["dask1"], 3)
        print(json.dumps({"size": size, "summary": ratios}), flush=True)


if __name__ == "__main__":
    main()
