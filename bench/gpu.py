"""GPU benchmark: staclearn inference (and a training step) on a CUDA device, with utilisation (issue 15).

Ready for a machine with an NVIDIA GPU; on one without, it exits at once with a message and
exit status 3 (nothing is timed on a CPU here: ``bench/peers.py`` is the CPU benchmark).

The model is the inference benchmark's (``bench/peers.py``, ``../shared/bench-peers``): an smp
U-Net ResNet-34, 4 bands, 7 classes, random weights seeded 0, on a 4-band uint8 raster
(``--size`` px square, synthetic, seeded). Each step runs on its own while ``nvidia-smi``
samples the GPU's utilisation every 200 ms (NVML through ``pynvml`` when that is installed):

* ``forward-<dtype>``: the bare forward pass on device-resident random tiles (``--tile``,
  ``--batch``), under ``torch.autocast`` in float16 and bfloat16 (and float32): the limit.
* ``predict_to_cog-<dtype>``: :func:`staclearn.inference.raster.predict_to_cog` on the in-memory cube
  with ``device="cuda"``: batches are built in pinned host memory by a prefetch thread and
  copied with ``non_blocking=True`` while the previous batch runs; autocast float16
  (``mixed_precision=True``) or float32.
* ``onnx-cuda``: the same through ONNX Runtime's CUDA execution provider, when
  ``onnxruntime-gpu`` is installed (its ``CUDAExecutionProvider`` is available).
* ``train-step``: forward + backward + AdamW on chips that are augmented on the device by
  kornia (flips, 90 degree rotations), with autocast float16 and a gradient scaler, when
  kornia is installed.

Printed per step (one JSON line each, then a table): output Mpx/s (inference) or chips/s
(training), mean and median GPU utilisation over the step, peak GPU memory
(``torch.cuda.max_memory_allocated``). Target (issue 15): >= 80 % busy during inference.

Usage (about 2-4 minutes on one GPU)::

    python bench/gpu.py                       # 8192 px raster, 1024 px tiles, batch 8
    python bench/gpu.py --size 4096 --tile 512 --batch 16 --steps forward predict
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import mean, median

import numpy as np

STEPS = ("forward", "predict", "onnx", "train")
BANDS = ("b1", "b2", "b3", "b4")


class Utilisation:
    """Samples GPU utilisation (%) every ``interval_ms`` in the background: NVML or nvidia-smi."""

    def __init__(self, device: int = 0, interval_ms: int = 200) -> None:
        self.samples: list[float] = []
        self.device, self.interval = device, interval_ms
        self._stop = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Utilisation:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.device)

            def poll() -> None:
                while not self._stop.is_set():
                    self.samples.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
                    time.sleep(self.interval / 1000)

            self._thread = threading.Thread(target=poll, daemon=True)
        except Exception:  # noqa: BLE001 - no NVML: fall back to nvidia-smi
            if shutil.which("nvidia-smi") is None:
                return self
            self._proc = subprocess.Popen(
                ["nvidia-smi", "-i", str(self.device), "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 f"-lms={self.interval}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )

            def read() -> None:
                assert self._proc is not None and self._proc.stdout is not None
                for line in self._proc.stdout:
                    if self._stop.is_set():
                        break
                    try:
                        self.samples.append(float(line.strip()))
                    except ValueError:
                        pass

            self._thread = threading.Thread(target=read, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=2)

    def summary(self) -> dict[str, float | int | None]:
        s = self.samples[2:] or self.samples  # the first samples often precede the first kernel
        return {"gpu_util_mean": mean(s) if s else None, "gpu_util_median": median(s) if s else None, "util_samples": len(s)}


def build_model():
    import torch

    from staclearn.data.labels import ClassInfo
    from staclearn.models.segmentation import build_model as build

    torch.manual_seed(0)
    return build(BANDS, [ClassInfo(i, f"class{i}") for i in range(7)], mean=[114.75] * 4, std=[63.75] * 4,
                 encoder="resnet34").eval()


def make_cube(size: int):
    import odc.geo.xr  # noqa: F401  (the .odc accessor)
    import xarray as xr
    from odc.geo.geobox import GeoBox
    from odc.geo.xr import xr_coords

    rng = np.random.default_rng(42)
    parcels = rng.integers(40, 200, size=(4, size // 64, size // 64)).astype(np.uint8).repeat(64, 1).repeat(64, 2)
    gbox = GeoBox.from_bbox((500000, 4500000 - size, 500000 + size, 4500000), "EPSG:26918", resolution=1)
    cube = xr.DataArray(parcels, dims=("band", "y", "x"), coords={"band": list(BANDS), **xr_coords(gbox)})
    cube = cube.odc.assign_crs("EPSG:26918")
    cube.attrs["nodata"] = None
    return cube


def record(name: str, util: Utilisation, **fields: object) -> dict:
    import torch

    rec = {"step": name, **fields, **util.summary(), "peak_gpu_mem_gb": torch.cuda.max_memory_allocated() / 2**30}
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in rec.items()}), flush=True)
    torch.cuda.reset_peak_memory_stats()
    return rec


def bench_forward(model, args) -> list[dict]:
    import torch

    out = []
    x = torch.rand(args.batch, 4, args.tile, args.tile, device="cuda") * 255
    for name, dtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16), ("float32", None)):
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float16, enabled=dtype is not None):
            model(x)
            torch.cuda.synchronize()
            with Utilisation() as util:
                t0 = time.perf_counter()
                for _ in range(args.iters):
                    model(x).argmax(1)
                torch.cuda.synchronize()
                dt = time.perf_counter() - t0
        out.append(record(f"forward-{name}", util, input_mpx_s=args.iters * x.shape[0] * args.tile**2 / dt / 1e6))
    return out


def bench_predict(model, cube, args) -> list[dict]:
    from staclearn.inference.raster import predict_to_cog

    out = []
    px = cube.sizes["y"] * cube.sizes["x"]
    with tempfile.TemporaryDirectory() as tmp:
        for amp in (True, False):
            with Utilisation() as util:
                res = predict_to_cog(model, cube, Path(tmp) / f"cm{amp}.tif", tile_size=args.tile, padding=args.padding,
                                     batch_size=args.batch, device="cuda", mixed_precision=amp, resume=False)
            out.append(record(f"predict_to_cog-{'float16' if amp else 'float32'}", util, mpx_s=px / res.seconds / 1e6,
                              seconds=res.seconds, tiles=res.tiles_predicted))
    return out


def bench_onnx(model, cube, args) -> list[dict]:
    try:
        import onnxruntime as ort
    except ImportError:
        return [{"step": "onnx-cuda", "skipped": "onnxruntime is not installed"}]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return [{"step": "onnx-cuda", "skipped": f"no CUDAExecutionProvider in {ort.get_available_providers()} (pip install onnxruntime-gpu)"}]
    from staclearn.inference.engines import OnnxModel, export_onnx
    from staclearn.inference.raster import predict_to_cog

    with tempfile.TemporaryDirectory() as tmp:
        data = export_onnx(model, Path(tmp) / "m.onnx").read_bytes()
        onnx_model = OnnxModel(data, model.spec, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        with Utilisation() as util:
            res = predict_to_cog(onnx_model, cube, Path(tmp) / "cm.tif", tile_size=args.tile, padding=args.padding,
                                 batch_size=args.batch, device="cuda", resume=False)
    px = cube.sizes["y"] * cube.sizes["x"]
    return [record("onnx-cuda-float32", util, provider=onnx_model.provider, mpx_s=px / res.seconds / 1e6, seconds=res.seconds)]


def bench_train(model, args) -> list[dict]:
    import torch

    try:
        import kornia.augmentation as K
    except ImportError:
        return [{"step": "train-step", "skipped": "kornia is not installed"}]
    net = model.train()
    aug = K.AugmentationSequential(
        K.RandomHorizontalFlip(), K.RandomVerticalFlip(), K.RandomRotation90(times=(0, 3), p=1.0), data_keys=["input", "mask"]
    ).cuda()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda")
    n, chip = 4 * args.batch, 256
    x_host = (torch.rand(n, 4, chip, chip) * 255).pin_memory()
    y_host = torch.randint(0, 7, (n, 1, chip, chip)).float().pin_memory()

    def step() -> None:
        x, y = x_host.cuda(non_blocking=True), y_host.cuda(non_blocking=True)
        x, y = aug(x, y)
        with torch.autocast("cuda", dtype=torch.float16):
            loss = torch.nn.functional.cross_entropy(net(x), y[:, 0].long())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    step()
    torch.cuda.synchronize()
    with Utilisation() as util:
        t0 = time.perf_counter()
        for _ in range(args.iters):
            step()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    model.eval()
    return [record("train-step-float16-kornia", util, chips_s=args.iters * n / dt, chip=chip, batch=n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=8192, help="raster edge, px")
    p.add_argument("--tile", type=int, default=1024, help="tile edge incl. padding, px")
    p.add_argument("--padding", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=20, help="timed iterations of forward / train steps")
    p.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(
            "bench/gpu.py needs an NVIDIA GPU with CUDA: torch.cuda.is_available() is False here "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}). Nothing was measured; "
            "the CPU benchmark is bench/peers.py.",
            file=sys.stderr,
        )
        sys.exit(3)
    torch.backends.cudnn.benchmark = True
    print(json.dumps({"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, **vars(args)}), flush=True)
    model = build_model().cuda()
    cube = make_cube(args.size) if {"predict", "onnx"} & set(args.steps) else None
    rows: list[dict] = []
    if "forward" in args.steps:
        rows += bench_forward(model, args)
    if "predict" in args.steps:
        rows += bench_predict(model, cube, args)
    if "onnx" in args.steps:
        rows += bench_onnx(model.cpu(), cube, args)
        model.cuda()
    if "train" in args.steps:
        rows += bench_train(model, args)
    print("\n| step | Mpx/s (chips/s) | GPU busy mean / median % | peak GPU memory GB |")
    print("|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['step']} | skipped: {r['skipped']} | | |")
            continue
        rate = r.get("mpx_s", r.get("input_mpx_s", r.get("chips_s")))
        u1, u2 = r.get("gpu_util_mean"), r.get("gpu_util_median")
        busy = f"{u1:.0f} / {u2:.0f}" if u1 is not None else "n/a (no nvidia-smi / NVML)"
        print(f"| {r['step']} | {rate:.2f} | {busy} | {r['peak_gpu_mem_gb']:.2f} |")


if __name__ == "__main__":
    main()
