"""A published catalog is relocatable: publish, move the folder, copy it to ``memory://``,
open it again, resolve every link and asset, predict from the moved card.

The run is the real NC Landsat-7 scene of ``catalogs/nc-landsat`` (fixtures_nc_run.py).
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pystac

from conftest import NC_CATALOG
from fixtures_nc_run import BANDS, PADDING, TILE, nc_run  # noqa: F401  (fixture)
from staclearn._io import FsspecStacIO
from staclearn.stac.catalog import write_catalog


def _hrefs(d: dict) -> list[tuple[str, str]]:
    """``(kind, href)`` of every link and asset of a STAC JSON document."""
    out = [(f"link:{link['rel']}", link["href"]) for link in d.get("links", [])]
    return out + [(f"asset:{k}", a["href"]) for k, a in d.get("assets", {}).items()]


def _republish(nc_run, dest: Path) -> None:
    """Publish the run's Items again into ``dest`` (assets copied along)."""
    root = pystac.Catalog.from_file(str(nc_run.out / "catalog.json"))
    items = list(root.get_items(recursive=True))
    for item in items:
        item.make_asset_hrefs_absolute()
    write_catalog(items, dest, id="nc-run", collection_id="nc-run", asset_root=nc_run.out)


def test_every_href_is_relative_or_a_canonical_url(nc_run, tmp_path):
    _republish(nc_run, tmp_path / "a" / "run")
    docs = list((tmp_path / "a" / "run").rglob("*.json"))
    assert len(docs) == 4  # catalog, collection, card, class map
    for path in docs:
        for kind, href in _hrefs(json.loads(path.read_text())):
            assert not os.path.isabs(href) and "://" not in href, f"{path.name} {kind}: {href}"
    pred = json.loads((tmp_path / "a/run/nc-run/nc-class-map/nc-class-map.json").read_text())
    derived = {link["title"]: link["href"] for link in pred["links"] if link["rel"] == "derived_from"}
    src = NC_CATALOG.parent / "nc-landsat7" / "nc-landsat7-2000" / "nc-landsat7-2000.json"
    here = tmp_path / "a/run/nc-run/nc-class-map"
    assert derived == {
        "source: nc-landsat7-2000": Path(os.path.relpath(src, here)).as_posix(),
        "model card: nc-pixelconv": "../nc-pixelconv/nc-pixelconv.json",
    }


def test_remote_sources_keep_their_canonical_url(nc_run, tmp_path):
    item = pystac.Item.from_file(str(nc_run.item))
    item.make_asset_hrefs_absolute()
    url = "https://planetarycomputer.microsoft.com/api/stac/v1/collections/landsat-c2-l2/items/LE07_X"
    item.add_link(pystac.Link("derived_from", f"{url}?st=2026&sig=SECRET", pystac.MediaType.JSON, title="remote"))
    write_catalog([item], tmp_path / "cat", id="c")
    d = json.loads((tmp_path / "cat/c/nc-class-map/nc-class-map.json").read_text())
    assert [link["href"] for link in d["links"] if link.get("title") == "remote"] == [url]


def test_moved_and_memory_copies_resolve_and_predict(nc_run, tmp_path):
    from staclearn.data.cube import load_cube
    from staclearn.stac.modelcard import load_model
    from staclearn.inference.raster import predict_class_map

    _republish(nc_run, tmp_path / "a" / "run")
    moved = tmp_path / "b" / "run"  # same depth: links to the sources outside still resolve
    moved.parent.mkdir()
    shutil.move(tmp_path / "a" / "run", moved)
    shutil.rmtree(tmp_path / "a")

    cat = pystac.Catalog.from_file(str(moved / "catalog.json"))
    items = {i.id: i for i in cat.get_items(recursive=True)}
    assert set(items) == {"nc-pixelconv", "nc-class-map"}
    for path in moved.rglob("*.json"):
        for kind, href in _hrefs(json.loads(path.read_text())):
            assert (path.parent / href).resolve().exists(), f"{path.name} {kind}: {href} does not resolve"
    source = pystac.Item.from_file(
        next(link.get_absolute_href() for link in items["nc-class-map"].links if link.rel == "derived_from" and "source" in link.title)
    )
    assert source.id == "nc-landsat7-2000"

    cube = load_cube([source], bands=BANDS)
    model = load_model(moved / "nc-run" / "nc-pixelconv" / "nc-pixelconv.json")
    again = predict_class_map(model, cube, tile_size=TILE, padding=PADDING, device="cpu")
    assert np.array_equal(again.values, nc_run.class_map)

    # a copy in memory:// (an object store): every link and asset inside resolves there
    fs = fsspec.filesystem("memory")
    fs.put(str(moved), "/moved-run", recursive=True)
    try:
        root = "memory://moved-run"
        mcat = pystac.Catalog.from_file(f"{root}/catalog.json", stac_io=FsspecStacIO())
        objects = [mcat, *mcat.get_children(), *mcat.get_items(recursive=True)]
        assert len(objects) == 4
        outside = []
        for obj in objects:
            here = posixpath.dirname(obj.get_self_href().removeprefix(root + "/"))
            for link in obj.links:
                raw = link.to_dict()["href"]
                inside = posixpath.normpath(posixpath.join(here, raw))
                if inside.startswith(".."):  # climbs out of the copy (URLs clamp "..": test the path)
                    outside.append(link.rel)
                    continue
                href = link.get_absolute_href()
                assert fs.exists(href.removeprefix("memory://")), f"{obj.id} {link.rel}: {href}"
            for key, asset in getattr(obj, "assets", {}).items():
                href = asset.get_absolute_href()
                assert href.startswith(root) and fs.exists(href.removeprefix("memory://")), f"{obj.id} {key}: {href}"
        # only the links to the source imagery lie outside the copied folder
        assert outside == ["derived_from", "derived_from"]
        mmodel = load_model(f"{root}/nc-run/nc-pixelconv/nc-pixelconv.json")
        crop = cube.isel(x=slice(0, 160), y=slice(0, 160))
        assert np.array_equal(
            predict_class_map(mmodel, crop, tile_size=TILE, padding=PADDING, device="cpu").values,
            predict_class_map(model, crop, tile_size=TILE, padding=PADDING, device="cpu").values,
        )
    finally:
        fs.rm("/moved-run", recursive=True)
