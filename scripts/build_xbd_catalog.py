"""Build the static STAC catalog ``catalogs/xbd-santarosa`` for the xBD Santa Rosa tiles.

The data are the tiles of the 2017 Santa Rosa wildfire from xBD (Gupta et al. 2019, CC BY-NC-SA
4.0) in ``../shared/data/damage/xbd_santarosa`` (33 tiles, 2365 buildings): pre- and
post-disaster RGB GeoTIFFs (EPSG:4326, ~0.45 m) and the original xBD label JSON per tile and
date. Every tile of the folder is catalogued: a tile is a ``labels/<tile>_post_disaster.json``
with its ``images/<tile>_{pre,post}_disaster.tif`` and ``labels/<tile>_pre_disaster.json``.

Usage::

    python scripts/build_xbd_catalog.py [--data-dir DIR] [--out catalogs/xbd-santarosa]

One Collection ``xbd-santarosa`` with, per tile ``<tile>`` (e.g.
``santa-rosa-wildfire_00000012``): the imagery Items ``<tile>-pre`` and ``<tile>-post``
(asset ``image``: RGB bands, proj metadata; datetime = the xBD ``capture_date``; property
``xbd:tile``) and the label Item ``<tile>-labels`` (label extension, vector; asset
``labels`` = the post-disaster xBD JSON whose ``features.lng_lat`` polygons carry
``subtype``). Asset hrefs are relative to each Item JSON, so the committed catalog works on
any checkout with ``../shared`` beside it. Only the JSON is committed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from pathlib import Path

import pystac
import rasterio
import rasterio.warp
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.label import LabelClasses, LabelExtension, LabelTask, LabelType
from pystac.extensions.projection import ProjectionExtension

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data" / "damage" / "xbd_santarosa"
COLLECTION_ID = "xbd-santarosa"
LICENSE = "CC-BY-NC-SA-4.0"
SUBTYPES = ["no-damage", "minor-damage", "major-damage", "destroyed", "un-classified"]
RGB = [Band.create(name="red", common_name="red"), Band.create(name="green", common_name="green"), Band.create(name="blue", common_name="blue")]


def _time(label_json: Path) -> dt.datetime:
    meta = json.loads(label_json.read_text())["metadata"]
    return dt.datetime.fromisoformat(meta["capture_date"].replace("Z", "+00:00"))


def _image_item(tile: str, when: str, image: Path, label_json: Path, out_dir: Path) -> pystac.Item:
    with rasterio.open(image) as src:
        bounds = rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        crs, shape, transform = src.crs, src.shape, src.transform
    w, s, e, n = bounds
    geometry = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    meta = json.loads(label_json.read_text())["metadata"]
    item = pystac.Item(
        id=f"{tile}-{when}",
        geometry=geometry,
        bbox=[w, s, e, n],
        datetime=_time(label_json),
        properties={"xbd:tile": tile, "xbd:disaster": meta.get("disaster"), "gsd": meta.get("gsd"), "platform": meta.get("sensor")},
        collection=COLLECTION_ID,
    )
    item_dir = out_dir / COLLECTION_ID / item.id
    item.add_asset(
        "image",
        pystac.Asset(os.path.relpath(image, item_dir), media_type=pystac.MediaType.GEOTIFF, roles=["data"], title=f"{when}-disaster RGB"),
    )
    EOExtension.ext(item.assets["image"], add_if_missing=True).bands = RGB
    proj = ProjectionExtension.ext(item.assets["image"], add_if_missing=True)
    proj.code = f"EPSG:{crs.to_epsg()}"
    proj.shape = list(shape)
    proj.transform = list(transform)[:6]
    return item


def _label_item(tile: str, label_json: Path, post: pystac.Item, out_dir: Path) -> pystac.Item:
    item = pystac.Item(
        id=f"{tile}-labels",
        geometry=post.geometry,
        bbox=post.bbox,
        datetime=post.datetime,
        properties={"xbd:tile": tile},
        collection=COLLECTION_ID,
    )
    label = LabelExtension.ext(item, add_if_missing=True)
    label.label_description = "xBD building polygons (features.lng_lat) with damage level in properties.subtype"
    label.label_type = LabelType.VECTOR
    label.label_properties = ["subtype"]
    label.label_classes = [LabelClasses.create(classes=SUBTYPES, name="subtype")]
    label.label_tasks = [LabelTask.CLASSIFICATION]
    label.label_methods = ["manual"]
    item_dir = out_dir / COLLECTION_ID / item.id
    item.add_asset(
        "labels",
        pystac.Asset(os.path.relpath(label_json, item_dir), media_type=pystac.MediaType.JSON, roles=["labels", "labels-vector"], title="xBD label JSON (post-disaster)"),
    )
    item.add_link(pystac.Link("source", post, pystac.MediaType.JSON, title="labelled imagery"))
    return item


def find_tiles(data_dir: Path) -> list[str]:
    """Every tile id of the folder (sorted), checking that each has its four files.

    Raises:
        FileNotFoundError: no ``labels/*_post_disaster.json``, or a tile missing a file.
    """
    tiles = sorted(p.name.removesuffix("_post_disaster.json") for p in (data_dir / "labels").glob("*_post_disaster.json"))
    if not tiles:
        raise FileNotFoundError(f"No labels/*_post_disaster.json in {data_dir}; pass --data-dir (the xBD folder).")
    for tile in tiles:
        for rel in (f"images/{tile}_pre_disaster.tif", f"images/{tile}_post_disaster.tif", f"labels/{tile}_pre_disaster.json"):
            if not (data_dir / rel).exists():
                raise FileNotFoundError(f"Tile {tile!r} lacks {data_dir / rel}; every tile needs pre/post images and labels.")
    return tiles


def build(data_dir: Path, out_dir: Path) -> pystac.Catalog:
    """Write the catalog of every tile of ``data_dir`` into ``out_dir`` and return it.

    Asset hrefs are relative to each Item's JSON file (``os.path.relpath``), so the catalog
    works from any checkout with the data at the same place relative to it (``../shared``).
    """
    items = []
    tiles = find_tiles(data_dir)
    for tile in tiles:
        post_json = data_dir / "labels" / f"{tile}_post_disaster.json"
        post = _image_item(tile, "post", data_dir / "images" / f"{tile}_post_disaster.tif", post_json, out_dir)
        pre_json = data_dir / "labels" / f"{tile}_pre_disaster.json"
        pre = _image_item(tile, "pre", data_dir / "images" / f"{tile}_pre_disaster.tif", pre_json, out_dir)
        items += [pre, post, _label_item(tile, post_json, post, out_dir)]
    col = pystac.Collection(
        id=COLLECTION_ID,
        description=f"xBD Santa Rosa wildfire (2017): pre/post RGB tiles and building damage labels, {len(tiles)} tiles.",
        extent=pystac.Extent.from_items(items),
        license=LICENSE,
        title="xBD Santa Rosa wildfire sample",
    )
    col.add_items(items)
    cat = pystac.Catalog(id="xbd-santarosa", description="staclearn building-damage sample catalog (xBD, Santa Rosa 2017)")
    cat.add_child(col)
    cat.normalize_hrefs(str(out_dir))
    cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return cat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--out", type=Path, default=REPO / "catalogs" / "xbd-santarosa")
    args = parser.parse_args()
    cat = build(args.data_dir.resolve(), args.out.resolve())
    print(f"wrote {cat.get_self_href()} with {len(list(cat.get_items(recursive=True)))} Items")


if __name__ == "__main__":
    main()
