"""Tiled inference over a whole cube, stitched back onto the cube's GeoBox.

The cube is cut into *core* tiles of ``tile_size - 2 * padding`` pixels (the last row and
column snapped to the raster edge, as chips are); each core is read with ``padding`` pixels
of context on every side (mirrored where it runs off the raster), the model runs on batches
of such tiles, and only the core of each prediction is kept, so the tile-edge effects of a
convolutional network are discarded (arcgis.learn's ``padding``, Raster Vision's
``crop_sz``). Tiles are read one batch at a time from the lazy cube.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn

from staclearn.chips import chip_windows
from staclearn.cube import valid_mask
from staclearn.errors import BandMismatchError, ConfigError
from staclearn.train import resolve_device

__all__ = ["predict_class_map", "predict_probabilities", "write_cog", "CLASS_MAP_NODATA"]

CLASS_MAP_NODATA = 255
"""Nodata value of uint8 class maps and change masks."""


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


def _tiles(shape: tuple[int, int], core: int) -> list[tuple[slice, slice]]:
    return [w.toslices() for w in chip_windows(shape, core, core)]  # type: ignore[misc]


def _read_tile(image: xr.DataArray, ys: slice, xs: slice, pad: int, size: tuple[int, int]) -> np.ndarray:
    h, w = image.sizes["y"], image.sizes["x"]
    y0, y1 = max(ys.start - pad, 0), min(ys.stop + pad, h)
    x0, x1 = max(xs.start - pad, 0), min(xs.stop + pad, w)
    block = np.asarray(image.isel(y=slice(y0, y1), x=slice(x0, x1)).values, dtype=np.float32)
    top, left = pad - (ys.start - y0), pad - (xs.start - x0)
    bottom, right = size[0] - top - (y1 - y0), size[1] - left - (x1 - x0)
    widths = ((0, 0), (top, bottom), (left, right))
    mode = "reflect" if max(top, bottom) < block.shape[1] and max(left, right) < block.shape[2] else "edge"
    return np.pad(block, widths, mode=mode)


def _batches(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


@torch.no_grad()
def predict_class_map(
    model: nn.Module,
    cube: xr.DataArray,
    *,
    tile_size: int = 256,
    padding: int = 32,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    class_values: Sequence[int] | None = None,
    out_path: str | os.PathLike[str] | None = None,
) -> xr.DataArray:
    """Predict a class map for a whole cube.

    Args:
        model: a :class:`staclearn.models.SegmentationModel` (or any module
            ``(B, C, H, W) -> (B, K, H, W)`` logits with a ``spec`` giving bands and classes).
        cube: ``(band, y, x)`` or ``(time=1, band, y, x)`` imagery, lazy or not, in the units
            the model was trained on, with ``attrs["nodata"]``. A cube without a CRS (pixel
            coordinates only, e.g. PNG imagery) is predicted too; its map has no CRS either.
        tile_size: model input edge in pixels, padding included; rounded up to the model's
            stride (32 px for a depth-5 encoder).
        padding: context pixels on each side of a tile whose prediction is discarded.
        batch_size: tiles per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
        class_values: class value per logit channel; default from ``model.spec.classes``.
        out_path: when given, the class map is also written there as a COG (atomically).

    Returns:
        ``(y, x)`` uint8 DataArray of class values on the cube's GeoBox, ``CLASS_MAP_NODATA``
        (255) where any input band is nodata / NaN, ``attrs["nodata"] = 255``.

    Raises:
        ConfigError: ``tile_size <= 2 * padding``, a multi-date cube, or ``out_path`` given
            for a cube without a CRS.
        BandMismatchError: the cube's bands differ from the model's input bands.
    """
    image = _as_band_yx(cube)
    spec = getattr(model, "spec", None)
    if spec is not None:
        class_values = class_values or [c.value for c in spec.classes]
    if class_values is None:
        raise ConfigError("class_values is required for a model without a spec")
    lut = np.asarray(list(class_values), dtype=np.uint8)
    h, w = image.sizes["y"], image.sizes["x"]
    out = np.full((h, w), CLASS_MAP_NODATA, dtype=np.uint8)
    for ys, xs, pred, ok in _predict_tiles(
        model, image, tile_size, padding, batch_size, device, lambda logits: logits.argmax(1)
    ):
        out[ys, xs] = np.where(ok, lut[pred], CLASS_MAP_NODATA)
    return _on_cube_grid(out, image, "class_map", CLASS_MAP_NODATA, out_path)


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    cube: xr.DataArray,
    *,
    tile_size: int = 256,
    padding: int = 32,
    batch_size: int = 8,
    device: str | torch.device = "auto",
) -> xr.DataArray:
    """Predict per-class probabilities (softmax of the logits) for a whole cube.

    Same tiling, padding and nodata handling as :func:`predict_class_map`, whose class map
    is the argmax of these probabilities.

    Args:
        model: a module ``(B, C, H, W) -> (B, K, H, W)`` logits, with a ``spec`` (bands checked).
        cube: ``(band, y, x)`` or ``(time=1, band, y, x)`` imagery with ``attrs["nodata"]``.
        tile_size: model input edge in pixels, padding included.
        padding: context pixels on each side of a tile whose prediction is discarded.
        batch_size: tiles per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.

    Returns:
        ``(class, y, x)`` float32 DataArray of probabilities in [0, 1] summing to 1 over
        ``class`` (``class`` coordinate: the class values of ``model.spec`` when it has one,
        else 0..K-1), NaN where any input band is nodata / NaN; ``attrs["nodata"] = NaN``.

    Raises:
        ConfigError: ``tile_size <= 2 * padding`` or a multi-date cube.
        BandMismatchError: the cube's bands differ from the model's input bands.
    """
    image = _as_band_yx(cube)
    h, w = image.sizes["y"], image.sizes["x"]
    out: np.ndarray | None = None
    for ys, xs, prob, ok in _predict_tiles(
        model, image, tile_size, padding, batch_size, device, lambda logits: logits.float().softmax(1)
    ):
        if out is None:
            out = np.full((prob.shape[0], h, w), np.nan, dtype=np.float32)
        out[:, ys, xs] = np.where(ok[None], prob, np.nan)
    assert out is not None  # chip_windows gives at least one tile
    spec = getattr(model, "spec", None)
    classes = [c.value for c in spec.classes] if spec is not None else list(range(out.shape[0]))
    result = _on_cube_grid(out, image, "probability", float("nan"), None)
    return result.assign_coords({"class": classes})


def _predict_tiles(
    model: nn.Module,
    image: xr.DataArray,
    tile_size: int,
    padding: int,
    batch_size: int,
    device: str | torch.device,
    head: Callable[[torch.Tensor], torch.Tensor],
) -> Iterator[tuple[slice, slice, np.ndarray, np.ndarray]]:
    """Run ``model`` tile by tile; yield ``(ys, xs, head(logits) core, valid core)`` per tile."""
    spec = getattr(model, "spec", None)
    if spec is not None:
        _check_bands(image, spec.bands)
    stride = spec.stride if spec is not None else 32
    if padding < 0 or tile_size <= 2 * padding:
        raise ConfigError(f"tile_size ({tile_size} px) must exceed 2 x padding ({padding} px)")
    h, w = image.sizes["y"], image.sizes["x"]
    core = tile_size - 2 * padding
    size = (-(-(min(core, h) + 2 * padding) // stride) * stride, -(-(min(core, w) + 2 * padding) // stride) * stride)
    nodata = image.attrs.get("nodata")
    fill = np.asarray(spec.mean if spec is not None else np.zeros(image.sizes["band"]), np.float32)[:, None, None]
    dev = resolve_device(device)
    model = model.to(dev).eval()
    for batch in _batches(_tiles((h, w), core), batch_size):
        tiles = [_read_tile(image, ys, xs, padding, size) for ys, xs in batch]
        oks = [valid_mask(t, nodata) for t in tiles]
        x = np.stack([np.where(ok[None], t, fill) for t, ok in zip(tiles, oks, strict=True)])
        out = head(model(torch.from_numpy(x).to(dev))).cpu().numpy()
        for (ys, xs), o, ok in zip(batch, out, oks, strict=True):
            hh, ww = ys.stop - ys.start, xs.stop - xs.start
            core_sl = (slice(padding, padding + hh), slice(padding, padding + ww))
            yield ys, xs, o[(..., *core_sl)], ok[core_sl]


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


def write_cog(array: xr.DataArray, path: str | os.PathLike[str], *, nodata: float | int | None = None) -> Path:
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
