"""Chips of before/after pairs, split by whole cities, and their augmentation.

:func:`export_change_chips` stacks each pair (:func:`staclearn.data.pairs.stack_pair`: C
before bands then C after bands) and cuts it with :func:`staclearn.chips.pixel.export_chips`,
so the chips, their GeoParquet index and :class:`staclearn.chips.pixel.ChipDataset` are those
of land cover with 2C bands. :class:`ChangeAugmentation` applies one kornia geometric
transform to both dates and the mask, swaps the dates and jitters each date's radiometry
independently.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn

from staclearn.chips.pixel import export_chips
from staclearn.data.cube import valid_mask
from staclearn.data.labels import IGNORE_INDEX
from staclearn.data.pairs import stack_pair
from staclearn.data.splits import TRAIN, VALID
from staclearn.errors import ConfigError, SplitError

__all__ = ["export_change_chips", "ChangeAugmentation"]


def export_change_chips(
    pairs: Mapping[str, tuple[xr.DataArray, xr.DataArray, xr.DataArray]],
    out_dir: str | os.PathLike[str],
    *,
    valid_cities: Sequence[str],
    tile_size: int = 64,
    stride: int | None = None,
    min_labelled: float = 0.0,
    standardize: bool = False,
):  # -> geopandas.GeoDataFrame
    """Write before/after/label chips of several pairs, split by city, with one GeoParquet index.

    Each pair is stacked with :func:`~staclearn.data.pairs.stack_pair` and cut by :func:`staclearn.chips.pixel.export_chips`
    into ``out_dir/<city>/images`` (``(2C, tile, tile) float32`` GeoTIFFs, before bands then
    after bands, NaN nodata) and ``out_dir/<city>/labels`` (0/1, 255 unlabelled and where a
    date has no data). Whole cities go to ``"valid"`` (:data:`staclearn.data.splits.VALID`), the
    others to ``"train"``: no pixel of a validation city is in a training chip. Test cities
    are not chips at all: leave them out of ``pairs`` (:func:`~staclearn.workflows.change.run_change` does).

    Args:
        pairs: ``{city: (before, after, labels)}`` from :func:`~staclearn.data.pairs.load_pair` / :func:`~staclearn.data.pairs.load_png_pair`,
            training and validation cities only.
        out_dir: output folder; the index is ``out_dir/chips.parquet``.
        valid_cities: names in ``pairs`` whose chips form the ``"valid"`` split.
        tile_size: chip edge in pixels.
        stride: step between chips in pixels (default ``tile_size``).
        min_labelled: minimum labelled fraction of a chip, in [0, 1].
        standardize: z-score each date of each pair by its own band statistics
            (:func:`~staclearn.data.pairs.stack_pair`); the model must then be built with ``standardize=True``.

    Returns:
        The index GeoDataFrame (geometry: chip bounds in EPSG:4326, or pixel bounds with no
        CRS for non-georeferenced pairs) with the columns of
        :func:`staclearn.chips.pixel.export_chips` (``crs``/``transform``/``height``/``width``: the
        chip's GeoBox) plus ``city``; paths are relative to ``out_dir``;
        ``attrs["band_names"]`` lists the 2C stacked band names.

    Raises:
        SplitError: a validation city is not in ``pairs``, or no city is left for training.
        ConfigError: pairs mix georeferenced and non-georeferenced cubes, or a pair has no labels.
        LabelError: a city has no chip reaching ``min_labelled``.
    """
    import geopandas as gpd
    import pandas as pd

    valid = set(valid_cities)
    unknown = sorted(valid - set(pairs))
    if unknown:
        raise SplitError(f"Validation cities {unknown} are not among the pairs {sorted(pairs)}.")
    if not set(pairs) - valid:
        raise SplitError(f"Every city {sorted(pairs)} is a validation city: leave at least one for training.")
    out = Path(out_dir)
    frames = []
    crs_kinds = set()
    names: list[str] = []
    for city, (before, after, labels) in pairs.items():
        if labels is None:
            raise ConfigError(f"The pair {city!r} has no labels; load it with label_item= to export chips.")
        stacked = stack_pair(before, after, standardize=standardize)
        names = [str(b) for b in stacked.band.values]
        image = np.asarray(stacked.values, dtype=np.float32)
        geobox = stacked.odc.geobox
        crs_kinds.add(geobox.crs is not None)
        lab = np.where(valid_mask(image, float("nan")), np.asarray(labels.values), IGNORE_INDEX).astype(np.uint8)
        split = np.full(lab.shape, VALID if city in valid else TRAIN, dtype=np.uint8)
        index = export_chips(
            image,
            lab,
            split,
            geobox,
            out / city,
            tile_size=tile_size,
            stride=stride,
            min_labelled=min_labelled,
            nodata=float("nan"),
            band_names=names,
        )
        (out / city / "chips.parquet").unlink(missing_ok=True)  # one index for all cities
        index["city"] = city
        index["chip_id"] = city + "_" + index["chip_id"]
        index["image"] = city + "/" + index["image"]
        index["label"] = city + "/" + index["label"]
        if index.crs is not None:
            index = index.to_crs("EPSG:4326")
        frames.append(index)
    if len(crs_kinds) > 1:
        raise ConfigError("Pairs mix georeferenced and non-georeferenced cubes; export them separately.")
    combined = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=frames[0].crs)
    combined.attrs["band_names"] = names
    tmp = out / "chips.parquet.tmp"
    combined.to_parquet(tmp)
    os.replace(tmp, out / "chips.parquet")
    return combined


class ChangeAugmentation(nn.Module):
    """Augmentation of stacked pairs: one geometric transform, date swap, per-date radiometry.

    1. :class:`staclearn.chips.augment.Augmentation` (kornia flips, rotation, zoom, shift): one
       transform for every channel and the mask, so both dates stay aligned;
    2. date swap: with probability ``swap``, a chip's after bands become its before bands and
       vice versa (change between two dates is symmetric; the label is unchanged);
    3. per-date radiometric jitter: :class:`staclearn.chips.augment.RadiometricJitter` drawn
       *independently* for each date, so that brightness, contrast and band-gain differences
       between acquisitions (season, sun, sensor, L1C offsets of another city) are seen as
       training variation rather than change.

    Args:
        dates: number of dates stacked (2); the channels are split into that many equal groups.
        swap: probability of swapping the two dates of a chip.
        radiometric: amount of the jitter (brightness, contrast and band gain each uniform in
            ``[1 - amount, 1 + amount]``); 0 disables it.
        geometric: apply step 1.

    Forward:
        image ``(B, 2C, H, W) float32``, mask ``(B, H, W)`` int; returns both transformed.
    """

    def __init__(self, *, dates: int = 2, swap: float = 0.5, radiometric: float = 0.1, geometric: bool = True) -> None:
        super().__init__()
        from staclearn.chips.augment import Augmentation, RadiometricJitter

        self.dates, self.swap = dates, float(swap)
        self.geometric = Augmentation() if geometric else None
        self.jitter = (
            RadiometricJitter(brightness=radiometric, contrast=radiometric, band_gain=radiometric / 2, p=0.8)
            if radiometric > 0
            else None
        )

    @torch.no_grad()
    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.geometric is not None:
            image, mask = self.geometric(image, mask)
        parts = list(image.chunk(self.dates, dim=1))
        if self.swap > 0 and self.dates == 2:
            flip = (torch.rand(image.shape[0], 1, 1, 1, device=image.device) < self.swap).to(image.dtype)
            parts = [flip * parts[1] + (1 - flip) * parts[0], flip * parts[0] + (1 - flip) * parts[1]]
        if self.jitter is not None:
            # NaN-free here (the Trainer fills nodata with the band mean before augmenting)
            parts = [self.jitter(part) for part in parts]
        return torch.cat(parts, 1), mask
