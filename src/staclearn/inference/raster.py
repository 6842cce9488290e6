"""Tiled inference over a whole cube, stitched back onto the cube's GeoBox.

The cube is cut into *core* tiles of ``tile_size - 2 * padding`` pixels (the last row and
column snapped to the raster edge, as chips are); each core is read with ``padding`` pixels
of context on every side (mirrored where it runs off the raster) and the model runs on
batches of such tiles (arcgis.learn's ``padding``, Raster Vision's ``crop_sz``).

Stitching (``blend``):

* ``"linear"`` (default): each tile's softmax probabilities are weighted by a separable
  trapezoid window - 0 in the outer half of the padding, a linear ramp across the inner half
  of the padding and the outer ``padding / 2`` of the core, 1 inside - and the weighted sum is
  divided by the sum of weights (the normalised weighted average of pytorch-toolbelt's
  ``TileMerger``; the window is the linear "feathering" cross-fade of image mosaicking). The
  weights of two neighbouring tiles sum to 1 across their overlap, so there is no seam, and
  the tile-edge effects of a convolutional network (the outer ``padding / 2`` pixels) are
  still discarded. A model that predicts the same value everywhere gives that value
  everywhere.
* ``"none"``: only the core of each tile is kept (a cut at the core edge).

Memory: tiles are read a window of whole tiles (``tile_size`` rows, about 2048 px wide) at a
time by a background thread, which overlaps reading and normalising the next tiles with the forward
pass of the current ones; the stitched probabilities are held only for the rows that tiles
still to come can touch (about ``tile_size`` rows), and finished rows go to a sink: an
in-memory array (:func:`predict_class_map`, :func:`predict_probabilities`) or a GeoTIFF on
disk (:func:`predict_to_cog`, whose memory does not grow with the raster).

Speed (``engine``, ``tile_size="auto"``): an :class:`~staclearn.inference.engines.OnnxModel` (a card's
ONNX asset, :func:`staclearn.stac.modelcard.load_model` with ``engine="auto"``) runs in ONNX Runtime;
a PyTorch module runs under ``torch.inference_mode`` and, on a CPU, in channels_last.
``tile_size="auto"`` (:func:`auto_tile_size`) spends a memory budget on larger tiles, so less of
each tile is context thrown away.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
from torch import nn

from staclearn.chips.pixel import chip_windows
from staclearn.data.cube import valid_mask
from staclearn.errors import BandMismatchError, ConfigError, StaclearnWarning
from staclearn.training.device import resolve_device

__all__ = [
    "CLASS_MAP_NODATA",
    "DEFAULT_MEMORY_BUDGET_MB",
    "StreamedPrediction",
    "auto_tile_size",
    "predict_class_map",
    "predict_probabilities",
    "predict_to_cog",
    "write_cog",
]

CLASS_MAP_NODATA = 255
"""Nodata value of uint8 class maps and change masks."""

Blend = Literal["linear", "none"]

# D4: the 8 symmetries of the square, as (rotations by 90 degrees, flip of the last axis).
_D4 = [(k, flip) for flip in (False, True) for k in range(4)]


def _as_band_yx(cube: xr.DataArray) -> xr.DataArray:
    if "time" in cube.dims:
        if cube.sizes["time"] != 1:
            raise ConfigError(
                f"The cube has {cube.sizes['time']} time steps; select one (cube.isel(time=0)) or "
                "composite them (cube.median('time')) before predicting."
            )
        cube = cube.isel(time=0)
    return cube.transpose("band", "y", "x")


def _check_bands(cube: xr.DataArray, bands: Sequence[str]) -> None:
    have = [str(b) for b in cube.coords["band"].values] if "band" in cube.coords else []
    if have and have != list(bands):
        missing = [b for b in bands if b not in have]
        extra = [b for b in have if b not in bands]
        raise BandMismatchError(
            f"The cube's bands {have} do not match the model's input bands {list(bands)} "
            f"(missing {missing}, extra {extra}). Load the cube with bands={list(bands)}."
        )


# --------------------------------------------------------------------------- tile geometry


@dataclass(frozen=True)
class _Grid:
    """Tile layout of an ``(h, w)`` raster: core ranges per tile row/column, padded tile shape."""

    h: int
    w: int
    padding: int
    rows: tuple[tuple[int, int], ...]  # core [start, stop) of each tile row
    cols: tuple[tuple[int, int], ...]
    tile_shape: tuple[int, int]  # model input (th, tw): core + 2 * padding, rounded up to the stride
    blend: Blend

    @classmethod
    def make(cls, h: int, w: int, tile_size: int, padding: int, stride: int, blend: Blend) -> _Grid:
        if padding < 0 or tile_size <= 2 * padding:
            raise ConfigError(f"tile_size ({tile_size} px) must exceed 2 x padding ({padding} px)")
        if blend not in ("linear", "none"):
            raise ConfigError(f"blend must be 'linear' or 'none', got {blend!r}")
        core = tile_size - 2 * padding
        windows = chip_windows((h, w), core, core)
        rows = tuple(sorted({(int(wd.row_off), int(wd.row_off + wd.height)) for wd in windows}))
        cols = tuple(sorted({(int(wd.col_off), int(wd.col_off + wd.width)) for wd in windows}))
        # a tile size that is not a multiple of the model's stride is padded up to it
        shape = tuple(-(-(min(core, n) + 2 * padding) // stride) * stride for n in (h, w))
        return cls(h, w, padding, rows, cols, (int(shape[0]), int(shape[1])), blend)

    @property
    def n_tiles(self) -> int:
        return len(self.rows) * len(self.cols)

    def weights_1d(self, start: int, stop: int, n: int, length: int) -> np.ndarray:
        """Blend weight along one axis for a tile whose core is ``[start, stop)``.

        Returns ``(length,)`` float32 over the tile window ``[start - padding, ...)``; 0 off the raster.
        """
        pos = np.arange(start - self.padding, start - self.padding + length, dtype=np.float64) + 0.5
        half = self.padding / 2 if self.blend == "linear" else 0.0
        if half > 0:
            lo = np.clip((pos - start + half) / (2 * half), 0, 1) if start > 0 else np.ones_like(pos)
            hi = np.clip((stop - pos + half) / (2 * half), 0, 1) if stop < n else np.ones_like(pos)
        else:
            lo = (pos > start) | (start == 0)
            hi = (pos < stop) | (stop == n)
        return (lo * hi * ((pos > 0) & (pos < n))).astype(np.float32)

    def first_row_touched(self, r: int) -> int:
        """First raster row that tile row ``r`` gives a non-zero weight to."""
        a, b = self.rows[r]
        wy = self.weights_1d(a, b, self.h, self.tile_shape[0])
        return a - self.padding + int(np.flatnonzero(wy)[0])


# --------------------------------------------------------------------------- reading


class _Source:
    """Reads padded windows of a ``(band, y, x)`` raster whose pixels ``[0, h) x [0, w)`` are
    predicted. The array behind ``get`` may carry extra context: ``top``/``left`` pixels
    before the raster and more after it up to its ``shape`` (a Dask block from
    ``map_overlap``); beyond the array the raster is mirrored (``numpy.pad`` ``reflect``)."""

    def __init__(
        self,
        get: Callable[[slice, slice], np.ndarray],
        h: int,
        w: int,
        top: int = 0,
        left: int = 0,
        shape: tuple[int, int] | None = None,
    ) -> None:
        self._get, self.h, self.w, self.top, self.left = get, h, w, top, left
        self.shape = shape or (h, w)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        t, l = self.top, self.left
        cy0, cy1 = max(y0, -t), min(y1, self.shape[0] - t)
        cx0, cx1 = max(x0, -l), min(x1, self.shape[1] - l)
        block = np.asarray(self._get(slice(cy0 + t, cy1 + t), slice(cx0 + l, cx1 + l)), dtype=np.float32)
        widths = ((0, 0), (cy0 - y0, y1 - cy1), (cx0 - x0, x1 - cx1))
        return np.pad(block, widths, mode="reflect") if any(sum(p) for p in widths) else block


def _cube_source(image: xr.DataArray) -> _Source:
    def get(ys: slice, xs: slice) -> np.ndarray:
        return image.isel(y=ys, x=xs).values

    return _Source(get, image.sizes["y"], image.sizes["x"])


@dataclass
class _Batch:
    x: torch.Tensor  # (B, C, th, tw) float32, nodata filled with the band means
    tiles: list[tuple[int, int]]  # (tile row, tile column) per item
    ok: np.ndarray  # (B, th, tw) bool valid pixels


def _produce(
    source: _Source, grid: _Grid, first_row: int, batch_size: int, nodata: float | None, fill: np.ndarray, pin: bool
) -> Iterator[_Batch]:
    th, tw = grid.tile_shape
    p = grid.padding
    # read windows of about 2048 px wide (whole tiles), so memory does not grow with the width
    group = max(1, -(-2048 // max(tw - 2 * p, 1)))
    pending: list[tuple[np.ndarray, np.ndarray, tuple[int, int]]] = []

    def flush() -> _Batch:
        x = torch.from_numpy(np.stack([t for t, _, _ in pending]))
        batch = _Batch(x.pin_memory() if pin else x, [k for _, _, k in pending], np.stack([o for _, o, _ in pending]))
        pending.clear()
        return batch

    for r in range(first_row, len(grid.rows)):
        a = grid.rows[r][0]
        for g in range(0, len(grid.cols), group):
            cols = grid.cols[g : g + group]
            x0 = cols[0][0] - p
            window = source.read(a - p, a - p + th, x0, cols[-1][0] - p + tw)
            for c, (c0, _) in enumerate(cols, start=g):
                tile = window[:, :, c0 - p - x0 : c0 - p - x0 + tw]
                ok = valid_mask(tile, nodata)
                pending.append((np.where(ok[None], tile, fill), ok, (r, c)))
                if len(pending) == batch_size:
                    yield flush()
    if pending:
        yield flush()


def _prefetch(items: Iterator[_Batch], depth: int) -> Iterator[_Batch]:
    """Run ``items`` in a background thread, ``depth`` batches ahead of the consumer."""
    if depth <= 0:
        yield from items
        return
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(err)

    thread = threading.Thread(target=work, name="staclearn-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


# --------------------------------------------------------------------------- running the model


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()  # MPS, older CUDA


class _Runner:
    """Forward pass to softmax probabilities, with D4 test-time augmentation, autocast on CUDA,
    and halving of the batch on out-of-memory errors."""

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        batch_size: int,
        tta: bool,
        mixed_precision: bool,
        channels_last: bool | None = None,
    ) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self.transforms = _D4 if tta else _D4[:1]
        self.amp = mixed_precision and device.type == "cuda"
        if channels_last is None:  # oneDNN's convolutions run NHWC faster on CPU (1.36x, issue 15)
            channels_last = device.type == "cpu" and _engine(model) == "torch" and any(
                isinstance(m, nn.Conv2d) for m in model.modules()
            )
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def _probs(self, x: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for k, flip in self.transforms:
            t = x.flip(-1) if flip else x
            t = torch.rot90(t, k, (-2, -1)) if k else t
            if self.channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
                logits = self.model(t)
            prob = logits.float().softmax(1)
            prob = torch.rot90(prob, -k, (-2, -1)) if k else prob
            prob = prob.flip(-1) if flip else prob
            total = prob if total is None else total + prob
        assert total is not None
        return total / len(self.transforms)

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self._run(x)

    def _run(self, x: torch.Tensor) -> np.ndarray:
        out: list[np.ndarray] = []
        i = 0
        while i < x.shape[0]:
            n = self.batch_size
            try:
                part = x[i : i + n].to(self.device, non_blocking=True)
                out.append(self._probs(part).cpu().numpy())
            except RuntimeError as err:
                if not _is_oom(err) or n == 1:
                    raise
                part = None
                self.batch_size = n // 2
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                warnings.warn(
                    f"Out of memory on {self.device} with a batch of {n} tiles of "
                    f"{tuple(x.shape[-2:])} px; retrying with batch_size={self.batch_size}.",
                    StaclearnWarning,
                    stacklevel=5,
                )
                continue
            i += n
        return np.concatenate(out)


# --------------------------------------------------------------------------- stitching


_POP_PX = 2**21  # finished rows are divided out and written about 2 M pixels at a time


class _Strip:
    """Weighted sums of probabilities for the rows ``[base, base + n)`` still open."""

    def __init__(self, k: int, w: int, base: int = 0) -> None:
        self.k, self.w, self.base = k, w, base
        self.num = np.zeros((k, 0, w), np.float32)
        self.den = np.zeros((0, w), np.float32)
        self.ok = np.zeros((0, w), bool)

    def _grow(self, stop: int) -> None:
        extra = stop - self.base - self.den.shape[0]
        if extra > 0:
            self.num = np.concatenate([self.num, np.zeros((self.k, extra, self.w), np.float32)], 1)
            self.den = np.concatenate([self.den, np.zeros((extra, self.w), np.float32)], 0)
            self.ok = np.concatenate([self.ok, np.zeros((extra, self.w), bool)], 0)

    def add(self, grid: _Grid, r: int, c: int, prob: np.ndarray, ok: np.ndarray) -> None:
        (a, b), (c0, c1) = grid.rows[r], grid.cols[c]
        p = grid.padding
        th, tw = prob.shape[-2:]
        wy = grid.weights_1d(a, b, grid.h, th)
        wx = grid.weights_1d(c0, c1, grid.w, tw)
        ny, nx = np.flatnonzero(wy), np.flatnonzero(wx)
        ty, tx = slice(ny[0], ny[-1] + 1), slice(nx[0], nx[-1] + 1)
        y0, x0 = a - p + ty.start, c0 - p + tx.start
        y1, x1 = y0 + ty.stop - ty.start, x0 + tx.stop - tx.start
        self._grow(y1)
        weight = wy[ty, None] * wx[None, tx]
        ry = slice(y0 - self.base, y1 - self.base)
        self.num[:, ry, x0:x1] += prob[:, ty, tx] * weight
        self.den[ry, x0:x1] += weight
        self.ok[a - self.base : b - self.base, c0:c1] = ok[p : p + b - a, p : p + c1 - c0]

    def pop_rows(self, stop: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Finished rows ``[base, stop)`` in chunks of about ``_POP_PX`` pixels (so the
        probabilities are never divided out for the whole strip at once, whatever the width):
        ``(y0, (K, n, W) probabilities, (n, W) valid)`` each. Consume it to the end."""
        n = stop - self.base
        self._grow(stop)
        step = max(16, _POP_PX // max(self.w, 1))
        for i in range(0, n, step):
            j = min(n, i + step)
            yield self.base + i, self.num[:, i:j] / np.maximum(self.den[i:j], 1e-12), self.ok[i:j].copy()
        self.num, self.den, self.ok = self.num[:, n:].copy(), self.den[n:].copy(), self.ok[n:].copy()
        self.base = stop

    def pop(self, stop: int) -> tuple[int, np.ndarray, np.ndarray]:
        """Finished rows ``[base, stop)``: ``(base, (K, n, W) probabilities, (n, W) valid)``."""
        n = stop - self.base
        self._grow(stop)
        prob = self.num[:, :n] / np.maximum(self.den[:n], 1e-12)
        out = (self.base, prob, self.ok[:n].copy())
        self.num, self.den, self.ok = self.num[:, n:].copy(), self.den[n:].copy(), self.ok[n:].copy()
        self.base = stop
        return out


def _stitch(
    runner: _Runner,
    batches: Iterator[_Batch],
    grid: _Grid,
    strip: _Strip | None,
    first_row: int,
    write: Callable[[int, np.ndarray, np.ndarray], None],
    on_row_done: Callable[[int, _Strip], None] | None = None,
) -> int:
    """Run the model on ``batches`` and hand finished rows to ``write(y0, probs, ok)``.

    Returns:
        The number of tiles run through the model.
    """
    left = {r: len(grid.cols) for r in range(first_row, len(grid.rows))}
    n_run = 0
    for batch in batches:
        probs = runner(batch.x)
        n_run += len(batch.tiles)
        for (r, c), prob, ok in zip(batch.tiles, probs, batch.ok, strict=True):
            if strip is None:
                strip = _Strip(prob.shape[0], grid.w, grid.first_row_touched(r))
            strip.add(grid, r, c, prob, ok)
            left[r] -= 1
            if left[r] == 0:
                stop = grid.first_row_touched(r + 1) if r + 1 < len(grid.rows) else grid.h
                if stop > strip.base:
                    for rows in strip.pop_rows(stop):
                        write(*rows)
                if on_row_done is not None:
                    on_row_done(r, strip)
    return n_run



# --------------------------------------------------------------------------- engine and tile size

DEFAULT_MEMORY_BUDGET_MB = 512
"""Default memory budget of ``tile_size="auto"`` (MiB, see :func:`auto_tile_size`)."""
_MAX_AUTO_TILE = 4096
_FALLBACK_BYTES_PER_PX = 1200.0  # U-Net ResNet-34 measures ~1030 with the probe below


def _engine(model: nn.Module) -> str:
    return str(getattr(model, "engine", "onnx" if type(model).__name__ == "OnnxModel" else "torch"))


def _with_engine(model: nn.Module, engine: str) -> nn.Module:
    """The model to run for ``engine``: ``"auto"`` keeps the model's own engine (an
    :class:`~staclearn.inference.engines.OnnxModel` runs in ONNX Runtime, a PyTorch module in PyTorch);
    ``"onnx"`` exports a PyTorch module to ONNX first (falls back to PyTorch with a warning
    when onnxruntime is missing); ``"torch"`` needs a PyTorch module."""
    from staclearn.inference.engines import ENGINES, OnnxModel, export_onnx, onnxruntime_available

    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {ENGINES}, got {engine!r}")
    mine = _engine(model)
    if engine in ("auto", mine):
        return model
    if engine == "torch":
        raise ConfigError(
            "engine='torch' was asked for an ONNX Runtime model; load the card with "
            "staclearn.stac.modelcard.load_model(card, engine='torch') instead."
        )
    if not onnxruntime_available():
        warnings.warn("engine='onnx' asked for but onnxruntime is not installed (pip install 'staclearn[onnx]'); "
                      "running the model in PyTorch.", StaclearnWarning, stacklevel=4)
        return model
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        data = export_onnx(model, Path(tmp) / "model.onnx").read_bytes()
    return OnnxModel(data, getattr(model, "spec", None), activation_bytes_per_px=_bytes_per_px(model))


def _bytes_per_px(model: nn.Module) -> float:
    known = getattr(model, "activation_bytes_per_px", None)
    if known:
        return float(known)
    if _engine(model) == "torch" and any(True for _ in model.parameters()):
        from staclearn.inference.engines import _activation_bytes_per_px

        try:
            return _activation_bytes_per_px(model)
        except Exception:  # noqa: BLE001 - a model the probe cannot run: use the conservative default
            pass
    return _FALLBACK_BYTES_PER_PX


def auto_tile_size(
    shape: tuple[int, int],
    *,
    padding: int,
    stride: int,
    bands: int,
    classes: int,
    batch_size: int,
    bytes_per_px: float,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    prefetch: int = 2,
) -> tuple[int, int]:
    """The tile edge and batch ``tile_size="auto"`` picks: the fewest pixels through the model within a memory budget.

    Every tile pays ``2 x padding`` pixels of context per axis that is thrown away (the context
    the model's receptive field needs at the tile edge), so larger tiles waste less: with 64 px
    of context a 512 px tile keeps 56 % of the pixels it pushes through the network, a 1024 px
    tile 77 %, a 2048 px tile 88 %. Candidates are the multiples of ``stride`` from
    ``2 x padding + stride`` up to the raster's padded extent (and 4096 px); the one with the
    fewest pixels pushed through the model over the whole tile grid (edge tiles included) wins,
    the smaller on a tie, among those whose estimated memory fits ``memory_budget_mb`` with a
    batch of at least one tile:

    * activations: ``batch x tile² x bytes_per_px`` (``bytes_per_px`` from a probe forward,
      see :func:`staclearn.inference.engines.add_onnx_artifact`; ~500 B/px for a U-Net ResNet-34, about
      what ONNX Runtime uses without its memory arena),
    * input tiles in flight: ``(prefetch + 2) x batch x bands x tile² x 4`` bytes,
    * the open rows of stitched probabilities: ``(classes + 1) x (tile + padding) x width x 4``
      bytes (grows with the width, so wide rasters get smaller tiles and memory stays flat),
      plus ``classes x 2²¹ x 4`` bytes for the finished rows being written.

    The batch is then the most tiles, up to ``batch_size``, that fit: bigger tiles come before
    bigger batches, since on a CPU a batch of one 1024 px tile runs about as fast per pixel as
    four 512 px tiles and keeps 77 % of its pixels instead of 56 %. When not even the smallest
    candidate fits, it is returned with a batch of one.

    Args:
        shape: raster ``(height, width)`` in pixels.
        padding: context pixels on each tile side.
        stride: tile edges are multiples of this (the model's output stride, e.g. 32 px).
        bands: input channels.
        classes: output classes.
        batch_size: tiles per forward pass.
        bytes_per_px: activation bytes per input pixel of a tile.
        memory_budget_mb: the budget in MiB (default 512: with the ~1.1 GB a process holds
            after importing PyTorch and loading a ResNet-34 U-Net, the peak stays under 1.6 GB).
        prefetch: batches read ahead.

    Returns:
        ``(tile edge in pixels, padding included; tiles per batch)``.
    """
    h, w = shape
    stride = max(1, int(stride))
    budget = memory_budget_mb * 2**20
    lo = -(-(2 * padding + stride) // stride) * stride
    hi = max(lo, min(_MAX_AUTO_TILE, -(-(max(h, w) + 2 * padding) // stride) * stride))
    best: tuple[float, int, int] | None = None
    for t in range(lo, hi + 1, stride):
        strip = (classes + 1) * (min(t, h + 2 * padding) + padding) * w * 4 + classes * _POP_PX * 4
        per_tile = t * t * (bytes_per_px + (prefetch + 2) * bands * 4)
        batch = min(batch_size, int((budget - strip) // per_tile))
        if batch < 1:
            if best is None:
                best = (0.0, t, 1)
            break
        g = _Grid.make(h, w, t, padding, stride, "none")
        pushed = float(g.n_tiles * g.tile_shape[0] * g.tile_shape[1])
        if best is None or best[0] == 0.0 or pushed < best[0]:
            best = (pushed, t, batch)
    assert best is not None
    return best[1], best[2]

def _setup(
    model: nn.Module,
    image: xr.DataArray,
    tile_size: int,
    padding: int,
    blend: Blend,
    device: str | torch.device,
    batch_size: int,
    tta: bool,
    mixed_precision: bool,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    prefetch: int = 2,
) -> tuple[_Grid, _Runner, np.ndarray]:
    spec = getattr(model, "spec", None)
    if spec is not None:
        _check_bands(image, spec.bands)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    stride = int(getattr(spec, "stride", 32))
    if tile_size == "auto":
        k = len(spec.classes) if spec is not None else 8
        tile_size, batch_size = auto_tile_size(
            (image.sizes["y"], image.sizes["x"]), padding=padding, stride=stride, bands=image.sizes["band"],
            classes=k, batch_size=batch_size, bytes_per_px=_bytes_per_px(model),
            memory_budget_mb=memory_budget_mb, prefetch=prefetch,
        )
    elif not isinstance(tile_size, int | np.integer):
        raise ConfigError(f"tile_size must be a number of pixels or 'auto', got {tile_size!r}")
    grid = _Grid.make(image.sizes["y"], image.sizes["x"], int(tile_size), padding, stride, blend)
    mean = getattr(spec, "mean", None)
    fill = np.asarray(mean if mean is not None else np.zeros(image.sizes["band"]), np.float32)[:, None, None]
    runner = _Runner(model, resolve_device(device), batch_size, tta, mixed_precision)
    return grid, runner, fill


def _class_lut(model: nn.Module, class_values: Sequence[int] | None) -> np.ndarray:
    spec = getattr(model, "spec", None)
    if spec is not None:
        class_values = class_values or [c.value for c in spec.classes]
    if class_values is None:
        raise ConfigError("class_values is required for a model without a spec")
    return np.asarray(list(class_values), dtype=np.uint8)


def _argmax(prob: np.ndarray, lut: np.ndarray, ok: np.ndarray, predict_background: bool) -> np.ndarray:
    if not predict_background:
        background = np.flatnonzero(lut == 0)
        if background.size == 0:
            raise ConfigError(
                f"predict_background=False needs a background class of value 0 (arcgis.learn's "
                f"convention); the model's class values are {lut.tolist()}."
            )
        prob = prob.copy()
        prob[background] = -1.0
    return np.where(ok, lut[prob.argmax(0)], CLASS_MAP_NODATA).astype(np.uint8)


def _run(
    runner: _Runner,
    image: xr.DataArray,
    grid: _Grid,
    fill: np.ndarray,
    prefetch: int,
    write: Callable[[int, np.ndarray, np.ndarray], None],
) -> None:
    batches = _produce(
        _cube_source(image), grid, 0, runner.batch_size, image.attrs.get("nodata"), fill,
        runner.device.type == "cuda",
    )
    _stitch(runner, _prefetch(batches, prefetch), grid, None, 0, write)


# --------------------------------------------------------------------------- in-memory API


@torch.inference_mode()
def predict_class_map(
    model: nn.Module,
    cube: xr.DataArray,
    *,
    tile_size: int | Literal["auto"] = 256,
    padding: int = 32,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    class_values: Sequence[int] | None = None,
    out_path: str | os.PathLike[str] | None = None,
    blend: Blend = "linear",
    predict_background: bool = True,
    test_time_augmentation: bool = False,
    mixed_precision: bool = True,
    prefetch: int = 2,
    engine: str = "auto",
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
) -> xr.DataArray:
    """Predict a class map for a whole cube, in memory.

    The map is the argmax of the stitched probabilities (see the module docstring). It is
    held in memory (``H x W`` bytes); for rasters too large for that, or to resume an
    interrupted run, use :func:`predict_to_cog`.

    Args:
        model: a :class:`staclearn.models.segmentation.SegmentationModel` (or any module
            ``(B, C, H, W) -> (B, K, H, W)`` logits with a ``spec`` giving bands and classes).
        cube: ``(band, y, x)`` or ``(time=1, band, y, x)`` imagery, lazy or not, in the units
            the model was trained on, with ``attrs["nodata"]``. A cube without a CRS (pixel
            coordinates only, e.g. PNG imagery) is predicted too; its map has no CRS either.
        tile_size: model input edge in pixels, padding included; rounded up to the model's
            stride (32 px for a depth-5 encoder), and a raster smaller than a tile is
            mirrored up to one tile. ``"auto"``: see :func:`auto_tile_size`.
        padding: context pixels on each side of a tile; see ``blend``.
        batch_size: tiles per forward pass; halved (with a :class:`StaclearnWarning`) when the
            device runs out of memory.
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"mps"``.
        class_values: class value per logit channel; default from ``model.spec.classes``.
        out_path: when given, the class map is also written there as a COG (atomically).
        blend: ``"linear"`` (default; no seams) or ``"none"`` (keep each tile's core only).
        predict_background: ``False`` never predicts the background class (the class of value
            0, arcgis.learn's convention): each pixel gets the most probable other class.
        test_time_augmentation: average the probabilities over the 8 flips and rotations of the
            square (the D4 group; 8x slower).
        mixed_precision: run the forward pass under ``torch.autocast`` (float16) on CUDA;
            ignored on other devices.
        prefetch: batches read ahead by a background thread (0: read in the calling thread).
        engine: ``"auto"`` (run the model as given: an :class:`~staclearn.inference.engines.OnnxModel`
            in ONNX Runtime, a PyTorch module in PyTorch, channels_last on CPU), ``"onnx"``
            (export a PyTorch module to ONNX first; falls back to PyTorch with a warning when
            onnxruntime is missing) or ``"torch"``. See :mod:`staclearn.inference.engines`.
        memory_budget_mb: budget of ``tile_size="auto"`` in MiB (:func:`auto_tile_size`).

    Returns:
        ``(y, x)`` uint8 DataArray of class values on the cube's GeoBox, ``CLASS_MAP_NODATA``
        (255) where any input band is nodata / NaN, ``attrs["nodata"] = 255``.

    Raises:
        ConfigError: ``tile_size <= 2 * padding``, ``batch_size < 1``, a multi-date cube,
            ``predict_background=False`` without a class of value 0, or ``out_path`` given for
            a cube without a CRS.
        BandMismatchError: the cube's bands differ from the model's input bands.
    """
    image = _as_band_yx(cube)
    lut = _class_lut(model, class_values)
    model = _with_engine(model, engine)
    grid, runner, fill = _setup(
        model, image, tile_size, padding, blend, device, batch_size, test_time_augmentation, mixed_precision,
        memory_budget_mb, prefetch,
    )
    out = np.full((grid.h, grid.w), CLASS_MAP_NODATA, dtype=np.uint8)

    def write(y0: int, prob: np.ndarray, ok: np.ndarray) -> None:
        out[y0 : y0 + ok.shape[0]] = _argmax(prob, lut, ok, predict_background)

    _run(runner, image, grid, fill, prefetch, write)
    return _on_cube_grid(out, image, "class_map", CLASS_MAP_NODATA, out_path)


@torch.inference_mode()
def predict_probabilities(
    model: nn.Module,
    cube: xr.DataArray,
    *,
    tile_size: int | Literal["auto"] = 256,
    padding: int = 32,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    blend: Blend = "linear",
    test_time_augmentation: bool = False,
    mixed_precision: bool = True,
    prefetch: int = 2,
    engine: str = "auto",
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
) -> xr.DataArray:
    """Predict per-class probabilities (softmax of the logits) for a whole cube, in memory.

    Same tiling, stitching and nodata handling as :func:`predict_class_map`, whose class map
    is the argmax of these probabilities. Holds ``K x H x W`` float32 in memory; see
    :func:`predict_to_cog` for a streamed version.

    Args:
        model: a module ``(B, C, H, W) -> (B, K, H, W)`` logits, with a ``spec`` (bands checked).
        cube: ``(band, y, x)`` or ``(time=1, band, y, x)`` imagery with ``attrs["nodata"]``.
        tile_size: model input edge in pixels, padding included.
        padding: context pixels on each side of a tile.
        batch_size: tiles per forward pass (halved on out-of-memory errors).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
        blend: ``"linear"`` (default) or ``"none"``.
        test_time_augmentation: average over the 8 D4 flips/rotations.
        mixed_precision: ``torch.autocast`` float16 on CUDA only.
        prefetch: batches read ahead by a background thread.
        engine: ``"auto"`` (run the model as given: an :class:`~staclearn.inference.engines.OnnxModel`
            in ONNX Runtime, a PyTorch module in PyTorch, channels_last on CPU), ``"onnx"``
            (export a PyTorch module to ONNX first; falls back to PyTorch with a warning when
            onnxruntime is missing) or ``"torch"``. See :mod:`staclearn.inference.engines`.
        memory_budget_mb: budget of ``tile_size="auto"`` in MiB (:func:`auto_tile_size`).

    Returns:
        ``(class, y, x)`` float32 DataArray of probabilities in [0, 1] summing to 1 over
        ``class`` (``class`` coordinate: the class values of ``model.spec`` when it has one,
        else 0..K-1), NaN where any input band is nodata / NaN; ``attrs["nodata"] = NaN``.

    Raises:
        ConfigError: ``tile_size <= 2 * padding``, ``batch_size < 1`` or a multi-date cube.
        BandMismatchError: the cube's bands differ from the model's input bands.
    """
    image = _as_band_yx(cube)
    model = _with_engine(model, engine)
    grid, runner, fill = _setup(
        model, image, tile_size, padding, blend, device, batch_size, test_time_augmentation, mixed_precision,
        memory_budget_mb, prefetch,
    )
    holder: list[np.ndarray] = []

    def write(y0: int, prob: np.ndarray, ok: np.ndarray) -> None:
        if not holder:
            holder.append(np.full((prob.shape[0], grid.h, grid.w), np.nan, dtype=np.float32))
        holder[0][:, y0 : y0 + ok.shape[0]] = np.where(ok[None], prob, np.nan)

    _run(runner, image, grid, fill, prefetch, write)
    out = holder[0]
    spec = getattr(model, "spec", None)
    classes = [c.value for c in spec.classes] if spec is not None else list(range(out.shape[0]))
    result = _on_cube_grid(out, image, "probability", float("nan"), None)
    return result.assign_coords({"class": classes})


# --------------------------------------------------------------------------- streaming API


@dataclass(frozen=True)
class StreamedPrediction:
    """What :func:`predict_to_cog` wrote.

    Attributes:
        class_map: path of the uint8 class-map COG (nodata 255), or None if not asked for.
        probabilities: path of the float32 ``(K, y, x)`` probability COG (nodata NaN), or None.
        tiles_total: tiles in the raster's tile grid.
        tiles_predicted: tiles run through the model in this call.
        tiles_skipped: tiles already done by an interrupted earlier call and not run again.
        seconds: wall-clock time of this call.
    """

    class_map: Path | None
    probabilities: Path | None
    tiles_total: int
    tiles_predicted: int
    tiles_skipped: int
    seconds: float


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial.tif")


def _model_digest(model: nn.Module) -> str:
    if getattr(model, "digest", None):  # an OnnxModel: the SHA-256 of its ONNX file
        return f"onnx:{model.digest}"
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.inference_mode()
def predict_to_cog(
    model: nn.Module,
    cube: xr.DataArray,
    class_map_path: str | os.PathLike[str] | None = None,
    *,
    probabilities_path: str | os.PathLike[str] | None = None,
    tile_size: int | Literal["auto"] = "auto",
    padding: int = 32,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    class_values: Sequence[int] | None = None,
    blend: Blend = "linear",
    predict_background: bool = True,
    test_time_augmentation: bool = False,
    mixed_precision: bool = True,
    prefetch: int = 2,
    resume: bool = True,
    gdal_cache_mb: int = 256,
    engine: str = "auto",
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
) -> StreamedPrediction:
    """Predict a cube tile by tile straight to COGs, in memory that does not grow with the raster.

    Tiles are read from the (lazy) cube in windows of whole tiles (``tile_size`` rows, about
    2048 px wide) by a background thread, run in batches, stitched (see the module docstring) and each finished block of rows is written
    into an uncompressed tiled GeoTIFF scratch file ``<path>.partial.tif``. After every tile
    row, the rows still open (about ``padding`` rows of weighted sums) and the number of tile
    rows done are saved beside it (``<path>.partial.json`` / ``.partial.npz``), so an
    interrupted call - an exception, Ctrl-C, a killed process - is resumed by calling again
    with the same arguments: finished tile rows are skipped and the result is identical to an
    uninterrupted run. When every tile is done the scratch file is converted to a COG
    (GDAL's COG driver: deflate, 512 px tiles, overviews) under ``<path>.tmp``, renamed to
    ``path`` (atomic on one filesystem) and the scratch files are removed.

    Memory: one read window (``C x tile_size x ~2048`` float32), ``prefetch`` batches of tiles,
    the open rows of weighted sums (``(K + 1) x ~tile_size x W`` float32: it grows with the
    width, not the height) and the model; GDAL's block cache is capped at ``gdal_cache_mb``
    while writing (reading the cube uses whatever cache its reader has: GDAL's default is 5 %
    of the RAM, set ``GDAL_CACHEMAX`` with ``rasterio.Env`` to bound it). Chunks of about
    ``tile_size`` rows are read about once; taller chunks (odc-stac's default 2048 px) are
    decoded once per tile row they meet.

    Args:
        model: a module ``(B, C, H, W) -> (B, K, H, W)`` logits with a ``spec`` (see
            :func:`predict_class_map`).
        cube: ``(band, y, x)`` or ``(time=1, band, y, x)`` georeferenced imagery with
            ``attrs["nodata"]``, lazy (dask) or not.
        class_map_path: where to write the uint8 class map (nodata 255), or None.
        probabilities_path: where to write the ``(K, y, x)`` float32 probabilities (nodata
            NaN, band ``i`` = class ``i`` of the model), or None.
        tile_size: model input edge in pixels, padding included (rounded up to the stride), or
            ``"auto"`` (default): the size that pushes the fewest pixels through the model
            within ``memory_budget_mb`` (:func:`auto_tile_size`).
        padding: context pixels on each side of a tile.
        batch_size: tiles per forward pass; halved with a warning on out-of-memory errors.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
        class_values: class value per logit channel; default from ``model.spec.classes``.
        blend: ``"linear"`` (default) or ``"none"``.
        predict_background: ``False`` never predicts the class of value 0 (class map only).
        test_time_augmentation: average over the 8 D4 flips/rotations.
        mixed_precision: ``torch.autocast`` float16 on CUDA only.
        prefetch: batches read ahead by a background thread.
        engine: ``"auto"`` (run the model as given: an :class:`~staclearn.inference.engines.OnnxModel`
            in ONNX Runtime, a PyTorch module in PyTorch, channels_last on CPU), ``"onnx"``
            (export a PyTorch module to ONNX first; falls back to PyTorch with a warning when
            onnxruntime is missing) or ``"torch"``. See :mod:`staclearn.inference.engines`.
        memory_budget_mb: budget of ``tile_size="auto"`` in MiB (:func:`auto_tile_size`).
        resume: continue an interrupted run found beside the outputs (same model weights,
            cube grid and options; otherwise it is restarted with a warning); ``False`` always
            starts afresh.
        gdal_cache_mb: GDAL block-cache size while writing, in MiB.

    Returns:
        A :class:`StreamedPrediction` with the paths written and tile counts.

    Raises:
        ConfigError: neither path given, a cube without a CRS, bad tiling (see
            :func:`predict_class_map`).
        BandMismatchError: the cube's bands differ from the model's input bands.
    """
    import rasterio

    started = time.perf_counter()
    if class_map_path is None and probabilities_path is None:
        raise ConfigError("Give class_map_path and/or probabilities_path: there is nothing to write.")
    image = _as_band_yx(cube)
    crs = image.odc.crs
    if crs is None:
        raise ConfigError(
            "The cube has no CRS (pixel coordinates only), so no COG can be written; use "
            "predict_class_map / predict_probabilities instead."
        )
    lut = _class_lut(model, class_values)
    model = _with_engine(model, engine)
    grid, runner, fill = _setup(
        model, image, tile_size, padding, blend, device, batch_size, test_time_augmentation, mixed_precision,
        memory_budget_mb, prefetch,
    )
    if not predict_background:
        _argmax(np.zeros((len(lut), 1, 1), np.float32), lut, np.ones((1, 1), bool), False)  # fail early
    k = len(lut)
    outputs = {
        name: Path(p)
        for name, p in (("class_map", class_map_path), ("probabilities", probabilities_path))
        if p is not None
    }
    anchor = next(iter(outputs.values()))
    state_path = anchor.with_name(anchor.name + ".partial.json")
    strip_path = anchor.with_name(anchor.name + ".partial.npz")
    gbox = image.odc.geobox
    fingerprint = {
        "model": _model_digest(model),
        "shape": [grid.h, grid.w],
        "crs": str(crs),
        "transform": list(gbox.affine)[:6],
        "tile_size": tile_size,
        "tile_shape": list(grid.tile_shape),
        "padding": padding,
        "blend": blend,
        "tta": test_time_augmentation,
        "predict_background": predict_background,
        "class_values": lut.tolist(),
        "outputs": {n: str(p) for n, p in outputs.items()},
    }
    first_row, strip = 0, None
    if resume and state_path.exists():
        state = json.loads(state_path.read_text())
        if state.get("fingerprint") == fingerprint and strip_path.exists() and all(
            _partial(p).exists() for p in outputs.values()
        ):
            with np.load(strip_path) as z:
                strip = _Strip(k, grid.w, int(z["base"]))
                strip.num, strip.den, strip.ok = z["num"], z["den"], z["ok"]
            first_row = int(state["rows_done"])
        else:
            warnings.warn(
                f"The unfinished prediction at {state_path} was made with other weights, grid "
                "or options; starting afresh.",
                StaclearnWarning,
                stacklevel=2,
            )
    profile = {
        "driver": "GTiff", "width": grid.w, "height": grid.h, "crs": crs.to_wkt(), "transform": gbox.affine,
        "tiled": True, "blockxsize": 256, "blockysize": 256, "sparse_ok": True, "bigtiff": "IF_SAFER",
    }
    if first_row == 0:  # a stale state must not survive a fresh start that is interrupted early
        state_path.unlink(missing_ok=True)
        strip_path.unlink(missing_ok=True)
    bands = {"class_map": (1, "uint8", CLASS_MAP_NODATA), "probabilities": (k, "float32", float("nan"))}
    env = rasterio.Env(GDAL_CACHEMAX=gdal_cache_mb)
    with env:
        if first_row == 0:
            for name, path in outputs.items():
                path.parent.mkdir(parents=True, exist_ok=True)
                count, dtype, nodata = bands[name]
                with rasterio.open(_partial(path), "w", count=count, dtype=dtype, nodata=nodata, **profile):
                    pass

        def write(y0: int, prob: np.ndarray, ok: np.ndarray) -> None:
            window = rasterio.windows.Window(0, y0, grid.w, ok.shape[0])
            for name, path in outputs.items():
                if name == "class_map":
                    data = _argmax(prob, lut, ok, predict_background)[None]
                else:
                    data = np.where(ok[None], prob, np.nan).astype(np.float32)
                with rasterio.open(_partial(path), "r+") as dst:  # closing flushes to disk
                    dst.write(data, window=window)

        def checkpoint(r: int, open_rows: _Strip) -> None:
            tmp = strip_path.with_name(strip_path.name + ".tmp.npz")
            np.savez(tmp, num=open_rows.num, den=open_rows.den, ok=open_rows.ok, base=open_rows.base)
            os.replace(tmp, strip_path)
            tmp_state = state_path.with_name(state_path.name + ".tmp")
            tmp_state.write_text(json.dumps({"fingerprint": fingerprint, "rows_done": r + 1}))
            os.replace(tmp_state, state_path)

        batches = _produce(
            _cube_source(image), grid, first_row, runner.batch_size, image.attrs.get("nodata"), fill,
            runner.device.type == "cuda",
        )
        n_run = _stitch(runner, _prefetch(batches, prefetch), grid, strip, first_row, write, checkpoint)
        for name, path in outputs.items():
            _to_cog(_partial(path), path, "NEAREST" if name == "class_map" else "AVERAGE")
    for p in (state_path, strip_path, *(_partial(p) for p in outputs.values())):
        p.unlink(missing_ok=True)
    return StreamedPrediction(
        outputs.get("class_map"),
        outputs.get("probabilities"),
        grid.n_tiles,
        n_run,
        first_row * len(grid.cols),
        time.perf_counter() - started,
    )


def _to_cog(src: Path, path: Path, resampling: str) -> None:
    from rasterio.shutil import copy

    tmp = path.with_name(path.name + ".tmp")
    copy(
        src, tmp, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=512, RESAMPLING=resampling,
        OVERVIEWS="AUTO", BIGTIFF="IF_SAFER",
    )
    os.replace(tmp, path)


# --------------------------------------------------------------------------- output grid


def _on_cube_grid(
    data: np.ndarray, image: xr.DataArray, name: str, nodata: float, out_path: str | os.PathLike[str] | None
) -> xr.DataArray:
    dims = ("y", "x") if data.ndim == 2 else ("class", "y", "x")
    result = xr.DataArray(data, dims=dims, coords={"y": image.y, "x": image.x}, attrs={"nodata": nodata}, name=name)
    crs = image.odc.crs
    if crs is not None:  # cubes of non-georeferenced imagery keep pixel coordinates only
        from odc.geo.xr import assign_crs

        result = assign_crs(result, crs)
    if out_path is not None:
        if crs is None:
            raise ConfigError(
                f"Cannot write {name} to {os.fspath(out_path)!r} as a COG: the cube has no CRS "
                "(pixel coordinates only). Save result.values yourself, or predict a georeferenced cube."
            )
        write_cog(result, out_path)
    return result


def write_cog(array: xr.DataArray, path: str | os.PathLike[str], *, nodata: float | None = None) -> Path:
    """Write a georeferenced DataArray as a Cloud-Optimized GeoTIFF, atomically.

    The COG is written to ``<name>.tmp`` beside the target and renamed, so an interrupted run
    never leaves a half-written file under the final name. Uses odc-geo's ``write_cog``
    (deflate, 512 px internal tiles, overviews).

    Args:
        array: ``(y, x)`` or ``(band, y, x)`` DataArray with a CRS (``array.odc.crs``).
        path: output file path.
        nodata: nodata value to record; default ``array.attrs["nodata"]``.

    Returns:
        The path written.
    """
    from odc.geo.cog import write_cog as _write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    nd = nodata if nodata is not None else array.attrs.get("nodata")
    _write(array, tmp, overwrite=True, nodata=nd)
    os.replace(tmp, path)
    return path
