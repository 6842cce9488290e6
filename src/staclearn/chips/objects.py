"""Footprint chips: one image chip per building, centred on its footprint.

Object classification needs one fixed-size image per object. For each footprint a square
chip GeoBox is built in a local metric CRS (the UTM zone of the footprints, from geopandas'
``estimate_utm_crs``): centred on the footprint's bounding box in that CRS, its side is the
longest bounding-box side plus ``2 * buffer_m`` metres of context, cut into
``chip_size x chip_size`` pixels. The post-event image - and optionally the pre-event image,
which may be in another CRS (Joplin: pre EPSG:26915, post EPSG:4326) - is resampled
(bilinear, GDAL warp through :func:`rasterio.warp.reproject`) onto that *same* GeoBox, so
pre and post pixels line up whatever their native grids. Cropping each building with a
context margin and stacking pre and post follows the xView2 baseline
(DIUx-xView/xView2_baseline, ``damage_classification.py``).

Chips are written as GeoTIFFs with an index GeoParquet (``chips.parquet``) holding every
footprint, those without a chip included, with a ``status`` that says why
(:data:`~staclearn.data.footprints.STATUS_OUTSIDE`, :data:`~staclearn.data.footprints.STATUS_EMPTY`,
:data:`~staclearn.data.footprints.STATUS_EXCLUDED`).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import geopandas as gpd
import numpy as np
import pandas as pd
import pystac
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox
from rasterio.crs import CRS as RioCRS
from rasterio.enums import Resampling
from rasterio.features import geometry_mask
from rasterio.warp import reproject
from shapely.geometry.base import BaseGeometry

from staclearn.data.footprints import (
    ID_FIELD,
    STATUS_EMPTY,
    STATUS_OK,
    STATUS_OUTSIDE,
    ensure_footprint_ids,
)
from staclearn.errors import (
    AssetNotFoundError,
    BandMismatchError,
    ConfigError,
    FieldNotFoundError,
    FootprintWarning,
    ImageryNotFoundError,
)

__all__ = [
    "ImageSource",
    "Imagery",
    "image_href",
    "chip_geobox",
    "FootprintChipReader",
    "export_footprint_chips",
]

ImageSource = str | os.PathLike | pystac.Item
"""An image: a path / URL GDAL opens, or a pystac Item whose image asset is used."""
Imagery = ImageSource | Mapping[str, ImageSource]
"""One image for every footprint, or one image per tile keyed by the footprints' tile id."""

_IMAGE_ROLES = ("visual", "data")
_IMAGE_KEYS = ("visual", "image", "data", "post", "pre")


def image_href(source: ImageSource, asset: str | None = None) -> str:
    """The href of an image: a path as given, or the absolute href of an Item's image asset.

    Args:
        source: a path/URL, or a pystac Item.
        asset: asset key of the image; default the first asset with role ``visual`` or
            ``data`` and a GeoTIFF media type or ``.tif`` extension, else a key among
            ``visual``, ``image``, ``data``, ``post``, ``pre``.

    Returns:
        The href (local path or URL).

    Raises:
        AssetNotFoundError: the Item has no asset ``asset`` or no image asset.
        ImageryNotFoundError: a local path does not exist.
    """
    if isinstance(source, pystac.Item):
        if asset is not None:
            if asset not in source.assets:
                raise AssetNotFoundError(
                    f"Item {source.id!r} has no asset {asset!r}; it has {sorted(source.assets)}."
                )
            chosen = source.assets[asset]
        else:
            tiffs = [
                a
                for a in source.assets.values()
                if set(a.roles or []) & set(_IMAGE_ROLES)
                and ("tiff" in (a.media_type or "") or Path(a.href).suffix.lower() in (".tif", ".tiff"))
            ]
            by_key = [source.assets[k] for k in _IMAGE_KEYS if k in source.assets]
            if not tiffs and not by_key:
                raise AssetNotFoundError(
                    f"Item {source.id!r} has no image asset among {sorted(source.assets)}; pass asset=."
                )
            chosen = (tiffs or by_key)[0]
        href = chosen.get_absolute_href() or chosen.href
    else:
        href = os.fspath(source)
    if "://" not in href and not Path(href).exists():
        raise ImageryNotFoundError(f"Image {href} does not exist; check the path or the Item's asset href.")
    return href


def chip_geobox(
    geometry: BaseGeometry,
    crs: Any,
    *,
    chip_size: int,
    buffer_m: float,
    metric_crs: Any = None,
) -> GeoBox:
    """The square chip GeoBox of one footprint.

    Args:
        geometry: the footprint polygon, in ``crs``.
        crs: CRS of ``geometry`` (anything pyproj reads).
        chip_size: chip edge in pixels.
        buffer_m: context added on every side of the bounding box, in metres.
        metric_crs: projected CRS (metres) the chip is built in; default the UTM zone of the
            footprint.

    Returns:
        A ``chip_size x chip_size`` GeoBox in ``metric_crs``, centred on the footprint's
        bounding box there, side ``max(bbox width, bbox height) + 2 * buffer_m`` metres
        (pixel size ``side / chip_size`` metres).

    Raises:
        ConfigError: empty geometry, ``chip_size < 1`` or ``buffer_m < 0``.
    """
    gs = gpd.GeoSeries([geometry], crs=crs)
    if geometry is None or geometry.is_empty:
        raise ConfigError("Cannot build a chip GeoBox for an empty geometry.")
    metric = metric_crs if metric_crs is not None else gs.estimate_utm_crs()
    minx, miny, maxx, maxy = gs.to_crs(metric).total_bounds
    return _square_geobox(minx, miny, maxx, maxy, _crs_text(metric), chip_size, buffer_m)


def _crs_text(crs: Any) -> str:
    from pyproj import CRS

    c = CRS.from_user_input(crs)
    epsg = c.to_epsg()
    return f"EPSG:{epsg}" if epsg else c.to_wkt()


def _square_geobox(
    minx: float, miny: float, maxx: float, maxy: float, crs: str, chip_size: int, buffer_m: float
) -> GeoBox:
    if chip_size < 1 or buffer_m < 0:
        raise ConfigError(f"chip_size must be >= 1 px and buffer_m >= 0 m, got {chip_size}, {buffer_m}")
    side = max(maxx - minx, maxy - miny) + 2.0 * buffer_m
    side = max(side, 1e-3)  # a point footprint with no buffer still gets a (tiny) chip
    res = side / chip_size
    cx, cy = (minx + maxx) / 2.0, (miny + maxy) / 2.0
    affine = Affine(res, 0.0, cx - side / 2.0, 0.0, -res, cy + side / 2.0)
    return GeoBox((chip_size, chip_size), affine, crs)


class _Raster:
    """One open image: its extent polygon, band count and names, and a warp onto a GeoBox."""

    def __init__(self, href: str) -> None:
        try:
            self.ds = rasterio.open(href)
        except rasterio.errors.RasterioIOError as err:
            raise ImageryNotFoundError(f"Cannot open image {href}: {err}") from err
        if self.ds.crs is None:
            self.ds.close()
            raise ImageryNotFoundError(f"Image {href} has no CRS; georeference it first.")
        self.href = href
        self.crs_wkt = self.ds.crs.to_wkt()
        self.extent = GeoBox.from_rio(self.ds).extent.geom
        self.count = self.ds.count
        self.dtype = np.dtype(self.ds.dtypes[0])
        self.names = [d or f"b{i + 1}" for i, d in enumerate(self.ds.descriptions)]

    def read(self, gbox: GeoBox, dst_crs: RioCRS, dtype: np.dtype) -> np.ndarray:
        out = np.zeros((self.count, *gbox.shape.yx), dtype=dtype)
        reproject(
            source=rasterio.band(self.ds, list(range(1, self.count + 1))),
            destination=out,
            dst_transform=gbox.affine,
            dst_crs=dst_crs,
            src_nodata=self.ds.nodata,
            dst_nodata=0,
            resampling=Resampling.bilinear,
        )
        return out

    def close(self) -> None:
        self.ds.close()


def _warn_ids(what: str, ids: Sequence[str]) -> None:
    shown = list(ids[:20])
    more = f" and {len(ids) - len(shown)} more" if len(ids) > len(shown) else ""
    warnings.warn(f"{len(ids)} footprints {what}: ids {shown}{more}", FootprintWarning, stacklevel=3)


class FootprintChipReader:
    """Reads the chip of each footprint from post (and pre) imagery, on one GeoBox per footprint.

    On construction every footprint gets a ``status``: ``"ok"``, ``"empty_geometry"`` or
    ``"outside_imagery"`` (its polygon, reprojected to the image CRS, does not intersect the
    image extent, or no image is given for its tile; with ``pre``, the pre image must cover
    it too). One :class:`~staclearn.errors.FootprintWarning` per reason names the ids.

    Channels are the post bands, then the pre bands when ``pre`` is given (``post_<band>``,
    ``pre_<band>``; band names from the GeoTIFF band descriptions, else ``b1, b2...``).

    Args:
        footprints: footprints in any CRS (``footprint_id`` added when missing).
        post: post-event image(s): one :data:`ImageSource`, or a mapping tile id ->
            source for footprints spread over several tiles (looked up in ``tile_field``).
        pre: pre-event image(s), same forms; stacked after the post bands.
        chip_size: chip edge in pixels.
        buffer_m: context around the footprint's bounding box, in metres.
        mask_outside: factor applied to pixels outside the footprint polygon (0.0 blacks
            them out, 0.3 darkens them), all channels; ``None`` leaves them unchanged.
        tile_field: footprint column with the tile id, used when ``post``/``pre`` are mappings.
        asset: image asset key of Items (default: see :func:`image_href`).
        metric_crs: CRS of the chip GeoBoxes; default the UTM zone of the footprints.

    Attributes:
        footprints: the footprints (with ``footprint_id``), original index reset to 0..n-1.
        status: ``(n,)`` object array of statuses.
        geoboxes: per footprint, its chip GeoBox (``None`` for an empty geometry).
        bands: channel names.
        dtype: pixel dtype of the chips (common dtype of the images, e.g. uint8).

    Raises:
        ConfigError: bad ``chip_size``/``buffer_m``/``mask_outside``.
        FieldNotFoundError: ``post``/``pre`` is a mapping and ``tile_field`` is not a column.
        ImageryNotFoundError: an image does not exist or has no CRS.
        AssetNotFoundError: an Item has no image asset.
        BandMismatchError: the post (or pre) images do not all have the same band count.
    """

    def __init__(
        self,
        footprints: gpd.GeoDataFrame,
        post: Imagery,
        *,
        pre: Imagery | None = None,
        chip_size: int = 224,
        buffer_m: float = 10.0,
        mask_outside: float | None = None,
        tile_field: str = "tile",
        asset: str | None = None,
        metric_crs: Any = None,
    ) -> None:
        if chip_size < 1 or buffer_m < 0:
            raise ConfigError(f"chip_size must be >= 1 px and buffer_m >= 0 m, got {chip_size}, {buffer_m}")
        if mask_outside is not None and not 0.0 <= float(mask_outside) <= 1.0:
            raise ConfigError(f"mask_outside is a factor in [0, 1] or None, got {mask_outside}")
        gdf = ensure_footprint_ids(footprints).reset_index(drop=True)
        self.footprints = gdf
        self.chip_size = int(chip_size)
        self.buffer_m = float(buffer_m)
        self.mask_outside = None if mask_outside is None else float(mask_outside)
        self._rasters: dict[str, _Raster] = {}
        n = len(gdf)
        geoms = gdf.geometry
        empty = (geoms.isna() | geoms.is_empty).to_numpy()
        self.status = np.where(empty, STATUS_EMPTY, STATUS_OK).astype(object)
        ids = gdf[ID_FIELD].to_numpy()
        self._post_href = self._hrefs(post, "post", tile_field, asset)
        self._pre_href = self._hrefs(pre, "pre", tile_field, asset) if pre is not None else None
        outside: dict[str, list[str]] = {}
        for role, hrefs in (("post", self._post_href), ("pre", self._pre_href)):
            if hrefs is None:
                continue
            missing = ~empty & np.array([h is None for h in hrefs], dtype=bool)
            for i in np.flatnonzero(missing & (self.status == STATUS_OK)):
                outside.setdefault(f"have no {role} image for their tile", []).append(ids[i])
            self.status[missing] = STATUS_OUTSIDE
            for href in sorted({h for h in hrefs if h is not None}):
                raster = self._raster(href)
                rows = np.flatnonzero(~empty & np.array([h == href for h in hrefs], dtype=bool))
                inside = geoms.iloc[rows].to_crs(raster.crs_wkt).intersects(raster.extent).to_numpy()
                for i in rows[~inside]:
                    if self.status[i] == STATUS_OK:
                        outside.setdefault(f"lie outside the {role} imagery", []).append(ids[i])
                    self.status[i] = STATUS_OUTSIDE
        self.bands = self._band_names()
        dtypes = [r.dtype for r in self._rasters.values()]
        self.dtype = np.result_type(*dtypes) if dtypes else np.dtype("uint8")
        if (~empty).any():
            metric = metric_crs if metric_crs is not None else gdf[~empty].estimate_utm_crs()
        else:
            metric = metric_crs if metric_crs is not None else "EPSG:4326"
        self.metric_crs = _crs_text(metric)
        self._dst_crs = RioCRS.from_user_input(self.metric_crs)
        self.geoboxes: list[GeoBox | None] = [None] * n
        if (~empty).any():
            bounds = geoms[~empty].to_crs(self.metric_crs).bounds.to_numpy()
            for i, b in zip(np.flatnonzero(~empty), bounds, strict=True):
                self.geoboxes[i] = _square_geobox(*b, self.metric_crs, self.chip_size, self.buffer_m)
        self._metric_geoms = geoms.to_crs(self.metric_crs) if self.mask_outside is not None else None
        for what, bad in outside.items():
            _warn_ids(f"{what} and get no chip (status {STATUS_OUTSIDE!r})", bad)

    def _hrefs(self, imagery: Imagery, role: str, tile_field: str, asset: str | None) -> list[str | None]:
        n = len(self.footprints)
        if isinstance(imagery, Mapping):
            if tile_field not in self.footprints.columns:
                raise FieldNotFoundError(
                    f"The {role} imagery is given per tile but the footprints have no {tile_field!r} "
                    f"column (columns {list(self.footprints.columns)}); pass tile_field= or one image."
                )
            by_tile = {str(k): image_href(v, asset) for k, v in imagery.items()}
            return [by_tile.get(str(t)) for t in self.footprints[tile_field]]
        return [image_href(imagery, asset)] * n

    def _raster(self, href: str) -> _Raster:
        if href not in self._rasters:
            self._rasters[href] = _Raster(href)
        return self._rasters[href]

    def _band_names(self) -> tuple[str, ...]:
        names: list[str] = []
        for role, hrefs in (("post", self._post_href), ("pre", self._pre_href)):
            if hrefs is None:
                continue
            rasters = [self._raster(h) for h in sorted({h for h in hrefs if h is not None})]
            counts = {r.href: r.count for r in rasters}
            if len(set(counts.values())) > 1:
                raise BandMismatchError(
                    f"The {role} images have different band counts {counts}; use images with the same bands."
                )
            if rasters:
                names += [f"{role}_{b}" for b in rasters[0].names]
        return tuple(names)

    def __len__(self) -> int:
        return len(self.footprints)

    def read(self, i: int) -> np.ndarray:
        """The chip of footprint ``i`` (row position).

        Pixels of the chip that fall outside an image are 0.

        Returns:
            ``(C, chip_size, chip_size)`` array of :attr:`dtype`, channels :attr:`bands`.

        Raises:
            ConfigError: footprint ``i`` has no chip (status not ``"ok"``).
        """
        if self.status[i] != STATUS_OK:
            raise ConfigError(
                f"Footprint {self.footprints[ID_FIELD].iloc[i]!r} has status {self.status[i]!r} and no chip."
            )
        gbox = self.geoboxes[i]
        assert gbox is not None  # status ok implies a geometry
        parts = [self._raster(self._post_href[i]).read(gbox, self._dst_crs, self.dtype)]  # type: ignore[arg-type]
        if self._pre_href is not None:
            parts.append(self._raster(self._pre_href[i]).read(gbox, self._dst_crs, self.dtype))  # type: ignore[arg-type]
        chip = np.concatenate(parts, axis=0)
        if self.mask_outside is not None and self._metric_geoms is not None:
            inside = geometry_mask(
                [self._metric_geoms.iloc[i]], out_shape=gbox.shape.yx, transform=gbox.affine, invert=True, all_touched=True
            )
            scaled = chip.astype(np.float32) * np.where(inside, 1.0, self.mask_outside).astype(np.float32)
            chip = np.round(scaled).astype(self.dtype) if self.dtype.kind in "iu" else scaled.astype(self.dtype)
        return chip

    def close(self) -> None:
        """Close the open images."""
        for r in self._rasters.values():
            r.close()
        self._rasters.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_chip(path: Path, data: np.ndarray, gbox: GeoBox, bands: Sequence[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with rasterio.open(
        tmp,
        "w",
        driver="GTiff",
        height=data.shape[1],
        width=data.shape[2],
        count=data.shape[0],
        dtype=data.dtype,
        crs=gbox.crs.to_wkt(),
        transform=gbox.affine,
        compress="deflate",
    ) as dst:
        dst.write(data)
        for b, name in enumerate(bands, start=1):
            dst.set_band_description(b, name)
    os.replace(tmp, path)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:80]


def export_footprint_chips(
    footprints: gpd.GeoDataFrame,
    post: Imagery,
    out_dir: str | os.PathLike[str],
    *,
    chip_size: int = 224,
    buffer_m: float = 10.0,
    pre: Imagery | None = None,
    mask_outside: float | None = None,
    split: str | Mapping[str, str] | None = None,
    tile_field: str = "tile",
    asset: str | None = None,
) -> gpd.GeoDataFrame:
    """Write one chip GeoTIFF per footprint and an index GeoParquet of every footprint.

    Chips are read with :class:`FootprintChipReader` (see it for the chip GeoBox, channels
    and statuses). A footprint whose input ``status`` (from
    :func:`~staclearn.data.footprints.assign_classes`) is not ``"ok"`` keeps it and gets no chip;
    otherwise its status is the reader's. Footprints without a chip stay in the index.

    Args:
        footprints: footprints; ``class_value`` (from ``assign_classes``; -1 when absent),
            ``status`` and ``tile_field`` columns are used when present.
        post: post-event image(s), one source or a mapping tile id -> source.
        out_dir: folder; chips go to ``out_dir/chips/``, the index to
            ``out_dir/chips.parquet``, chip settings and band names to ``out_dir/chips.json``.
        chip_size: chip edge in pixels.
        buffer_m: context around the bounding box, in metres.
        pre: pre-event image(s); stacked after the post bands.
        mask_outside: factor for pixels outside the footprint (see the reader); ``None``: off.
        split: split of every footprint: one name (``"train"``), a mapping tile id -> name,
            or ``None`` for the footprints' ``split`` column (null when absent).
        tile_field: tile id column.
        asset: image asset key of Items.

    Returns:
        The index (also written): a GeoDataFrame in the footprints' CRS, geometry = the
        footprint, columns ``footprint_id, tile, class_value (int64), split, status, chip``
        (path relative to ``out_dir``, ``None`` without chip), ``chip_crs`` and
        ``chip_transform`` (6 affine coefficients of the chip GeoBox).

    Raises:
        ConfigError, FieldNotFoundError, ImageryNotFoundError, AssetNotFoundError,
        BandMismatchError: as :class:`FootprintChipReader`; FieldNotFoundError also when
        ``split`` is a mapping and ``tile_field`` is missing.
    """
    out = Path(out_dir)
    (out / "chips").mkdir(parents=True, exist_ok=True)
    with FootprintChipReader(
        footprints,
        post,
        pre=pre,
        chip_size=chip_size,
        buffer_m=buffer_m,
        mask_outside=mask_outside,
        tile_field=tile_field,
        asset=asset,
    ) as reader:
        gdf = reader.footprints
        n = len(gdf)
        status = reader.status.copy()
        if "status" in gdf.columns:
            given = gdf["status"].astype(object).to_numpy()
            keep_given = (status == STATUS_OK) & (given != STATUS_OK) & pd.notna(given)
            status[keep_given] = given[keep_given]
        tiles = gdf[tile_field].astype(str).to_numpy() if tile_field in gdf.columns else np.full(n, None, object)
        if isinstance(split, Mapping):
            if tile_field not in gdf.columns:
                raise FieldNotFoundError(f"split is given per tile but the footprints have no {tile_field!r} column.")
            splits = np.array([split.get(t) for t in tiles], dtype=object)
        elif isinstance(split, str):
            splits = np.full(n, split, dtype=object)
        elif "split" in gdf.columns:
            splits = gdf["split"].astype(object).to_numpy()
        else:
            splits = np.full(n, None, dtype=object)
        values = (
            gdf["class_value"].fillna(-1).astype(np.int64).to_numpy()
            if "class_value" in gdf.columns
            else np.full(n, -1, dtype=np.int64)
        )
        ids = gdf[ID_FIELD].to_numpy()
        chips: list[str | None] = [None] * n
        for i in np.flatnonzero(status == STATUS_OK):
            rel = Path("chips") / f"{i:06d}_{_safe_name(str(ids[i]))}.tif"
            gbox = reader.geoboxes[i]
            assert gbox is not None
            _write_chip(out / rel, reader.read(i), gbox, reader.bands)
            chips[i] = rel.as_posix()
        index = gpd.GeoDataFrame(
            {
                ID_FIELD: ids,
                "tile": tiles,
                "class_value": values,
                "split": splits,
                "status": status.astype(str),
                "chip": chips,
                "chip_crs": [reader.metric_crs if g is not None else None for g in reader.geoboxes],
                "chip_transform": [list(g.affine)[:6] if g is not None else None for g in reader.geoboxes],
            },
            geometry=gdf.geometry.to_numpy(),
            crs=gdf.crs,
        )
        meta = {
            "bands": list(reader.bands),
            "dtype": str(reader.dtype),
            "chip_size": reader.chip_size,
            "buffer_m": reader.buffer_m,
            "mask_outside": reader.mask_outside,
            "metric_crs": reader.metric_crs,
            "stack_pre": pre is not None,
        }
    tmp = out / "chips.parquet.tmp"
    index.to_parquet(tmp)
    os.replace(tmp, out / "chips.parquet")
    tmp = out / "chips.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / "chips.json")
    return index


