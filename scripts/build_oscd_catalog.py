"""Build the static STAC catalog ``catalogs/oscd`` for the Onera Satellite Change Detection data.

The data are eleven cities of the OSCD dataset (Daudt et al. 2018, "Urban change detection for
multispectral earth observation using convolutional neural networks", IGARSS), as
redistributed in ChenHongruixuan/ChangeDetectionRepository @ 020f770 (``Dataset/OSCD/``):
for each city two Sentinel-2 L1C acquisitions (``imgs_1/``, ``imgs_2/``), each as 13
single-band uint16 GeoTIFFs in EPSG:4326 (the 10, 20 and 60 m bands on three different
grids), the acquisition days in ``dates.txt`` and the change mask ``cm/<city>-cm_georef.tif``
(1 = no change, 2 = change) on the grid of the 10 m band B02 of the first date. saclay_e's
second date lies on a slightly different grid than its first (same bounds), as in the
source; each asset's ``proj:*`` fields describe its own grid, so loaders align the pair by
georeference.

Usage::

    python scripts/build_oscd_catalog.py [--data-dir DIR] [--out catalogs/oscd]

The data directory defaults to ``<repo>/../shared/data/change/oscd``. Asset hrefs are
written relative to each Item JSON when the data lie in ``../shared`` (so the committed
catalog works on any checkout with ``../shared`` beside it) and absolute otherwise.

The catalog is written SELF_CONTAINED: the root catalog, one Collection ``oscd`` and, per
city, one Item per acquisition (``<city>-<yyyymmdd>``, one asset per band ``B01`` .. ``B12``,
``B8A``) and one label Item (``<city>-labels``, asset ``labels``). Every Item carries the
property ``staclearn:city``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
from pathlib import Path
from typing import Any

import pystac
import rasterio
import rasterio.warp
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.label import LabelClasses, LabelExtension, LabelType
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA_DIR = REPO.parent / "shared" / "data" / "change" / "oscd"

COLLECTION_ID = "oscd"
#: The eleven cities of ../shared/data/change/oscd (what :func:`find_cities` finds there today).
CITIES = (
    "aguasclaras", "beihai", "beirut", "bercy", "bordeaux", "cupertino", "nantes", "paris", "pisa", "rennes", "saclay_e",
)
CITY_PROPERTY = "staclearn:city"
#: SPDX id of the OSCD labels' licence (the images are Copernicus Sentinel data, free and open).
LICENSE = "CC-BY-NC-SA-4.0"
#: Sentinel-2 L1C digital numbers: 0 is the NO_DATA value of the product format.
NODATA = 0
#: Value of unlabelled pixels in the change mask (OSCD masks hold only 1 and 2).
LABEL_NODATA = 0
CLASSIFICATION_URI = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"

#: Sentinel-2 MSI bands: (name, eo common_name, centre wavelength um, FWHM um, nominal gsd m).
#: Wavelengths of Sentinel-2A from the ESA Sentinel-2 User Handbook (as in stactools'
#: sentinel2 package); common names from the STAC eo extension v1.1.0.
S2_BANDS = [
    ("B01", "coastal", 0.443, 0.027, 60),
    ("B02", "blue", 0.490, 0.098, 10),
    ("B03", "green", 0.560, 0.045, 10),
    ("B04", "red", 0.665, 0.038, 10),
    ("B05", "rededge", 0.704, 0.019, 20),
    ("B06", "rededge", 0.740, 0.018, 20),
    ("B07", "rededge", 0.783, 0.028, 20),
    ("B08", "nir", 0.842, 0.145, 10),
    ("B8A", "nir08", 0.865, 0.033, 20),
    ("B09", "nir09", 0.945, 0.026, 60),
    ("B10", "cirrus", 1.375, 0.075, 60),
    ("B11", "swir16", 1.610, 0.143, 20),
    ("B12", "swir22", 2.190, 0.242, 20),
]

#: (value, name, description, color_hint) of the change mask classes.
CLASSES = [
    (1, "no change", "No urban change between the two acquisitions", "D9D9D9"),
    (2, "change", "Urban change (construction, demolition) between the two acquisitions", "E31A1C"),
]


def _raster_metadata(path: Path) -> dict[str, Any]:
    """Read the grid (proj fields) and CRS of a single-band GeoTIFF."""
    with rasterio.open(path) as src:
        epsg = src.crs.to_epsg() if src.crs is not None else None
        if epsg is None:
            raise ValueError(f"{path}: no CRS with an EPSG code; cannot write proj:code.")
        return {
            "code": f"EPSG:{epsg}",
            "shape": [src.height, src.width],
            "transform": list(src.transform)[:6],
            "bbox": list(src.bounds),
            "crs": src.crs,
            "dtype": src.dtypes[0],
        }


def _footprint(bounds: list[float], crs: Any) -> dict[str, Any]:
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


def read_dates(city_dir: Path) -> tuple[dt.date, dt.date]:
    """Read ``dates.txt`` (``date_1: yyyymmdd`` / ``date_2: yyyymmdd``).

    Raises:
        ValueError: a date is missing or malformed.
    """
    text = (city_dir / "dates.txt").read_text(encoding="utf-8")
    found = dict(re.findall(r"(date_[12])\s*:\s*(\d{8})", text))
    if set(found) != {"date_1", "date_2"}:
        raise ValueError(f"{city_dir / 'dates.txt'}: expected 'date_1: yyyymmdd' and 'date_2: yyyymmdd'.")
    d1, d2 = (dt.datetime.strptime(found[k], "%Y%m%d").date() for k in ("date_1", "date_2"))
    return d1, d2


def band_files(folder: Path) -> dict[str, Path]:
    """Map band names (``B01`` .. ``B12``, ``B8A``) to the GeoTIFFs of one acquisition folder.

    Raises:
        ValueError: a band has no file or several.
    """
    files: dict[str, Path] = {}
    for name, *_ in S2_BANDS:
        matches = sorted(folder.glob(f"*_{name}.tif"))
        if len(matches) != 1:
            raise ValueError(f"{folder}: expected one *_{name}.tif, found {[m.name for m in matches]}.")
        files[name] = matches[0]
    return files


def _asset_href(data_file: Path, item_json: str, relative: bool) -> str:
    if relative:
        return os.path.relpath(data_file.resolve(), Path(item_json).resolve().parent)
    return str(data_file.resolve())


def build_image_item(city: str, folder: Path, day: dt.date) -> pystac.Item:
    """One Sentinel-2 acquisition of a city: an asset per band with eo, proj and raster fields.

    Args:
        city: city name (``bercy``).
        folder: ``imgs_1`` or ``imgs_2`` of the city.
        day: acquisition day from ``dates.txt``.

    Returns:
        Item ``<city>-<yyyymmdd>`` with absolute asset hrefs.
    """
    files = band_files(folder)
    metas = {name: _raster_metadata(path) for name, path in files.items()}
    geometry = _footprint(metas["B02"]["bbox"], metas["B02"]["crs"])
    start = dt.datetime.combine(day, dt.time(0, 0), tzinfo=dt.UTC)
    item = pystac.Item(
        id=f"{city}-{day:%Y%m%d}",
        geometry=geometry,
        bbox=_bbox_of(geometry),
        datetime=start,
        start_datetime=start,
        end_datetime=start + dt.timedelta(days=1) - dt.timedelta(seconds=1),
        properties={
            "title": f"Sentinel-2 L1C, {city}, {day:%Y-%m-%d}",
            "description": (
                f"Sentinel-2 MSI Level-1C top-of-atmosphere reflectance (uint16 digital "
                f"numbers, 0 = no data) of the OSCD city {city!r} on {day:%Y-%m-%d} (day from "
                "the dataset's dates.txt; the time of day is not recorded). 13 single-band "
                "GeoTIFFs in EPSG:4326: 10 m bands (B02, B03, B04, B08), 20 m bands (B05, B06, "
                "B07, B8A, B11, B12) and 60 m bands (B01, B09, B10), each on its own grid."
            ),
            "constellation": "sentinel-2",
            "instruments": ["msi"],
            "gsd": 10.0,
            CITY_PROPERTY: city,
        },
    )
    for name, common, centre, fwhm, gsd in S2_BANDS:
        meta = metas[name]
        asset = pystac.Asset(
            href=str(files[name].resolve()),
            media_type=pystac.MediaType.GEOTIFF,
            roles=["data"],
            title=f"{name} ({common}, {gsd} m)",
        )
        item.add_asset(name, asset)
        ProjectionExtension.ext(asset, add_if_missing=True).apply(
            code=meta["code"], shape=meta["shape"], transform=meta["transform"], bbox=meta["bbox"]
        )
        EOExtension.ext(asset, add_if_missing=True).bands = [
            Band.create(name=name, common_name=common, center_wavelength=centre, full_width_half_max=fwhm)
        ]
        RasterExtension.ext(asset, add_if_missing=True).bands = [
            RasterBand.create(nodata=NODATA, data_type=DataType(meta["dtype"]), spatial_resolution=float(gsd))
        ]
    return item


def build_label_item(city: str, city_dir: Path, before: pystac.Item, after: pystac.Item) -> pystac.Item:
    """The change mask of a city: asset ``labels`` -> ``cm/<city>-cm_georef.tif``.

    Args:
        city: city name.
        city_dir: the city folder.
        before: Item of the first acquisition (``source`` link).
        after: Item of the second acquisition (``source`` link).

    Returns:
        Item ``<city>-labels`` (label + classification extensions) spanning both days.
    """
    path = city_dir / "cm" / f"{city}-cm_georef.tif"
    meta = _raster_metadata(path)
    geometry = _footprint(meta["bbox"], meta["crs"])
    item = pystac.Item(
        id=f"{city}-labels",
        geometry=geometry,
        bbox=_bbox_of(geometry),
        datetime=None,
        start_datetime=before.common_metadata.start_datetime,
        end_datetime=after.common_metadata.end_datetime,
        properties={
            "title": f"OSCD change mask, {city}",
            "description": (
                f"Manually annotated urban change between {before.id} and {after.id} "
                "(Daudt et al. 2018): 1 = no change, 2 = change, on the 10 m grid of band B02 "
                "(cm/<city>-cm_georef.tif: the pixels of the original, non-georeferenced "
                "cm/<city>-cm.tif with the B02 grid attached)."
            ),
            CITY_PROPERTY: city,
        },
    )
    names = [n for _, n, _, _ in CLASSES]
    LabelExtension.ext(item, add_if_missing=True).apply(
        label_description="Urban change per pixel: 1 no change, 2 change; 0 would mark unlabelled pixels (none).",
        label_type=LabelType.RASTER,
        label_properties=None,
        label_classes=[LabelClasses.create(classes=names, name=None)],
        label_tasks=["segmentation", "change-detection"],
        label_methods=["manual"],
    )
    LabelExtension.ext(item).add_source(before, title="Before (first acquisition)")
    LabelExtension.ext(item).add_source(after, title="After (second acquisition)")
    asset = pystac.Asset(
        href=str(path.resolve()),
        media_type=pystac.MediaType.GEOTIFF,
        roles=["labels", "labels-raster"],
        title="Change mask (1 no change, 2 change)",
    )
    item.add_asset("labels", asset)
    ProjectionExtension.ext(asset, add_if_missing=True).apply(
        code=meta["code"], shape=meta["shape"], transform=meta["transform"], bbox=meta["bbox"]
    )
    RasterExtension.ext(asset, add_if_missing=True).bands = [
        RasterBand.create(nodata=LABEL_NODATA, data_type=DataType.UINT8, spatial_resolution=10.0)
    ]
    ClassificationExtension.ext(asset, add_if_missing=True).classes = [
        Classification.create(value=v, name=n, description=d, color_hint=c) for v, n, d, c in CLASSES
    ]
    item.stac_extensions = [CLASSIFICATION_URI if "/classification/" in u else u for u in item.stac_extensions]
    return item


def build_catalog(data_dir: Path, out_dir: Path, relative_hrefs: bool) -> pystac.Catalog:
    """Build the catalog in memory with hrefs normalised to ``out_dir``.

    Args:
        data_dir: the ``oscd`` folder (one sub-folder per city).
        out_dir: folder the catalog will be saved to.
        relative_hrefs: write asset hrefs relative to each Item JSON (True) or absolute.

    Returns:
        The root catalog, not yet saved.
    """
    cities = find_cities(data_dir)
    items: list[pystac.Item] = []
    for city in cities:
        city_dir = data_dir / city
        d1, d2 = read_dates(city_dir)
        before = build_image_item(city, city_dir / "imgs_1", d1)
        after = build_image_item(city, city_dir / "imgs_2", d2)
        items += [before, after, build_label_item(city, city_dir, before, after)]
    bboxes = [i.bbox for i in items if i.bbox is not None]
    starts = [i.common_metadata.start_datetime for i in items]
    ends = [i.common_metadata.end_datetime for i in items]
    collection = pystac.Collection(
        id=COLLECTION_ID,
        title=f"Onera Satellite Change Detection (OSCD), {len(cities)} cities",
        description=(
            f"Pairs of Sentinel-2 L1C acquisitions (13 bands) of {len(cities)} cities ({', '.join(cities)}) "
            "with manually annotated urban-change masks, from the Onera Satellite Change Detection dataset (Daudt, Le Saux, "
            "Boulch and Gousseau 2018, IGARSS). Images: Copernicus Sentinel data; labels: "
            "CC BY-NC-SA 4.0 (non-commercial use)."
        ),
        extent=pystac.Extent(
            pystac.SpatialExtent(
                [[min(b[0] for b in bboxes), min(b[1] for b in bboxes), max(b[2] for b in bboxes), max(b[3] for b in bboxes)]]
            ),
            pystac.TemporalExtent([[min(s for s in starts if s), max(e for e in ends if e)]]),
        ),
        license=LICENSE,
        keywords=["sentinel-2", "change detection", "urban", "oscd"],
        providers=[
            pystac.Provider(name="ESA Copernicus", roles=[pystac.ProviderRole.PRODUCER], url="https://sentinels.copernicus.eu/"),
            pystac.Provider(
                name="ONERA / Daudt et al. 2018 (OSCD labels)",
                roles=[pystac.ProviderRole.LICENSOR, pystac.ProviderRole.PROCESSOR],
                url="https://rcdaudt.github.io/oscd/",
            ),
            pystac.Provider(
                name="ChenHongruixuan/ChangeDetectionRepository @ 020f770",
                roles=[pystac.ProviderRole.HOST],
                url="https://github.com/ChenHongruixuan/ChangeDetectionRepository",
            ),
        ],
    )
    collection.add_items(items)
    catalog = pystac.Catalog(
        id="oscd",
        title="OSCD Sentinel-2 urban change detection",
        description=f"Static STAC catalog of the collection {COLLECTION_ID}; built by scripts/build_oscd_catalog.py.",
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


def find_cities(data_dir: Path) -> list[str]:
    """The city folders of an OSCD folder, sorted: every sub-folder holding ``dates.txt``,
    ``imgs_1/``, ``imgs_2/`` and ``cm/<city>-cm_georef.tif`` (others, e.g. OSCD's readme
    folder, are left out with a note on stderr when they look like a half city)."""
    cities = []
    for d in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        parts = [d / "dates.txt", d / "imgs_1", d / "imgs_2", d / "cm" / f"{d.name}-cm_georef.tif"]
        if all(p.exists() for p in parts):
            cities.append(d.name)
        elif any(p.exists() for p in parts):
            missing = [str(p.relative_to(d)) for p in parts if not p.exists()]
            print(f"skipping {d}: no {', '.join(missing)}", file=sys.stderr)
    return cities


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA_DIR, help="the oscd folder")
    parser.add_argument("--out", type=Path, default=REPO / "catalogs" / "oscd", help="output folder")
    args = parser.parse_args(argv)
    cities = find_cities(args.data_dir) if args.data_dir.is_dir() else []
    if not cities:
        sys.exit(f"No OSCD city found in {args.data_dir}: expected one folder per city with dates.txt, imgs_1/, imgs_2/ and cm/.")
    print(f"{len(cities)} cities: {', '.join(cities)}")
    relative = args.data_dir.resolve().is_relative_to((REPO.parent / "shared").resolve())
    catalog = build_catalog(args.data_dir, args.out, relative_hrefs=relative)
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    print(f"wrote {args.out / 'catalog.json'} from {args.data_dir} ({'relative' if relative else 'absolute'} asset hrefs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
