"""Run openEO process graphs locally on openeo-processes-dask, with the processes it lacks.

openEO back-ends such as EODC's are built on `openeo-pg-parser-networkx` (parses a process
graph into a callable) and `openeo-processes-dask` (the process implementations). Used
together on a laptop they run a graph like a back-end would, except for three gaps found in
openeo-processes-dask 2026.9.1, which this module fills in the open:

* ``apply_neighborhood`` (standard process) is missing; the library's only neighbourhood
  process, ``apply_neighborhood_intertwin``, takes another ``size`` form and hands the
  child process unlabelled windows without reassembling them. :func:`apply_neighborhood`
  here follows the standard (https://processes.openeo.org/#apply_neighborhood): ``size``
  and ``overlap`` lists of ``{"dimension", "value", "unit": "px"}`` on ``x``/``y``, the
  child process (e.g. ``run_udf``) called once per tile with the overlap around it and the
  labelled ``(bands, time, y, x)`` cube, the overlap cut from each result and the tiles
  reassembled on the input's grid.
* ``save_result`` (standard process) is missing: :func:`save_result` writes ``GTiff``
  (one band per ``bands`` label; a ``time`` dimension of one label is dropped, several
  make one file per label) or ``netCDF`` into the run's output folder.
* ``load_stac`` validates its URL with stac-validator, which downloads JSON schemas (fails
  offline): :func:`load_stac` runs the library's implementation with that check replaced
  by reading the document's ``type``. Everything else (STAC API search of a collection
  URL, odc-stac loading) is the library's.

And one behaviour of the graph parser: each node's result is cached for the whole run, so a
child graph called once per tile returns the first tile's result every time.
:func:`run_process_graph` gives the parser a cache that :func:`apply_neighborhood` clears
of the child nodes' entries between tiles.

Example::

    from staclearn.openeo_processes import run_process_graph

    files = run_process_graph("examples/openeo/landcover_udf.json", "out/")
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from staclearn.errors import ConfigError, MissingDependencyError

__all__ = ["apply_neighborhood", "save_result", "load_stac", "process_registry", "run_process_graph", "ADDED_PROCESSES"]

ADDED_PROCESSES = ("apply_neighborhood", "save_result", "load_stac")
"""Processes this module registers over (or beside) openeo-processes-dask's."""

_SPATIAL = ("y", "x")
_FORMATS = {"gtiff": ".tif", "geotiff": ".tif", "netcdf": ".nc"}

APPLY_NEIGHBORHOOD_SPEC: dict[str, Any] = {
    "id": "apply_neighborhood",
    "summary": "Apply a process to pixels in a n-dimensional neighborhood",
    "description": "openEO standard process; implemented by staclearn.openeo_processes (x/y in px).",
    "categories": ["cubes"],
    "parameters": [
        {"name": "data", "schema": {"type": "object", "subtype": "datacube"}},
        {"name": "process", "schema": {"type": "object", "subtype": "process-graph"}},
        {"name": "size", "schema": {"type": "array"}},
        {"name": "overlap", "schema": {"type": "array"}, "optional": True, "default": None},
        {"name": "context", "schema": {"description": "Any data type."}, "optional": True, "default": None},
    ],
    "returns": {"schema": {"type": "object", "subtype": "datacube"}},
}


def _require() -> None:
    try:
        import openeo_pg_parser_networkx  # noqa: F401
        import openeo_processes_dask  # noqa: F401
    except ImportError as err:
        raise MissingDependencyError(
            "Running openEO process graphs locally needs openeo-processes-dask and openeo-pg-parser-networkx: "
            "pip install -e '.[dev]' (see pyproject.toml for the runtime dependencies installed by name)."
        ) from err


def _pixels(spec: Sequence[Mapping[str, Any]] | None, dims: Sequence[str], what: str) -> dict[str, int | None]:
    """``{dimension: pixels}`` from an openEO ``size`` / ``overlap`` list (``None`` = whole)."""
    out: dict[str, int | None] = {}
    for entry in spec or []:
        entry = dict(entry)
        dim, value, unit = entry.get("dimension"), entry.get("value"), entry.get("unit", "px")
        if dim not in dims:
            raise ConfigError(f"apply_neighborhood {what}: the cube has no dimension {dim!r} (it has {list(dims)}).")
        if value is not None and unit != "px":
            raise ConfigError(
                f"apply_neighborhood {what} on {dim!r} is in {unit!r}; this implementation takes pixels (unit 'px')."
            )
        if dim not in _SPATIAL and value is not None:
            raise ConfigError(
                f"apply_neighborhood {what} on {dim!r}: only x and y are tiled here; give value null for {dim!r}."
            )
        out[dim] = None if value is None else int(value)
    return out


def apply_neighborhood(
    data: xr.DataArray,
    process: Callable[..., xr.DataArray],
    size: Sequence[Mapping[str, Any]],
    overlap: Sequence[Mapping[str, Any]] | None = None,
    context: Any = None,
    *,
    results_cache: MutableMapping[Any, Any] | None = None,
) -> xr.DataArray:
    """The openEO process ``apply_neighborhood``, tiled over ``x`` and ``y``.

    The cube is cut into tiles of ``size`` pixels; each is handed to ``process`` (a child
    process graph compiled by openeo-pg-parser-networkx, as parameter ``data``; ``context``
    as parameter ``context``) with ``overlap`` pixels of the neighbouring tiles on each side
    (fewer at the cube's edges, which get no padding). The overlap is cut from each result,
    whose ``y``/``x`` sizes must equal its input's, and the tiles are put back on the
    input's grid. Other dimensions must be whole (``value`` null) and may change labels
    (e.g. ``bands`` becomes ``["class"]``), as the standard allows.

    Args:
        data: ``(..., y, x)`` cube (dask or numpy); its non-dimension coordinates
            (``spatial_ref``) and attrs are kept.
        process: the child process.
        size: ``[{"dimension": "x", "value": 128, "unit": "px"}, ...]``.
        overlap: the same form; default no overlap.
        context: passed to the child process.
        results_cache: the graph parser's result cache, cleared of the child's entries
            after each tile (see the module docstring); None when called directly.

    Returns:
        The reassembled cube: the child's dims and labels, ``y``/``x`` of ``data``.

    Raises:
        ConfigError: a size/overlap not in pixels or on a dimension other than x/y, or a
            child result whose ``y``/``x`` size differs from its input's.
    """
    sizes = _pixels(size, data.dims, "size")
    overlaps = _pixels(overlap, data.dims, "overlap")
    ny, nx = data.sizes["y"], data.sizes["x"]
    sy, sx = sizes.get("y") or ny, sizes.get("x") or nx
    oy, ox = overlaps.get("y") or 0, overlaps.get("x") or 0
    before = set(results_cache) if results_cache is not None else set()
    out: np.ndarray | None = None
    template: xr.DataArray | None = None
    for y0 in range(0, ny, sy):
        for x0 in range(0, nx, sx):
            ys = slice(max(0, y0 - oy), min(ny, y0 + sy + oy))
            xs = slice(max(0, x0 - ox), min(nx, x0 + sx + ox))
            window = data.isel(y=ys, x=xs).compute()
            result = process(window, positional_parameters={"data": 0}, named_parameters={"context": context})
            if results_cache is not None:  # the next tile must run the child graph again
                for key in set(results_cache) - before:
                    del results_cache[key]
            if not isinstance(result, xr.DataArray) or result.sizes.get("y") != window.sizes["y"] or result.sizes.get("x") != window.sizes["x"]:
                got = dict(result.sizes) if isinstance(result, xr.DataArray) else type(result).__name__
                raise ConfigError(
                    f"apply_neighborhood: the child process returned {got} for a tile of {dict(window.sizes)}; "
                    "it must keep the y and x sizes of its input."
                )
            h, w = min(sy, ny - y0), min(sx, nx - x0)
            tile = result.isel(y=slice(y0 - ys.start, y0 - ys.start + h), x=slice(x0 - xs.start, x0 - xs.start + w))
            if out is None:
                template = result
                shape = [ny if d == "y" else nx if d == "x" else result.sizes[d] for d in result.dims]
                out = np.empty(shape, dtype=result.dtype)
            index = tuple(
                slice(y0, y0 + h) if d == "y" else slice(x0, x0 + w) if d == "x" else slice(None) for d in template.dims
            )
            out[index] = tile.transpose(*template.dims).values
    assert out is not None and template is not None  # the cube has at least one pixel
    coords: dict[str, Any] = {d: template.coords[d] for d in template.dims if d in template.coords and d not in _SPATIAL}
    coords.update({d: data.coords[d] for d in _SPATIAL if d in data.coords})
    coords.update({k: v for k, v in data.coords.items() if k not in data.dims and not set(v.dims) - set(_SPATIAL)})
    result = xr.DataArray(out, dims=template.dims, coords=coords, attrs={**data.attrs, **template.attrs}, name=template.name)
    return result


def save_result(
    data: xr.DataArray,
    format: str,
    options: Mapping[str, Any] | None = None,
    *,
    output_dir: str | os.PathLike[str],
    written: list[Path] | None = None,
) -> bool:
    """The openEO process ``save_result``: write the cube into ``output_dir``.

    ``GTiff``: one band per label of the band dimension, on the cube's grid and CRS, nodata
    ``attrs["nodata"]`` if set; a time dimension of one label is dropped, several labels
    give ``result_<i>.tif`` each. ``netCDF``: ``result.nc``.

    Args:
        data: ``(bands, [time], y, x)`` cube with a CRS (``spatial_ref``, as load_stac
            writes it).
        format: ``"GTiff"`` or ``"netCDF"`` (case-insensitive).
        options: ``{"filename_prefix": "result"}``.
        output_dir: the run's output folder.
        written: a list the written paths are appended to.

    Returns:
        True, as the standard process does.

    Raises:
        ConfigError: another format.
    """
    import rioxarray  # noqa: F401  (the .rio accessor)

    ext = _FORMATS.get(format.lower())
    if ext is None:
        raise ConfigError(f"save_result: format {format!r} is not supported here; use 'GTiff' or 'netCDF'.")
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    prefix = str(dict(options or {}).get("filename_prefix", "result"))
    paths: list[Path] = []
    crs = data.odc.crs if hasattr(data, "odc") else None
    if ext == ".nc":
        path = folder / f"{prefix}.nc"
        data.drop_vars([c for c in data.coords if c == "spatial_ref"], errors="ignore").to_netcdf(path)
        paths.append(path)
    else:
        time_dim = next((d for d in ("time", "t") if d in data.dims), None)
        band_dim = next((d for d in ("bands", "band") if d in data.dims), None)
        layers = [data] if time_dim is None else [data.isel({time_dim: i}) for i in range(data.sizes[time_dim])]
        for i, layer in enumerate(layers):
            if band_dim is not None:
                layer = layer.transpose(band_dim, "y", "x")
            else:
                layer = layer.transpose("y", "x")
            if crs is not None:
                layer = layer.rio.write_crs(str(crs))
            if "nodata" in data.attrs:
                layer = layer.rio.write_nodata(data.attrs["nodata"])
            path = folder / (f"{prefix}.tif" if len(layers) == 1 else f"{prefix}_{i}.tif")
            layer.rio.to_raster(path, driver="GTiff", tiled=True, compress="deflate")
            paths.append(path)
    if written is not None:
        written.extend(paths)
    return True


def _stac_type(url: str) -> str:
    """``"ITEM"``, ``"COLLECTION"`` or ``"CATALOG"`` of a STAC document (what the library's
    stac-validator check returns, without downloading JSON schemas)."""
    from pystac_client.stac_api_io import StacApiIO

    doc = json.loads(StacApiIO().read_text(url))
    kind = {"Feature": "ITEM", "Collection": "COLLECTION", "Catalog": "CATALOG"}.get(doc.get("type", ""))
    if kind is None:
        raise ConfigError(f"{url} is not a STAC Item, Collection or Catalog (type {doc.get('type')!r}).")
    return kind


def load_stac(*args: Any, **kwargs: Any) -> xr.DataArray:
    """openeo-processes-dask's ``load_stac`` with its online schema validation replaced by
    a check of the document's ``type`` (see the module docstring); same parameters."""
    from unittest import mock

    from openeo_processes_dask.process_implementations.cubes import load as library

    with mock.patch.object(library, "_validate_stac", _stac_type):
        return library.load_stac(*args, **kwargs)


def process_registry(output_dir: str | os.PathLike[str], results_cache: MutableMapping[Any, Any], written: list[Path]) -> Any:
    """openeo-processes-dask's processes plus :data:`ADDED_PROCESSES`, in a registry for
    ``OpenEOProcessGraph.to_callable``.

    Args:
        output_dir: where ``save_result`` writes.
        results_cache: the cache given to ``to_callable`` (cleared per tile by
            ``apply_neighborhood``).
        written: list that ``save_result`` appends its files to.

    Returns:
        An ``openeo_pg_parser_networkx.ProcessRegistry``.
    """
    _require()
    import functools
    import importlib

    from openeo_pg_parser_networkx import ProcessRegistry
    from openeo_pg_parser_networkx.process_registry import Process
    from openeo_processes_dask.process_implementations.core import process

    specs = importlib.import_module("openeo_processes_dask.specs")
    impls = importlib.import_module("openeo_processes_dask.process_implementations")
    registry = ProcessRegistry(wrap_funcs=[process])
    for name, func in inspect.getmembers(impls, inspect.isfunction):
        spec = getattr(specs, name, None)
        if spec is not None:
            registry["predefined", name] = Process(spec=spec, implementation=func, namespace="predefined")

    def neighborhood(data, process, size, overlap=None, context=None):  # type: ignore[no-untyped-def]
        return apply_neighborhood(data, process, size, overlap, context, results_cache=results_cache)

    def save(data, format, options=None):  # type: ignore[no-untyped-def]
        return save_result(data, format, options, output_dir=output_dir, written=written)

    functools.update_wrapper(neighborhood, apply_neighborhood)
    functools.update_wrapper(save, save_result)
    registry["predefined", "apply_neighborhood"] = Process(spec=APPLY_NEIGHBORHOOD_SPEC, implementation=neighborhood)
    registry["predefined", "save_result"] = Process(spec=specs.save_result, implementation=save)
    registry["predefined", "load_stac"] = Process(spec=specs.load_stac, implementation=load_stac)
    return registry


def run_process_graph(graph: str | os.PathLike[str] | Mapping[str, Any], output_dir: str | os.PathLike[str]) -> list[Path]:
    """Run an openEO process graph locally, as a back-end built on openeo-processes-dask would.

    Args:
        graph: the process graph: a dict (``{"process_graph": {...}}`` as the openeo client
            submits it, or the bare ``{node id: node}`` mapping) or the path of its JSON.
        output_dir: folder for the files of ``save_result``.

    Returns:
        The files written by ``save_result`` nodes.

    Raises:
        MissingDependencyError: openeo-processes-dask or the parser is not installed.
        ConfigError: see :func:`apply_neighborhood` and :func:`save_result`.
    """
    _require()
    from openeo_pg_parser_networkx import OpenEOProcessGraph

    if not isinstance(graph, Mapping):
        graph = json.loads(Path(graph).read_text(encoding="utf-8"))
    cache: dict[Any, Any] = {}
    written: list[Path] = []
    registry = process_registry(output_dir, cache, written)
    parsed = OpenEOProcessGraph(pg_data=dict(graph))
    parsed.to_callable(process_registry=registry, results_cache=cache)()
    return written
