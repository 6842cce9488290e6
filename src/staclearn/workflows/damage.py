"""The building-damage workflow end to end: xBD tiles -> footprint chips -> classifier -> per-building map.

:func:`run_damage` trains and evaluates a building-damage classifier (feature
categorization) on an xBD-style folder (``images/<tile>_{pre,post}_disaster.tif``,
``labels/<tile>_{pre,post}_disaster.json``) or a STAC catalog of such tiles. It only composes
steps that live in the stage packages:

1. :func:`staclearn.data.xbd.find_xbd_tiles` / :func:`staclearn.data.xbd.tiles_from_catalog`
   and :func:`staclearn.data.footprints.read_xbd_labels` - the footprints of every tile;
2. :func:`staclearn.data.footprints.assign_classes` - raw ``subtype`` -> classes
   (``un-classified`` kept, excluded, reported);
3. :func:`staclearn.data.xbd.split_tiles` - whole tiles go to a **test** part (given as tile
   ids or regions, or drawn with ``split_seed``), then a **validation** part drawn from the
   rest, then training (the protocol of :mod:`staclearn.data.splits`). The test tiles serve
   the final figures only: epoch selection, early stopping, class weights and normalisation
   statistics use the training and validation tiles;
4. :func:`staclearn.chips.objects.export_footprint_chips` - one chip per building (test
   buildings too, marked ``split == "test"``; they never enter a training or validation
   dataset);
5. :class:`staclearn.training.objects.ClassifierTrainer` - ``fit(epochs, lr)`` on
   :class:`staclearn.chips.object_dataset.FootprintChipDataset`;
6. :func:`staclearn.evaluation.baselines.hist_gradient_boosting_baseline` - a non-deep
   baseline on the same training buildings, from per-building colour statistics
   (:func:`staclearn.chips.object_dataset.chip_features`);
7. :func:`staclearn.inference.objects.classify_objects` - the test and validation tiles' buildings;
8. :mod:`staclearn.evaluation.metrics` - per-building figures of the test and validation parts kept
   apart (``evaluation.json``), and the MLM card + per-building Item (``catalog.json``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pystac
import torch

from staclearn._io import check_run_folder, write_json
from staclearn.chips.object_dataset import (
    FootprintChipDataset,
    chip_band_statistics,
    chip_features,
)
from staclearn.chips.objects import export_footprint_chips
from staclearn.data.footprints import (
    ClassMap,
    assign_classes,
    get_class_map,
    read_footprints,
    read_xbd_labels,
)
from staclearn.data.labels import ClassInfo
from staclearn.data.splits import PART_NAMES, TEST, TRAIN, VALID
from staclearn.data.xbd import (
    XbdTile,
    find_xbd_tiles,
    split_tiles,
    tile_split_record,
    tiles_from_catalog,
)
from staclearn.errors import FootprintsNotFoundError
from staclearn.evaluation.baselines import hist_gradient_boosting_baseline
from staclearn.evaluation.metrics import ClassificationMetrics, compute_metrics, summary
from staclearn.evaluation.reports import write_evaluation
from staclearn.stac.onnx import add_onnx_artifact
from staclearn.inference.objects import classify_objects
from staclearn.models.classifier import (
    ClassifierSpec,
    ObjectClassifier,
    build_classifier,
)
from staclearn.models.segmentation import save_weights
from staclearn.training.objects import ClassifierEpoch, ClassifierTrainer

__all__ = ["DamageConfig", "DamageResult", "run_damage", "BASELINE_NAME"]

_TRAIN, _VALID, _TEST = PART_NAMES[TRAIN], PART_NAMES[VALID], PART_NAMES[TEST]
#: Name of the non-deep baseline in ``evaluation.json`` and the card's ``staclearn:metrics``.
BASELINE_NAME = "hist_gradient_boosting"


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
            them is a test tile (whole tiles only; see :func:`~staclearn.data.xbd.split_tiles`).
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


def run_damage(
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: DamageConfig = DamageConfig(),
    *,
    tiles: Sequence[str] | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
) -> DamageResult:
    """Train a building-damage classifier and score it on test tiles that made no choice.

    The tiles are split whole (:func:`~staclearn.data.xbd.split_tiles`): test tiles
    (``config.test_tiles`` / ``test_regions``, or drawn with ``split_seed``), validation
    tiles drawn from the rest, training tiles. Normalisation statistics and class weights come
    from the training buildings, the kept epoch and early stopping from the validation
    buildings; the test buildings are chipped (``split == "test"`` in ``chips.parquet``) and
    classified, never trained or validated on. A baseline (:data:`BASELINE_NAME`) is fitted
    on the same training buildings and scored on the same test buildings.

    Outputs in ``out_dir``: ``chips/`` + ``chips.parquet`` + ``chips.json`` (every
    building), ``model.safetensors`` + ``model.json`` (spec), ``history.json``,
    ``split.json`` (the split record, tiles per part), ``buildings.parquet`` (test- and
    validation-tile buildings with ``part``, reference and prediction), ``evaluation.json``
    (``"test"``, ``"validation"``, ``"split"``) + ``evaluation_confusion.png`` (test) +
    ``evaluation_validation_confusion.png``, ``catalog.json`` (card + per-building Item).

    Args:
        data_dir: a STAC catalog laid out like ``catalogs/xbd-santarosa`` (see
            :func:`~staclearn.data.xbd.tiles_from_catalog`), or a folder with ``images/`` and
            ``labels/`` (xBD layout, see :func:`~staclearn.data.xbd.find_xbd_tiles`).
        out_dir: run folder. A non-empty one is refused (unless ``overwrite``) before anything
            is read; the folder is created only once the tiles and labels have been read and
            split, so a run that fails on its inputs leaves nothing behind.
        config: settings.
        tiles: tile ids to use (default every tile).
        progress: tqdm bars during training.
        log: called with one line per step.
        overwrite: write into a non-empty ``out_dir`` (its ``chips/`` folder is replaced).

    Returns:
        A :class:`DamageResult`.

    Raises:
        RunExistsError: ``out_dir`` holds files and ``overwrite`` is False.
        ConfigError: ``out_dir`` is a file.
        FootprintsNotFoundError, NoItemsFoundError: as :func:`~staclearn.data.xbd.find_xbd_tiles`
            and :func:`~staclearn.data.xbd.tiles_from_catalog`; or ``stack_pre`` with a tile
            that has no pre-disaster image.
        EmptyDataError: a tile's label file holds no building (as
            :func:`~staclearn.data.footprints.read_xbd_labels`).
        FieldNotFoundError, LabelError: as :func:`~staclearn.data.footprints.assign_classes`.
        SplitError: as :func:`~staclearn.data.xbd.split_tiles`, or a part without a labelled
            building with a chip.
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    check_run_folder(out, overwrite=overwrite)
    timings: dict[str, float] = {}
    cmap = get_class_map(config.class_map)
    classes = cmap.classes
    # 1-3. tiles, footprints and their classes, whole-tile split
    found, tile_items = _find_tiles(data_dir, tiles)
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
    parts = {p: [t for t, s in split.items() if s == p] for p in (_TRAIN, _VALID, _TEST)}
    log(
        f"{len(footprints)} buildings on {len(found)} tiles; test tiles {parts[_TEST]}; validation tiles {parts[_VALID]}; "
        f"excluded {excluded and {k: len(v) for k, v in excluded.items()}}"
    )
    post, pre = _images(found, config.stack_pre)
    # 4. one chip per building; the split record of the buildings with a chip
    out.mkdir(parents=True, exist_ok=True)
    if overwrite and (out / "chips").exists():
        shutil.rmtree(out / "chips")  # a previous run's chips would mix with these
    t0 = time.perf_counter()
    index = export_footprint_chips(
        footprints, post, out, chip_size=config.chip_size, buffer_m=config.buffer_m, pre=pre,
        mask_outside=config.mask_outside, split=split,
    )  # fmt: skip
    timings["chips"] = time.perf_counter() - t0
    chips_index = out / "chips.parquet"
    record = tile_split_record(
        index, classes, parts, test_tiles=config.test_tiles, test_regions=config.test_regions,
        test_fraction=config.test_fraction, valid_tiles=config.valid_tiles, valid_fraction=config.valid_fraction,
        split_seed=config.split_seed, test_regions_text=_regions_text(config.test_regions),
    )  # fmt: skip
    write_json(out / "split.json", record, allow_nan=False)
    # 5. the classifier
    t0 = time.perf_counter()
    trainer, n_train = _train(chips_index, out, cmap, parts, config, progress, log)
    timings["train"] = time.perf_counter() - t0
    model = trainer.model
    model.cpu()
    weights_path = save_weights(model, out / "model.safetensors")
    spec_path = write_json(out / "model.json", model.spec.to_dict(), allow_nan=False)
    history_path = write_json(
        out / "history.json", {"best_epoch": trainer.best_epoch, "epochs": trainer.history_table()}, allow_nan=False
    )
    # 6. the baseline on the same training buildings
    t0 = time.perf_counter()
    baseline = _baseline(index, out, config)
    timings["baseline"] = time.perf_counter() - t0
    # 7. classify the test and validation tiles' buildings
    t0 = time.perf_counter()
    predictions = out / "buildings.parquet"
    pred = _classify_held(model, footprints, split, parts[_TEST] + parts[_VALID], post, pre, config, predictions)
    timings["classify"] = time.perf_counter() - t0
    # 8. figures of the test and validation parts, kept apart; card and per-building Item
    results = _evaluate(pred, baseline, classes, config.model_name)
    evaluation_json, pngs = write_evaluation(results, out, split=record)
    test_m, valid_m = results["test"][config.model_name], results["validation"][config.model_name]
    base_m = results["test"][BASELINE_NAME]
    catalog = _publish(
        out, model, weights_path, predictions, evaluation_json, config, results, record, trainer.best_epoch,
        parts[_TRAIN], parts[_VALID], parts[_TEST], tile_items, trainer.hyperparameters,
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
        train_tiles=parts[_TRAIN],
        valid_tiles=parts[_VALID],
        test_tiles=parts[_TEST],
        split=record,
        excluded=excluded,
        history=trainer.history,
        best_epoch=trainer.best_epoch,
        test_metrics=test_m,
        valid_metrics=valid_m,
        baseline_metrics=base_m,
        n_train=n_train,
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


def _find_tiles(
    data_dir: str | os.PathLike[str], tiles: Sequence[str] | None
) -> tuple[dict[str, XbdTile], dict[str, dict[str, pystac.Item]]]:
    """The tiles of a STAC catalog (``.json`` or URL) or of an xBD folder, with their Items (catalog only)."""
    if str(data_dir).endswith(".json") or "://" in str(data_dir):
        return tiles_from_catalog(data_dir, tiles)
    return find_xbd_tiles(data_dir, tiles), {}


def _images(found: Mapping[str, XbdTile], stack_pre: bool) -> tuple[dict[str, Path], dict[str, Path] | None]:
    """Post images by tile, and pre images by tile when ``stack_pre`` (every tile must have one)."""
    post = {t: x.post_image for t, x in found.items()}
    if not stack_pre:
        return post, None
    missing = [t for t, x in found.items() if x.pre_image is None]
    if missing:
        raise FootprintsNotFoundError(f"stack_pre=True but tiles {missing} have no pre-disaster image.")
    return post, {t: x.pre_image for t, x in found.items() if x.pre_image is not None}


def _train(
    chips_index: Path,
    out: Path,
    cmap: ClassMap,
    parts: Mapping[str, list[str]],
    config: DamageConfig,
    progress: bool,
    log: Callable[[str], None],
) -> tuple[ClassifierTrainer, int]:
    """Build the classifier (normalised with the training chips' statistics) and fit it; the
    trainer (its model holds the kept epoch's weights) and the number of training chips."""
    classes = cmap.classes
    bands = json.loads((out / "chips.json").read_text(encoding="utf-8"))["bands"]
    train_ds = FootprintChipDataset(chips_index, _TRAIN, classes=classes, cache=True)
    valid_ds = FootprintChipDataset(chips_index, _VALID, classes=classes, cache=True)
    mean, std = chip_band_statistics(chips_index, _TRAIN)
    torch.manual_seed(config.seed)  # the weight initialisation is part of what `seed` reproduces
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
            "train_tiles": parts[_TRAIN],
            "valid_tiles": parts[_VALID],
            "test_tiles": parts[_TEST],
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

    def on_epoch(r: ClassifierEpoch) -> None:
        log(f"epoch {r.epoch}: train loss {r.train_loss:.3f}, valid loss {r.valid_loss:.3f}, valid macro-F1 {r.valid_macro_f1:.3f}")

    trainer.fit(config.epochs, config.lr, progress=progress, on_epoch=on_epoch, keep_best=config.keep_best, patience=config.patience)
    return trainer, len(train_ds)


def _baseline(index: gpd.GeoDataFrame, root: Path, config: DamageConfig) -> pd.Series:
    """Class values predicted by the baseline for every building of the chip index (-2 without
    chip), indexed by ``footprint_id``; fitted on the labelled training buildings."""
    features, _ = chip_features(index, root)
    train = (index["split"] == _TRAIN).to_numpy() & (index["class_value"] >= 0).to_numpy()
    values = hist_gradient_boosting_baseline(
        features,
        index["class_value"].to_numpy(),
        train,
        class_weight="balanced" if config.class_weights == "balanced" else None,
        seed=config.seed,
    )
    return pd.Series(values, index=index["footprint_id"].to_numpy())


def _classify_held(
    model: ObjectClassifier,
    footprints: gpd.GeoDataFrame,
    split: Mapping[str, str],
    scored_tiles: list[str],
    post: Mapping[str, Path],
    pre: Mapping[str, Path] | None,
    config: DamageConfig,
    predictions: Path,
) -> gpd.GeoDataFrame:
    """Classify every building of ``scored_tiles`` (reference kept as ``reference_*``, ``part``) into ``predictions``."""
    held = footprints[footprints["tile"].isin(scored_tiles)].rename(
        columns={"class_value": "reference_value", "class_name": "reference_name", "status": "label_status"}
    )
    held = held.assign(part=held["tile"].map(split))
    return classify_objects(
        model,
        held,
        {t: post[t] for t in scored_tiles},
        pre=None if pre is None else {t: pre[t] for t in scored_tiles},
        batch_size=config.batch_size,
        device=config.device,
        out_path=predictions,
    )


def _evaluate(
    pred: gpd.GeoDataFrame, baseline: pd.Series, classes: Sequence[ClassInfo], model_name: str
) -> dict[str, dict[str, ClassificationMetrics]]:
    """Per-building figures of the labelled test and validation buildings, apart; the baseline on the test part."""
    results: dict[str, dict[str, ClassificationMetrics]] = {}
    for part, key in ((_TEST, "test"), (_VALID, "validation")):
        scored = pred[(pred["part"] == part) & (pred["reference_value"] >= 0)]
        ref = scored["reference_value"].to_numpy()
        results[key] = {model_name: _score(ref, scored["class_value"].fillna(-2).to_numpy(), classes)}
        if part == _TEST:
            base = baseline.reindex(scored["footprint_id"].to_numpy()).fillna(-2).to_numpy()
            results[key][BASELINE_NAME] = _score(ref, base, classes)
    return results


def _score(reference: np.ndarray, predicted: np.ndarray, classes: Sequence[ClassInfo]) -> ClassificationMetrics:
    return compute_metrics(
        reference.astype(np.int64), predicted.astype(np.int64), [c.value for c in classes], [c.name for c in classes], ignore_index=None
    )


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
    from staclearn.stac.objects import object_catalog

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
    scored = test_tiles + valid_tiles
    return object_catalog(
        out,
        card,
        predictions,
        classes=model.spec.classes,
        metrics=metrics,
        split=record,
        source_items=[tile_items[t][k] for t in scored if t in tile_items for k in ("pre", "post") if k in tile_items[t]],
        evaluation_json=evaluation_json,
        evaluation_title="Evaluation: test tiles and validation tiles apart",
        id=f"{run_id}-buildings",
        title="Buildings of the test and validation tiles with predicted damage class and confidence",
        description="staclearn building-damage run",
    )
