"""xBD tiles: finding the image and label files of each tile, and splitting whole tiles.

xBD (Gupta et al. 2019) ships one pre- and one post-disaster GeoTIFF per tile with a label
JSON of building polygons each (``images/<tile>_{pre,post}_disaster.tif``,
``labels/<tile>_{pre,post}_disaster.json``). :func:`find_xbd_tiles` reads such a folder and
:func:`tiles_from_catalog` a STAC catalog of such tiles (Items with ``xbd:tile``); both give
one :class:`XbdTile` per tile.

Chips of neighbouring buildings overlap, so footprints are split by whole tiles:
:func:`split_tiles` (train / validation / test, stratified by class) and :func:`tile_folds`
(cross-validation folds), following the protocol of :mod:`staclearn.data.splits`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pystac

from staclearn.data.footprints import STATUS_OK
from staclearn.data.labels import ClassInfo
from staclearn.data.splits import PART_NAMES, TEST, TRAIN, VALID, part_counts, read_regions, split_description
from staclearn.errors import (
    AssetNotFoundError,
    FootprintsNotFoundError,
    NoItemsFoundError,
    SplitError,
)

__all__ = ["XbdTile", "find_xbd_tiles", "tiles_from_catalog", "split_tiles", "tile_folds", "tile_split_record"]

_TRAIN, _VALID, _TEST = PART_NAMES[TRAIN], PART_NAMES[VALID], PART_NAMES[TEST]


@dataclass(frozen=True)
class XbdTile:
    """The files of one xBD tile.

    Attributes:
        tile: tile id, e.g. ``"santa-rosa-wildfire_00000012"``.
        post_image: post-disaster GeoTIFF.
        post_labels: post-disaster label JSON (building polygons with ``subtype``).
        pre_image: pre-disaster GeoTIFF, ``None`` if absent.
        pre_labels: pre-disaster label JSON, ``None`` if absent.
    """

    tile: str
    post_image: Path
    post_labels: Path
    pre_image: Path | None = None
    pre_labels: Path | None = None


def find_xbd_tiles(data_dir: str | os.PathLike[str], tiles: Sequence[str] | None = None) -> dict[str, XbdTile]:
    """The tiles of an xBD-style folder (``images/`` + ``labels/``), sorted by tile id.

    A tile needs ``labels/<tile>_post_disaster.json`` and ``images/<tile>_post_disaster.tif``;
    the pre-disaster files are optional.

    Args:
        data_dir: folder holding ``images/`` and ``labels/``.
        tiles: tile ids to keep (default all); a bare number such as ``"00000012"`` matches
            the tile whose id ends with ``_00000012``.

    Returns:
        ``{tile id: XbdTile}``.

    Raises:
        FootprintsNotFoundError: no ``labels/`` folder, or a post label file without its image.
        NoItemsFoundError: no tile found, or a requested tile is missing.
    """
    root = Path(data_dir)
    if not (root / "labels").is_dir():
        raise FootprintsNotFoundError(f"{root} has no labels/ folder; pass an xBD-style folder (images/, labels/).")
    found: dict[str, XbdTile] = {}
    for lab in sorted((root / "labels").glob("*_post_disaster.json")):
        tile = lab.name[: -len("_post_disaster.json")]
        img = root / "images" / f"{tile}_post_disaster.tif"
        if not img.exists():
            raise FootprintsNotFoundError(f"Tile {tile!r} has labels {lab} but no image {img}.")
        pre_img = root / "images" / f"{tile}_pre_disaster.tif"
        pre_lab = root / "labels" / f"{tile}_pre_disaster.json"
        found[tile] = XbdTile(tile, img, lab, pre_img if pre_img.exists() else None, pre_lab if pre_lab.exists() else None)
    if not found:
        raise NoItemsFoundError(f"No *_post_disaster.json label file in {root / 'labels'}.")
    if tiles is None:
        return found
    out: dict[str, XbdTile] = {}
    for want in tiles:
        match = [t for t in found if t == want or t.endswith(f"_{want}")]
        if len(match) != 1:
            raise NoItemsFoundError(f"Tile {want!r} matches {match or 'no tile'} in {root}; tiles are {sorted(found)}.")
        out[match[0]] = found[match[0]]
    return dict(sorted(out.items()))


def _match_tiles(wanted: Sequence[str], tiles: Sequence[str], what: str) -> set[str]:
    chosen: set[str] = set()
    for want in wanted:
        match = [t for t in tiles if t == want or t.endswith(f"_{want}")]
        if len(match) != 1:
            raise SplitError(
                f"{what.capitalize()} {want!r} matches {match or 'no tile'}; give a tile id (or its number, "
                f"e.g. '00000012') among {list(tiles)}."
            )
        chosen.add(match[0])
    return chosen


def _tiles_in_regions(footprints: gpd.GeoDataFrame, regions: Any, tile_field: str) -> set[str]:
    """Tiles with at least one footprint centroid inside the regions (centroids in the UTM zone)."""
    where = str(regions) if isinstance(regions, (str, os.PathLike)) else "the test regions"
    geoms = footprints[~(footprints.geometry.isna() | footprints.geometry.is_empty)]
    if geoms.empty:
        raise SplitError("No footprint geometry: cannot place tiles in the test regions.")
    metric = geoms.estimate_utm_crs()
    area = read_regions(regions, crs=metric).union_all()
    inside = geoms.to_crs(metric).centroid.intersects(area).to_numpy()
    found = {str(t) for t in geoms.loc[inside, tile_field]}
    if not found:
        tiles = sorted(str(t) for t in footprints[tile_field].unique())
        raise SplitError(
            f"No building centroid of the tiles {tiles} lies in {where}; check the regions' CRS and extent "
            "(GeoJSON is read as EPSG:4326), or give test tiles by id."
        )
    return found


def _draw_tiles(
    hist: np.ndarray, candidates: np.ndarray, fraction: float, rng: np.random.Generator, tries: int
) -> np.ndarray:
    """Rows of ``hist`` (tiles x classes counts) among ``candidates`` drawn as one part.

    ``round(fraction * len(candidates))`` tiles (at least 1, at most all but one). Among
    ``tries`` draws, the one that first holds the most classes on both sides, then brings
    each class's share (and the total share) closest to ``fraction``.
    """
    n = len(candidates)
    k = min(max(1, round(fraction * n)), n - 1)
    total = hist[candidates].sum(0)
    present = total > 0
    best_key, best = None, None
    for _ in range(tries):
        pick = np.sort(rng.choice(candidates, size=k, replace=False))
        v = hist[pick].sum(0)
        rest = total - v
        share = v[present] / total[present]
        balance = float(np.abs(share - fraction).mean()) if present.any() else 0.0
        overall = abs(v.sum() / max(total.sum(), 1) - fraction)
        key = (-int(((v > 0) & (rest > 0)).sum()), round(balance + overall, 12), tuple(pick.tolist()))
        if best_key is None or key < best_key:
            best_key, best = key, pick
    assert best is not None
    return best


def split_tiles(
    footprints: gpd.GeoDataFrame,
    *,
    test_tiles: Sequence[str] | None = None,
    test_regions: Any = None,
    test_fraction: float = 0.2,
    valid_tiles: Sequence[str] | None = None,
    valid_fraction: float = 0.2,
    split_seed: int = 0,
    tile_field: str = "tile",
    tries: int = 500,
) -> dict[str, str]:
    """Assign whole tiles to ``"train"``, ``"valid"`` or ``"test"``.

    The test part is fixed first, then the validation part is drawn from what is left, and
    the remaining tiles train. Whole tiles only: chips of neighbouring buildings overlap, so a
    per-building split would leak.

    - Test: the tiles ``test_tiles``, plus every tile with at least one footprint whose
      centroid (computed in the footprints' UTM zone) lies in ``test_regions`` - so every
      building inside the regions is a test building, and so are the other buildings of its
      tile. Without either, ``round(test_fraction * T)`` tiles are drawn with ``split_seed``.
    - Validation: ``valid_tiles``, else ``round(valid_fraction * R)`` of the R remaining tiles
      drawn with ``split_seed``.

    A draw is stratified: among ``tries`` seeded draws it keeps the one that first holds the
    most classes (of the labelled footprints, ``class_value >= 0``) both in the drawn part
    and in what is left - destroyed and intact buildings on both sides where the tiles allow
    it -, then brings each class's share of labelled footprints closest to the fraction (the
    tile version of :func:`staclearn.chips.pixel.block_split`).

    Args:
        footprints: footprints with ``tile_field`` and ``class_value`` (from
            :func:`~staclearn.data.footprints.assign_classes`), in any CRS.
        test_tiles: tile ids of the test part (a bare number matches ``*_<number>``).
        test_regions: test regions: a vector file geopandas reads (its CRS honoured), a
            GeoDataFrame / GeoSeries, bbox(es) or a shapely geometry in WGS84 degrees (see
            :func:`staclearn.data.splits.read_regions`).
        test_fraction: target share of tiles (and of each class) in the drawn test part,
            in (0, 1); used only when neither ``test_tiles`` nor ``test_regions`` is given.
        valid_tiles: tile ids of the validation part.
        valid_fraction: target share of the non-test tiles drawn for validation, in (0, 1).
        split_seed: seed of the draws (independent of the training seed).
        tile_field: tile id column.
        tries: random draws examined per part.

    Returns:
        ``{tile id: "train" | "valid" | "test"}`` for every tile of the footprints, sorted.

    Raises:
        SplitError: a test / validation tile id matching no tile (or several), a tile both
            in test and validation, test regions that are unreadable, empty or hold no
            building centroid, a fraction outside (0, 1), or too few tiles left for
            validation and training (at least 3 tiles are needed).
    """
    if tile_field not in footprints.columns:
        raise SplitError(f"The footprints have no {tile_field!r} column; columns are {list(footprints.columns)}.")
    tiles = sorted(str(t) for t in footprints[tile_field].unique())
    for name, f in (("test_fraction", test_fraction), ("valid_fraction", valid_fraction)):
        if not 0 < f < 1:
            raise SplitError(f"{name} must be in (0, 1), got {f}.")
    if len(tiles) < 3:
        raise SplitError(f"A train / validation / test split of whole tiles needs at least 3 tiles, got {tiles}.")
    labelled = footprints[footprints["class_value"] >= 0]
    classes = sorted(labelled["class_value"].unique().tolist())
    hist = np.zeros((len(tiles), len(classes)), dtype=np.int64)
    col = {c: j for j, c in enumerate(classes)}
    for (t, c), n in labelled.groupby([labelled[tile_field].astype(str), "class_value"]).size().items():
        hist[tiles.index(t), col[c]] = int(n)
    rng = np.random.default_rng(split_seed)
    test: set[str] = set()
    if test_tiles:
        test |= _match_tiles(test_tiles, tiles, "test tile")
    if test_regions is not None:
        test |= _tiles_in_regions(footprints, test_regions, tile_field)
    if not test_tiles and test_regions is None:
        test = {tiles[i] for i in _draw_tiles(hist, np.arange(len(tiles)), test_fraction, rng, tries)}
    rest = [t for t in tiles if t not in test]
    if len(rest) < 2:
        raise SplitError(
            f"The test part holds {sorted(test)}, leaving {rest}: at least 2 tiles must remain for training and "
            "validation; give fewer test tiles or smaller test regions."
        )
    if valid_tiles:
        valid = _match_tiles(valid_tiles, tiles, "validation tile")
        both = sorted(valid & test)
        if both:
            raise SplitError(f"Tiles {both} are both test and validation tiles; a tile belongs to one part only.")
        if len(valid) == len(rest):
            raise SplitError(f"Every non-test tile {rest} is a validation tile; leave at least one for training.")
    else:
        idx = np.array([tiles.index(t) for t in rest])
        valid = {tiles[i] for i in _draw_tiles(hist, idx, valid_fraction, rng, tries)}
    return {t: _TEST if t in test else _VALID if t in valid else _TRAIN for t in tiles}


def tile_folds(
    footprints: gpd.GeoDataFrame, k: int, *, seed: int = 0, tile_field: str = "tile"
) -> list[list[str]]:
    """Whole tiles in ``k`` cross-validation folds, stratified by class.

    scikit-learn's :class:`~sklearn.model_selection.StratifiedGroupKFold` (tiles as groups,
    ``class_value`` of the labelled footprints as strata, shuffled with ``seed``): each fold
    holds whole tiles and about ``1/k`` of every class, so each held-out fold holds destroyed
    and intact buildings where the tiles allow it. Tiles without a labelled footprint are in
    no fold (they can only train).

    Args:
        footprints: footprints with ``tile_field`` and ``class_value``.
        k: number of folds, at least 2 and at most the number of tiles with labels.
        seed: shuffling seed.
        tile_field: tile id column.

    Returns:
        ``k`` sorted lists of tile ids, disjoint.

    Raises:
        SplitError: ``k`` out of range.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    labelled = footprints[footprints["class_value"] >= 0]
    groups = labelled[tile_field].astype(str).to_numpy()
    n_tiles = len(set(groups))
    if not 2 <= k <= n_tiles:
        raise SplitError(f"k={k} folds of whole tiles need 2 <= k <= {n_tiles} (the tiles with labelled buildings).")
    y = labelled["class_value"].to_numpy()
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [sorted(set(groups[test])) for _, test in folds.split(np.zeros(len(y)), y, groups)]


def tiles_from_catalog(
    source: str | os.PathLike[str], tiles: Sequence[str] | None = None
) -> tuple[dict[str, XbdTile], dict[str, dict[str, pystac.Item]]]:
    """The tiles of a STAC catalog laid out like ``catalogs/xbd-santarosa``.

    Items carry ``xbd:tile``; per tile an imagery Item id ending in ``-post`` (asset
    ``image``), optionally ``-pre``, and a label Item ending in ``-labels`` (asset ``labels``:
    the xBD JSON, or any vector file :func:`~staclearn.data.footprints.read_footprints` reads).

    Args:
        source: catalog path/URL, ItemCollection or STAC API (as :func:`~staclearn.data.search.open_items`).
        tiles: tile ids to keep (a bare number matches ``*_<number>``); default all.

    Returns:
        ``({tile: XbdTile}, {tile: {"pre"|"post"|"labels": Item}})``.

    Raises:
        NoItemsFoundError: no Item with ``xbd:tile``, or a tile without post imagery / labels.
    """
    from staclearn.data.search import open_items

    groups: dict[str, dict[str, pystac.Item]] = {}
    for item in open_items(source):
        tile = item.properties.get("xbd:tile")
        if tile:
            kind = item.id.rsplit("-", 1)[-1]
            groups.setdefault(str(tile), {})[kind] = item
    if not groups:
        raise NoItemsFoundError(f"No Item with an 'xbd:tile' property in {source}; see scripts/build_xbd_catalog.py.")
    found: dict[str, XbdTile] = {}
    for tile, g in sorted(groups.items()):
        if tiles is not None and not any(tile == t or tile.endswith(f"_{t}") for t in tiles):
            continue
        if "post" not in g or "labels" not in g:
            raise NoItemsFoundError(f"Tile {tile!r} in {source} lacks a '-post' imagery Item or a '-labels' Item.")

        def href(kind: str, asset: str, g: dict[str, pystac.Item] = g) -> Path | None:
            item = g.get(kind)
            if item is None:
                return None
            if asset not in item.assets:
                raise AssetNotFoundError(f"Item {item.id!r} has no asset {asset!r}; it has {sorted(item.assets)}.")
            return Path(item.assets[asset].get_absolute_href() or item.assets[asset].href)

        post, labels = href("post", "image"), href("labels", "labels")
        if post is None or labels is None:  # pragma: no cover - checked above
            raise NoItemsFoundError(f"Tile {tile!r} lacks post imagery or labels.")
        found[tile] = XbdTile(tile, post, labels, href("pre", "image"), None)
    if tiles is not None and len(found) != len(tiles):
        raise NoItemsFoundError(f"Tiles {list(tiles)} match {sorted(found)} in {source}; tiles are {sorted(groups)}.")
    return found, {t: groups[t] for t in found}


def tile_split_record(
    index: gpd.GeoDataFrame,
    classes: Sequence[ClassInfo],
    tiles: Mapping[str, Sequence[str]],
    *,
    test_tiles: Sequence[str] | None = None,
    test_regions: Any = None,
    test_fraction: float = 0.2,
    valid_tiles: Sequence[str] | None = None,
    valid_fraction: float = 0.2,
    split_seed: int = 0,
    test_regions_text: str | None = None,
) -> dict[str, Any]:
    """The split record of a whole-tile split, counting the labelled buildings with a chip.

    The buildings counted are those trained and scored on: ``status == "ok"``, a chip, and a
    class (``class_value >= 0``). The keyword arguments are those given to
    :func:`split_tiles`; they say in words how each part was made.

    Args:
        index: the chip index (:func:`staclearn.chips.objects.export_footprint_chips`) with
            ``status``, ``chip``, ``class_value`` and ``split`` (``"train"`` / ``"valid"`` /
            ``"test"``).
        classes: the classes, in model output order.
        tiles: ``{"train" | "valid" | "test": [tile ids]}``.
        test_tiles, test_regions, test_fraction, valid_tiles, valid_fraction, split_seed: as
            given to :func:`split_tiles`.
        test_regions_text: how to name the test regions in the record (a path, or a
            description); ``None`` when there are none.

    Returns:
        The record of :func:`staclearn.data.splits.split_description`: ``method``,
        ``split_seed`` (``None`` when the test and validation tiles were both given),
        ``unit`` ``"buildings"``, ``counts`` per part per class name, ``tiles`` per part,
        ``test_regions``.

    Raises:
        SplitError: the validation or the test tiles hold no labelled building with a chip.
    """
    lut = {c.value: i for i, c in enumerate(classes)}
    usable = (index["status"] == STATUS_OK) & index["chip"].notna() & (index["class_value"] >= 0)
    labels = np.where(usable, index["class_value"].map(lut).fillna(255), 255).astype(np.int64)
    codes = index["split"].map({v: k for k, v in PART_NAMES.items()}).fillna(-1).astype(np.int64).to_numpy()
    counts = part_counts(labels, codes, [c.name for c in classes])
    for part in (_VALID, _TEST):
        if sum(counts[part].values()) == 0:
            raise SplitError(
                f"No labelled building with a chip on the {part} tiles {list(tiles[part])}; choose other tiles or another split_seed."
            )
    given = bool(test_tiles or test_regions is not None)
    if given:
        how = " and ".join(
            w for w, on in (("by tile id", bool(test_tiles)), ("by test regions (tiles with a building centroid inside)", test_regions is not None)) if on
        )
        test = f"test tiles given {how}"
    else:
        test = f"test tiles drawn with split_seed (test_fraction={test_fraction:g}), stratified by class"
    valid = (
        "validation tiles given by id"
        if valid_tiles
        else f"validation tiles drawn from the rest with split_seed (valid_fraction={valid_fraction:g}), stratified by class"
    )
    return split_description(
        f"whole xBD tiles; {test}; {valid}; the rest train",
        split_seed=None if given and bool(valid_tiles) else split_seed,
        counts=counts,
        unit="buildings",
        tiles={p: list(tiles[p]) for p in (_TRAIN, _VALID, _TEST)},
        test_regions=test_regions_text,
    )
