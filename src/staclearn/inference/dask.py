"""Tiled inference on a Dask-backed cube, one chunk per task, on any Dask scheduler.

:func:`predict_dask` maps the tiled predictor of :mod:`staclearn.inference.raster` over the chunks of
a cube with :func:`dask.array.map_overlap` (``boundary="none"``): every chunk gets
``padding`` pixels of its neighbours as context (at the raster edge the raster is mirrored
by numpy, as in a single-process run), is cut into tiles, predicted, stitched and trimmed
back to the chunk. The task graph carries the *path* of the safetensors weights
and the JSON :class:`~staclearn.models.segmentation.ModelSpec`, never the weights: each worker process
loads the model the first time one of its tasks needs it and keeps it in the per-process
model cache of :mod:`staclearn.inference.cache` (keyed by the SHA-256 of the weights - memoised
by the file's path, size and modification time -, the spec and the device), the pattern
Dask's documentation recommends for models. This
works on the threaded scheduler and on a ``dask.distributed`` cluster alike.

Chunks are predicted independently, so within ``padding / 2`` pixels of a chunk boundary the
linear blend of :mod:`staclearn.inference.raster` becomes a cut (the tiles on either side are the same
as in a single-process run when the chunk size is a multiple of ``tile_size - 2 * padding``).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import xarray as xr

from staclearn.errors import ConfigError
from staclearn.inference._tiling import (
    CLASS_MAP_NODATA,
    Blend,
    Grid,
    Runner,
    Source,
    argmax_classes,
    as_band_yx,
    check_bands,
    produce_batches,
    stitch,
)
from staclearn.inference.cache import cached_model, file_digest
from staclearn.models.segmentation import ModelSpec, load_weights, model_from_spec
from staclearn.training.device import resolve_device

__all__ = ["predict_dask"]


def _model(weights: str, spec_json: str, device: str) -> torch.nn.Module:
    """The model of ``weights`` and ``spec_json`` on ``device``, from the process's model cache."""

    def load() -> torch.nn.Module:
        model = model_from_spec(ModelSpec.from_dict(json.loads(spec_json)))
        return load_weights(model, weights).to(device).eval()

    return cached_model((file_digest(weights), spec_json, device), load)


def _predict_block(
    block: np.ndarray,
    *,
    weights: str,
    spec_json: str,
    device: str,
    output: str,
    tile_size: int,
    padding: int,
    batch_size: int,
    blend: Blend,
    class_values: tuple[int, ...],
    predict_background: bool,
    tta: bool,
    mixed_precision: bool,
    nodata: float | None,
    torch_threads: int | None,
    block_info: dict | None = None,
) -> np.ndarray:
    """A chunk with its overlap (none beyond the raster edge) -> ``(K, h, w)`` probabilities
    or ``(1, h, w)`` class map."""
    if torch_threads is not None and torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    model = _model(weights, spec_json, device)
    spec = model.spec
    p = padding
    if block_info is None:
        raise ConfigError("_predict_block runs under dask.array.map_overlap, which passes block_info")
    loc, n = block_info[0]["chunk-location"], block_info[0]["num-chunks"]
    top, bottom = (p if loc[1] > 0 else 0), (p if loc[1] < n[1] - 1 else 0)
    left, right = (p if loc[2] > 0 else 0), (p if loc[2] < n[2] - 1 else 0)
    h, w = block.shape[1] - top - bottom, block.shape[2] - left - right
    grid = Grid.make(h, w, tile_size, padding, spec.stride, blend)
    runner = Runner(model, torch.device(device), batch_size, tta, mixed_precision)
    fill = np.asarray(spec.mean, np.float32)[:, None, None]
    lut = np.asarray(class_values, np.uint8)
    k = len(lut)
    out = np.full((k, h, w), np.nan, np.float32) if output == "probabilities" else np.full(
        (1, h, w), CLASS_MAP_NODATA, np.uint8
    )

    def write(y0: int, prob: np.ndarray, ok: np.ndarray) -> None:
        rows = slice(y0, y0 + ok.shape[0])
        if output == "probabilities":
            out[:, rows] = np.where(ok[None], prob, np.nan)
        else:
            out[0, rows] = argmax_classes(prob, lut, ok, predict_background)

    source = Source(lambda ys, xs: block[:, ys, xs], h, w, top, left, block.shape[1:])
    with torch.no_grad():
        stitch(runner, produce_batches(source, grid, 0, batch_size, nodata, fill, False), grid, None, 0, write)
    return out


def predict_dask(
    weights: str | os.PathLike[str],
    spec: ModelSpec,
    cube: xr.DataArray,
    *,
    output: Literal["probabilities", "class_map"] = "class_map",
    tile_size: int = 256,
    padding: int = 32,
    batch_size: int = 8,
    device: str = "cpu",
    blend: Blend = "linear",
    class_values: Sequence[int] | None = None,
    predict_background: bool = True,
    test_time_augmentation: bool = False,
    mixed_precision: bool = True,
    torch_threads: int | None = None,
) -> xr.DataArray:
    """Lazily predict a Dask-backed cube chunk by chunk (see the module docstring).

    Nothing runs until the result is computed (``.compute()``, ``.to_zarr()``,
    ``odc.geo``'s ``write_cog``...), on whatever scheduler is active - e.g. a
    ``dask.distributed.Client`` connected to a ``LocalCluster`` or a remote cluster whose
    workers can read ``weights``.

    Args:
        weights: safetensors weights (local path, or fsspec URL the workers can read) of a
            model built from ``spec`` (:func:`staclearn.models.segmentation.save_weights`).
        spec: the model's :class:`~staclearn.models.segmentation.ModelSpec` (goes into the task graph as JSON).
        cube: ``(band, y, x)`` or ``(time=1, band, y, x)`` Dask-backed imagery with
            ``attrs["nodata"]``, in the units the model was trained on. Each chunk must be at
            least ``padding`` pixels high and wide; chunk sizes that are multiples of
            ``tile_size - 2 * padding`` keep the tiles those of a single-process run.
        output: ``"class_map"`` (uint8, nodata 255) or ``"probabilities"`` (float32, NaN).
        tile_size: model input edge in pixels, padding included (rounded up to the stride).
        padding: context pixels on each side of a tile, and the chunk overlap.
        batch_size: tiles per forward pass (halved on out-of-memory errors).
        device: device of every worker: ``"cpu"``, ``"cuda"``, ``"mps"``, ``"auto"``
            (resolved on the client).
        blend: ``"linear"`` (default) or ``"none"`` (see :mod:`staclearn.inference.raster`).
        class_values: class value per logit channel; default from ``spec.classes``.
        predict_background: ``False`` never predicts the class of value 0.
        test_time_augmentation: average over the 8 D4 flips/rotations.
        mixed_precision: ``torch.autocast`` float16 on CUDA only.
        torch_threads: ``torch.set_num_threads`` in each worker process before predicting
            (e.g. 1 with one single-threaded worker per core); ``None`` leaves it alone.

    Returns:
        Lazy ``(y, x)`` uint8 class map or ``(class, y, x)`` float32 probabilities on the
        cube's GeoBox, chunked like the cube.

    Raises:
        ConfigError: a cube that is not Dask-backed, chunks smaller than ``padding``, an
            unknown ``output``, bad tiling.
        BandMismatchError: the cube's bands differ from ``spec.bands``.
    """
    import dask.array as da

    if output not in ("probabilities", "class_map"):
        raise ConfigError(f"output must be 'probabilities' or 'class_map', got {output!r}")
    image = as_band_yx(cube)
    check_bands(image, spec.bands)
    Grid.make(256, 256, tile_size, padding, spec.stride, blend)  # validate the tiling up front
    data = image.data
    if not isinstance(data, da.Array):
        raise ConfigError("predict_dask needs a Dask-backed cube: use cube.chunk({'y': 2048, 'x': 2048}).")
    data = data.rechunk({0: -1})
    if padding and min(min(data.chunks[1]), min(data.chunks[2])) < padding:
        raise ConfigError(
            f"Chunks of {min(data.chunks[1])} x {min(data.chunks[2])} px are smaller than padding "
            f"({padding} px); rechunk the cube, e.g. cube.chunk({{'y': 2048, 'x': 2048}})."
        )
    values = tuple(int(v) for v in (class_values or [c.value for c in spec.classes]))
    k = len(values)
    func = functools.partial(
        _predict_block,
        weights=os.fspath(weights),
        spec_json=json.dumps(spec.to_dict(), sort_keys=True),
        device=str(resolve_device(device)),
        output=output,
        tile_size=tile_size,
        padding=padding,
        batch_size=batch_size,
        blend=blend,
        class_values=values,
        predict_background=predict_background,
        tta=test_time_augmentation,
        mixed_precision=mixed_precision,
        nodata=image.attrs.get("nodata"),
        torch_threads=torch_threads,
    )
    n_out = k if output == "probabilities" else 1
    dtype = np.float32 if output == "probabilities" else np.uint8
    result = da.map_overlap(
        func,
        data,
        depth={0: 0, 1: padding, 2: padding},
        boundary="none",  # the raster edge is mirrored as in predict.py, not by dask
        trim=False,
        dtype=dtype,
        chunks=((n_out,), data.chunks[1], data.chunks[2]),
        meta=np.empty((0, 0, 0), dtype),
    )
    coords = {"y": image.y, "x": image.x}
    if output == "probabilities":
        arr = xr.DataArray(result, dims=("class", "y", "x"), coords={**coords, "class": list(values)},
                           attrs={"nodata": float("nan")}, name="probability")
    else:
        arr = xr.DataArray(result[0], dims=("y", "x"), coords=coords, attrs={"nodata": CLASS_MAP_NODATA},
                           name="class_map")
    crs = image.odc.crs
    if crs is not None:
        from odc.geo.xr import assign_crs

        arr = assign_crs(arr, crs)
    return arr
