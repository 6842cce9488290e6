"""STAC Items to a lazy xarray cube on one GeoBox.

odc-stac is the default loader (it reads ``proj``/``raster``/``eo`` metadata, builds one
:class:`odc.geo.geobox.GeoBox` and reprojects every asset onto it); stackstac can be chosen
with ``engine="stackstac"``. Either way the result has stackstac's fixed dims
``("time", "band", "y", "x")`` and carries its GeoBox (``cube.odc.geobox``) and nodata value
(``cube.attrs["nodata"]``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import pystac
import xarray as xr
from odc.geo.geobox import GeoBox

from staclearn.data.search import _check_bbox, bbox_intersects
from staclearn.errors import (
    AssetNotFoundError,
    AssetReadError,
    ConfigError,
    NoItemsFoundError,
    NoOverlapError,
    StaclearnError,
)

__all__ = ["load_cube", "band_names", "valid_mask", "read_pixels", "find_unreadable_asset", "naming_unreadable_assets"]

DIMS = ("time", "band", "y", "x")


def _with_band_count(items: list[pystac.Item]) -> list[pystac.Item]:
    """Items whose multi-band assets declare ``eo:bands`` but no ``raster:bands`` get one
    empty ``raster:bands`` entry per band (on a copy).

    odc-stac counts an asset's bands from ``raster:bands`` only and reads one band otherwise,
    so the Planetary Computer's ``naip`` Items (asset ``image``: four ``eo:bands`` R, G, B,
    NIR, no raster extension) would expose their red band alone.
    """
    out = []
    for item in items:
        todo = [
            k
            for k, a in item.assets.items()
            if len(a.extra_fields.get("eo:bands") or []) > 1 and "raster:bands" not in a.extra_fields
        ]
        if todo:
            item = item.clone()
            for k in todo:
                a = item.assets[k]
                a.extra_fields["raster:bands"] = [{} for _ in a.extra_fields["eo:bands"]]
            raster = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
            if not any("/raster/" in e for e in item.stac_extensions):
                item.stac_extensions.append(raster)
        out.append(item)
    return out


def band_names(items: Iterable[pystac.Item]) -> list[str]:
    """Band names odc-stac can load from these Items (``eo:bands``/``bands`` names, asset keys).

    Args:
        items: STAC Items of one collection (or of similar collections).

    Returns:
        Band names in the order odc-stac reports them; single-band assets are named by their
        asset key, bands of multi-band assets by their ``name`` (and ``asset.N`` aliases).
    """
    import odc.stac

    items = _with_band_count(list(items))
    if not items:
        return []
    md = odc.stac.extract_collection_metadata(items[0])
    keys = list(md.bands.keys())  # (asset, band index) pairs
    out = [asset if sum(a == asset for a, _ in keys) == 1 else f"{asset}.{idx}" for asset, idx in keys]
    out.extend(a for a in md.aliases if a not in out)
    return out


#: what rasterio warns when its own in-memory (MEM) dataset is opened before its transform is set
_MEM_GEOREF_WARNING = "Dataset has no geotransform, gcps, or rpcs. The identity matrix will be returned."


def ignore_rasterio_mem_georef_warning() -> None:
    """Silence the stray ``NotGeoreferencedWarning`` (``rasterio/warp.py:387``) that lazy cube
    reads print on well-georeferenced imagery.

    Every ``rasterio.warp.reproject`` into an array (odc-stac warps each source that is not on
    the cube's grid: the 20 m Sentinel-2 bands onto a 10 m GeoBox, a label raster in another
    CRS) wraps the destination in a ``MemoryDataset``, which opens a GDAL MEM dataset before
    setting its transform and hides the resulting warning inside ``warnings.catch_warnings()``.
    That context manager swaps the process-wide filter list and is not thread-safe (before
    Python 3.14): when dask threads warp at once, one thread's exit restores the filters while
    another is still inside, and the warning escapes. It concerns rasterio's scratch dataset,
    never the data, so this one message from ``rasterio.warp`` is ignored; called on each load
    (idempotent) so the filter is there even when filters were reset since import.
    """
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    warnings.filterwarnings("ignore", message=_MEM_GEOREF_WARNING, category=NotGeoreferencedWarning, module=r"rasterio\.warp")


def load_cube(
    items: Iterable[pystac.Item],
    *,
    bands: Sequence[str] | None = None,
    crs: str | int | None = None,
    resolution: float | None = None,
    bbox: Sequence[float] | None = None,
    geobox: GeoBox | None = None,
    chunks: dict[str, int] | None = None,
    dtype: str | None = "float32",
    resampling: str = "nearest",
    engine: Literal["odc", "stackstac"] = "odc",
) -> xr.DataArray:
    """Load STAC Items as a lazy cube ``(time, band, y, x)`` on one GeoBox.

    Args:
        items: STAC Items to load; Items with the same timestamp are mosaicked into one slice.
        bands: band names to load, in this order (``eo:bands``/``bands`` names such as ``"red"``
            or ``"b4"``, or asset keys); ``None`` loads every band.
        crs: output CRS (``"EPSG:32119"``, ``32119``); default: the Items' native CRS.
        resolution: output pixel size in units of the output CRS (metres for projected CRSs);
            default: the Items' native resolution.
        bbox: ``(west, south, east, north)`` in WGS84 degrees to crop to (STAC convention).
        geobox: an exact output GeoBox (CRS, transform, shape); overrides crs/resolution/bbox.
            Use it to load a second date or a label raster onto the grid of a first cube.
        chunks: dask chunk sizes, e.g. ``{"x": 1024, "y": 1024}``; default ``{"x": 2048, "y": 2048}``.
            The cube is always lazy.
        dtype: output dtype; ``None`` keeps the asset's.
        resampling: GDAL resampling name used when the output grid differs from an asset's
            (``"nearest"``, ``"bilinear"``, ``"average"``...). Use ``"nearest"`` for labels.
        engine: ``"odc"`` (odc-stac, default) or ``"stackstac"``.

    Returns:
        ``(time, band, y, x)`` DataArray (dask-backed) with a ``band`` coordinate, its GeoBox
        available as ``cube.odc.geobox``, and ``attrs["nodata"]`` (the band nodata value, or
        NaN when none is declared; missing pixels are filled with it).

    Raises:
        NoItemsFoundError: ``items`` is empty.
        AssetNotFoundError: a requested band is not in the Items (message lists the bands
            there are).
        NoOverlapError: the bbox or GeoBox does not intersect the Items.
        ConfigError: an argument is invalid (engine, bbox, crs, resolution, dtype, resampling,
            chunks, or not STAC Items), or the Items carry no ``proj:`` metadata and no
            ``crs`` / ``resolution`` was given.
    """
    items = list(items)
    if not items:
        raise NoItemsFoundError("load_cube() got no STAC Items; check the search returned some.")
    ignore_rasterio_mem_georef_warning()
    chunks = chunks or {"x": 2048, "y": 2048}
    _check_arguments(items, engine, bbox, crs, resolution, dtype, resampling, chunks)
    if engine == "odc":
        return _load_odc(items, bands, crs, resolution, bbox, geobox, chunks, dtype, resampling)
    return _load_stackstac(items, bands, crs, resolution, bbox, geobox, chunks, dtype, resampling)


def _check_arguments(
    items: list[Any],
    engine: str,
    bbox: Sequence[float] | None,
    crs: str | int | None,
    resolution: float | None,
    dtype: str | None,
    resampling: str,
    chunks: dict[str, int],
) -> None:
    """Raise :class:`~staclearn.errors.ConfigError` on an argument the loaders would fail on
    (with a library traceback) or, worse, only once the lazy cube is computed."""
    from rasterio.enums import Resampling

    if engine not in ("odc", "stackstac"):
        raise ConfigError(f"engine must be 'odc' or 'stackstac', got {engine!r}")
    wrong = [type(i).__name__ for i in items if not isinstance(i, pystac.Item)]
    if wrong:
        raise ConfigError(f"load_cube() takes pystac.Item objects, got {sorted(set(wrong))}; open them with open_items().")
    _check_bbox(bbox)
    if crs is not None:
        from odc.geo.crs import CRS

        try:
            CRS(f"EPSG:{crs}" if isinstance(crs, int) else crs)
        except Exception as err:  # noqa: BLE001 - pyproj's CRSError and friends
            raise ConfigError(f"crs {crs!r} is not a CRS pyproj knows ({err}); pass e.g. 'EPSG:32617' or 32617.") from err
    if resolution is not None and not resolution > 0:
        raise ConfigError(f"resolution must be a positive pixel size in CRS units, got {resolution!r}")
    if dtype is not None:
        try:
            np.dtype(dtype)
        except TypeError as err:
            raise ConfigError(f"dtype {dtype!r} is not a numpy dtype; pass e.g. 'float32', 'uint16' or None.") from err
    if not isinstance(resampling, str) or resampling.lower() not in Resampling.__members__:
        raise ConfigError(f"resampling {resampling!r} is not one of {sorted(Resampling.__members__)}")
    bad = {k: v for k, v in chunks.items() if not isinstance(v, int) or v <= 0}
    if bad:
        raise ConfigError(f"chunks must be positive pixel counts, got {bad}")


def _check_bands(items: list[pystac.Item], bands: Sequence[str] | None) -> None:
    if bands is None:
        return
    available = band_names(items)
    missing = [b for b in bands if b not in available]
    if missing:
        raise AssetNotFoundError(
            f"Band(s) {missing} not found in Item {items[0].id!r}; it has {available}. "
            "Pass bands by their eo:bands name or asset key."
        )


def _check_overlap(items: list[pystac.Item], bbox: Sequence[float] | None) -> None:
    if bbox is None:
        return
    for item in items:
        b = item.bbox
        if b is not None and bbox_intersects(b, bbox):
            return
    raise NoOverlapError(
        f"bbox {list(bbox)} (west, south, east, north, degrees) misses every Item "
        f"({[i.id for i in items]}, first bbox {items[0].bbox}). Pass a bbox inside the Items."
    )


def yx_dims(ds: xr.Dataset) -> xr.Dataset:
    """Rename odc-stac's ``latitude``/``longitude`` dims (geographic CRSs such as EPSG:4326)
    to ``y``/``x``, the fixed spatial dims of staclearn cubes; odc-geo still finds the GeoBox."""
    return ds.rename({k: v for k, v in (("latitude", "y"), ("longitude", "x")) if k in ds.dims})


def _load_odc(
    items: list[pystac.Item],
    bands: Sequence[str] | None,
    crs: str | int | None,
    resolution: float | None,
    bbox: Sequence[float] | None,
    geobox: GeoBox | None,
    chunks: dict[str, int],
    dtype: str | None,
    resampling: str,
) -> xr.DataArray:
    import odc.stac

    items = _with_band_count(items)
    _check_bands(items, bands)
    _check_overlap(items, bbox)
    kw: dict[str, Any] = {}
    if geobox is not None:
        kw["geobox"] = geobox
    else:
        if crs is not None:
            kw["crs"] = f"EPSG:{crs}" if isinstance(crs, int) else crs
        if resolution is not None:
            kw["resolution"] = resolution
        if bbox is not None:
            kw["bbox"] = tuple(bbox)
    try:
        ds = odc.stac.load(
            items,
            bands=list(bands) if bands is not None else None,
            chunks=chunks,
            dtype=dtype,
            resampling=resampling,
            **kw,
        )
    except ValueError as err:  # e.g. "Failed to auto-guess CRS/resolution."
        raise ConfigError(
            f"odc-stac cannot load Items {[i.id for i in items][:5]}: {str(err).rstrip('.')}. Items without proj: metadata "
            "need crs= and resolution= (or geobox=)."
        ) from err
    ds = yx_dims(ds)
    names = list(ds.data_vars)
    nodata = ds[names[0]].attrs.get("nodata")
    arr = ds.to_array("band").transpose(*DIMS)
    arr = arr.assign_coords(band=names)
    arr.attrs = {"nodata": float(nodata) if nodata is not None else float("nan")}
    arr.name = "cube"
    if arr.sizes["y"] == 0 or arr.sizes["x"] == 0:
        raise NoOverlapError(f"The requested area holds no pixel of Items {[i.id for i in items]}.")
    return arr


def _load_stackstac(
    items: list[pystac.Item],
    bands: Sequence[str] | None,
    crs: str | int | None,
    resolution: float | None,
    bbox: Sequence[float] | None,
    geobox: GeoBox | None,
    chunks: dict[str, int],
    dtype: str | None,
    resampling: str,
) -> xr.DataArray:
    import stackstac
    from odc.geo.xr import assign_crs
    from rasterio.enums import Resampling

    _check_overlap(items, bbox)
    missing = [b for b in bands or [] if b not in items[0].assets]
    if missing:
        raise AssetNotFoundError(
            f"Asset(s) {missing} not found in Item {items[0].id!r}; it has {sorted(items[0].assets)}. "
            "stackstac loads one band per asset: pass asset keys (or use engine='odc' for band names)."
        )
    kw: dict[str, Any] = {}
    if geobox is not None:
        kw["epsg"] = geobox.crs.epsg
        kw["resolution"] = abs(geobox.resolution.x)
        kw["bounds"] = tuple(geobox.boundingbox)
        kw["snap_bounds"] = False
    else:
        if crs is not None:
            code = str(crs).split(":")[-1]
            if not code.isdigit():
                raise ConfigError(f"engine='stackstac' needs crs as an EPSG code ('EPSG:32617' or 32617), got {crs!r}")
            kw["epsg"] = int(code)
        if resolution is not None:
            kw["resolution"] = resolution
        if bbox is not None:
            kw["bounds_latlon"] = tuple(bbox)
    if "epsg" not in kw:  # stackstac reads proj:epsg (projection v1) only; STAC 1.1 Items carry proj:code
        codes = [
            str(d.get("proj:code") or d.get("proj:epsg") or "")
            for d in (items[0].properties, *(a.extra_fields for a in items[0].assets.values()))
        ]
        epsgs = [c.split(":")[-1] for c in codes if c and c.split(":")[-1].isdigit()]
        if epsgs:
            kw["epsg"] = int(epsgs[0])
    if geobox is None and crs is None and resolution is None and bbox is None:
        # native grid from proj:transform/proj:shape (stackstac only reads them beside proj:epsg)
        native = odc_native_geobox(items[0])
        if native is not None:
            kw["resolution"] = abs(native.resolution.x)
            kw["bounds"] = tuple(native.boundingbox)
            kw["snap_bounds"] = False
    try:
        arr = stackstac.stack(
            items,
            assets=list(bands) if bands is not None else None,
            chunksize=max(chunks.values()),
            dtype=np.dtype(dtype or "float64"),
            fill_value=np.float32(np.nan) if np.dtype(dtype or "float64").kind == "f" else 0,
            resampling=Resampling[resampling],
            xy_coords="center",
            rescale=False,  # like odc-stac: raw values, no raster:bands scale/offset
            **kw,
        )
    except KeyError as err:
        raise AssetNotFoundError(
            f"Asset {err} not found in Items {[i.id for i in items]}; stackstac loads one band per "
            "asset, so pass asset keys as bands (or use engine='odc' for multi-band assets)."
        ) from err
    except ValueError as err:  # e.g. no proj:epsg / resolution to derive the grid from
        raise ConfigError(
            f"stackstac cannot load Items {[i.id for i in items][:5]}: {err}. Pass crs= (EPSG code) and "
            "resolution= (or geobox=), or use engine='odc'."
        ) from err
    epsg = int(arr.coords["epsg"].values) if "epsg" in arr.coords else kw.get("epsg")
    arr = arr.drop_vars([c for c in arr.coords if c not in DIMS])
    arr = assign_crs(arr, f"EPSG:{epsg}")
    arr.attrs = {"nodata": float("nan")}
    arr.name = "cube"
    return arr


def odc_native_geobox(item: pystac.Item) -> GeoBox | None:
    """The native GeoBox of an Item's first band, as odc-stac reads it from proj metadata."""
    import odc.stac

    try:
        parsed = odc.stac.parse_item(item)
        return parsed.geoboxes()[0] if parsed.geoboxes() else None
    except Exception:  # noqa: BLE001 - Items without proj metadata have no native grid
        return None


def valid_mask(image: np.ndarray, nodata: float | None) -> np.ndarray:
    """Pixels where every band holds data.

    Args:
        image: ``(C, H, W)`` or ``(B, C, H, W)`` array.
        nodata: the nodata value; NaN is always treated as nodata.

    Returns:
        ``(H, W)`` / ``(B, H, W)`` bool, True where no band is nodata or NaN.
    """
    bad = np.isnan(image)
    if nodata is not None and not np.isnan(nodata):
        bad |= image == nodata
    return ~bad.any(axis=-3)


_RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")


def _is_raster_asset(asset: pystac.Asset) -> bool:
    media = (asset.media_type or "").lower()
    return "tiff" in media or "jp2" in media or asset.href.split("?")[0].lower().endswith(_RASTER_SUFFIXES)


def _reason(err: BaseException) -> str:
    chain, e = [], err  # rasterio: "Read failed. See previous exception": GDAL's reason is its cause
    while e is not None and len(chain) < 4:
        chain.append(str(e).strip())
        e = e.__cause__ or e.__context__
    text = "; ".join(c for c in chain if c and not c.startswith("Read failed"))[:300] or str(err)
    if "404" in text:
        return "HTTP 404: the file is not at this href; fix the href or the catalog"
    if "403" in text or "401" in text:
        return "HTTP 403: access denied; sign the hrefs (e.g. modifier=planetary_computer.sign_inplace) or check your credentials"
    return f"{text}; the file is truncated or corrupt: download or rebuild it (check it with `rio info --checksum`)"


def find_unreadable_asset(items: Iterable[pystac.Item]) -> AssetReadError | None:
    """Read every raster asset of ``items`` block by block and name the first that fails.

    Used after a cube read failed (odc-stac's ``Chunk and warp failed`` names no file): it
    reads each asset whole, so call it on the failure path only.

    Args:
        items: the Items the cube was loaded from.

    Returns:
        An :class:`~staclearn.errors.AssetReadError` naming the Item, asset key and href, or
        ``None`` when every asset reads.
    """
    import rasterio
    from rasterio.errors import RasterioError

    for item in items:
        for key, asset in item.assets.items():
            if not _is_raster_asset(asset):
                continue
            href = asset.get_absolute_href() or asset.href
            try:
                with rasterio.open(href) as src:
                    for _, window in src.block_windows(1):
                        src.read(window=window)
            except (RasterioError, OSError) as err:
                return AssetReadError(
                    f"Asset {key!r} of Item {item.id!r} ({href}) cannot be read: {_reason(err)}.",
                    item_id=item.id,
                    asset=key,
                    href=href,
                )
    return None


def read_pixels(cube: xr.DataArray, items: Iterable[pystac.Item]) -> np.ndarray:
    """Compute a lazy cube (or any selection of it) into memory, naming the asset on failure.

    Args:
        cube: a lazy DataArray from :func:`load_cube` (e.g. ``cube.isel(time=0)``).
        items: the Items it was loaded from (to name a broken asset).

    Returns:
        The pixels as a numpy array of the cube's shape and dtype.

    Raises:
        AssetReadError: an asset is truncated, corrupt, missing (HTTP 404), forbidden (403)
            or unreachable; the message names the Item, asset key and href.
    """
    with naming_unreadable_assets(items):
        return np.asarray(cube.values)


@contextlib.contextmanager
def naming_unreadable_assets(items: Iterable[pystac.Item]) -> Iterator[None]:
    """Inside the block, a failed read of the Items' pixels becomes one named error.

    Wrap any computation of a lazy cube (``.values``, :func:`staclearn.inference.raster.predict_to_cog`
    streaming tiles from it, ``predict_change``): a rasterio or OS error (truncated or corrupt
    COG, HTTP 404 / 403, unreachable host) is re-raised as an
    :class:`~staclearn.errors.AssetReadError` naming the Item, asset key and href
    (:func:`find_unreadable_asset` opens each asset to find it); odc-stac's per-chunk error log
    is silenced meanwhile, so the error is said once.

    Args:
        items: the Items the cube was loaded from.

    Raises:
        AssetReadError: a read failed; names the broken asset when it can be found, else the Items.
    """
    import logging

    from rasterio.errors import RasterioError

    items = list(items)
    odc_log = logging.getLogger("odc.loader._rio")  # logs each failed chunk; the error below says it once
    quiet = logging.Filter()
    quiet.filter = lambda record: record.levelno < logging.ERROR  # type: ignore[method-assign]
    odc_log.addFilter(quiet)
    try:
        yield
    except StaclearnError:
        raise
    except (RasterioError, OSError) as err:
        named = find_unreadable_asset(items)
        if named is not None:
            raise named from err
        raise AssetReadError(
            f"Reading the cube of Items {[i.id for i in items]} failed: {err}. Check that every asset href is readable.",
            item_id=items[0].id if items else "",
            asset="",
            href="",
        ) from err
    finally:
        odc_log.removeFilter(quiet)

