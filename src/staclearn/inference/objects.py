"""Object classification at inference: classify footprints from their image chips and write them.

:func:`classify_objects` cuts a chip per footprint exactly as training did (chip size,
buffer, masking from the model's :class:`~staclearn.models.classifier.ClassifierSpec`), runs the
model in batches and returns every input footprint with its attributes, its predicted class,
the softmax probability of each class and a ``status``; footprints without a chip (empty
geometry, outside the imagery) stay in the output with a null class. :func:`write_objects`
writes such a table atomically (GeoParquet or GeoJSON).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import pystac
import torch

from staclearn.chips.objects import FootprintChipReader, Imagery
from staclearn.data.footprints import STATUS_OK, read_footprints
from staclearn.errors import BandMismatchError, ConfigError
from staclearn.models.classifier import ObjectClassifier
from staclearn.training.device import resolve_device

__all__ = ["classify_objects", "probability_column", "write_objects"]



def probability_column(name: str) -> str:
    """Column holding the probability of class ``name``: ``prob_`` + the lower-cased name with
    runs of non-alphanumerics as ``_`` (``"not destroyed"`` -> ``"prob_not_destroyed"``)."""
    return "prob_" + re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def write_objects(
    gdf: gpd.GeoDataFrame,
    path: str | os.PathLike[str],
    driver: Literal["GeoParquet", "GeoJSON"] = "GeoParquet",
) -> Path:
    """Write a GeoDataFrame atomically (temporary name in the same folder, then ``os.replace``).

    Args:
        gdf: the table.
        path: output file.
        driver: ``"GeoParquet"`` (CRS kept) or ``"GeoJSON"`` (reprojected to EPSG:4326, as
            RFC 7946 requires).

    Returns:
        ``path``.

    Raises:
        ConfigError: unknown driver.
    """
    if driver not in ("GeoParquet", "GeoJSON"):
        raise ConfigError(f"driver must be 'GeoParquet' or 'GeoJSON', got {driver!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if driver == "GeoParquet":
            gdf.to_parquet(tmp)
        else:
            gdf.to_crs("EPSG:4326").to_file(tmp, driver="GeoJSON")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def classify_objects(
    model: ObjectClassifier,
    footprints: gpd.GeoDataFrame | str | os.PathLike[str] | pystac.Item,
    post: Imagery,
    *,
    pre: Imagery | None = None,
    chip_size: int | None = None,
    buffer_m: float | None = None,
    batch_size: int = 32,
    device: str | torch.device = "auto",
    out_path: str | os.PathLike[str] | None = None,
    driver: Literal["GeoParquet", "GeoJSON"] = "GeoParquet",
    tile_field: str = "tile",
    asset: str | None = None,
    id_field: str | None = None,
) -> gpd.GeoDataFrame:
    """Classify every footprint from its post (and pre) image chip.

    Chips are cut with :class:`~staclearn.chips.objects.FootprintChipReader` using the
    model's ``spec`` (chip size, buffer, ``mask_outside``) unless overridden.

    Args:
        model: a trained classifier (put in eval mode on ``device``).
        footprints: GeoDataFrame or anything :func:`~staclearn.data.footprints.read_footprints`
            reads, in any CRS.
        post: post-event image(s): one source or a mapping tile id -> source.
        pre: pre-event image(s); required when the model was trained with pre bands.
        chip_size: chip edge in pixels; default ``model.spec.chip_size``.
        buffer_m: context in metres; default ``model.spec.buffer_m``.
        batch_size: chips per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
        out_path: file to write the result to (atomically); ``None`` writes nothing.
        driver: ``"GeoParquet"`` or ``"GeoJSON"`` (then in EPSG:4326).
        tile_field: tile id column, when ``post``/``pre`` are mappings.
        asset: image asset key of Items.
        id_field: id column of the footprints (see ``read_footprints``).

    Returns:
        Every input footprint, in input order, with its geometry (input CRS) and attributes,
        ``footprint_id``, and: ``class_value`` (nullable ``Int64``), ``class_name`` (str or
        ``None``), ``confidence`` (softmax probability of the predicted class, float, NaN
        without prediction), one ``prob_<class name>`` float column per class (see
        :func:`probability_column`) and ``status`` (``"ok"``, ``"empty_geometry"``,
        ``"outside_imagery"``). Input columns with these names are kept renamed
        ``<name>_input`` (e.g. the reference ``class_value``).

    Raises:
        BandMismatchError: the images' bands (or the presence of ``pre``) differ from the
            model's input bands.
        ConfigError: unknown driver, bad chip settings.
        FootprintsNotFoundError, FieldNotFoundError, DuplicateIdError, ImageryNotFoundError,
        AssetNotFoundError: as :func:`~staclearn.data.footprints.read_footprints` and
            :class:`~staclearn.chips.objects.FootprintChipReader`.
    """
    if driver not in ("GeoParquet", "GeoJSON"):
        raise ConfigError(f"driver must be 'GeoParquet' or 'GeoJSON', got {driver!r}")
    spec = model.spec
    if spec.stack_pre and pre is None:
        raise BandMismatchError(
            f"The model takes pre and post bands {list(spec.bands)}: pass the pre-event image(s) as pre=."
        )
    if pre is not None and not spec.stack_pre:
        raise BandMismatchError(f"The model takes post bands only {list(spec.bands)}: do not pass pre=.")
    gdf = read_footprints(footprints, id_field=id_field)
    classes = spec.classes
    prob_cols = [probability_column(c.name) for c in classes]
    if len(set(prob_cols)) != len(prob_cols):
        raise ConfigError(f"Class names {[c.name for c in classes]} give duplicate columns {prob_cols}")
    new_cols = ["class_value", "class_name", "confidence", *prob_cols, "status"]
    gdf = gdf.rename(columns={c: f"{c}_input" for c in new_cols if c in gdf.columns})
    with FootprintChipReader(
        gdf,
        post,
        pre=pre,
        chip_size=chip_size or spec.chip_size,
        buffer_m=spec.buffer_m if buffer_m is None else buffer_m,
        mask_outside=spec.mask_outside,
        tile_field=tile_field,
        asset=asset,
    ) as reader:
        if reader.bands and len(reader.bands) != spec.in_channels:
            raise BandMismatchError(
                f"The images give {len(reader.bands)} channels {list(reader.bands)} but the model takes "
                f"{spec.in_channels} {list(spec.bands)}; use imagery with the model's bands."
            )
        dev = resolve_device(device)
        model = model.to(dev).eval()
        n = len(gdf)
        probs = np.full((n, len(classes)), np.nan, dtype=np.float64)
        ok = np.flatnonzero(reader.status == STATUS_OK)
        with torch.no_grad():
            for start in range(0, len(ok), batch_size):
                rows = ok[start : start + batch_size]
                x = torch.from_numpy(np.stack([reader.read(int(i)).astype(np.float32) for i in rows])).to(dev)
                probs[rows] = torch.softmax(model(x), dim=1).cpu().double().numpy()
        status = reader.status.astype(str)
    has = ~np.isnan(probs).any(axis=1)
    best = np.where(has, np.nan_to_num(probs, nan=-1.0).argmax(axis=1), -1)
    values = np.array([c.value for c in classes], dtype=np.int64)
    out = gdf.copy()
    out["class_value"] = pd.array(np.where(has, values[best], 0), dtype="Int64")
    out.loc[~has, "class_value"] = pd.NA
    out["class_name"] = pd.Series([classes[b].name if h else None for b, h in zip(best, has, strict=True)], index=out.index, dtype=object)
    out["confidence"] = np.where(has, probs[np.arange(n), np.maximum(best, 0)], np.nan)
    for k, col in enumerate(prob_cols):
        out[col] = probs[:, k]
    out["status"] = status
    if out_path is not None:
        write_objects(out, out_path, driver)
    return out
