"""Tiled prediction machinery shared by :mod:`staclearn.inference.raster` and :mod:`staclearn.inference.dask`.

One internal API (this module is private: its names carry no leading underscore, but it is
not part of the public package): a raster of ``(h, w)`` pixels is cut into a :class:`Grid`
of padded tiles; a :class:`Source` reads padded windows of it (mirrored beyond the data);
:func:`produce_batches` turns the windows into :class:`Batch` es of normalised tiles, which
:func:`read_ahead` can read in a background thread; a :class:`Runner` runs the model
(softmax, D4 test-time augmentation, out-of-memory back-off); :func:`stitch` blends the tiles'
probabilities into a :class:`Strip` of open rows and hands finished rows to a ``write``
callback. :func:`predict_image` chains all of it for an in-memory or lazy cube.

Stitching (``blend``, see :mod:`staclearn.inference.raster`): ``"linear"`` weights each tile
by a separable trapezoid window over the inner half of the padding and the outer
``padding / 2`` of the core (neighbouring weights sum to 1); ``"none"`` keeps each tile's core.
"""

from __future__ import annotations

import json
import os
import queue
import threading
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
from staclearn.inference.engines import engine_of

CLASS_MAP_NODATA = 255
"""Nodata value of uint8 class maps and change masks."""

Blend = Literal["linear", "none"]
"""How overlapping tiles are stitched: ``"linear"`` (trapezoid weights) or ``"none"`` (core only)."""

D4 = [(k, flip) for flip in (False, True) for k in range(4)]
"""The 8 symmetries of the square (D4), as ``(rotations by 90 degrees, flip of the last axis)``."""


def as_band_yx(cube: xr.DataArray) -> xr.DataArray:
    """The cube as ``(band, y, x)``: a ``time`` dimension of length 1 is dropped.

    Raises:
        ConfigError: the cube has more than one time step.
    """
    if "time" in cube.dims:
        if cube.sizes["time"] != 1:
            raise ConfigError(
                f"The cube has {cube.sizes['time']} time steps; select one (cube.isel(time=0)) or "
                "composite them (cube.median('time')) before predicting."
            )
        cube = cube.isel(time=0)
    return cube.transpose("band", "y", "x")


def check_bands(cube: xr.DataArray, bands: Sequence[str]) -> None:
    """Check that the cube's ``band`` coordinate (if any) is ``bands``, in that order.

    Raises:
        BandMismatchError: the bands differ; the message names the missing and extra ones.
    """
    have = [str(b) for b in cube.coords["band"].values] if "band" in cube.coords else []
    if have and have != list(bands):
        missing = [b for b in bands if b not in have]
        extra = [b for b in have if b not in bands]
        raise BandMismatchError(
            f"The cube's bands {have} do not match the model's input bands {list(bands)} "
            f"(missing {missing}, extra {extra}). Load the cube with bands={list(bands)}."
        )


@dataclass(frozen=True)
class Grid:
    """Tile layout of an ``(h, w)`` raster: core ranges per tile row/column, padded tile shape."""

    h: int
    w: int
    padding: int
    rows: tuple[tuple[int, int], ...]  # core [start, stop) of each tile row
    cols: tuple[tuple[int, int], ...]
    tile_shape: tuple[int, int]  # model input (th, tw): core + 2 * padding, rounded up to the stride
    blend: Blend

    @classmethod
    def make(cls, h: int, w: int, tile_size: int, padding: int, stride: int, blend: Blend) -> Grid:
        """The grid of an ``(h, w)`` raster for tiles of ``tile_size`` px (padding included).

        Raises:
            ConfigError: ``tile_size <= 2 * padding``, a negative padding or an unknown ``blend``.
        """
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
        """Number of tiles in the grid."""
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


class Source:
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
        """The window ``[y0, y1) x [x0, x1)`` in raster pixels (may run off the raster) as
        ``(band, y1 - y0, x1 - x0)`` float32, mirrored beyond the data."""
        t, l = self.top, self.left
        cy0, cy1 = max(y0, -t), min(y1, self.shape[0] - t)
        cx0, cx1 = max(x0, -l), min(x1, self.shape[1] - l)
        block = np.asarray(self._get(slice(cy0 + t, cy1 + t), slice(cx0 + l, cx1 + l)), dtype=np.float32)
        widths = ((0, 0), (cy0 - y0, y1 - cy1), (cx0 - x0, x1 - cx1))
        return np.pad(block, widths, mode="reflect") if any(sum(p) for p in widths) else block


def cube_source(image: xr.DataArray) -> Source:
    """A :class:`Source` over a ``(band, y, x)`` DataArray (lazy or not); windows are loaded on read."""
    def get(ys: slice, xs: slice) -> np.ndarray:
        return image.isel(y=ys, x=xs).values

    return Source(get, image.sizes["y"], image.sizes["x"])


@dataclass
class Batch:
    """Tiles ready for the model: ``x`` ``(B, C, th, tw)`` float32 (nodata filled with the band
    means), the ``(tile row, tile column)`` of each and their ``(B, th, tw)`` bool valid masks."""

    x: torch.Tensor  # (B, C, th, tw) float32, nodata filled with the band means
    tiles: list[tuple[int, int]]  # (tile row, tile column) per item
    ok: np.ndarray  # (B, th, tw) bool valid pixels


def produce_batches(
    source: Source, grid: Grid, first_row: int, batch_size: int, nodata: float | None, fill: np.ndarray, pin: bool
) -> Iterator[Batch]:
    """Batches of ``batch_size`` tiles, tile row by tile row from ``first_row``.

    Tiles are read in windows of whole tiles about 2048 px wide, so memory does not grow with
    the raster's width. Pixels that are ``nodata`` / NaN in any band are replaced by ``fill``
    (``(C, 1, 1)`` float32, the model's band means) and marked invalid; ``pin`` pins the
    batches in page-locked memory (for a CUDA device).
    """
    th, tw = grid.tile_shape
    p = grid.padding
    # read windows of about 2048 px wide (whole tiles), so memory does not grow with the width
    group = max(1, -(-2048 // max(tw - 2 * p, 1)))
    pending: list[tuple[np.ndarray, np.ndarray, tuple[int, int]]] = []

    def flush() -> Batch:
        x = torch.from_numpy(np.stack([t for t, _, _ in pending]))
        batch = Batch(x.pin_memory() if pin else x, [k for _, _, k in pending], np.stack([o for _, o, _ in pending]))
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


def read_ahead(items: Iterator[Batch], depth: int) -> Iterator[Batch]:
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


def is_oom(err: BaseException) -> bool:
    """Whether ``err`` is an out-of-memory error of CUDA, MPS or an older PyTorch."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()  # MPS, older CUDA


class Runner:
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
        self.transforms = D4 if tta else D4[:1]
        self.amp = mixed_precision and device.type == "cuda"
        if channels_last is None:  # oneDNN's convolutions run NHWC faster on CPU (1.36x, issue 15)
            channels_last = device.type == "cpu" and engine_of(model) == "torch" and any(
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
        """``(B, C, th, tw)`` float32 tiles -> ``(B, K, th, tw)`` float32 softmax probabilities (CPU)."""
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
                if not is_oom(err) or n == 1:
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


POP_PX = 2**21  # finished rows are divided out and written about 2 M pixels at a time


class Strip:
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

    def add(self, grid: Grid, r: int, c: int, prob: np.ndarray, ok: np.ndarray) -> None:
        """Add tile ``(r, c)``: its ``(K, th, tw)`` float32 probabilities weighted by the blend
        window, and the ``(th, tw)`` valid mask of its core."""
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
        """Finished rows ``[base, stop)`` in chunks of about ``POP_PX`` pixels (so the
        probabilities are never divided out for the whole strip at once, whatever the width):
        ``(y0, (K, n, W) probabilities, (n, W) valid)`` each. Consume it to the end."""
        n = stop - self.base
        self._grow(stop)
        step = max(16, POP_PX // max(self.w, 1))
        for i in range(0, n, step):
            j = min(n, i + step)
            yield self.base + i, self.num[:, i:j] / np.maximum(self.den[i:j], 1e-12), self.ok[i:j].copy()
        self.num, self.den, self.ok = self.num[:, n:].copy(), self.den[n:].copy(), self.ok[n:].copy()
        self.base = stop

    def save(self, path: Path) -> None:
        """Write the open rows to the ``.npz`` file ``path``, atomically (for a resumable run)."""
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, num=self.num, den=self.den, ok=self.ok, base=self.base)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Strip:
        """The open rows saved by :meth:`save`."""
        with np.load(path) as z:
            strip = cls(int(z["num"].shape[0]), int(z["num"].shape[2]), int(z["base"]))
            strip.num, strip.den, strip.ok = z["num"], z["den"], z["ok"]
        return strip

    def pop(self, stop: int) -> tuple[int, np.ndarray, np.ndarray]:
        """Finished rows ``[base, stop)``: ``(base, (K, n, W) probabilities, (n, W) valid)``."""
        n = stop - self.base
        self._grow(stop)
        prob = self.num[:, :n] / np.maximum(self.den[:n], 1e-12)
        out = (self.base, prob, self.ok[:n].copy())
        self.num, self.den, self.ok = self.num[:, n:].copy(), self.den[n:].copy(), self.ok[n:].copy()
        self.base = stop
        return out


def scratch_profile(gbox: Any, count: int, dtype: str, nodata: float | None) -> dict[str, Any]:
    """rasterio profile of an uncompressed, 256 px tiled scratch GeoTIFF on ``gbox``
    (an odc-geo ``GeoBox``), from which a COG is then copied."""
    h, w = gbox.shape
    return {
        "driver": "GTiff", "width": w, "height": h, "count": count, "dtype": dtype, "crs": gbox.crs.to_wkt(),
        "transform": gbox.affine, "tiled": True, "blockxsize": 256, "blockysize": 256, "sparse_ok": True,
        "bigtiff": "IF_SAFER", **({"nodata": nodata} if nodata is not None else {}),
    }


class GeoTiffRows:
    """A ``write(y0, prob, ok)`` sink for :func:`stitch` that writes finished rows into scratch
    GeoTIFFs on ``gbox``: ``paths["class_map"]`` (uint8 class values via ``lut``, nodata
    :data:`CLASS_MAP_NODATA`) and / or ``paths["probabilities"]`` (``(K, y, x)`` float32, NaN)."""

    def __init__(self, paths: dict[str, Path], gbox: Any, lut: np.ndarray, predict_background: bool) -> None:
        self.paths, self.gbox, self.lut, self.predict_background = paths, gbox, lut, predict_background

    def create(self) -> None:
        """Create the empty scratch files (and their folders)."""
        import rasterio

        bands = {"class_map": (1, "uint8", CLASS_MAP_NODATA), "probabilities": (len(self.lut), "float32", np.nan)}
        for name, path in self.paths.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.open(path, "w", **scratch_profile(self.gbox, *bands[name])):
                pass

    def __call__(self, y0: int, prob: np.ndarray, ok: np.ndarray) -> None:
        """Write rows ``[y0, y0 + n)`` from ``(K, n, W)`` probabilities and their ``(n, W)`` valid mask."""
        import rasterio

        window = rasterio.windows.Window(0, y0, self.gbox.shape[1], ok.shape[0])
        for name, path in self.paths.items():
            if name == "class_map":
                data = argmax_classes(prob, self.lut, ok, self.predict_background)[None]
            else:
                data = np.where(ok[None], prob, np.nan).astype(np.float32)
            with rasterio.open(path, "r+") as dst:  # closing flushes to disk
                dst.write(data, window=window)


class Resumable:
    """The bookkeeping that lets an interrupted tiled run resume.

    Beside ``anchor`` (the first output): ``<anchor>.partial.json`` holds the run's
    ``fingerprint`` (weights, grid and options) and the number of tile rows done;
    ``<anchor>.partial.npz`` the :class:`Strip` of rows still open. ``scratch`` are the
    partial outputs the run writes into; they must all exist to resume.
    """

    def __init__(self, anchor: Path, fingerprint: dict[str, Any], scratch: Sequence[Path]) -> None:
        self.state_path = anchor.with_name(anchor.name + ".partial.json")
        self.strip_path = anchor.with_name(anchor.name + ".partial.npz")
        self.fingerprint, self.scratch = fingerprint, list(scratch)

    def load(self) -> tuple[int, Strip | None]:
        """``(tile rows done, open rows)`` of an unfinished run with the same fingerprint, else
        ``(0, None)`` (with a :class:`~staclearn.errors.StaclearnWarning` when a run with
        another fingerprint is found)."""
        if not self.state_path.exists():
            return 0, None
        state = json.loads(self.state_path.read_text())
        if state.get("fingerprint") == self.fingerprint and self.strip_path.exists() and all(
            p.exists() for p in self.scratch
        ):
            return int(state["rows_done"]), Strip.load(self.strip_path)
        warnings.warn(
            f"The unfinished prediction at {self.state_path} was made with other weights, grid "
            "or options; starting afresh.",
            StaclearnWarning,
            stacklevel=4,
        )
        return 0, None

    def checkpoint(self, r: int, strip: Strip) -> None:
        """Record that tile row ``r`` is done and save the open rows (atomically)."""
        strip.save(self.strip_path)
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "rows_done": r + 1}))
        os.replace(tmp, self.state_path)

    def clear(self) -> None:
        """Remove the state, the open rows and the scratch outputs."""
        for p in (self.state_path, self.strip_path, *self.scratch):
            p.unlink(missing_ok=True)


def stitch(
    runner: Runner,
    batches: Iterator[Batch],
    grid: Grid,
    strip: Strip | None,
    first_row: int,
    write: Callable[[int, np.ndarray, np.ndarray], None],
    on_row_done: Callable[[int, Strip], None] | None = None,
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
                strip = Strip(prob.shape[0], grid.w, grid.first_row_touched(r))
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


def class_lut(model: nn.Module, class_values: Sequence[int] | None) -> np.ndarray:
    """The uint8 class value of each logit channel: ``class_values``, else ``model.spec.classes``.

    Raises:
        ConfigError: neither is given.
    """
    spec = getattr(model, "spec", None)
    if spec is not None:
        class_values = class_values or [c.value for c in spec.classes]
    if class_values is None:
        raise ConfigError("class_values is required for a model without a spec")
    return np.asarray(list(class_values), dtype=np.uint8)


def argmax_classes(prob: np.ndarray, lut: np.ndarray, ok: np.ndarray, predict_background: bool) -> np.ndarray:
    """``(K, h, w)`` probabilities -> ``(h, w)`` uint8 class values (``lut`` of the argmax),
    :data:`CLASS_MAP_NODATA` where ``ok`` is False; ``predict_background=False`` never picks
    the class of value 0.

    Raises:
        ConfigError: ``predict_background=False`` and no class has value 0.
    """
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


def predict_image(
    runner: Runner,
    image: xr.DataArray,
    grid: Grid,
    fill: np.ndarray,
    prefetch: int,
    write: Callable[[int, np.ndarray, np.ndarray], None],
) -> None:
    """Predict a whole ``(band, y, x)`` image: read its tiles (``prefetch`` batches ahead in a
    background thread), run them and hand finished rows to ``write(y0, (K, n, W) float32
    probabilities, (n, W) bool valid)``, top to bottom."""
    batches = produce_batches(
        cube_source(image), grid, 0, runner.batch_size, image.attrs.get("nodata"), fill,
        runner.device.type == "cuda",
    )
    stitch(runner, read_ahead(batches, prefetch), grid, None, 0, write)
