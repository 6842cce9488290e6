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

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
from torch import nn

from staclearn.errors import ConfigError, NoGeoreferenceError
from staclearn.inference._tiling import (
    CLASS_MAP_NODATA,
    POP_PX,
    Blend,
    GeoTiffRows,
    Grid,
    Resumable,
    Runner,
    argmax_classes,
    as_band_yx,
    check_bands,
    class_lut,
    cube_source,
    predict_image,
    produce_batches,
    read_ahead,
    scratch_profile,
    stitch,
)
from staclearn.inference.cache import model_digest
from staclearn.inference.engines import tile_bytes_per_px, with_engine
from staclearn.training.device import resolve_device

__all__ = [
    "CLASS_MAP_NODATA",
    "COG_OPTIONS",
    "DEFAULT_MEMORY_BUDGET_MB",
    "StreamedPrediction",
    "auto_tile_size",
    "predict_class_map",
    "predict_probabilities",
    "predict_to_cog",
    "write_cog",
]

# --------------------------------------------------------------------------- tile size

DEFAULT_MEMORY_BUDGET_MB = 512
"""Default memory budget of ``tile_size="auto"`` (MiB, see :func:`auto_tile_size`)."""
_MAX_AUTO_TILE = 4096


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
      see :func:`staclearn.stac.onnx.add_onnx_artifact`; ~500 B/px for a U-Net ResNet-34, about
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
        strip = (classes + 1) * (min(t, h + 2 * padding) + padding) * w * 4 + classes * POP_PX * 4
        per_tile = t * t * (bytes_per_px + (prefetch + 2) * bands * 4)
        batch = min(batch_size, int((budget - strip) // per_tile))
        if batch < 1:
            if best is None:
                best = (0.0, t, 1)
            break
        g = Grid.make(h, w, t, padding, stride, "none")
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
) -> tuple[Grid, Runner, np.ndarray]:
    spec = getattr(model, "spec", None)
    if spec is not None:
        check_bands(image, spec.bands)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    stride = int(getattr(spec, "stride", 32))
    if tile_size == "auto":
        k = len(spec.classes) if spec is not None else 8
        tile_size, batch_size = auto_tile_size(
            (image.sizes["y"], image.sizes["x"]), padding=padding, stride=stride, bands=image.sizes["band"],
            classes=k, batch_size=batch_size, bytes_per_px=tile_bytes_per_px(model),
            memory_budget_mb=memory_budget_mb, prefetch=prefetch,
        )
    elif not isinstance(tile_size, int | np.integer):
        raise ConfigError(f"tile_size must be a number of pixels or 'auto', got {tile_size!r}")
    grid = Grid.make(image.sizes["y"], image.sizes["x"], int(tile_size), padding, stride, blend)
    mean = getattr(spec, "mean", None)
    fill = np.asarray(mean if mean is not None else np.zeros(image.sizes["band"]), np.float32)[:, None, None]
    runner = Runner(model, resolve_device(device), batch_size, tta, mixed_precision)
    return grid, runner, fill


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
    image = as_band_yx(cube)
    lut = class_lut(model, class_values)
    model = with_engine(model, engine)
    grid, runner, fill = _setup(
        model, image, tile_size, padding, blend, device, batch_size, test_time_augmentation, mixed_precision,
        memory_budget_mb, prefetch,
    )
    out = np.full((grid.h, grid.w), CLASS_MAP_NODATA, dtype=np.uint8)

    def write(y0: int, prob: np.ndarray, ok: np.ndarray) -> None:
        out[y0 : y0 + ok.shape[0]] = argmax_classes(prob, lut, ok, predict_background)

    predict_image(runner, image, grid, fill, prefetch, write)
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
        engine: ``"auto"``, ``"onnx"`` or ``"torch"`` (see :func:`predict_class_map`).
        memory_budget_mb: budget of ``tile_size="auto"`` in MiB (:func:`auto_tile_size`).

    Returns:
        ``(class, y, x)`` float32 DataArray of probabilities in [0, 1] summing to 1 over
        ``class`` (``class`` coordinate: the class values of ``model.spec`` when it has one,
        else 0..K-1), NaN where any input band is nodata / NaN; ``attrs["nodata"] = NaN``.

    Raises:
        ConfigError: ``tile_size <= 2 * padding``, ``batch_size < 1`` or a multi-date cube.
        BandMismatchError: the cube's bands differ from the model's input bands.
    """
    image = as_band_yx(cube)
    model = with_engine(model, engine)
    grid, runner, fill = _setup(
        model, image, tile_size, padding, blend, device, batch_size, test_time_augmentation, mixed_precision,
        memory_budget_mb, prefetch,
    )
    holder: list[np.ndarray] = []

    def write(y0: int, prob: np.ndarray, ok: np.ndarray) -> None:
        if not holder:
            holder.append(np.full((prob.shape[0], grid.h, grid.w), np.nan, dtype=np.float32))
        holder[0][:, y0 : y0 + ok.shape[0]] = np.where(ok[None], prob, np.nan)

    predict_image(runner, image, grid, fill, prefetch, write)
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
        engine: ``"auto"``, ``"onnx"`` or ``"torch"`` (see :func:`predict_class_map`).
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
    image = as_band_yx(cube)
    crs = image.odc.crs
    if crs is None:
        raise ConfigError(
            "The cube has no CRS (pixel coordinates only), so no COG can be written; use "
            "predict_class_map / predict_probabilities instead."
        )
    lut = class_lut(model, class_values)
    model = with_engine(model, engine)
    grid, runner, fill = _setup(
        model, image, tile_size, padding, blend, device, batch_size, test_time_augmentation, mixed_precision,
        memory_budget_mb, prefetch,
    )
    if not predict_background:
        argmax_classes(np.zeros((len(lut), 1, 1), np.float32), lut, np.ones((1, 1), bool), False)  # fail early
    outputs = {
        name: Path(p)
        for name, p in (("class_map", class_map_path), ("probabilities", probabilities_path))
        if p is not None
    }
    gbox = image.odc.geobox
    fingerprint = {
        "model": model_digest(model),
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
    run = Resumable(next(iter(outputs.values())), fingerprint, [_partial(p) for p in outputs.values()])
    first_row, strip = run.load() if resume else (0, None)
    write = GeoTiffRows({n: _partial(p) for n, p in outputs.items()}, gbox, lut, predict_background)
    if first_row == 0:  # a stale state must not survive a fresh start that is interrupted early
        run.clear()
    with rasterio.Env(GDAL_CACHEMAX=gdal_cache_mb):
        if first_row == 0:
            write.create()
        batches = produce_batches(
            cube_source(image), grid, first_row, runner.batch_size, image.attrs.get("nodata"), fill,
            runner.device.type == "cuda",
        )
        n_run = stitch(runner, read_ahead(batches, prefetch), grid, strip, first_row, write, run.checkpoint)
        for name, path in outputs.items():
            write_cog(_partial(path), path)
    run.clear()
    return StreamedPrediction(
        outputs.get("class_map"),
        outputs.get("probabilities"),
        grid.n_tiles,
        n_run,
        first_row * len(grid.cols),
        time.perf_counter() - started,
    )


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


COG_OPTIONS: dict[str, Any] = {
    "COMPRESS": "DEFLATE",
    "LEVEL": 6,
    "PREDICTOR": "YES",
    "BLOCKSIZE": 512,
    "OVERVIEWS": "AUTO",
    "BIGTIFF": "IF_SAFER",
}
"""Creation options (GDAL's COG driver) of every Cloud-Optimized GeoTIFF staclearn writes:
deflate (level 6, horizontal / floating-point predictor), 512 px internal tiles, overviews
down to one tile. Overviews are resampled ``NEAREST`` for integer rasters (class maps, change
masks) and ``AVERAGE`` for float ones (probabilities)."""


def write_cog(
    data: xr.DataArray | str | os.PathLike[str], path: str | os.PathLike[str], *, nodata: float | None = None
) -> Path:
    """Write a georeferenced raster as a Cloud-Optimized GeoTIFF, atomically.

    The one COG writer of staclearn (:data:`COG_OPTIONS`, GDAL's COG driver): the COG is
    written to ``<name>.tmp`` beside the target and renamed, so an interrupted run never
    leaves a half-written file under the final name.

    Args:
        data: ``(y, x)`` or ``(band, y, x)`` DataArray with a CRS (``data.odc.crs``), any
            numeric dtype (kept); or the path of a GeoTIFF to convert (its CRS, nodata and
            dtype kept; ``nodata`` is ignored).
        path: output file path; its folder is created.
        nodata: nodata value to record for a DataArray; default ``data.attrs["nodata"]``
            (none recorded when that is missing too).

    Returns:
        The path written.

    Raises:
        NoGeoreferenceError: a DataArray without a CRS.
    """
    import rasterio
    from rasterio.shutil import copy

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    scratch = None
    if isinstance(data, xr.DataArray):
        gbox = data.odc.geobox
        if gbox is None or gbox.crs is None:
            raise NoGeoreferenceError(f"Cannot write {os.fspath(path)!r} as a COG: the array has no CRS.")
        nd = nodata if nodata is not None else data.attrs.get("nodata")
        pix = np.asarray(data.transpose(..., *data.odc.spatial_dims).values)
        pix = pix[None] if pix.ndim == 2 else pix
        scratch = path.with_name(path.name + ".partial.tif")
        profile = scratch_profile(gbox, pix.shape[0], pix.dtype.name, nd)
        with rasterio.open(scratch, "w", **profile) as dst:
            dst.write(pix)
        src = scratch
    else:
        src = Path(data)
    try:
        with rasterio.open(src) as ds:
            resampling = "AVERAGE" if np.dtype(ds.dtypes[0]).kind == "f" else "NEAREST"
        copy(src, tmp, driver="COG", RESAMPLING=resampling, **COG_OPTIONS)
        os.replace(tmp, path)
    finally:
        if scratch is not None:
            scratch.unlink(missing_ok=True)
    return path
