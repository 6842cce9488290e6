"""Footprint chips as training data: a torch dataset, normalisation statistics, colour features.

Reads what :func:`staclearn.chips.objects.export_footprint_chips` wrote (the chip GeoTIFFs and
their index ``chips.parquet``): :class:`FootprintChipDataset` gives ``(image, class index)``
samples of one split, :func:`chip_band_statistics` the per-channel mean and standard deviation
of a split's chips (the model's z-score normalisation), and :func:`chip_features` per-building
colour statistics for a non-deep baseline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.features import geometry_mask

from staclearn.chips.pixel import band_mean_std
from staclearn.data.footprints import (
    STATUS_OK,
)
from staclearn.data.labels import ClassInfo
from staclearn.errors import (
    ConfigError,
    LabelError,
)

__all__ = ["FootprintChipDataset", "chip_band_statistics", "chip_features"]



def _read_chip(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _open_index(index: Any, root: str | os.PathLike[str] | None, who: str) -> tuple[gpd.GeoDataFrame, Path]:
    """The chip index and the folder its chip paths are relative to: ``index`` is a
    ``chips.parquet`` path, its folder, or a GeoDataFrame (then ``root`` is required)."""
    if isinstance(index, (str, os.PathLike)):
        path = Path(index) / "chips.parquet" if Path(index).is_dir() else Path(index)
        root = root or path.parent
        index = gpd.read_parquet(path)
    if root is None:
        raise ConfigError(f"{who} needs root= when given an index GeoDataFrame")
    return index, Path(root)


class FootprintChipDataset(torch.utils.data.Dataset):
    """Footprint chips of one split as ``(image, class index)`` torch samples.

    Only footprints with status ``"ok"``, a chip and a class (``class_value >= 0``) are
    samples.

    Args:
        index: ``chips.parquet`` path (or its folder), or the GeoDataFrame from
            :func:`export_footprint_chips` (then ``root`` is required).
        split: split name (``"train"``, ``"valid"``); ``None`` takes every split.
        augment: callable applied to each ``(1, C, H, W) float32`` image tensor (e.g.
            :meth:`staclearn.chips.augment.Augmentation.images`); ``None`` for none.
        root: folder the chip paths are relative to (default: the index's folder).
        classes: classes in model output order; ``class_value`` is mapped to its position.
            Default: ``class_value`` is the class index.
        cache: keep chips in memory after the first read (small chip sets).

    Each sample is ``(image, target)``: ``(C, H, W) float32`` in the imagery's units (e.g.
    0-255 DN) and a scalar ``int64`` class index.

    Raises:
        ConfigError: an index GeoDataFrame without ``root``.
        LabelError: a ``class_value`` is not one of ``classes``.
    """

    def __init__(
        self,
        index: str | os.PathLike[str] | gpd.GeoDataFrame,
        split: str | None = None,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        root: str | os.PathLike[str] | None = None,
        classes: Sequence[ClassInfo] | None = None,
        cache: bool = False,
    ) -> None:
        index, self.root = _open_index(index, root, "FootprintChipDataset")
        keep = (index["status"] == STATUS_OK) & index["chip"].notna() & (index["class_value"] >= 0)
        if split is not None:
            keep &= index["split"] == split
        self.index = index[keep].reset_index(drop=True)
        values = self.index["class_value"].astype(np.int64).to_numpy()
        if classes is None:
            self.targets = values
        else:
            lut = {int(c.value): i for i, c in enumerate(classes)}
            unknown = sorted(set(values.tolist()) - set(lut))
            if unknown:
                raise LabelError(
                    f"class_value {unknown} of the chip index are not among the classes "
                    f"{[c.value for c in classes]}."
                )
            self.targets = np.array([lut[int(v)] for v in values], dtype=np.int64)
        self.augment = augment
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cache is not None and i in self._cache:
            arr = self._cache[i]
        else:
            arr = _read_chip(self.root / self.index["chip"].iloc[i]).astype(np.float32)
            if self._cache is not None:
                self._cache[i] = arr
        img = torch.from_numpy(arr.copy())
        if self.augment is not None:
            img = self.augment(img[None])[0]
        return img, torch.tensor(int(self.targets[i]), dtype=torch.int64)


def chip_band_statistics(
    index: str | os.PathLike[str] | gpd.GeoDataFrame,
    split: str | None = "train",
    *,
    root: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation over every pixel of a split's chips.

    Used as the classifier's z-score input normalisation.

    Args:
        index: ``chips.parquet`` path (or its folder), or the index GeoDataFrame.
        split: which chips (``None``: all).
        root: folder of the chip paths when ``index`` is a GeoDataFrame.

    Returns:
        ``(mean, std)``, each ``(C,) float64`` in the imagery's units; std at least 1e-6.

    Raises:
        LabelError: the split has no chip.
    """
    ds = FootprintChipDataset(index, split, root=root)
    if len(ds) == 0:
        raise LabelError(f"No chip in split {split!r}: cannot compute band statistics.")
    stats = band_mean_std(_read_chip(ds.root / chip) for chip in ds.index["chip"])
    assert stats is not None  # every chip holds pixels
    return stats


def chip_features(
    index: str | os.PathLike[str] | gpd.GeoDataFrame,
    root: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Per-building colour statistics of each chip, inside the footprint and around it.

    The features of a non-deep baseline (e.g. a gradient-boosting classifier): for each
    channel, the mean, standard deviation and 10th / 50th / 90th percentiles of the pixels
    inside the footprint (rasterised on the chip GeoBox, ``all_touched``), and the mean and
    standard deviation of the pixels around it (the rest of the chip, i.e. the
    ``buffer_m`` context); with a stacked pre image (channels ``post_<b>`` and ``pre_<b>``),
    also post - pre differences of the inside and around means per band. A burnt-out
    building is darker and more uniform than its pre-event roof, and than intact neighbours.

    Args:
        index: ``chips.parquet`` path (or its folder), or the index GeoDataFrame from
            :func:`export_footprint_chips` (then ``root`` is required).
        root: folder of the chip paths (default: the index's folder).

    Returns:
        ``(features, names)``: ``(N, F) float32`` for the N rows of the index, in the
        imagery's units (DN), NaN rows for footprints without a chip (or with no pixel
        inside / around); ``F`` feature names such as ``"post_b1_in_mean"``.

    Raises:
        ConfigError: an index GeoDataFrame without ``root``.
    """
    index, root = _open_index(index, root, "chip_features")
    meta_path = root / "chips.json"
    bands: list[str] | None = json.loads(meta_path.read_text(encoding="utf-8"))["bands"] if meta_path.exists() else None
    rows = np.flatnonzero(index["chip"].notna().to_numpy() & (index["status"] == STATUS_OK).to_numpy())
    if bands is None and len(rows):
        with rasterio.open(root / index["chip"].iloc[rows[0]]) as src:
            bands = [d or f"b{i + 1}" for i, d in enumerate(src.descriptions)]
    bands = bands or []
    stats = ("in_mean", "in_std", "in_p10", "in_p50", "in_p90", "around_mean", "around_std")
    names = [f"{b}_{s}" for b in bands for s in stats]
    pairs = [(i, bands.index("pre_" + b[len("post_"):])) for i, b in enumerate(bands) if b.startswith("post_") and "pre_" + b[len("post_"):] in bands]
    names += [f"{bands[i]}_minus_pre_{w}_mean" for i, _ in pairs for w in ("in", "around")]
    out = np.full((len(index), len(names)), np.nan, dtype=np.float32)
    geoms = index.geometry
    for crs in index.loc[index.index[rows], "chip_crs"].unique() if len(rows) else []:
        sel = rows[(index["chip_crs"].to_numpy()[rows] == crs)]
        local = geoms.iloc[sel].to_crs(crs)
        for i, g in zip(sel, local, strict=True):
            with rasterio.open(root / index["chip"].iloc[i]) as src:
                chip = src.read().astype(np.float32)
            transform = Affine(*index["chip_transform"].iloc[i])
            inside = geometry_mask([g], out_shape=chip.shape[1:], transform=transform, invert=True, all_touched=True)
            if not inside.any() or inside.all():
                continue
            px_in, px_out = chip[:, inside], chip[:, ~inside]
            q = np.percentile(px_in, [10, 50, 90], axis=1)
            per_band = np.stack(
                [px_in.mean(1), px_in.std(1), q[0], q[1], q[2], px_out.mean(1), px_out.std(1)], axis=1
            )
            diffs = [per_band[a, k] - per_band[b, k] for a, b in pairs for k in (0, 5)]
            out[i] = np.concatenate([per_band.ravel(), np.asarray(diffs, dtype=np.float32)])
    return out, names
