"""Training chips: the chip grid, a spatially blocked train/validation split, GeoTIFF export.

Chips are square windows of ``tile_size`` pixels taken every ``stride`` pixels over the cube;
the last row and column of chips are snapped to the raster edge so every pixel is covered.
Each chip is written as two GeoTIFFs (image, label) with its own geotransform, and an index
(GeoParquet) records each chip's GeoBox (CRS, transform, shape), its split and its labelled
fraction.

The split is by **blocks** (Roberts et al. 2017, "Cross-validation strategies for data with
temporal, spatial, hierarchical, or phylogenetic structure"): the scene is cut into square
blocks, whole blocks go to validation, and each chip keeps only the labels of blocks of its
own split, so no labelled pixel is seen by both sides even when chips overlap.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from odc.geo.geobox import GeoBox
from rasterio.windows import Window

from staclearn.data.cube import valid_mask
from staclearn.data.labels import IGNORE_INDEX
from staclearn.data.splits import TEST, TRAIN, VALID
from staclearn.errors import ConfigError, LabelError, SplitError

__all__ = [
    "chip_windows",
    "block_split",
    "export_chips",
    "ChipDataset",
    "band_statistics",
    "TRAIN",
    "VALID",
    "TEST",
]


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def chip_windows(shape: tuple[int, int], tile_size: int, stride: int | None = None) -> list[Window]:
    """Windows of a chip grid that covers every pixel.

    Args:
        shape: raster ``(height, width)`` in pixels.
        tile_size: chip edge in pixels.
        stride: step between chips in pixels (default ``tile_size``: no overlap); the last
            row/column is moved back to end on the raster edge. A raster smaller than a chip
            gives one window clipped to the raster.

    Returns:
        rasterio Windows, row-major.

    Raises:
        ConfigError: ``tile_size`` or ``stride`` < 1.
    """
    stride = stride or tile_size
    if tile_size < 1 or stride < 1:
        raise ConfigError(f"tile_size and stride must be >= 1 pixel, got {tile_size}, {stride}")
    h, w = shape
    return [
        Window(c, r, min(tile_size, w), min(tile_size, h))
        for r in _starts(h, tile_size, stride)
        for c in _starts(w, tile_size, stride)
    ]


def _block_histogram(labels: np.ndarray, block_size: int, classes: np.ndarray, ignore_index: int) -> np.ndarray:
    """(n_blocks, K) labelled-pixel counts per square block and class."""
    h, w = labels.shape
    nby, nbx = -(-h // block_size), -(-w // block_size)
    hist = np.zeros((nby * nbx, len(classes)), dtype=np.int64)
    by, bx = np.nonzero(labels != ignore_index)
    block_id = (by // block_size) * nbx + (bx // block_size)
    np.add.at(hist, (block_id, np.searchsorted(classes, labels[by, bx])), 1)
    return hist


def _draw_blocks(hist: np.ndarray, fraction: float, rng: np.random.Generator, tries: int) -> list[int]:
    """Among ``tries`` random block orders, the held-out set that first keeps every class it
    can on the kept side (a class never trained on cannot be learnt), then most classes on
    both sides, then brings the held-out share of labelled pixels closest to ``fraction``."""
    occupied = np.nonzero(hist.sum(1))[0]
    total = int(hist.sum())
    best_key, best = None, None
    for _ in range(tries):
        order = rng.permutation(occupied)
        held: list[int] = []
        count = 0
        for b in order:
            if count >= fraction * total:
                break
            held.append(int(b))
            count += int(hist[b].sum())
        if len(held) == len(occupied):
            held = held[:-1]
        v = hist[held].sum(0)
        t = hist.sum(0) - v
        key = (-int((t > 0).sum()), -int(((v > 0) & (t > 0)).sum()), abs(v.sum() / total - fraction))
        if best_key is None or key < best_key:
            best_key, best = key, held
    return best or []


def block_split(
    labels: np.ndarray,
    *,
    block_size: int,
    valid_fraction: float = 0.3,
    test_fraction: float = 0.0,
    test_mask: np.ndarray | None = None,
    seed: int = 0,
    ignore_index: int = IGNORE_INDEX,
    tries: int = 500,
) -> np.ndarray:
    """Assign the scene to train, validation and test parts by square blocks.

    The test part is fixed first: the pixels of ``test_mask`` when given (user test
    regions; any shape, not block-aligned), otherwise whole blocks holding about
    ``test_fraction`` of the labelled pixels. Validation blocks are then drawn from what is
    left, holding about ``valid_fraction`` of the remaining labelled pixels. Each draw keeps,
    among ``tries`` seeded random block orders, the one that first keeps the most classes on
    the remaining (training) side, then the most classes on both sides, then brings the
    held-out share closest to its target
    (spatial blocking after Roberts et al. 2017, "Cross-validation strategies for data with
    temporal, spatial, hierarchical, or phylogenetic structure").

    ``seed`` is the *split* seed: the split depends on nothing else, so a model's training
    seed can change while the split stays.

    Args:
        labels: ``(H, W)`` uint8 class indices, ``ignore_index`` where unlabelled.
        block_size: block edge in pixels (e.g. 64 px x 28.5 m = 1.8 km).
        valid_fraction: target share of the labelled pixels outside the test part that go
            to validation blocks, in (0, 1).
        test_fraction: target share of all labelled pixels in test blocks, in [0, 1); 0
            (default) and no ``test_mask``: no test part (train / validation only).
        test_mask: ``(H, W)`` bool, True for test pixels; overrides ``test_fraction``.
        seed: split seed.
        ignore_index: unlabelled index.
        tries: number of random assignments examined per draw.

    Returns:
        ``(H, W)`` uint8: :data:`TRAIN` (0), :data:`VALID` (1) or :data:`TEST` (2) per pixel.

    Raises:
        ConfigError: bad ``block_size`` / fractions / ``test_mask`` shape, or fewer than two
            blocks hold labels outside the test part.
        LabelError: no labelled pixel.
        SplitError: the test part holds no labelled pixel, or leaves none for training.
    """
    if block_size < 1 or not 0 < valid_fraction < 1 or not 0 <= test_fraction < 1:
        raise ConfigError(
            f"block_size must be >= 1, 0 < valid_fraction < 1 and 0 <= test_fraction < 1, got "
            f"{block_size}, {valid_fraction}, {test_fraction}"
        )
    h, w = labels.shape
    nby, nbx = -(-h // block_size), -(-w // block_size)
    labelled = labels != ignore_index
    if int(labelled.sum()) == 0:
        raise LabelError("No labelled pixel: cannot split train/validation blocks.")
    classes = np.unique(labels[labelled])
    rng = np.random.default_rng(seed)

    def blocks_to_pixels(blocks: Sequence[int]) -> np.ndarray:
        grid = np.zeros(nby * nbx, dtype=bool)
        grid[np.asarray(blocks, dtype=np.int64)] = True
        return np.repeat(np.repeat(grid.reshape(nby, nbx), block_size, 0), block_size, 1)[:h, :w]

    if test_mask is not None:
        test_mask = np.asarray(test_mask, dtype=bool)
        if test_mask.shape != labels.shape:
            raise ConfigError(f"test_mask {test_mask.shape} is not on the label grid {labels.shape}")
    elif test_fraction > 0:
        hist = _block_histogram(labels, block_size, classes, ignore_index)
        if int((hist.sum(1) > 0).sum()) < 3:
            raise ConfigError(f"Fewer than 3 blocks of {block_size} px hold labels: use a smaller block_size for a test part.")
        test_mask = blocks_to_pixels(_draw_blocks(hist, test_fraction, rng, tries))
    else:
        test_mask = np.zeros(labels.shape, dtype=bool)
    if test_mask.any() and not (labelled & test_mask).any():
        raise SplitError("The test part holds no labelled pixel: move the test regions onto labelled ground.")
    rest = np.where(test_mask, ignore_index, labels).astype(labels.dtype)
    if not (rest != ignore_index).any():
        raise SplitError("The test part covers every labelled pixel: nothing is left to train on.")
    hist = _block_histogram(rest, block_size, classes, ignore_index)
    occupied = int((hist.sum(1) > 0).sum())
    if occupied < 2:
        raise ConfigError(
            f"Only {occupied} block of {block_size} px holds labels outside the test part: use a smaller block_size."
        )
    split = np.where(blocks_to_pixels(_draw_blocks(hist, valid_fraction, rng, tries)), VALID, TRAIN).astype(np.uint8)
    split[test_mask] = TEST
    return split


@dataclass(frozen=True)
class _ChipPaths:
    image: Path
    label: Path


def _write_tif(path: Path, data: np.ndarray, geobox: GeoBox, nodata: float | int | None) -> None:
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    tmp = path.with_name(path.name + ".tmp")
    georef = geobox.crs is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # chips of PNG pairs have no CRS
        with rasterio.open(
            tmp,
            "w",
            driver="GTiff",
            height=data.shape[-2],
            width=data.shape[-1],
            count=data.shape[0],
            dtype=data.dtype,
            crs=geobox.crs.to_wkt() if georef else None,
            transform=geobox.affine if georef else None,
            nodata=nodata,
            compress="deflate",
        ) as dst:
            dst.write(data)
    os.replace(tmp, path)


def export_chips(
    image: np.ndarray,
    labels: np.ndarray,
    split: np.ndarray,
    geobox: GeoBox,
    out_dir: str | os.PathLike[str],
    *,
    tile_size: int = 64,
    stride: int | None = None,
    min_labelled: float = 0.0,
    nodata: float | None = None,
    band_names: Sequence[str] | None = None,
    ignore_index: int = IGNORE_INDEX,
):  # -> geopandas.GeoDataFrame
    """Write image/label chips as GeoTIFFs and a GeoParquet index.

    A chip is kept for a split when the share of its pixels labelled *in that split* is at
    least ``min_labelled``; a chip that straddles train and validation blocks may be written
    once per split, each copy keeping only its split's labels. No chip is written for the
    test part, and test pixels inside a training or validation chip's window are written as
    image nodata (``nodata``, or NaN when ``nodata`` is None) with no label, so neither the
    imagery nor the labels of the test part reach training, validation or the
    normalisation statistics (the count is the index column ``test_pixels_masked``).

    Args:
        image: ``(C, H, W)`` float32 imagery on ``geobox``.
        labels: ``(H, W)`` uint8 class indices on ``geobox``, ``ignore_index`` if unlabelled.
        split: ``(H, W)`` uint8 from :func:`block_split` (:data:`TRAIN`, :data:`VALID`,
            :data:`TEST`).
        geobox: GeoBox of ``image`` / ``labels``; one without a CRS (pixel coordinates of
            non-georeferenced imagery) gives chips without georeference.
        out_dir: output folder; chips go to ``out_dir/images`` and ``out_dir/labels``, the
            index to ``out_dir/chips.parquet``.
        tile_size: chip edge in pixels.
        stride: step between chips in pixels (default ``tile_size``).
        min_labelled: minimum labelled fraction of a chip, in [0, 1]; sparse labels (1 % of
            pixels) need a low value such as 0.005.
        nodata: image nodata value, written into the chip GeoTIFFs.
        band_names: band names written as GeoTIFF band descriptions.
        ignore_index: label nodata.

    Returns:
        The index as a GeoDataFrame (geometry = chip bounds in the cube CRS), columns
        ``chip_id, split, row_off, col_off, height, width, crs, transform, labelled_fraction,
        test_pixels_masked, image, label`` (paths relative to ``out_dir``).

    Raises:
        ConfigError: array shapes differ from the GeoBox, or ``min_labelled`` not in [0, 1].
        LabelError: no chip reaches ``min_labelled``.
    """
    import geopandas as gpd
    from shapely.geometry import box

    if image.shape[-2:] != tuple(geobox.shape.yx) or labels.shape != image.shape[-2:] or split.shape != labels.shape:
        raise ConfigError(
            f"image {image.shape}, labels {labels.shape}, split {split.shape} must all be on the "
            f"GeoBox shape {tuple(geobox.shape.yx)}"
        )
    if not 0.0 <= min_labelled <= 1.0:
        raise ConfigError(f"min_labelled is a fraction in [0, 1], got {min_labelled}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    rows = []
    fill = np.float32(np.nan) if nodata is None else np.float32(nodata)
    for win in chip_windows(labels.shape, tile_size, stride):
        sl = win.toslices()
        lab = labels[sl]
        test_px = split[sl] == TEST
        n_test = int(test_px.sum())
        for split_id, split_name in ((TRAIN, "train"), (VALID, "valid")):
            own = np.where(split[sl] == split_id, lab, ignore_index).astype(np.uint8)
            frac = float((own != ignore_index).mean())
            if frac == 0.0 or frac < min_labelled:
                continue
            chip_id = f"r{win.row_off:05d}_c{win.col_off:05d}_{split_name}"
            gbox = geobox[sl]
            paths = _ChipPaths(out / "images" / f"{chip_id}.tif", out / "labels" / f"{chip_id}.tif")
            chip = image[(slice(None), *sl)].astype(np.float32)
            if n_test:
                chip[:, test_px] = fill  # test imagery never enters a training or validation chip
            _write_tif(paths.image, chip, gbox, nodata)
            _write_tif(paths.label, own[None], gbox, ignore_index)
            rows.append(
                {
                    "chip_id": chip_id,
                    "split": split_name,
                    "row_off": int(win.row_off),
                    "col_off": int(win.col_off),
                    "height": int(win.height),
                    "width": int(win.width),
                    "crs": geobox.crs.to_wkt() if geobox.crs is not None else None,
                    "transform": list(gbox.affine)[:6],
                    "labelled_fraction": frac,
                    "test_pixels_masked": n_test,
                    "image": str(paths.image.relative_to(out)),
                    "label": str(paths.label.relative_to(out)),
                    "geometry": box(*gbox.boundingbox),
                }
            )
    if not rows:
        raise LabelError(
            f"No chip of {tile_size} px reaches min_labelled={min_labelled}; lower min_labelled "
            "or use larger chips."
        )
    index = gpd.GeoDataFrame(rows, geometry="geometry", crs=geobox.crs.to_wkt() if geobox.crs is not None else None)
    index.attrs["band_names"] = list(band_names) if band_names is not None else None
    tmp = out / "chips.parquet.tmp"
    index.to_parquet(tmp)
    os.replace(tmp, out / "chips.parquet")
    return index


def _read_tif(path: Path) -> tuple[np.ndarray, float | None]:
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        # chips of non-georeferenced imagery (pixel coordinates, e.g. PNG pairs) have no CRS
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read(), src.nodata


class ChipDataset(torch.utils.data.Dataset):
    """Chips of one split as torch samples.

    Image nodata (and NaN) is replaced by the band mean given in ``fill`` (so it becomes 0
    after normalisation) and the label there is set to ``ignore_index``.

    Args:
        index: path of ``chips.parquet`` or the GeoDataFrame returned by :func:`export_chips`
            (then ``root`` is required).
        split: ``"train"`` or ``"valid"``.
        root: folder the index paths are relative to (default: the index's folder).
        fill: per-band values for nodata pixels, ``(C,)``; default 0.

    Each sample is ``(image, mask)``: ``(C, H, W) float32`` and ``(H, W) int64`` class
    indices with ``ignore_index`` where unlabelled.
    """

    def __init__(
        self,
        index,
        split: str,
        *,
        root: str | os.PathLike[str] | None = None,
        fill: Sequence[float] | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        import geopandas as gpd

        if isinstance(index, (str, os.PathLike)):
            root = root or Path(index).parent
            index = gpd.read_parquet(index)
        if root is None:
            raise ConfigError("ChipDataset needs root= when given an index GeoDataFrame")
        self.root = Path(root)
        self.index = index[index["split"] == split].reset_index(drop=True)
        self.fill = None if fill is None else np.asarray(fill, dtype=np.float32)
        self.ignore_index = ignore_index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.index.iloc[i]
        img, nodata = _read_tif(self.root / row["image"])
        lab, _ = _read_tif(self.root / row["label"])
        ok = valid_mask(img, nodata)
        fill = self.fill if self.fill is not None else np.zeros(img.shape[0], np.float32)
        img = np.where(ok[None], img, fill[:, None, None]).astype(np.float32)
        mask = np.where(ok, lab[0], self.ignore_index).astype(np.int64)
        return torch.from_numpy(img), torch.from_numpy(mask)


def band_statistics(index, split: str = "train", *, root: str | os.PathLike[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation over the valid pixels of a split's chips.

    Used as the model's input normalisation (stored with the model and in the MLM card as
    ``value_scaling`` ``z_score``). Pixels of overlapping chips count once per chip.

    Args:
        index: ``chips.parquet`` path or index GeoDataFrame.
        split: which chips.
        root: folder of the chip paths when ``index`` is a GeoDataFrame.

    Returns:
        ``(mean, std)``, each ``(C,) float64`` in the imagery's units (e.g. DN); std is at
        least 1e-6.

    Raises:
        LabelError: the split has no chip or no valid pixel.
    """
    ds = ChipDataset(index, split, root=root)

    def valid_pixels():
        for i in range(len(ds)):
            img, nodata = _read_tif(ds.root / ds.index.iloc[i]["image"])
            yield img[:, valid_mask(img, nodata)]

    stats = band_mean_std(valid_pixels())
    if stats is None:
        raise LabelError(f"No valid pixel in the {split!r} chips: cannot compute band statistics.")
    return stats


def band_mean_std(pixels: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-band mean and standard deviation over a stream of pixel blocks, in one pass.

    The normalisation statistics of pixel chips (:func:`band_statistics`) and object chips
    (:func:`staclearn.chips.object_dataset.chip_band_statistics`) both come from here.

    Args:
        pixels: blocks of shape ``(C, N)`` (or ``(C, H, W)``), any numeric dtype; summed in
            float64. Nodata must already be left out.

    Returns:
        ``(mean, std)``, each ``(C,) float64`` (population std, at least 1e-6), or ``None``
        when the blocks hold no pixel.
    """
    total = sq = None
    count = 0
    for block in pixels:
        px = np.asarray(block, dtype=np.float64).reshape(len(block), -1)
        total = px.sum(1) if total is None else total + px.sum(1)
        sq = (px**2).sum(1) if sq is None else sq + (px**2).sum(1)
        count += px.shape[1]
    if total is None or sq is None or count == 0:
        return None
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean**2, 1e-12))
    return mean, np.maximum(std, 1e-6)
