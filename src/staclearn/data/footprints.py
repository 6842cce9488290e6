"""Building footprints: reading polygons with a unique id, and mapping damage labels to classes.

Footprints are the objects of *feature categorization* (object classification): one polygon
per building, one class per polygon. Whatever the source (xBD JSON, GeoJSON, GeoParquet,
GeoPackage, a STAC Item), they end as a :class:`geopandas.GeoDataFrame` in the source CRS
with a unique string column ``footprint_id``, so predictions can be joined back to them.

Raw damage labels (xBD ``subtype`` values such as ``"destroyed"``) are mapped to classes with
a :class:`ClassMap`. The presets follow the xBD Joint Damage Scale (Gupta et al. 2019,
"xBD: A Dataset for Assessing Building Damage from Satellite Imagery", CVPR Workshops):
``no-damage``, ``minor-damage``, ``major-damage``, ``destroyed``; ``un-classified`` buildings
carry no damage label and are excluded (kept, flagged and reported, never dropped).

Every footprint keeps a ``status``: :data:`STATUS_OK`, :data:`STATUS_EXCLUDED` (its label is
in ``exclude``), :data:`STATUS_EMPTY` (empty geometry) or, once chips are cut,
:data:`STATUS_OUTSIDE` (no imagery under it).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pystac
import shapely
from shapely.errors import ShapelyError

from staclearn.errors import (
    AssetNotFoundError,
    ConfigError,
    EmptyDataError,
    DuplicateIdError,
    FieldNotFoundError,
    FootprintsNotFoundError,
    FootprintWarning,
    LabelError,
)
from staclearn.data.labels import ClassInfo

__all__ = [
    "ID_FIELD",
    "STATUS_OK",
    "STATUS_EXCLUDED",
    "STATUS_EMPTY",
    "STATUS_OUTSIDE",
    "ClassMap",
    "XBD_BINARY",
    "XBD_DESTROYED",
    "XBD_FOUR",
    "CLASS_MAPS",
    "get_class_map",
    "read_xbd_labels",
    "read_footprints",
    "ensure_footprint_ids",
    "assign_classes",
]

ID_FIELD = "footprint_id"
"""Name of the unique string id column of every footprint table."""

STATUS_OK = "ok"
"""The footprint has a chip (or will get one) and, where labelled, a class."""
STATUS_EXCLUDED = "excluded"
"""Its raw label is in ``exclude`` (e.g. xBD ``un-classified``): kept, not trained on nor scored."""
STATUS_EMPTY = "empty_geometry"
"""Its geometry is missing or empty: no chip can be cut."""
STATUS_OUTSIDE = "outside_imagery"
"""No imagery (post, or pre when stacked) lies under it: no chip, no prediction."""

_XBD_NAME = re.compile(r"^(?P<tile>.+?)_(?P<phase>pre|post)_disaster$")

_VECTOR_MEDIA_TYPES = {
    "application/geo+json": ".geojson",
    "application/vnd.apache.parquet": ".parquet",
    "application/x-parquet": ".parquet",
    "application/geopackage+sqlite3": ".gpkg",
}
_VECTOR_SUFFIXES = (".geojson", ".json", ".parquet", ".geoparquet", ".gpkg", ".fgb", ".shp")
_PARQUET_SUFFIXES = (".parquet", ".geoparquet")


@dataclass(frozen=True, init=False)
class ClassMap:
    """A mapping from raw label values (e.g. xBD ``subtype``) to classes.

    Several raw values may map to one class (``minor-damage`` and ``destroyed`` to
    ``damaged``). The class *index* used by a classifier is the position of the class in
    :attr:`classes` (sorted by value); the presets use values ``0..K-1`` so index == value.

    Args:
        name: short name of the mapping, e.g. ``"xbd_binary"``.
        mapping: raw value -> :class:`~staclearn.data.labels.ClassInfo`.

    Raises:
        ConfigError: ``mapping`` is empty, or one class value is given two different names.
    """

    name: str
    pairs: tuple[tuple[Any, ClassInfo], ...]
    """``(raw value, class)`` pairs, in the order given."""

    def __init__(self, name: str, mapping: Mapping[Any, ClassInfo]) -> None:
        if not mapping:
            raise ConfigError(f"Class map {name!r} is empty; map at least one raw value to a ClassInfo.")
        by_value: dict[int, ClassInfo] = {}
        for raw, c in mapping.items():
            other = by_value.setdefault(int(c.value), c)
            if other.name != c.name:
                raise ConfigError(
                    f"Class map {name!r} gives class value {c.value} two names, {other.name!r} and "
                    f"{c.name!r} (raw value {raw!r}); use one ClassInfo per class value."
                )
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "pairs", tuple(mapping.items()))

    @property
    def mapping(self) -> dict[Any, ClassInfo]:
        """Raw value -> class, as a new dict."""
        return dict(self.pairs)

    @property
    def classes(self) -> tuple[ClassInfo, ...]:
        """The distinct classes sorted by value; a classifier's output ``i`` is ``classes[i]``."""
        seen: dict[int, ClassInfo] = {}
        for _, c in self.pairs:
            seen.setdefault(int(c.value), c)
        return tuple(seen[v] for v in sorted(seen))

    def lookup(self, raw: Any) -> ClassInfo | None:
        """The class of raw value ``raw`` (matched as is, then by ``str`` forms); ``None`` if unmapped."""
        m = self.mapping
        if raw in m:
            return m[raw]
        return {str(k): c for k, c in self.pairs}.get(str(raw))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``{"name", "mapping": {raw: value}, "classes": [Class Objects]}``."""
        return {
            "name": self.name,
            "mapping": {str(raw): int(c.value) for raw, c in self.pairs},
            "classes": [c.to_dict() for c in self.classes],
        }


_UNDAMAGED = ClassInfo(0, "undamaged", "2E8B57", "xBD no-damage")
_DAMAGED = ClassInfo(1, "damaged", "DC143C", "xBD minor-damage, major-damage or destroyed")
_NOT_DESTROYED = ClassInfo(0, "not destroyed", "2E8B57", "xBD no-damage, minor-damage or major-damage")
_DESTROYED = ClassInfo(1, "destroyed", "DC143C", "xBD destroyed")

XBD_BINARY = ClassMap(
    "xbd_binary",
    {"no-damage": _UNDAMAGED, "minor-damage": _DAMAGED, "major-damage": _DAMAGED, "destroyed": _DAMAGED},
)
"""xBD subtypes to 0 ``undamaged`` (no-damage) / 1 ``damaged`` (minor, major, destroyed)."""

XBD_DESTROYED = ClassMap(
    "xbd_destroyed",
    {
        "no-damage": _NOT_DESTROYED,
        "minor-damage": _NOT_DESTROYED,
        "major-damage": _NOT_DESTROYED,
        "destroyed": _DESTROYED,
    },
)
"""xBD subtypes to 0 ``not destroyed`` / 1 ``destroyed``."""

XBD_FOUR = ClassMap(
    "xbd_four",
    {
        "no-damage": ClassInfo(0, "no damage", "2E8B57", "xBD Joint Damage Scale 0: undisturbed"),
        "minor-damage": ClassInfo(1, "minor damage", "FFD700", "xBD Joint Damage Scale 1: partial damage"),
        "major-damage": ClassInfo(2, "major damage", "FF8C00", "xBD Joint Damage Scale 2: partial collapse"),
        "destroyed": ClassInfo(3, "destroyed", "DC143C", "xBD Joint Damage Scale 3: scorched or collapsed"),
    },
)
"""The four levels of the xBD Joint Damage Scale, values 0..3."""

CLASS_MAPS: dict[str, ClassMap] = {m.name: m for m in (XBD_BINARY, XBD_DESTROYED, XBD_FOUR)}
"""The presets by name."""


def get_class_map(class_map: str | ClassMap | Mapping[Any, ClassInfo]) -> ClassMap:
    """A :class:`ClassMap` from a preset name, a ClassMap, or a raw-value -> ClassInfo mapping.

    Raises:
        ConfigError: unknown preset name, or an invalid mapping.
    """
    if isinstance(class_map, ClassMap):
        return class_map
    if isinstance(class_map, str):
        if class_map not in CLASS_MAPS:
            raise ConfigError(f"Unknown class map {class_map!r}; presets are {sorted(CLASS_MAPS)}.")
        return CLASS_MAPS[class_map]
    return ClassMap("custom", class_map)


def _paths(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _is_xbd(doc: Any) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("features"), dict) and "lng_lat" in doc["features"]


def _xbd_frame(doc: dict[str, Any], path: Path) -> gpd.GeoDataFrame:
    m = _XBD_NAME.match(path.stem)
    if m is None:
        img = str(doc.get("metadata", {}).get("img_name", ""))
        m = _XBD_NAME.match(Path(img).stem)
    tile = m["tile"] if m else path.stem
    phase = m["phase"] if m else None
    rows = []
    for i, feat in enumerate(doc["features"]["lng_lat"]):
        props = feat.get("properties", {})
        try:
            geom = shapely.from_wkt(feat["wkt"])
        except (KeyError, ShapelyError) as err:
            raise LabelError(
                f"Feature {i} (uid {props.get('uid')!r}) of xBD file {path} has no valid 'wkt' "
                "polygon; fix or remove it."
            ) from err
        rows.append(
            {
                "uid": props.get("uid"),
                "feature_type": props.get("feature_type"),
                "subtype": props.get("subtype"),
                "tile": tile,
                "phase": phase,
                "geometry": geom,
            }
        )
    columns = ["uid", "feature_type", "subtype", "tile", "phase", "geometry"]
    return gpd.GeoDataFrame(pd.DataFrame(rows, columns=columns), geometry="geometry", crs="EPSG:4326")


def read_xbd_labels(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> gpd.GeoDataFrame:
    """Read xBD label JSON files (``features.lng_lat`` WKT polygons) into one GeoDataFrame.

    The tile id comes from the file name: ``santa-rosa-wildfire_00000012_post_disaster.json``
    gives tile ``"santa-rosa-wildfire_00000012"`` and phase ``"post"`` (falling back on the
    JSON's ``metadata.img_name``, then the file stem). Pre-disaster files carry no
    ``subtype`` (``None``).

    Args:
        paths: one JSON path or several.

    Returns:
        GeoDataFrame in EPSG:4326 (WGS84 degrees), one row per polygon in file order, columns
        ``uid`` (str), ``feature_type`` (``"building"``), ``subtype`` (str or ``None``),
        ``tile`` (str), ``phase`` (``"pre"``/``"post"``/``None``), ``geometry``.

    Raises:
        FootprintsNotFoundError: a file does not exist.
        EmptyDataError: a file holds no building polygon (the file is named).
        LabelError: a file is not xBD JSON, or a feature has no valid WKT.
    """
    frames = []
    for path in _paths(paths):
        if not path.is_file():
            raise FootprintsNotFoundError(f"xBD label file {path} does not exist; check the path.")
        with open(path, encoding="utf-8") as fh:
            try:
                doc = json.load(fh)
            except json.JSONDecodeError as err:
                raise LabelError(f"{path} is not valid JSON: {err}") from err
        if not _is_xbd(doc):
            raise LabelError(
                f"{path} is not an xBD label file (no 'features.lng_lat' list); read GeoJSON with "
                "read_footprints instead."
            )
        if not doc["features"]["lng_lat"]:
            raise EmptyDataError(
                f"xBD label file {path} holds no building polygon ('features.lng_lat' is empty), so its tile "
                "has nothing to train or score on: leave that tile out (tiles= / --tile), or remove its label "
                "and image files from the folder."
            )
        frames.append(_xbd_frame(doc, path))
    if not frames:
        raise ConfigError("read_xbd_labels got no path; pass one or more xBD JSON files.")
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs="EPSG:4326")


def _asset_href(item: pystac.Item) -> str:
    for asset in item.assets.values():
        if (asset.media_type or "").split(";")[0].strip() in _VECTOR_MEDIA_TYPES:
            return asset.get_absolute_href() or asset.href
    for asset in item.assets.values():
        roles = set(asset.roles or [])
        if roles & {"labels", "data"} and Path(asset.href).suffix.lower() in _VECTOR_SUFFIXES:
            return asset.get_absolute_href() or asset.href
    raise AssetNotFoundError(
        f"Item {item.id!r} has no footprint asset: none of {sorted(item.assets)} has a GeoJSON, "
        "GeoParquet or GeoPackage media type, or role 'labels'/'data' with such an extension. "
        "Add one, or pass the file path."
    )


def ensure_footprint_ids(gdf: gpd.GeoDataFrame, id_field: str | None = None) -> gpd.GeoDataFrame:
    """Add the unique string column ``footprint_id`` (a copy is returned).

    The id comes from ``id_field`` if given, else an existing ``footprint_id`` column, else
    xBD's ``uid``, else the row index (as string).

    Args:
        gdf: footprints.
        id_field: column holding the id.

    Returns:
        A copy of ``gdf`` with ``footprint_id`` (str).

    Raises:
        FieldNotFoundError: ``id_field`` is not a column (the columns are listed).
        DuplicateIdError: ids are not unique (the duplicated ones are named).
        LabelError: an id is null.
    """
    out = gdf.copy()
    if id_field is not None:
        if id_field not in out.columns:
            raise FieldNotFoundError(
                f"Id field {id_field!r} is not a column of the footprints; columns are "
                f"{[c for c in out.columns if c != out.geometry.name]}. Pass an existing id_field."
            )
        source = out[id_field]
    elif ID_FIELD in out.columns:
        source = out[ID_FIELD]
    elif "uid" in out.columns:
        id_field, source = "uid", out["uid"]
    else:
        id_field, source = "row index", pd.Series(out.index, index=out.index)
    if source.isna().any():
        bad = [str(i) for i in out.index[source.isna()][:10]]
        raise LabelError(f"Footprints at rows {bad} have no id in {id_field!r}; fill them or use another id_field.")
    ids = source.astype(str)
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        names = sorted(set(dup))
        raise DuplicateIdError(
            f"{len(names)} footprint ids in {id_field or ID_FIELD!r} are not unique, e.g. {names[:10]}; "
            "pass an id_field whose values are unique (reading pre and post xBD files of one tile "
            "together repeats every uid: read only the post files)."
        )
    out[ID_FIELD] = ids.to_numpy()
    return out


def read_footprints(
    source: str | os.PathLike[str] | pystac.Item | gpd.GeoDataFrame,
    *,
    id_field: str | None = None,
    layer: str | None = None,
) -> gpd.GeoDataFrame:
    """Read building footprints from any vector source, with a unique ``footprint_id``.

    Sources: a GeoDataFrame (copied); a path geopandas reads (GeoJSON, GeoPackage,
    FlatGeobuf, Shapefile; GeoParquet by its ``.parquet``/``.geoparquet`` extension); an xBD
    JSON (detected by its ``features.lng_lat`` keys, read with :func:`read_xbd_labels`); or a
    pystac Item, whose first asset with a GeoJSON/GeoParquet/GeoPackage media type (else
    role ``labels``/``data`` and such an extension) is read.

    Args:
        source: the footprints.
        id_field: column with a unique id per footprint; default ``footprint_id``, ``uid`` or
            the row index.
        layer: layer of a multi-layer file (GeoPackage); default the first.

    Returns:
        GeoDataFrame in the source CRS with every source column plus ``footprint_id`` (str).

    Raises:
        FootprintsNotFoundError: the file does not exist.
        EmptyDataError: the file (or the Item's asset, or the layer) holds no feature; a
            GeoDataFrame given in code may be empty.
        AssetNotFoundError: the Item has no footprint asset.
        FieldNotFoundError: ``id_field`` is missing.
        DuplicateIdError: the ids are not unique.
        LabelError: the footprints have no CRS.
    """
    if isinstance(source, gpd.GeoDataFrame):
        gdf = source
        where = "the GeoDataFrame"
    else:
        href = _asset_href(source) if isinstance(source, pystac.Item) else os.fspath(source)
        where = href
        is_url = "://" in href
        if not is_url and not Path(href).exists():
            raise FootprintsNotFoundError(f"Footprint file {href} does not exist; check the path or asset href.")
        suffix = Path(href).suffix.lower()
        if suffix in _PARQUET_SUFFIXES:
            gdf = gpd.read_parquet(href)
        elif suffix == ".json" and not is_url and _is_xbd(json.loads(Path(href).read_text(encoding="utf-8"))):
            gdf = read_xbd_labels(href)
        else:
            gdf = gpd.read_file(href, layer=layer)
    if len(gdf) == 0 and not isinstance(source, gpd.GeoDataFrame):
        what = f"Footprint asset {href} of Item {source.id!r}" if isinstance(source, pystac.Item) else f"Footprint file {href}"
        raise EmptyDataError(
            f"{what} holds no feature"
            + (f" in layer {layer!r}" if layer is not None else "")
            + ": point to the file (or layer) that holds the building polygons, or regenerate it."
        )
    if gdf.crs is None:
        raise LabelError(f"The footprints of {where} have no CRS; set it (gdf.set_crs('EPSG:4326')) first.")
    return ensure_footprint_ids(gdf, id_field)


def _warn_ids(what: str, ids: Sequence[str]) -> None:
    shown = list(ids[:20])
    more = f" and {len(ids) - len(shown)} more" if len(ids) > len(shown) else ""
    warnings.warn(f"{len(ids)} footprints {what}: ids {shown}{more}", FootprintWarning, stacklevel=3)


def assign_classes(
    footprints: gpd.GeoDataFrame,
    classvalue_field: str,
    class_map: str | ClassMap | Mapping[Any, ClassInfo],
    *,
    exclude: Sequence[Any] = ("un-classified",),
) -> tuple[gpd.GeoDataFrame, dict[str, list[str]]]:
    """Map each footprint's raw label to a class.

    No footprint is dropped: excluded labels and empty geometries get ``class_value == -1``,
    a ``status`` saying why, and are reported by id (empty geometries also with a
    :class:`~staclearn.errors.FootprintWarning`).

    Args:
        footprints: footprints (``footprint_id`` is added as by :func:`ensure_footprint_ids`
            when missing).
        classvalue_field: column holding the raw label, e.g. xBD ``"subtype"``.
        class_map: a preset name (``"xbd_binary"``, ``"xbd_destroyed"``, ``"xbd_four"``), a
            :class:`ClassMap` or a raw value -> ClassInfo mapping.
        exclude: raw values to keep out of training and scoring (xBD ``"un-classified"``);
            include ``None`` to exclude unlabelled (null) footprints too.

    Returns:
        ``(gdf, report)``: a copy of the footprints with ``class_value`` (int64, -1 when
        excluded), ``class_name`` (str or ``None``) and ``status`` (``"ok"``, ``"excluded"``,
        ``"empty_geometry"``); and ``report`` = ``{reason: [footprint ids]}`` with one key per
        excluded raw value found (as ``str``) and ``"empty_geometry"`` when any.

    Raises:
        FieldNotFoundError: ``classvalue_field`` is not a column (the columns are listed).
        LabelError: raw values that are neither mapped nor excluded (values and footprint
            ids named).
        ConfigError: unknown class-map preset.
    """
    cmap = get_class_map(class_map)
    gdf = ensure_footprint_ids(footprints)
    if classvalue_field not in gdf.columns:
        raise FieldNotFoundError(
            f"Class value field {classvalue_field!r} is not a column of the footprints; columns are "
            f"{[c for c in gdf.columns if c != gdf.geometry.name]}. Pass classvalue_field= one of them."
        )
    raw = gdf[classvalue_field]
    ids = gdf[ID_FIELD].astype(str).to_numpy()
    is_null = raw.isna().to_numpy()
    excluded_values = [v for v in exclude if v is not None]
    is_excluded = raw.isin(excluded_values).to_numpy() | (is_null & (None in exclude))
    values = np.full(len(gdf), -1, dtype=np.int64)
    names: list[str | None] = [None] * len(gdf)
    unknown: dict[str, list[str]] = {}
    found: dict[Any, ClassInfo | None] = {}
    for i, (v, null, excl) in enumerate(zip(raw.to_numpy(), is_null, is_excluded, strict=True)):
        if excl:
            continue
        if not null and v not in found:
            found[v] = cmap.lookup(v)
        c = None if null else found[v]
        if c is None:
            unknown.setdefault(repr(None if null else v), []).append(ids[i])
            continue
        values[i], names[i] = int(c.value), c.name
    if unknown:
        detail = "; ".join(f"{v}: {len(u)} footprints, e.g. {u[:5]}" for v, u in unknown.items())
        raise LabelError(
            f"Values of {classvalue_field!r} not in class map {cmap.name!r} (raw values "
            f"{[str(r) for r, _ in cmap.pairs]}) nor in exclude={list(exclude)}: {detail}. Add them to "
            "the class map or to exclude."
        )
    empty = (gdf.geometry.isna() | gdf.geometry.is_empty).to_numpy()
    status = np.where(is_excluded, STATUS_EXCLUDED, STATUS_OK).astype(object)
    status[empty] = STATUS_EMPTY
    values[empty] = -1
    for i in np.flatnonzero(empty):
        names[i] = None
    report: dict[str, list[str]] = {}
    for v in exclude:
        hit = (is_null & is_excluded) if v is None else (raw.to_numpy() == v)
        hit = hit & is_excluded
        if hit.any():
            report[str(v)] = ids[hit].tolist()
    if empty.any():
        report[STATUS_EMPTY] = ids[empty].tolist()
        _warn_ids("have an empty geometry and are excluded (no chip can be cut)", report[STATUS_EMPTY])
    gdf["class_value"] = values
    gdf["class_name"] = pd.Series(names, index=gdf.index, dtype=object)
    gdf["status"] = status
    return gdf, report
