"""Maps of published predictions: the class map over its source imagery, in the card's colours.

A prediction Item written by :func:`staclearn.stac.items.class_map_item` says everything a map
needs: its class-map COG (an asset with ``classification:classes``), the imagery it was
predicted from and the MLM model card (``derived_from`` links). :func:`plot_prediction`
follows those links, loads the imagery onto the class map's GeoBox (odc-stac reprojects
it), stretches it to an RGB (per-band 2-98 percentile, as QGIS' default cumulative-count
cut), blends each class colour (``color_hint`` of the card's ``classification:classes``)
over it and draws a legend of the card's class names. :func:`interactive_map` puts the same
layers on a folium (Leaflet) map.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pystac
import xarray as xr
from odc.geo.geobox import GeoBox

from staclearn.errors import (
    AssetNotFoundError,
    ConfigError,
    ImageryNotFoundError,
    MalformedStacError,
    MissingDependencyError,
)
from staclearn.data.labels import ClassInfo
from staclearn._io import FsspecStacIO

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["PredictionLayers", "prediction_layers", "plot_prediction", "interactive_map", "class_colors", "percentile_stretch"]

#: Colours of classes without a ``color_hint`` (matplotlib's tab10, cycled), RGB in [0, 1].
_FALLBACK = (
    (0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16), (0.58, 0.4, 0.74),
    (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.5, 0.5, 0.5), (0.74, 0.74, 0.13), (0.09, 0.75, 0.81),
)


@dataclass(frozen=True)
class PredictionLayers:
    """What a map of a prediction is drawn from, all on the class map's GeoBox.

    Attributes:
        class_map: ``(y, x) uint8`` class values, ``nodata`` where nothing was predicted.
        nodata: nodata value of ``class_map`` (255 for staclearn maps).
        classes: the classes, from the model card (or the asset's ``classification:classes``).
        rgb: ``(y, x, 3) float32`` imagery stretched to [0, 1], NaN where it has no data;
            ``None`` when the prediction has no readable source imagery.
        geobox: the class map's GeoBox (CRS, transform, shape).
        item: the prediction Item.
        card: the MLM card Item, when the prediction links one.
    """

    class_map: np.ndarray
    nodata: int
    classes: tuple[ClassInfo, ...]
    rgb: np.ndarray | None
    geobox: GeoBox
    item: pystac.Item
    card: pystac.Item | None


def class_colors(classes: Sequence[ClassInfo]) -> dict[int, tuple[float, float, float]]:
    """RGB colour in [0, 1] of each class value: its ``color_hint`` (hex ``RRGGBB``), or
    matplotlib's tab10 colour of its position when it has none."""
    out = {}
    for i, c in enumerate(classes):
        hint = (c.color_hint or "").lstrip("#")
        if len(hint) == 6:
            out[c.value] = tuple(int(hint[k : k + 2], 16) / 255 for k in (0, 2, 4))
        else:
            out[c.value] = _FALLBACK[i % len(_FALLBACK)]
    return out  # type: ignore[return-value]


def _read_item(item: pystac.Item | str | os.PathLike[str]) -> pystac.Item:
    if isinstance(item, pystac.Item):
        return item
    href = os.fspath(item)
    try:
        return pystac.Item.from_file(href, stac_io=FsspecStacIO())
    except (OSError, ValueError) as err:
        raise ImageryNotFoundError(f"Prediction Item {href!r} cannot be read ({err}); pass its path or URL.") from err
    except (pystac.STACError, pystac.STACTypeError, KeyError, TypeError) as err:
        raise MalformedStacError(
            f"{href!r} is not a STAC Item ({type(err).__name__}: {err}); pass the class-map or change-mask Item JSON."
        ) from err


def _class_asset(item: pystac.Item, asset: str | None) -> str:
    if asset is not None:
        if asset not in item.assets:
            raise AssetNotFoundError(f"Prediction Item {item.id!r} has no asset {asset!r}; it has {sorted(item.assets)}.")
        return asset
    for key, a in item.assets.items():
        if a.extra_fields.get("classification:classes") and "data" in (a.roles or ["data"]):
            return key
    raise AssetNotFoundError(
        f"Prediction Item {item.id!r} has no asset with 'classification:classes' (assets {sorted(item.assets)}); "
        "pass asset= the key of the class-map COG."
    )


def _linked(item: pystac.Item) -> tuple[list[pystac.Item], pystac.Item | None]:
    """Source imagery Items and the MLM card among the Item's ``derived_from`` links."""
    sources: list[pystac.Item] = []
    card = None
    for link in item.links:
        if link.rel != "derived_from":
            continue
        href = link.get_absolute_href() or link.href
        try:
            target = pystac.Item.from_file(href, stac_io=FsspecStacIO())
        except (OSError, ValueError):
            continue  # an unreachable source leaves the map without imagery, not broken
        if "mlm:output" in target.properties:
            card = target
        else:
            sources.append(target)
    return sources, card


def _classes(item: pystac.Item, asset: str, card: pystac.Item | None) -> tuple[ClassInfo, ...]:
    from staclearn.data.labels import classes_from_item

    if card is not None:
        from staclearn.stac.modelcard import spec_from_card

        return tuple(spec_from_card(card).classes)
    return tuple(classes_from_item(item, asset))


def percentile_stretch(image: np.ndarray, percentiles: tuple[float, float] = (2.0, 98.0)) -> np.ndarray:
    """Contrast-stretch three bands for display (QGIS' default cumulative-count cut).

    Args:
        image: ``(3, y, x)`` bands shown as red, green, blue, in any units, NaN where no data.
        percentiles: lower and upper percentile of each band's finite pixels, mapped to 0 and 1.

    Returns:
        ``(y, x, 3) float32`` in [0, 1], NaN kept where the input is NaN.
    """
    out = np.full(image.shape[1:] + (3,), np.nan, dtype=np.float32)
    for b in range(3):
        band = image[b].astype(np.float32)
        ok = np.isfinite(band)
        if not ok.any():
            continue
        lo, hi = np.percentile(band[ok], percentiles)
        out[..., b] = np.clip((band - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    return out


def _rgb_bands(items: Sequence[pystac.Item]) -> list[str] | None:
    from staclearn.data.cube import band_names

    names = band_names(items)
    if all(b in names for b in ("red", "green", "blue")):
        return ["red", "green", "blue"]
    return None


def prediction_layers(
    item: pystac.Item | str | os.PathLike[str],
    *,
    imagery: Sequence[pystac.Item] | xr.DataArray | None = None,
    bands: Sequence[str] | None = None,
    asset: str | None = None,
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> PredictionLayers:
    """Read a prediction Item's class map, classes and source imagery onto one grid.

    Args:
        item: the prediction Item, or its path / URL.
        imagery: source imagery to draw under the map: STAC Items (loaded onto the class
            map's GeoBox) or a ``(band, y, x)`` / ``(time=1, band, y, x)`` cube already on it;
            default: the Items of the prediction's ``derived_from`` links that are not the card.
        bands: the three imagery bands to show as red, green, blue; default ``red``,
            ``green``, ``blue`` (``eo:bands`` common names) when the Items have them, else
            the first band as grey.
        asset: key of the class-map asset; default the first asset with ``classification:classes``.
        percentiles: lower and upper percentile of the per-band contrast stretch.

    Returns:
        A :class:`PredictionLayers`.

    Raises:
        ImageryNotFoundError: the Item cannot be read.
        MalformedStacError: the file is JSON but not a STAC Item (e.g. a Catalog).
        AssetNotFoundError: no class-map asset, or ``bands`` not in the imagery.
    """
    import rasterio

    pred = _read_item(item)
    key = _class_asset(pred, asset)
    href = pred.assets[key].get_absolute_href() or pred.assets[key].href
    try:
        with rasterio.open(href) as src:
            class_map = src.read(1)
            geobox = GeoBox(src.shape, src.transform, src.crs.to_wkt() if src.crs else None)
            nodata = int(src.nodata) if src.nodata is not None else 255
    except rasterio.errors.RasterioIOError as err:
        raise ImageryNotFoundError(f"Class map {href!r} of Item {pred.id!r} cannot be opened ({err}).") from err
    sources, card = _linked(pred)
    classes = _classes(pred, key, card)
    rgb = None
    if imagery is None and sources:
        imagery = sources
    if isinstance(imagery, xr.DataArray):
        cube = imagery.isel(time=0) if "time" in imagery.dims else imagery
        names = [str(b) for b in cube.band.values]
        chosen = list(bands) if bands is not None else (["red", "green", "blue"] if {"red", "green", "blue"} <= set(names) else None)
        if chosen is not None and not set(chosen) <= set(names):
            raise AssetNotFoundError(f"Bands {list(chosen)} are not all in the imagery cube, which has {names}.")
        values = np.asarray(cube.sel(band=chosen).values if chosen else cube.isel(band=[0, 0, 0]).values, np.float32)
        nd = cube.attrs.get("nodata")
        if nd is not None and not np.isnan(nd):
            values = np.where(values == nd, np.nan, values)
        rgb = percentile_stretch(values, percentiles)
    elif imagery:
        from staclearn.data.cube import load_cube

        items = list(imagery)
        chosen = list(bands) if bands is not None else _rgb_bands(items)
        cube = load_cube(items, bands=chosen, geobox=geobox, resampling="bilinear").isel(time=0)
        values = np.asarray(cube.values, np.float32)
        nd = cube.attrs.get("nodata")
        if nd is not None and not np.isnan(nd):
            values = np.where(values == nd, np.nan, values)
        if chosen is None:
            values = values[[0, 0, 0]]
        rgb = percentile_stretch(values, percentiles)
    return PredictionLayers(class_map, nodata, classes, rgb, geobox, pred, card)


def _composite(layers: PredictionLayers, alpha: float) -> np.ndarray:
    """``(y, x, 4)`` RGBA: imagery (grey where none), each class colour blended at ``alpha``."""
    h, w = layers.class_map.shape
    base = np.full((h, w, 3), 0.5, dtype=np.float32) if layers.rgb is None else np.nan_to_num(layers.rgb, nan=0.0)
    out = np.concatenate([base, np.ones((h, w, 1), np.float32)], axis=-1)
    if layers.rgb is not None:
        out[..., 3] = np.where(np.isnan(layers.rgb).any(-1), 0.0, 1.0)
    for value, colour in class_colors(layers.classes).items():
        hit = layers.class_map == value
        out[hit, :3] = (1 - alpha) * out[hit, :3] + alpha * np.asarray(colour, np.float32)
        out[hit, 3] = 1.0
    return out


def plot_prediction(
    item: pystac.Item | str | os.PathLike[str],
    *,
    imagery: Sequence[pystac.Item] | xr.DataArray | None = None,
    bands: Sequence[str] | None = None,
    asset: str | None = None,
    alpha: float = 0.5,
    percentiles: tuple[float, float] = (2.0, 98.0),
    ax: Axes | None = None,
    legend: bool = True,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
    dpi: int = 150,
) -> Axes:
    """Draw a published class map (or change mask) over its source imagery with matplotlib.

    The image drawn is RGBA on the class map's grid: the stretched imagery, and where a
    class was predicted ``(1 - alpha) * imagery + alpha * class colour``; pixels without
    prediction show the imagery alone. Axes are in the class map's CRS units (metres for
    projected CRSs), the legend lists every class of the card with its name and colour.

    Args:
        item: the prediction Item (from :func:`staclearn.stac.items.class_map_item`) or its
            path / URL.
        imagery: source imagery to draw under the map; default: the prediction's
            ``derived_from`` imagery Items (see :func:`prediction_layers`).
        bands: three imagery bands shown as red, green, blue.
        asset: key of the class-map asset.
        alpha: opacity of the class colours in [0, 1].
        percentiles: contrast stretch of the imagery.
        ax: Axes to draw into; default a new figure.
        legend: draw the legend of classes.
        title: Axes title; default the Item id.
        path: also save the figure there as PNG.
        dpi: resolution of the saved PNG.

    Returns:
        The Axes; ``ax.images[0].get_array()`` is the ``(y, x, 4)`` RGBA composite drawn.

    Raises:
        ImageryNotFoundError: the Item or its class map cannot be read.
        AssetNotFoundError: no class-map asset, or ``bands`` not in the imagery.
        ConfigError: ``alpha`` outside [0, 1] (a ValueError).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    layers = prediction_layers(item, imagery=imagery, bands=bands, asset=asset, percentiles=percentiles)
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 8 * layers.class_map.shape[0] / max(layers.class_map.shape[1], 1)))
    b = layers.geobox.boundingbox
    ax.imshow(_composite(layers, alpha), extent=(b.left, b.right, b.bottom, b.top), interpolation="nearest")
    ax.set_title(title if title is not None else layers.item.id)
    crs = layers.geobox.crs
    unit = f" ({crs.units[0]})" if crs is not None and crs.units else ""
    ax.set_xlabel(f"x{unit}")
    ax.set_ylabel(f"y{unit}")
    if legend:
        colours = class_colors(layers.classes)
        handles = [Patch(facecolor=colours[c.value], edgecolor="black", label=c.name) for c in layers.classes]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, title="class")
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        ax.figure.savefig(path, dpi=dpi, bbox_inches="tight")
    return ax


def interactive_map(
    item: pystac.Item | str | os.PathLike[str],
    *,
    imagery: Sequence[pystac.Item] | xr.DataArray | None = None,
    bands: Sequence[str] | None = None,
    asset: str | None = None,
    alpha: float = 0.6,
    percentiles: tuple[float, float] = (2.0, 98.0),
    tiles: str | None = "OpenStreetMap",
) -> Any:
    """A folium (Leaflet) map of a published prediction: imagery and class map as layers.

    Both rasters are reprojected to EPSG:4326 (nearest for classes, bilinear for imagery)
    and shown as image overlays (folium projects them to Web Mercator), with a layer switch
    and a legend of the card's classes.

    Args:
        item: the prediction Item or its path / URL.
        imagery: source imagery (see :func:`prediction_layers`).
        bands: three imagery bands shown as red, green, blue.
        asset: key of the class-map asset.
        alpha: opacity of the class layer in [0, 1].
        percentiles: contrast stretch of the imagery.
        tiles: folium basemap name (fetched by the browser), or ``None`` for none.

    Returns:
        A ``folium.Map`` (display it in a notebook or ``.save("map.html")``).

    Raises:
        MissingDependencyError: folium is not installed (``pip install folium``).
        ImageryNotFoundError, AssetNotFoundError: as :func:`prediction_layers`.
    """
    try:
        import folium
    except ImportError as err:
        raise MissingDependencyError(
            "interactive_map needs folium: pip install folium (or pip install 'staclearn[maps]'). "
            "plot_prediction draws a static map with matplotlib alone."
        ) from err
    from odc.geo.geobox import GeoBox as _GeoBox
    from odc.geo.xr import wrap_xr, xr_reproject

    layers = prediction_layers(item, imagery=imagery, bands=bands, asset=asset, percentiles=percentiles)
    ext = layers.geobox.extent.to_crs("EPSG:4326")
    h, w = layers.class_map.shape
    target = _GeoBox.from_bbox(ext.boundingbox, "EPSG:4326", shape=(h, w))

    def warp(data: np.ndarray, resampling: str, nodata: float) -> np.ndarray:
        arr = wrap_xr(data, layers.geobox, nodata=nodata)
        return np.asarray(xr_reproject(arr, target, resampling=resampling, dst_nodata=nodata).values)

    classes = warp(layers.class_map.astype(np.float32), "nearest", float(layers.nodata))
    rgba = np.zeros((h, w, 4), dtype=np.float32)
    for value, colour in class_colors(layers.classes).items():
        rgba[classes == value] = (*colour, 1.0)
    b = ext.boundingbox
    bounds = [[b.bottom, b.left], [b.top, b.right]]
    fmap = folium.Map(tiles=tiles, control_scale=True)
    if layers.rgb is not None:
        rgb = np.stack([warp(layers.rgb[..., i], "bilinear", float("nan")) for i in range(3)], axis=-1)
        alpha_band = (~np.isnan(rgb).any(-1)).astype(np.float32)[..., None]
        folium.raster_layers.ImageOverlay(
            np.concatenate([np.nan_to_num(rgb), alpha_band], -1), bounds=bounds, name="imagery", mercator_project=True
        ).add_to(fmap)
    folium.raster_layers.ImageOverlay(
        rgba, bounds=bounds, opacity=alpha, name=f"classes ({layers.item.id})", mercator_project=True
    ).add_to(fmap)
    colours = class_colors(layers.classes)
    rows = "".join(
        f'<div><span style="display:inline-block;width:12px;height:12px;background:{_hex(colours[c.value])};'
        f'margin-right:4px"></span>{html.escape(c.name)}</div>'
        for c in layers.classes
    )
    legend = folium.Element(
        '<div style="position:fixed;bottom:20px;left:20px;z-index:1000;background:white;padding:6px;'
        f'font:12px sans-serif;border:1px solid #999">{rows}</div>'
    )
    fmap.get_root().html.add_child(legend)
    folium.LayerControl().add_to(fmap)
    fmap.fit_bounds(bounds)
    return fmap


def _hex(colour: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(v * 255):02X}" for v in colour)
