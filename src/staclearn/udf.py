# /// script
# dependencies = ["staclearn"]
# ///
"""openEO UDF: run a model published as an MLM card inside an openEO process graph.

Hand this file to openEO as a user-defined function. For each chunk of the data cube the
back-end calls :func:`apply_datacube`, which loads the model from the MLM card named in
``context["model"]`` (local path or URL; the weights are the card's safetensors asset),
checks the chunk's bands against the card's ``mlm:input`` bands, and returns the predicted
class map (land-cover models) or change mask (two-date change models) as one band.

Use it with ``apply_neighborhood`` so that each chunk carries ``overlap`` pixels of context
on every side; openEO discards the overlap of the result, so chunk seams do not show
(the same idea as the ``padding`` of :func:`staclearn.inference.raster.predict_class_map`)::

    import openeo

    connection = openeo.connect("https://openeo.dataspace.copernicus.eu").authenticate_oidc()
    cube = connection.load_collection(
        "SENTINEL2_L2A",
        spatial_extent={"west": 5.0, "south": 51.2, "east": 5.1, "north": 51.3},
        temporal_extent=["2023-06-01", "2023-06-30"],
        bands=["B02", "B03", "B04", "B08"],
    ).reduce_dimension(dimension="t", reducer="median")
    udf = openeo.UDF.from_file(
        "udf.py",  # this file: python -c "import staclearn.udf as u; print(u.__file__)"
        context={
            "model": "https://example.org/models/my-model/my-model.json",  # the MLM card
            "bands": {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir"},  # openEO -> card
            "padding": 16,
        },
    )
    classes = cube.apply_neighborhood(
        process=udf,
        size=[{"dimension": "x", "value": 256, "unit": "px"}, {"dimension": "y", "value": 256, "unit": "px"}],
        overlap=[{"dimension": "x", "value": 32, "unit": "px"}, {"dimension": "y", "value": 32, "unit": "px"}],
    )
    classes.download("classes.tif")

Each call then sees ``256 + 2 * 32`` px; keep ``tile_size`` (model input, padding included)
at least that big so one chunk is one forward pass. The back-end needs ``staclearn`` in its
UDF environment (declared in the ``# /// script`` block at the top of this file, which
back-ends that support UDF dependencies install).

Cube conventions (openEO's ``XarrayDataCube``): dims ``("t", "bands", "y", "x")`` (``t``
optional; staclearn's ``"time"``/``"band"`` accepted too), a ``bands`` coordinate with the
band labels, NaN (or ``context["nodata"]``) where there is no data. The result keeps every
input dimension (``apply_neighborhood`` must not add or drop dimensions): ``bands`` has the
single label ``"class"`` (``"change"`` for change models), ``t`` keeps its labels for
land-cover models (one prediction per date) and becomes the last date for change models
(whose two dates make one mask). Values are the card's class values as ``uint8`` with 255
where any input band is nodata.

Context keys:

* ``model`` (required): path or URL of the MLM card Item JSON.
* ``bands``: ``{openEO band label: card band name}`` when the labels differ from the card's.
* ``tile_size`` (256), ``padding`` (32), ``batch_size`` (8), ``device`` (``"auto"``): as in
  :func:`staclearn.inference.raster.predict_class_map`.
* ``nodata``: value that marks missing input pixels besides NaN.

Loaded models are kept for the life of the worker process, because openEO calls the UDF once
per chunk: in the model cache of :mod:`staclearn.inference.cache` (at most 4 models), keyed by
the SHA-256 of the card's weights (memoised by the weights file's path, size and modification
time) and the card's model spec. Each call re-reads the card, so a card republished under the
same href with new weights gets a new model; two cards with the same weights and spec share
one. :func:`clear_model_cache` empties the cache.

The same graph runs locally on openeo-processes-dask, the process library of openEO back-ends
such as EODC's, with :func:`staclearn.openeo_processes.run_process_graph` (which adds the
``apply_neighborhood`` and ``save_result`` that library lacks); the graph as JSON and as
openeo client code: ``examples/openeo/landcover_udf.{json,py}``.

Sources: openEO UDF signatures (``openeo.udf.udf_signatures.apply_datacube``,
``apply_metadata``) and the ``apply_neighborhood`` process
(https://processes.openeo.org/#apply_neighborhood).

This module is executed by openEO from its source text, so its annotations must be real
classes (no ``from __future__ import annotations``): openEO picks the UDF by checking that
``cube`` is annotated ``xarray.DataArray``.
"""

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray

from staclearn.errors import BandMismatchError, ConfigError, WeightsNotFoundError
from staclearn.inference import cache as _cache

__all__ = ["apply_datacube", "apply_metadata", "clear_model_cache", "CONTEXT_KEYS"]

CONTEXT_KEYS = ("model", "bands", "tile_size", "padding", "batch_size", "device", "nodata")
"""Keys :func:`apply_datacube` reads from the UDF context; any other key is refused."""

_NODATA = 255
_TIME_DIMS = ("t", "time")
_BAND_DIMS = ("bands", "band")


def _cached_model(href: str) -> Any:
    """The model of the MLM card at ``href``, from the process's model cache (keyed by the
    SHA-256 of the card's safetensors weights and the card's spec)."""
    from staclearn.stac.modelcard import load_model, read_card, spec_from_card, weights_asset

    item = read_card(href)
    _, weights = weights_asset(item)  # ModelCardError names the card
    try:
        digest = _cache.file_digest(weights.get_absolute_href() or weights.href)
    except WeightsNotFoundError:
        return load_model(item)  # raises the error that names the card and its asset
    spec_json = json.dumps(spec_from_card(item).to_dict(), sort_keys=True)
    return _cache.cached_model((digest, spec_json, "cpu"), lambda: load_model(item))


def clear_model_cache() -> None:
    """Forget the models loaded by :func:`apply_datacube` (and every other model of the
    process's model cache, :mod:`staclearn.inference.cache`) in this process."""
    _cache.clear_model_cache()


def _settings(context: Mapping[str, Any] | None) -> dict[str, Any]:
    if context is None or not isinstance(context, Mapping):
        raise ConfigError(
            "The staclearn UDF needs a context dict with the model card: "
            "openeo.UDF.from_file('udf.py', context={'model': '<path or URL of the MLM card JSON>'})."
        )
    unknown = sorted(set(context) - set(CONTEXT_KEYS))
    if unknown:
        raise ConfigError(f"Unknown UDF context key(s) {unknown}; the staclearn UDF reads {list(CONTEXT_KEYS)}.")
    href = context.get("model")
    if not href or not isinstance(href, str):
        raise ConfigError(
            f"The UDF context has no model card (context keys: {sorted(context)}): set "
            "context['model'] to the path or URL of the MLM card Item JSON, e.g. "
            "{'model': 'https://example.org/models/m/m.json'}."
        )
    out = {
        "tile_size": 256,
        "padding": 32,
        "batch_size": 8,
        "device": "auto",
        **{k: v for k, v in context.items() if v is not None},
    }
    for key in ("tile_size", "padding", "batch_size"):
        if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < (0 if key == "padding" else 1):
            raise ConfigError(f"UDF context {key!r} must be a positive number of pixels, got {out[key]!r}.")
    bands = out.get("bands", {})
    if not isinstance(bands, Mapping):
        raise ConfigError(f"UDF context 'bands' must map openEO band labels to card band names, got {bands!r}.")
    return out


def _find_dim(cube: xarray.DataArray, names: tuple[str, ...]) -> str | None:
    found = [d for d in names if d in cube.dims]
    return found[0] if found else None


def _require_dim(cube: xarray.DataArray, names: tuple[str, ...], what: str) -> str:
    found = _find_dim(cube, names)
    if found is None:
        raise BandMismatchError(f"The cube has no {what} dimension (one of {list(names)}); its dims are {list(cube.dims)}.")
    return found


def _select_bands(
    cube: xarray.DataArray, band_dim: str, card_bands: list[str], rename: Mapping[str, str], card: str
) -> xarray.DataArray:
    labels = [str(v) for v in cube.coords[band_dim].values] if band_dim in cube.coords else []
    names = [str(rename.get(b, b)) for b in labels]
    missing = [b for b in card_bands if b not in names]
    if missing:
        raise BandMismatchError(
            f"The cube lacks band(s) {missing} of model card {card!r}, which needs {card_bands}; the "
            f"cube has {labels}. Load them in openEO (load_collection(bands=...)) or map labels to "
            "card names with context['bands'] = {'<openEO label>': '<card band>'}."
        )
    cube = cube.assign_coords({band_dim: names})
    return cube.sel({band_dim: card_bands})


def _predict(model: Any, image: xarray.DataArray, settings: Mapping[str, Any]) -> np.ndarray:
    from staclearn.inference.raster import predict_class_map

    result = predict_class_map(
        model,
        image,
        tile_size=settings["tile_size"],
        padding=settings["padding"],
        batch_size=settings["batch_size"],
        device=settings["device"],
    )
    return np.asarray(result.values, dtype=np.uint8)


def _as_image(cube: xarray.DataArray, band_dim: str, nodata: float | None) -> xarray.DataArray:
    """``(band, y, x) float32`` with NaN nodata and plain coordinates, as staclearn predicts on."""
    arr = cube.transpose(band_dim, "y", "x").astype(np.float32)
    if nodata is not None:
        arr = arr.where(arr != nodata)
    image = xarray.DataArray(
        arr.values,
        dims=("band", "y", "x"),
        coords={"band": [str(b) for b in arr.coords[band_dim].values], "y": arr.y.values, "x": arr.x.values},
    )
    image.attrs["nodata"] = float("nan")
    return image


def apply_datacube(cube: xarray.DataArray, context: dict) -> xarray.DataArray:
    """Predict the class map (or change mask) of one openEO data-cube chunk with an MLM-card model.

    Args:
        cube: ``("t", "bands", "y", "x")`` chunk (``t`` optional; ``"time"``/``"band"`` also
            accepted), any float or integer dtype, in the units the model was trained on, NaN
            where there is no data. Band labels must include the card's ``mlm:input`` bands
            (after ``context["bands"]`` renaming); extra bands are ignored.
        context: the UDF context; ``model`` (card path or URL) is required, see the module
            docstring for the other keys.

    Returns:
        ``uint8`` DataArray with the input's dims and ``y``/``x`` coordinates: the ``bands``
        dimension holds one label, ``"class"`` (class values of the card) or ``"change"``
        (change models); ``t`` keeps its labels (one prediction per date), or holds the
        last date for a change model. 255 where any input band is nodata.

    Raises:
        ConfigError: no ``model`` in the context, an unknown context key, a bad tile setting,
            or a change model given a cube without exactly two dates.
        BandMismatchError: the cube lacks bands the card needs (the message names them), or
            has no band / y / x dimension.
        ModelCardError: the card cannot be read or lacks MLM fields.
        UnsafeWeightsError: the card's weights are not safetensors.
    """
    settings = _settings(context)
    band_dim = _require_dim(cube, _BAND_DIMS, "band")
    time_dim = _find_dim(cube, _TIME_DIMS)
    for d in ("y", "x"):
        _require_dim(cube, (d,), d)
    extra = [d for d in cube.dims if d not in (band_dim, time_dim, "y", "x")]
    if extra:
        raise BandMismatchError(f"The cube has dimension(s) {extra} besides t, bands, y, x; reduce them first.")
    model = _cached_model(settings["model"])
    spec = model.spec
    extra_spec = dict(getattr(spec, "extra", {}) or {})
    is_change = extra_spec.get("dates") == 2
    nodata = settings.get("nodata")
    if is_change:
        date_bands = [str(b) for b in extra_spec.get("date_bands") or []]
        cube = _select_bands(cube, band_dim, date_bands, settings.get("bands", {}), settings["model"])
        if time_dim is None or cube.sizes[time_dim] != 2:
            n = cube.sizes[time_dim] if time_dim else 0
            raise ConfigError(
                f"Model card {settings['model']!r} is a change model: the cube needs a t dimension "
                f"with exactly 2 dates (before, after), it has {n}. Filter the dates in openEO "
                "(filter_temporal) before apply_neighborhood."
            )
        from staclearn.data.pairs import stack_pair

        before = _as_image(cube.isel({time_dim: 0}), band_dim, nodata)
        after = _as_image(cube.isel({time_dim: 1}), band_dim, nodata)
        stacked = stack_pair(before, after, standardize=bool(extra_spec.get("standardize", False)))
        stacked.attrs["nodata"] = float("nan")
        maps = [_predict(model, stacked, settings)]
        times = cube.coords[time_dim].values[-1:]
        label = "change"
    else:
        cube = _select_bands(cube, band_dim, [str(b) for b in spec.bands], settings.get("bands", {}), settings["model"])
        dates = [cube.isel({time_dim: i}) for i in range(cube.sizes[time_dim])] if time_dim else [cube]
        maps = [_predict(model, _as_image(d, band_dim, nodata), settings) for d in dates]
        times = cube.coords[time_dim].values if time_dim else None
        label = "class"
    data = np.stack(maps)[:, None]  # (t, 1, y, x)
    coords: dict[str, Any] = {band_dim: [label], "y": cube.y.values, "x": cube.x.values}
    dims: tuple[str, ...] = ("t", band_dim, "y", "x")
    if time_dim is not None:
        coords[time_dim] = times
        dims = (time_dim, band_dim, "y", "x")
    else:
        data = data[0]
        dims = (band_dim, "y", "x")
    out = xarray.DataArray(data, dims=dims, coords=coords, name=label)
    out.attrs["nodata"] = _NODATA
    return out.transpose(*[d for d in cube.dims if d in out.dims])


def apply_metadata(metadata: "Any", context: dict) -> "Any":
    """Tell openEO the result's band labels: one band, ``"class"`` (or ``"change"``).

    Args:
        metadata: the input cube's ``openeo.metadata.CollectionMetadata``.
        context: the UDF context (``model`` decides between ``"class"`` and ``"change"``).

    Returns:
        The metadata with the ``bands`` dimension relabelled.
    """
    href = (context or {}).get("model")
    label = "class"
    if href:
        spec = _cached_model(href).spec
        if dict(getattr(spec, "extra", {}) or {}).get("dates") == 2:
            label = "change"
    return metadata.rename_labels(dimension="bands", target=[label])
