"""Fixtures shared by staclearn's tests."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pystac
import pytest

from fixtures_stac_api import transactions_api  # noqa: F401  (fixture)

if TYPE_CHECKING:
    from affine import Affine

#: ``../shared`` beside the repository: real data (``data/``) and JSON schemas (``schemas/``).
SHARED_DIR = Path(__file__).parents[1].parent / "shared"


@pytest.fixture
def shared_dir() -> Path:
    """Path of ``../shared``; skips the test where it is absent (e.g. a user's fresh clone)."""
    if not (SHARED_DIR / "data").is_dir():
        pytest.skip(f"needs {SHARED_DIR} (real data and schemas), which is absent")
    return SHARED_DIR


os.environ.setdefault("HF_HUB_OFFLINE", "1")  # pretrained weights are never downloaded in tests

#: the repository root
REPO = Path(__file__).parents[1]
NC_CATALOG = REPO / "catalogs" / "nc-landsat" / "catalog.json"


@pytest.fixture
def nc_catalog(shared_dir: Path) -> Path:
    """The committed NC Landsat catalog; skips where its rasters (in ../shared/data) are absent."""
    if not (shared_dir / "data" / "landcover" / "nc_landsat7" / "landsat_multiband.tif").exists():
        pytest.skip("needs ../shared/data/landcover/nc_landsat7 (the NC Landsat-7 scene)")
    return NC_CATALOG


def make_item(
    tmp_path: Path,
    name: str,
    data: np.ndarray,
    *,
    crs: str,
    transform: "Affine",
    nodata: float | None = None,
    asset: str = "image",
    band_names: list[str] | None = None,
    properties: dict | None = None,
) -> pystac.Item:
    """Write ``data`` ``(C, H, W)`` as a GeoTIFF and return a STAC Item (proj + eo bands) for it."""
    import rasterio
    from odc.geo.geobox import GeoBox

    path = tmp_path / f"{name}.tif"
    with rasterio.open(
        path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
        dtype=data.dtype, crs=crs, transform=transform, nodata=nodata,
    ) as dst:
        dst.write(data)
    gbox = GeoBox((data.shape[1], data.shape[2]), transform, crs)
    extent = gbox.extent.to_crs("EPSG:4326")
    item = pystac.Item(
        id=name, geometry=extent.json, bbox=list(extent.boundingbox),
        datetime=datetime(2021, 6, 1, tzinfo=timezone.utc), properties=dict(properties or {}),
    )
    item.stac_extensions = [
        "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
        "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
        "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    ]
    names = band_names or [f"b{i + 1}" for i in range(data.shape[0])]
    item.add_asset(
        asset,
        pystac.Asset(
            href=str(path), media_type=pystac.MediaType.GEOTIFF, roles=["data"],
            extra_fields={
                "proj:code": crs, "proj:shape": list(data.shape[1:]), "proj:transform": list(transform)[:6],
                "eo:bands": [{"name": n} for n in names],
                "raster:bands": [{"nodata": nodata, "data_type": str(data.dtype)} for _ in names],
            },
        ),
    )
    item.set_self_href(str(tmp_path / f"{name}.json"))
    return item
