"""The building-damage workflow end to end: xBD tiles -> footprint chips -> classifier -> per-building map.

:func:`run_damage` trains and evaluates a building-damage classifier (feature
categorization) on an xBD-style folder (``images/<tile>_{pre,post}_disaster.tif``,
``labels/<tile>_{pre,post}_disaster.json``) or a STAC catalog of such tiles. Each step is a
public function of its own module:

1. :func:`find_xbd_tiles` / :func:`tiles_from_catalog` and
   :func:`staclearn.data.footprints.read_xbd_labels` - the footprints of every tile;
2. :func:`staclearn.data.footprints.assign_classes` - raw ``subtype`` -> classes
   (``un-classified`` kept, excluded, reported);
3. :func:`split_tiles` - whole tiles go to a **test** part (given as tile ids or regions, or
   drawn with ``split_seed``), then a **validation** part drawn from the rest, then training
   (the protocol of :mod:`staclearn.data.splits`). The test tiles serve the final figures only:
   epoch selection, early stopping, class weights and normalisation statistics use the
   training and validation tiles;
4. :func:`staclearn.chips.objects.export_footprint_chips` - one chip per building (test
   buildings too, marked ``split == "test"``; they never enter a training or validation
   dataset);
5. :class:`staclearn.training.objects.ClassifierTrainer` - ``fit(epochs, lr)``;
6. a non-deep baseline on the same training buildings: scikit-learn's
   ``HistGradientBoostingClassifier`` on per-building colour statistics
   (:func:`staclearn.chips.objects.chip_features`);
7. :func:`staclearn.training.objects.classify_objects` - the test and validation tiles' buildings;
8. :mod:`staclearn.evaluation.metrics` - per-building figures of the test and validation parts kept
   apart (``evaluation.json``), and the MLM card + per-building Item (``catalog.json``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pystac

from staclearn.models.classifier import ClassifierSpec, ObjectClassifier, build_classifier
from staclearn.training.objects import ClassifierEpoch, ClassifierTrainer, classify_objects
from staclearn.errors import (
    AssetNotFoundError,
    FootprintsNotFoundError,
    NoItemsFoundError,
    SplitError,
)
from staclearn.inference.engines import add_onnx_artifact
from staclearn.evaluation.metrics import ClassificationMetrics, compute_metrics, summary
from staclearn.evaluation.reports import write_evaluation
from staclearn.chips.objects import (
    FootprintChipDataset,
    chip_band_statistics,
    chip_features,
    export_footprint_chips,
)
from staclearn.data.footprints import (
    STATUS_OK,
    ClassMap,
    assign_classes,
    get_class_map,
    read_footprints,
    read_xbd_labels,
)
from staclearn.data.labels import ClassInfo
from staclearn.models.segmentation import save_weights
from staclearn.data.splits import PART_NAMES, TEST, TRAIN, VALID, part_counts, read_regions, split_description
from staclearn._io import write_json

__all__ = [
    "XbdTile",
    "find_xbd_tiles",
    "tiles_from_catalog",
    "split_tiles",
    "tile_folds",
    "DamageConfig",
    "DamageResult",
    "run_damage",
    "BASELINE_NAME",
]

_TRAIN, _VALID, _TEST = PART_NAMES[TRAIN], PART_NAMES[VALID], PART_NAMES[TEST]
#: Name of the non-deep baseline in ``evaluation.json`` and the card's ``staclearn:metrics``.
BASELINE_NAME = "hist_gradient_boosting"


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


@dataclass(frozen=True)
class DamageConfig:
    """Settings of a building-damage run.

    Attributes:
        classvalue_field: footprint field with the raw damage label (xBD ``"subtype"``).
        class_map: a preset (``"xbd_binary"``, ``"xbd_destroyed"``, ``"xbd_four"``), or a
            :class:`~staclearn.data.footprints.ClassMap`.
        exclude: raw labels kept out of training and scoring (kept in the outputs).
        chip_size: chip edge in pixels (32: ~1.1 m pixels for a 15 m house with its 10 m
            buffer; 4x cheaper than 64, which let ``bench/damage.py`` run 3 folds x 3 seeds on
            2 CPU cores; 64 px has not been measured under the train / validation / test protocol).
        buffer_m: context around each footprint's bounding box, in metres.
        stack_pre: stack the pre-disaster image after the post one (6 channels for RGB).
        mask_outside: factor for pixels outside the footprint (0.0 blacks out, 0.3 darkens);
            ``None`` leaves them (on the bench, 0.3 lowered the test F1(destroyed) of fold 0
            from 0.94 to 0.85: the neighbours' state is evidence).
        model_name: timm classifier (``"resnet18"``, ``"resnet34"``...).
        pretrained: start from timm's pre-trained weights (needs internet or a cache).
        epochs: training epochs (length of the one-cycle schedule).
        patience: stop when the validation macro-F1 has not improved for this many epochs
            (early stopping on the validation tiles, never the test tiles); ``None`` runs
            every epoch.
        lr: peak learning rate of the one-cycle schedule.
        batch_size: chips per batch.
        class_weights: ``"balanced"`` (inverse frequency of the training buildings) or ``None``.
        augment: flips / rotation / zoom / shift and brightness / contrast jitter in training.
        keep_best: keep the weights of the epoch with the best validation macro-F1 (the
            validation figures are then optimistic; the test figures are not, the test
            tiles having made no choice); ``False`` keeps the last epoch.
        test_tiles: tile ids of the test part (a bare number matches ``*_<number>``).
        test_regions: test regions: a vector file geopandas reads, a GeoDataFrame, bbox(es)
            or a shapely geometry in WGS84 degrees; every tile with a footprint centroid in
            them is a test tile (whole tiles only; see :func:`split_tiles`).
        test_fraction: share of tiles drawn as test when neither ``test_tiles`` nor
            ``test_regions`` is given, in (0, 1).
        valid_tiles: tile ids of the validation part; ``None`` draws them from the non-test
            tiles with ``valid_fraction``.
        valid_fraction: share of the non-test tiles drawn for validation, in (0, 1).
        split_seed: seed of the test / validation draws; changing ``seed`` keeps the split.
        seed: training seed: initialisation, shuffling, augmentation and the baseline.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
        num_workers: DataLoader worker processes.
    """

    classvalue_field: str = "subtype"
    class_map: str | ClassMap = "xbd_binary"
    exclude: tuple[str, ...] = ("un-classified",)
    chip_size: int = 32
    buffer_m: float = 10.0
    stack_pre: bool = True
    mask_outside: float | None = None
    model_name: str = "resnet18"
    pretrained: bool = False
    epochs: int = 10
    patience: int | None = 3
    lr: float = 1e-3
    batch_size: int = 32
    class_weights: str | None = "balanced"
    augment: bool = True
    keep_best: bool = True
    test_tiles: tuple[str, ...] | None = None
    test_regions: Any = None
    test_fraction: float = 0.2
    valid_tiles: tuple[str, ...] | None = None
    valid_fraction: float = 0.2
    split_seed: int = 0
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the class map by name and mapping; test regions as a path or a description)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["class_map"] = get_class_map(self.class_map).to_dict()
        d["exclude"] = list(self.exclude)
        d["valid_tiles"] = None if self.valid_tiles is None else list(self.valid_tiles)
        d["test_tiles"] = None if self.test_tiles is None else list(self.test_tiles)
        d["test_regions"] = _regions_text(self.test_regions)
        return d


def _regions_text(regions: Any) -> str | None:
    if regions is None:
        return None
    if isinstance(regions, (str, os.PathLike)):
        return str(regions)
    return f"{type(regions).__name__} given in code"


@dataclass
class DamageResult:
    """What :func:`run_damage` produced.

    Attributes:
        out_dir: the run folder.
        config: the settings used.
        model: the trained classifier (best epoch by validation macro-F1), in eval mode.
        spec: its :class:`~staclearn.models.classifier.ClassifierSpec` (also in ``spec_path``).
        classes: classes in model output order.
        tiles: ``{tile id: XbdTile}`` of every tile used (source image and label paths).
        train_tiles: training tile ids.
        valid_tiles: validation tile ids (epoch selection, early stopping).
        test_tiles: test tile ids (final figures only).
        split: the split record (:func:`staclearn.data.splits.split_description`: method,
            ``split_seed``, per-part per-class building counts, tiles per part), also in
            ``split.json``, ``evaluation.json``, the card and the per-building Item.
        excluded: ``{reason: [footprint ids]}`` from :func:`~staclearn.data.footprints.assign_classes`.
        history: one record per epoch.
        best_epoch: the epoch whose weights were kept.
        test_metrics: per-building metrics of the model on the test tiles' labelled buildings.
        valid_metrics: the same on the validation tiles (optimistic: they chose the epoch).
        baseline_metrics: the baseline (:data:`BASELINE_NAME`) on the test buildings.
        n_train: training chips.
        n_valid: validation buildings scored.
        n_test: test buildings scored.
        chips_index: ``chips.parquet`` of every footprint (``split`` = train / valid / test).
        weights_path: ``model.safetensors``.
        spec_path: ``model.json`` (the spec).
        predictions: ``buildings.parquet``: every test- and validation-tile building with its
            ``part`` (``"test"`` / ``"valid"``), reference (``reference_value``,
            ``reference_name``, ``label_status``) and predicted class.
        evaluation_json: ``evaluation.json`` (:func:`staclearn.evaluation.reports.write_evaluation`):
            ``"test"`` (model and baseline) and ``"validation"`` (model) kept apart, ``"split"``.
        confusion_png: ``evaluation_confusion.png`` (test part).
        history_path: ``history.json``.
        catalog: ``catalog.json``: the MLM card (task classification) and the per-building
            Item (GeoParquet asset), both with ``staclearn:metrics`` ``{"test", "validation"}``
            and ``staclearn:split``, ``derived_from`` links to the imagery Items and card.
        timings: seconds per step (``chips``, ``train``, ``baseline``, ``classify``) and ``total``.
    """

    out_dir: Path
    config: DamageConfig
    model: ObjectClassifier
    spec: ClassifierSpec
    classes: tuple[ClassInfo, ...]
    tiles: dict[str, XbdTile]
    train_tiles: list[str]
    valid_tiles: list[str]
    test_tiles: list[str]
    split: dict[str, Any]
    excluded: dict[str, list[str]]
    history: list[ClassifierEpoch]
    best_epoch: int | None
    test_metrics: ClassificationMetrics
    valid_metrics: ClassificationMetrics
    baseline_metrics: ClassificationMetrics
    n_train: int
    n_valid: int
    n_test: int
    chips_index: Path
    weights_path: Path
    spec_path: Path
    predictions: Path
    evaluation_json: Path
    confusion_png: Path
    history_path: Path
    catalog: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)




def _split_method(config: DamageConfig) -> str:
    if config.test_tiles or config.test_regions is not None:
        given = " and ".join(
            w for w, on in (("by tile id", bool(config.test_tiles)), ("by test regions (tiles with a building centroid inside)", config.test_regions is not None)) if on
        )
        test = f"test tiles given {given}"
    else:
        test = f"test tiles drawn with split_seed (test_fraction={config.test_fraction:g}), stratified by class"
    valid = (
        "validation tiles given by id"
        if config.valid_tiles
        else f"validation tiles drawn from the rest with split_seed (valid_fraction={config.valid_fraction:g}), stratified by class"
    )
    return f"whole xBD tiles; {test}; {valid}; the rest train"


def _score(reference: np.ndarray, predicted: np.ndarray, classes: Sequence[ClassInfo]) -> ClassificationMetrics:
    return compute_metrics(
        reference.astype(np.int64), predicted.astype(np.int64), [c.value for c in classes], [c.name for c in classes], ignore_index=None
    )


def _baseline(index: gpd.GeoDataFrame, root: Path, classes: Sequence[ClassInfo], config: DamageConfig) -> np.ndarray:
    """Class values predicted by the baseline for every row of the chip index (-2 without chip)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    features, _ = chip_features(index, root)
    has = ~np.isnan(features).any(axis=1)
    train = has & (index["split"] == _TRAIN).to_numpy() & (index["class_value"] >= 0).to_numpy()
    clf = HistGradientBoostingClassifier(
        max_iter=300,
        learning_rate=0.05,
        early_stopping=False,  # no held-out choice inside the training buildings
        class_weight="balanced" if config.class_weights == "balanced" else None,
        random_state=config.seed,
    )
    clf.fit(features[train], index.loc[train, "class_value"].to_numpy())
    out = np.full(len(index), -2, dtype=np.int64)
    out[has] = clf.predict(features[has])
    return out


def run_damage(
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: DamageConfig = DamageConfig(),
    *,
    tiles: Sequence[str] | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> DamageResult:
    """Train a building-damage classifier and score it on test tiles that made no choice.

    The tiles are split whole (:func:`split_tiles`): test tiles (``config.test_tiles`` /
    ``test_regions``, or drawn with ``split_seed``), validation tiles drawn from the rest,
    training tiles. Normalisation statistics and class weights come from the training
    buildings, the kept epoch and early stopping from the validation buildings; the test
    buildings are chipped (``split == "test"`` in ``chips.parquet``) and classified, never
    trained or validated on. A baseline (:data:`BASELINE_NAME`) is fitted on the same
    training buildings and scored on the same test buildings.

    Outputs in ``out_dir``: ``chips/`` + ``chips.parquet`` + ``chips.json`` (every
    building), ``model.safetensors`` + ``model.json`` (spec), ``history.json``,
    ``split.json`` (the split record, tiles per part), ``buildings.parquet`` (test- and
    validation-tile buildings with ``part``, reference and prediction), ``evaluation.json``
    (``"test"``, ``"validation"``, ``"split"``) + ``evaluation_confusion.png`` (test) +
    ``evaluation_validation_confusion.png``, ``catalog.json`` (card + per-building Item).

    Args:
        data_dir: a STAC catalog laid out like ``catalogs/xbd-santarosa`` (see
            :func:`tiles_from_catalog`), or a folder with ``images/`` and ``labels/`` (xBD layout).
        out_dir: output folder (created).
        config: settings.
        tiles: tile ids to use (default every tile).
        progress: tqdm bars during training.
        log: called with one line per step.

    Returns:
        A :class:`DamageResult`.

    Raises:
        FootprintsNotFoundError, NoItemsFoundError: as :func:`find_xbd_tiles`.
        FieldNotFoundError, LabelError: as :func:`~staclearn.data.footprints.assign_classes`.
        SplitError: as :func:`split_tiles`, or a part without a labelled building with a chip.
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    cmap = get_class_map(config.class_map)
    classes = cmap.classes
    tile_items: dict[str, dict[str, pystac.Item]] = {}
    if str(data_dir).endswith(".json") or "://" in str(data_dir):
        found, tile_items = tiles_from_catalog(data_dir, tiles)
    else:
        found = find_xbd_tiles(data_dir, tiles)
    footprints = read_footprints(read_xbd_labels([t.post_labels for t in found.values()]))
    footprints, excluded = assign_classes(footprints, config.classvalue_field, cmap, exclude=config.exclude)
    split = split_tiles(
        footprints,
        test_tiles=config.test_tiles,
        test_regions=config.test_regions,
        test_fraction=config.test_fraction,
        valid_tiles=config.valid_tiles,
        valid_fraction=config.valid_fraction,
        split_seed=config.split_seed,
    )
    part_tiles = {p: [t for t, s in split.items() if s == p] for p in (_TRAIN, _VALID, _TEST)}
    train_tiles, valid_tiles, test_tiles = part_tiles[_TRAIN], part_tiles[_VALID], part_tiles[_TEST]
    log(
        f"{len(footprints)} buildings on {len(found)} tiles; test tiles {test_tiles}; validation tiles {valid_tiles}; "
        f"excluded {excluded and {k: len(v) for k, v in excluded.items()}}"
    )

    post = {t: x.post_image for t, x in found.items()}
    pre: Mapping[str, Path] | None = None
    if config.stack_pre:
        missing = [t for t, x in found.items() if x.pre_image is None]
        if missing:
            raise FootprintsNotFoundError(f"stack_pre=True but tiles {missing} have no pre-disaster image.")
        pre = {t: x.pre_image for t, x in found.items() if x.pre_image is not None}
    t0 = time.perf_counter()
    index = export_footprint_chips(
        footprints,
        post,
        out,
        chip_size=config.chip_size,
        buffer_m=config.buffer_m,
        pre=pre,
        mask_outside=config.mask_outside,
        split=split,
    )
    timings["chips"] = time.perf_counter() - t0
    bands = json.loads((out / "chips.json").read_text(encoding="utf-8"))["bands"]
    chips_index = out / "chips.parquet"

    # the split record counts the labelled buildings with a chip, i.e. those trained / scored on
    lut = {c.value: i for i, c in enumerate(classes)}
    usable = (index["status"] == STATUS_OK) & index["chip"].notna() & (index["class_value"] >= 0)
    labels = np.where(usable, index["class_value"].map(lut).fillna(255), 255).astype(np.int64)
    codes = index["split"].map({v: k for k, v in PART_NAMES.items()}).fillna(-1).astype(np.int64).to_numpy()
    counts = part_counts(labels, codes, [c.name for c in classes])
    for part in (_VALID, _TEST):
        if sum(counts[part].values()) == 0:
            raise SplitError(
                f"No labelled building with a chip on the {part} tiles {part_tiles[part]}; choose other tiles or another split_seed."
            )
    given_all = bool(config.test_tiles or config.test_regions is not None) and bool(config.valid_tiles)
    record = split_description(
        _split_method(config),
        split_seed=None if given_all else config.split_seed,
        counts=counts,
        unit="buildings",
        tiles={_TRAIN: train_tiles, _VALID: valid_tiles, _TEST: test_tiles},
        test_regions=_regions_text(config.test_regions),
    )
    write_json(out / "split.json", record, allow_nan=False)

    train_ds = FootprintChipDataset(chips_index, _TRAIN, classes=classes, cache=True)
    valid_ds = FootprintChipDataset(chips_index, _VALID, classes=classes, cache=True)
    mean, std = chip_band_statistics(chips_index, _TRAIN)
    model = build_classifier(
        bands,
        classes,
        mean=mean,
        std=std,
        model_name=config.model_name,
        chip_size=config.chip_size,
        buffer_m=config.buffer_m,
        mask_outside=config.mask_outside,
        pretrained=config.pretrained,
        extra={
            "class_map": cmap.to_dict(),
            "classvalue_field": config.classvalue_field,
            "train_tiles": train_tiles,
            "valid_tiles": valid_tiles,
            "test_tiles": test_tiles,
        },
    )
    trainer = ClassifierTrainer(
        model,
        train_ds,
        valid_ds,
        classes=classes,
        batch_size=config.batch_size,
        weights=config.class_weights,
        augment=config.augment,
        device=config.device,
        seed=config.seed,
        num_workers=config.num_workers,
    )
    t0 = time.perf_counter()

    def on_epoch(r: ClassifierEpoch) -> None:
        log(f"epoch {r.epoch}: train loss {r.train_loss:.3f}, valid loss {r.valid_loss:.3f}, valid macro-F1 {r.valid_macro_f1:.3f}")

    history = trainer.fit(
        config.epochs, config.lr, progress=progress, on_epoch=on_epoch, keep_best=config.keep_best, patience=config.patience
    )
    timings["train"] = time.perf_counter() - t0
    model = trainer.model  # type: ignore[assignment]
    model.cpu()
    weights_path = save_weights(model, out / "model.safetensors")
    spec_path = out / "model.json"
    write_json(spec_path, model.spec.to_dict(), allow_nan=False)
    history_path = out / "history.json"
    write_json(history_path, {"best_epoch": trainer.best_epoch, "epochs": trainer.history_table()}, allow_nan=False)

    t0 = time.perf_counter()
    baseline = pd.Series(_baseline(index, out, classes, config), index=index["footprint_id"].to_numpy())
    timings["baseline"] = time.perf_counter() - t0

    scored_tiles = test_tiles + valid_tiles
    held = footprints[footprints["tile"].isin(scored_tiles)].rename(
        columns={"class_value": "reference_value", "class_name": "reference_name", "status": "label_status"}
    )
    held = held.assign(part=held["tile"].map(split))
    t0 = time.perf_counter()
    predictions = out / "buildings.parquet"
    pred = classify_objects(
        model,
        held,
        {t: post[t] for t in scored_tiles},
        pre=None if pre is None else {t: pre[t] for t in scored_tiles},
        batch_size=config.batch_size,
        device=config.device,
        out_path=predictions,
    )
    timings["classify"] = time.perf_counter() - t0
    results: dict[str, dict[str, ClassificationMetrics]] = {}
    for part, key in ((_TEST, "test"), (_VALID, "validation")):
        scored = pred[(pred["part"] == part) & (pred["reference_value"] >= 0)]
        ref = scored["reference_value"].to_numpy()
        results[key] = {config.model_name: _score(ref, scored["class_value"].fillna(-2).to_numpy(), classes)}
        if part == _TEST:
            base = baseline.reindex(scored["footprint_id"].to_numpy()).fillna(-2).to_numpy()
            results[key][BASELINE_NAME] = _score(ref, base, classes)
    evaluation_json, pngs = write_evaluation(results, out, split=record)
    test_m, valid_m = results["test"][config.model_name], results["validation"][config.model_name]
    base_m = results["test"][BASELINE_NAME]
    catalog = _publish(
        out, model, weights_path, predictions, evaluation_json, config, results, record, trainer.best_epoch,
        train_tiles, valid_tiles, test_tiles, tile_items, trainer.hyperparameters,
    )  # fmt: skip
    timings["total"] = time.perf_counter() - t_start
    log(
        f"test: macro-F1 {test_m.macro_f1:.3f}, F1 {test_m.f1} ({BASELINE_NAME}: macro-F1 {base_m.macro_f1:.3f}); "
        f"validation: macro-F1 {valid_m.macro_f1:.3f}"
    )
    return DamageResult(
        out_dir=out,
        config=config,
        model=model,
        spec=model.spec,
        classes=classes,
        tiles=found,
        train_tiles=train_tiles,
        valid_tiles=valid_tiles,
        test_tiles=test_tiles,
        split=record,
        excluded=excluded,
        history=history,
        best_epoch=trainer.best_epoch,
        test_metrics=test_m,
        valid_metrics=valid_m,
        baseline_metrics=base_m,
        n_train=len(train_ds),
        n_valid=int(valid_m.n_samples),
        n_test=int(test_m.n_samples),
        chips_index=chips_index,
        weights_path=weights_path,
        spec_path=spec_path,
        predictions=predictions,
        evaluation_json=evaluation_json,
        confusion_png=pngs["test"],
        history_path=history_path,
        catalog=catalog,
        timings=timings,
    )


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


def _publish(
    out: Path,
    model: ObjectClassifier,
    weights_path: Path,
    predictions: Path,
    evaluation_json: Path,
    config: DamageConfig,
    results: Mapping[str, Mapping[str, ClassificationMetrics]],
    record: Mapping[str, Any],
    best_epoch: int | None,
    train_tiles: list[str],
    valid_tiles: list[str],
    test_tiles: list[str],
    tile_items: dict[str, dict[str, pystac.Item]],
    hyperparameters: Mapping[str, Any],
) -> Path:
    """Write the MLM card and the per-building Item into ``out/catalog.json``."""
    from staclearn.stac.modelcard import model_card
    from staclearn.stac.items import vector_item
    from staclearn.stac.catalog import write_catalog

    run_id = out.resolve().name
    metrics = {part: {name: summary(m) for name, m in models.items()} for part, models in results.items()}
    imagery = [tile_items[t][k] for t in train_tiles if t in tile_items for k in ("pre", "post", "labels") if k in tile_items[t]]
    card = model_card(
        model,
        str(weights_path.resolve()),
        id=f"{run_id}-model",
        hyperparameters={
            **hyperparameters,
            "class_weights": config.class_weights or "none",
            "augmentation": "kornia flips/rotation/zoom/shift" if config.augment else "none",
            "stack_pre": config.stack_pre,
            "seed": config.seed,
            "split_seed": config.split_seed,
            "best_epoch": best_epoch,
            "split": f"by tile; test tiles {test_tiles}; validation tiles {valid_tiles}",
        },
        training_items=imagery,
        metrics=metrics,
        description=f"Building-damage classifier ({config.model_name}) on chips around each footprint, trained by staclearn.",
        input_description=(
            "Post-disaster bands then pre-disaster bands of one chip centred on a footprint"
            if config.stack_pre
            else "Post-disaster bands of one chip centred on a footprint"
        )
        + f" ({model.spec.chip_size} x {model.spec.chip_size} px, {model.spec.buffer_m:g} m buffer, resampled).",
    )
    card.properties["staclearn:split"] = dict(record)
    add_onnx_artifact(card, model, required=False)
    card.add_asset(
        "evaluation",
        pystac.Asset(
            str(evaluation_json.resolve()), media_type=pystac.MediaType.JSON, roles=["metadata"],
            title="Evaluation: test tiles and validation tiles apart",
        ),
    )  # fmt: skip
    table = gpd.read_parquet(predictions)
    scored = test_tiles + valid_tiles
    sources = [tile_items[t][k] for t in scored if t in tile_items for k in ("pre", "post") if k in tile_items[t]]
    result = vector_item(
        str(predictions.resolve()),
        table,
        id=f"{run_id}-buildings",
        classes=model.spec.classes,
        source_items=sources,
        model_card=card,
        title="Buildings of the test and validation tiles with predicted damage class and confidence",
    )
    result.properties["staclearn:metrics"] = metrics
    result.properties["staclearn:split"] = dict(record)
    write_catalog([card, result], out, id=run_id, description="staclearn building-damage run")
    return out / "catalog.json"
