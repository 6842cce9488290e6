"""Land cover with a published staclearn model inside an openEO process graph.

The graph: ``load_stac`` (imagery from a STAC API collection) -> ``apply_neighborhood``
(128 px tiles with 16 px of overlap on each side) running staclearn's UDF
(``staclearn/udf.py``; the model's MLM card href in the UDF context) -> ``save_result``
(GTiff). The overlap is the model's padding: each tile sees 16 px of its neighbours, so tile
seams do not show.

Written the way a user submits it to a hosted back-end::

    python examples/openeo/landcover_udf.py --stac URL/collections/ID --card CARD_URL \\
        --bbox W,S,E,N --crs EPSG:32119 --backend https://openeo.example.org --out classes.tif

or run it locally on openeo-processes-dask (``staclearn.openeo_processes``), or only print
the process graph JSON (``--json graph.json``; ``landcover_udf.json`` beside this file was
written that way). The UDF's own dependency, ``staclearn``, is declared in the inline script
metadata block (PEP 723, ``# /// script``) at the top of ``udf.py``, which back-ends that
install UDF dependencies read.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import openeo
from openeo.rest.datacube import DataCube

TILE_PX = 128
OVERLAP_PX = 16  # = the model's padding; at least its receptive-field radius


def udf_path() -> Path:
    """staclearn's UDF file (what the back-end executes)."""
    import staclearn.udf

    return Path(staclearn.udf.__file__)


def build_cube(
    stac_url: str,
    card_href: str,
    bbox: Sequence[float],
    crs: str,
    temporal_extent: Sequence[str],
    *,
    bands: Sequence[str] | None = None,
    nodata: float | None = -99999.0,
    connection: openeo.Connection | None = None,
) -> DataCube:
    """The process graph as an openeo ``DataCube`` (offline when ``connection`` is None).

    Args:
        stac_url: STAC API collection URL (``.../collections/<id>``) or Item URL.
        card_href: URL or path of the MLM model card the UDF loads.
        bbox: west, south, east, north in ``crs``.
        crs: CRS of ``bbox``.
        temporal_extent: ``[start, end]`` dates.
        bands: assets to load; None loads every band (a multi-band asset's bands by their
            ``eo:bands`` names, e.g. ``b1``..``b5`` of the NC Landsat Item: the card's names).
        nodata: input value the UDF treats as missing besides NaN.
        connection: back-end connection; None builds the graph without one.
    """
    west, south, east, north = bbox
    extent = {"west": west, "south": south, "east": east, "north": north, "crs": crs}
    if connection is not None:
        cube = connection.load_stac(stac_url, spatial_extent=extent, temporal_extent=list(temporal_extent), bands=bands)
    else:
        cube = DataCube.load_stac(stac_url, spatial_extent=extent, temporal_extent=list(temporal_extent), bands=bands)
    context = {"model": card_href, "padding": OVERLAP_PX, "tile_size": TILE_PX + 2 * OVERLAP_PX}
    if nodata is not None:
        context["nodata"] = nodata
    udf = openeo.UDF.from_file(udf_path(), runtime="Python", context=context)
    classes = cube.apply_neighborhood(
        process=udf,
        size=[{"dimension": "x", "value": TILE_PX, "unit": "px"}, {"dimension": "y", "value": TILE_PX, "unit": "px"}],
        overlap=[{"dimension": "x", "value": OVERLAP_PX, "unit": "px"}, {"dimension": "y", "value": OVERLAP_PX, "unit": "px"}],
    )
    return classes.save_result(format="GTiff")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stac", required=True, help="STAC API collection URL with the imagery")
    parser.add_argument("--card", required=True, help="MLM model card URL")
    parser.add_argument("--bbox", required=True, help="west,south,east,north in --crs")
    parser.add_argument("--crs", default="EPSG:4326")
    parser.add_argument("--time", default="2000-01-01/2000-12-31", help="start/end")
    parser.add_argument("--bands", help="comma-separated assets (default: every band)")
    parser.add_argument("--backend", help="openEO back-end URL: submit there (OIDC login)")
    parser.add_argument("--local", type=Path, help="run locally on openeo-processes-dask, writing into this folder")
    parser.add_argument("--json", type=Path, help="write the process graph JSON here")
    parser.add_argument("--out", type=Path, default=Path("classes.tif"), help="result file (with --backend)")
    args = parser.parse_args()
    bbox = [float(v) for v in args.bbox.split(",")]
    connection = openeo.connect(args.backend).authenticate_oidc() if args.backend else None
    cube = build_cube(args.stac, args.card, bbox, args.crs, args.time.split("/"), bands=args.bands.split(",") if args.bands else None, connection=connection)
    if args.json:
        args.json.write_text(json.dumps({"process_graph": cube.flat_graph()}, indent=2) + "\n")
    if args.local:
        from staclearn.openeo_processes import run_process_graph

        print("\n".join(str(p) for p in run_process_graph({"process_graph": cube.flat_graph()}, args.local)))
    if connection is not None:
        cube.download(args.out)  # synchronous processing; use cube.execute_batch() for large areas


if __name__ == "__main__":
    main()
