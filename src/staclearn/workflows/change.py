"""Change detection on before/after image pairs: STAC pairs -> one GeoBox -> chips -> model -> change mask.

:func:`run_change` composes the steps, each of which lives in the package of its stage:

* :mod:`staclearn.data.pairs`: the Items of a catalog grouped into one pair per city
  (:func:`~staclearn.data.pairs.group_pairs`), both dates (and the change labels) loaded onto
  one GeoBox (:func:`~staclearn.data.pairs.load_pair`, by default the 10 m grid of the before
  date) and stacked as ``(2C, H, W)`` channels ``t1:<band>`` then ``t2:<band>``;
* :mod:`staclearn.data.splits`: whole cities split into training, validation and test cities
  (:func:`~staclearn.data.splits.split_cities`);
* :mod:`staclearn.chips.pairs`: chips of the training and validation cities and the
  augmentation of stacked pairs;
* :mod:`staclearn.models.change`: the change model (FC-EF, FC-Siam-diff or the default
  PixelConvNet) and :class:`~staclearn.models.change.ChangeLoss`, trained by
  :class:`staclearn.training.segmentation.Trainer`;
* :mod:`staclearn.inference.change`: the change mask and probability of a whole pair;
* :mod:`staclearn.evaluation.cva` and :mod:`staclearn.evaluation.change`: the CVA
  baseline, the decision threshold chosen on the validation cities, precision / recall;
* :mod:`staclearn.stac.change`: the change-mask Items and the model card.

The training cities give the chips, class weights, normalisation statistics and the CVA
threshold; the validation cities choose the epoch and the decision threshold on p(change);
the test cities are used for nothing but the final figures, and are never chipped.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pystac
import torch
import xarray as xr
from torch import nn

from staclearn._io import check_run_folder, write_json
from staclearn.chips.pairs import ChangeAugmentation, export_change_chips
from staclearn.chips.pixel import ChipDataset, band_statistics
from staclearn.data.labels import IGNORE_INDEX
from staclearn.data.pairs import CHANGE_CLASSES, PairItems, group_pairs, load_pairs
from staclearn.data.search import open_items
from staclearn.data.splits import CitySplit, split_cities
from staclearn.errors import ConfigError
from staclearn.evaluation.change import (
    ChangeScores,
    change_figures,
    fit_change_threshold,
    score_change,
    write_change_evaluation,
)
from staclearn.evaluation.cva import (
    change_vector_magnitude,
    cva_mask,
    fit_cva_threshold,
)
from staclearn.evaluation.metrics import ClassificationMetrics
from staclearn.inference.change import (
    ChangePrediction,
    predict_change,
    threshold_change,
)
from staclearn.inference.raster import write_cog
from staclearn.stac.items import vectorize_item
from staclearn.models.change import ChangeLoss, build_change_model
from staclearn.models.segmentation import FUSIONS, save_weights
from staclearn.stac.catalog import write_catalog
from staclearn.stac.change import change_mask_item, change_model_card
from staclearn.training.segmentation import EpochRecord, Trainer, class_weights

__all__ = ["ChangeConfig", "ChangeResult", "run_change"]

#: Sentinel-2 10 m and 20 m bands, the default of :class:`ChangeConfig`.
S2_10M_20M = ("B02", "B03", "B04", "B08", "B05", "B06", "B07", "B8A", "B11", "B12")

Pairs = Mapping[str, tuple[xr.DataArray, xr.DataArray, xr.DataArray]]
"""``{city: (before, after, labels)}`` loaded by :func:`~staclearn.data.pairs.load_pair`."""


@dataclass(frozen=True)
class ChangeConfig:
    """Settings of a change-detection run. Sizes are in pixels of the common GeoBox.

    The defaults are those benchmarked by ``bench/change.py`` (OSCD, one test city per run).

    The split is by whole cities (:func:`~staclearn.data.splits.split_cities`). The test cities are fixed first:
    ``test_cities`` and the cities of ``test_items``, or, when neither is given, drawn with
    ``split_seed`` from the cities not named in ``valid_cities``. The validation cities are
    ``valid_cities``, or drawn with the same ``split_seed`` from the cities that are not test.
    Every other city trains. So a config that names only ``valid_cities`` (the form before
    test cities existed) still runs: its test cities are drawn from the remaining cities,
    and it fails with :class:`~staclearn.errors.SplitError` when that leaves no training
    city. The split depends on ``split_seed`` and the catalog's cities only, never on
    ``seed``.

    Attributes:
        valid_cities: validation cities: they choose the epoch (``monitor``), and their
            figures are reported apart as validation figures (optimistic). Empty: drawn.
        test_cities: test cities: used for nothing but the final figures (no epoch
            choice, class weights, normalisation statistics or CVA threshold; never chipped).
        test_items: Item ids; the cities whose before, after or label Items include them are
            test cities too (added to ``test_cities``).
        split_seed: seed of the drawing of test and validation cities (numpy
            ``default_rng``); independent of the training ``seed``.
        test_fraction: share of all cities drawn as test cities when none is given
            (rounded, at least 1); ignored when ``test_count`` is set.
        test_count: number of test cities drawn when none is given.
        valid_fraction: share of the non-test cities drawn as validation cities when none
            is given (rounded, at least 1); ignored when ``valid_count`` is set.
        valid_count: number of validation cities drawn when none is given.
        bands: bands of each date, in channel order (default: Sentinel-2 10 m + 20 m bands).
        city_property: Item property naming the city (the region a pair belongs to).
        label_asset: key of the change raster asset of the label Items.
        resampling: resampling of coarser bands onto the common grid.
        fusion: ``"early"`` (FC-EF) or ``"siam-diff"`` (FC-Siam-diff).
        architecture: ``"Unet"`` (smp U-Net, ``encoder``) or ``"PixelConvNet"`` (small
            full-resolution convolutional net, ``width`` / ``layers`` / ``kernel``; early fusion).
        width: PixelConvNet channels.
        layers: PixelConvNet convolution blocks.
        kernel: PixelConvNet kernel edge, pixels (odd).
        tile_size: training chip edge; a multiple of ``2**encoder_depth``.
        stride: step between training chips (< tile_size: overlapping chips).
        min_labelled: minimum labelled fraction of a chip.
        encoder: smp encoder name.
        encoder_depth: encoder stages (3 to 5).
        encoder_weights: ``None`` or ``"imagenet"`` (needs internet).
        epochs: training epochs.
        lr: peak learning rate of the one-cycle schedule.
        batch_size: chips per batch.
        class_weights: ``"balanced"`` (median-frequency, :func:`staclearn.training.segmentation.class_weights`),
            ``"sqrt"`` (its square root, milder) or ``None``; from the training chips only.
        dice: weight of the Dice term of :class:`~staclearn.models.change.ChangeLoss` (0: cross-entropy only).
        augment: kornia flips/rotation/zoom/shift, identical for both dates and the mask
            (:class:`~staclearn.chips.pairs.ChangeAugmentation`, with ``date_swap`` and ``radiometric``).
        date_swap: probability of swapping a training chip's two dates (augmentation).
        radiometric: amount of the per-date radiometric jitter (augmentation; 0 disables it).
        oversample_change: chips holding change pixels are drawn about this many times as
            often (:mod:`staclearn.chips.sampling`); ``None``: each chip once per epoch.
        standardize: z-score each date of each city by its own band statistics before the
            model (:func:`~staclearn.data.pairs.stack_pair`) instead of one z-score of the training chips, so a
            new city's radiometric offsets are not change.
        threshold: decision threshold on the change probability; ``None`` (default): chosen
            on the validation cities (:func:`~staclearn.evaluation.change.fit_change_threshold`, highest F1 of change on
            their pooled pixels) and kept in the model (``spec.extra["threshold"]``) and its
            card; a number: that threshold, recorded as given.
        monitor: epoch record field measured on the validation chips that picks the kept
            epoch (:meth:`staclearn.training.segmentation.Trainer.fit`): ``"valid_miou"``, ``"valid_loss"``
            or ``"valid_accuracy"``.
        patience: stop after this many epochs without improvement of ``monitor`` on the
            validation chips; ``None`` never stops early.
        predict_tile_size: inference tile edge, padding included.
        padding: inference context discarded on each tile side.
        probability: also write change-probability COGs (published beside the masks).
        seed: training seed (initialisation, shuffling, augmentation); not the split's.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
    """

    valid_cities: tuple[str, ...] = ()
    test_cities: tuple[str, ...] = ()
    test_items: tuple[str, ...] = ()
    split_seed: int = 0
    test_fraction: float = 0.2
    test_count: int | None = None
    valid_fraction: float = 0.2
    valid_count: int | None = None
    bands: tuple[str, ...] = S2_10M_20M
    city_property: str = "staclearn:city"
    label_asset: str = "labels"
    resampling: str = "bilinear"
    fusion: str = "early"
    architecture: str = "PixelConvNet"
    width: int = 32
    layers: int = 4
    kernel: int = 3
    tile_size: int = 64
    stride: int = 128
    min_labelled: float = 0.0
    encoder: str = "resnet18"
    encoder_depth: int = 5
    encoder_weights: str | None = None
    epochs: int = 8
    lr: float = 3e-3
    batch_size: int = 16
    class_weights: str | None = "sqrt"
    dice: float = 0.5
    augment: bool = True
    date_swap: float = 0.5
    radiometric: float = 0.1
    oversample_change: float | None = 4.0
    standardize: bool = True
    threshold: float | None = None
    monitor: str = "valid_miou"
    patience: int | None = None
    predict_tile_size: int = 256
    padding: int = 32
    probability: bool = True
    seed: int = 0
    device: str = "auto"


@dataclass
class ChangeResult:
    """What a change run produced.

    Figures are :class:`~staclearn.evaluation.metrics.ClassificationMetrics` of the whole city's change
    mask against its labels (0 no change / 1 change, 255 unlabelled left out), per city as
    ``{city: {"model": ..., "cva": ...}}`` and pooled over the cities of a part as
    ``{"model": ..., "cva": ...}``. Only the test figures are measured on cities that no
    choice has seen; the validation figures come from the cities that chose the epoch.

    Attributes:
        out_dir: the run folder.
        model: the trained model (eval mode, weights of the epoch chosen on the validation
            cities), ``model.spec`` its ModelSpec.
        weights: ``model/weights.safetensors``.
        spec: ``model/spec.json`` (``ModelSpec.to_dict()``, for :func:`~staclearn.models.change.load_change_model`).
        chips: the chip index ``chips/chips.parquet`` (training and validation cities only).
        change_masks: ``{city: change_<city>.tif}`` COGs of the test cities.
        probabilities: ``{city: change_probability_<city>.tif}`` of the test cities (only
            with ``config.probability``).
        cva_masks: ``{city: cva_<city>.tif}`` COGs of the CVA baseline on the test cities.
        test_metrics: per test city, model and CVA.
        test_pooled: model and CVA over all test pixels together.
        valid_metrics: per validation city, model and CVA (optimistic: they chose the epoch).
        valid_pooled: model and CVA over all validation pixels together.
        cva_threshold: CVA magnitude threshold chosen on the training cities.
        cva_train_f1: F1 of change of that threshold on the training cities.
        threshold: the model's decision threshold on the change probability (chosen on the
            validation cities unless given).
        threshold_method: how it was chosen, in words (as in the card).
        precision_recall: ``{"test" | "validation": {city: {"model": table, "model_at_threshold":
            table, "model_at_0.5": table, "cva": table}}}`` of :func:`~staclearn.evaluation.change.precision_recall_table`
            (the model's at thresholds 0.05 to 0.95, at its decision threshold and at 0.5;
            CVA's at its training threshold).
        evaluation: ``evaluation.json`` (``"test"``, ``"validation"`` and ``"split"`` apart).
        source_items: ``{city: PairItems}`` for every city.
        split: the cities of each part (:class:`~staclearn.data.splits.CitySplit`).
        split_record: the ``staclearn:split`` record (:func:`staclearn.data.splits.split_description`)
            with change / no-change pixel counts per part.
        history: per-epoch training records (with the validation chips' figures).
        catalog: ``catalog.json`` of the published run (MLM card + change-mask Items).
        model_card: the MLM card Item.
        items: ``{city: change-mask Item}`` of the test cities.
        timings: seconds per step.
    """

    out_dir: Path
    model: nn.Module
    weights: Path
    spec: Path
    chips: Path
    change_masks: dict[str, Path]
    probabilities: dict[str, Path]
    cva_masks: dict[str, Path]
    test_metrics: dict[str, dict[str, ClassificationMetrics]]
    test_pooled: dict[str, ClassificationMetrics]
    valid_metrics: dict[str, dict[str, ClassificationMetrics]]
    valid_pooled: dict[str, ClassificationMetrics]
    cva_threshold: float
    cva_train_f1: float
    threshold: float
    threshold_method: str
    precision_recall: dict[str, Any]
    evaluation: Path
    source_items: dict[str, PairItems]
    split: CitySplit
    split_record: dict[str, Any]
    history: list[EpochRecord]
    catalog: Path | None = None
    model_card: pystac.Item | None = None
    items: dict[str, pystac.Item] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def test_cities(self) -> tuple[str, ...]:
        """The test cities."""
        return self.split.test

    @property
    def valid_cities(self) -> tuple[str, ...]:
        """The validation cities."""
        return self.split.valid

    @property
    def train_cities(self) -> tuple[str, ...]:
        """The training cities."""
        return self.split.train


def run_change(
    catalog: Any,
    out_dir: str | os.PathLike[str],
    config: ChangeConfig,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    pairs: Pairs | None = None,
    magnitudes: Mapping[str, xr.DataArray] | None = None,
    overwrite: bool = False,
) -> ChangeResult:
    """Train a change model on training cities, choose its epoch on validation cities and
    evaluate it, with CVA, on test cities.

    Steps (each a function of its stage): pairs grouped by ``config.city_property``
    (:func:`~staclearn.data.pairs.group_pairs`) -> whole cities split into train / validation /
    test (:func:`~staclearn.data.splits.split_cities`) -> each pair loaded on its city's 10 m
    grid (:func:`~staclearn.data.pairs.load_pairs`) -> chips of the training and validation
    cities only (:func:`~staclearn.chips.pairs.export_change_chips`) -> training with
    :class:`~staclearn.models.change.ChangeLoss` (class weights and normalisation from the
    training chips), the epoch kept by ``config.monitor`` on the validation chips -> CVA
    threshold fitted on the training cities -> the decision threshold on p(change) chosen on
    the validation cities (:func:`~staclearn.evaluation.change.fit_change_threshold`, unless
    ``config.threshold``) and stored in ``model.spec.extra["threshold"]`` -> the test cities
    predicted with it (:func:`~staclearn.inference.change.predict_change`) -> model and CVA
    scored per city and pooled per part, with precision / recall against the threshold
    (:func:`~staclearn.evaluation.change.score_change`) -> the MLM card and change-mask Items
    (:mod:`staclearn.stac.change`) in ``catalog.json``. The test cities are used for nothing
    but those final figures.

    Args:
        catalog: STAC catalog path / URL or Items (see :func:`staclearn.data.search.open_items`),
            e.g. ``catalogs/oscd/catalog.json``.
        out_dir: run folder; receives ``chips/``, ``model/weights.safetensors`` +
            ``model/spec.json``, per test city ``change_<city>.tif`` (uint8 COG, 0/1, nodata
            255), ``cva_<city>.tif`` and optionally ``change_probability_<city>.tif``;
            ``evaluation.json`` (``{"test": ..., "validation": ..., "split": ...}``, see
            :func:`staclearn.evaluation.reports.write_evaluation`; model ``"<city> <fusion>"`` /
            ``"<city> cva"`` per city and ``"pooled <fusion>"`` / ``"pooled cva"``) with
            ``evaluation_confusion.png`` (test) and ``evaluation_validation_confusion.png``,
            ``history.json``, ``timings.json`` and the published ``catalog.json`` ->
            ``<run>/collection.json`` -> Items. It is created only once the catalog has been
            read, split and its pairs loaded, so a run that fails on its inputs leaves nothing.
        config: settings, including the split (:class:`ChangeConfig`).
        progress: tqdm progress bars while training.
        log: where step messages go.
        pairs: ``{city: (before, after, labels)}`` already loaded by
            :func:`~staclearn.data.pairs.load_pair` with ``config.bands`` (e.g. by an earlier
            run over the same catalog, as ``bench/change.py`` does); cities missing from it
            are loaded.
        magnitudes: ``{city: change_vector_magnitude(before, after)}`` already computed
            for those pairs; cities missing from it are computed.
        overwrite: write into a non-empty ``out_dir`` (its ``chips/`` folder is replaced).
            Without it a non-empty folder is refused before anything is read.

    Returns:
        A :class:`ChangeResult`. ``out_dir/catalog.json`` is a static catalog with the MLM
        card (both dates in ``mlm:input``; ``staclearn:metrics`` ``{"test": ...,
        "validation": ...}`` and ``staclearn:split``) and one change-mask Item per test city
        (:func:`~staclearn.stac.change.change_mask_item`, with its city's test figures and the
        split record), which validate offline (:mod:`staclearn.stac.validate`).

    Raises:
        RunExistsError: ``out_dir`` holds files and ``overwrite`` is False (nothing is read
            or written).
        SplitError: unknown city or Item id, a city asked for two parts, or too few cities
            for a training, a validation and a test part (:func:`~staclearn.data.splits.split_cities`).
        ConfigError: bad settings (fusion, monitor...); ``out_dir`` is a file.
        NoItemsFoundError: a city lacks two dates or its label Item.
        plus the errors of :func:`~staclearn.data.pairs.load_pair` and the training /
        prediction steps.
    """
    out = Path(out_dir)
    check_run_folder(out, overwrite=overwrite)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    if config.fusion not in FUSIONS:
        raise ConfigError(f"fusion must be one of {FUSIONS}, got {config.fusion!r}")
    groups = group_pairs(open_items(catalog), config.city_property)
    split = split_cities(
        groups, test_cities=config.test_cities, test_items=config.test_items, valid_cities=config.valid_cities,
        split_seed=config.split_seed, test_fraction=config.test_fraction, test_count=config.test_count,
        valid_fraction=config.valid_fraction, valid_count=config.valid_count,
    )
    log(f"split ({split.method}): train {list(split.train)}, validation {list(split.valid)}, test {list(split.test)}")
    pairs = load_pairs(
        groups, bands=config.bands, label_asset=config.label_asset, resampling=config.resampling, given=pairs, log=log
    )
    out.mkdir(parents=True, exist_ok=True)
    if overwrite and (out / "chips").exists():
        shutil.rmtree(out / "chips")  # a previous run's chips would mix with these
    index_path = _export_chips(out, pairs, split, config, log)
    timings["prepare"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    model, trainer, history = _train(index_path, config, progress, log)
    timings["train"] = time.perf_counter() - t1
    weights = save_weights(model, out / "model" / "weights.safetensors")
    write_json(out / "history.json", {"epochs": trainer.history_table(), "monitor": config.monitor})

    t2 = time.perf_counter()
    given_m = dict(magnitudes or {})
    magnitudes = {city: given_m[city] if city in given_m else change_vector_magnitude(b, a) for city, (b, a, _) in pairs.items()}
    cva_threshold, cva_train_f1 = fit_cva_threshold(
        [magnitudes[c].values for c in split.train], [pairs[c][2].values for c in split.train]
    )
    log(f"CVA threshold {cva_threshold:.3f} (F1 {cva_train_f1:.3f} on the training cities)")
    timings["cva"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    kw = {"tile_size": config.predict_tile_size, "padding": config.padding,
          "batch_size": max(1, config.batch_size // 4), "device": config.device}
    # the validation cities first: they choose the decision threshold; the test cities come after
    valid_probs = {city: predict_change(model, pairs[city][0], pairs[city][1], probability=True, threshold=0.5, **kw)
                   for city in split.valid}
    threshold = _decision_threshold(valid_probs, pairs, split, config, log)
    model.spec = replace(model.spec, extra={**model.spec.extra, "threshold": threshold["value"], "threshold_method": threshold["method"]})  # type: ignore[union-attr,arg-type]
    spec_path = out / "model" / "spec.json"
    write_json(spec_path, model.spec.to_dict())  # type: ignore[union-attr]
    preds, masks, probs = _predict(out, model, pairs, valid_probs, split, config, kw)
    cvas = {city: cva_mask(magnitudes[city], cva_threshold) for city in (*split.valid, *split.test)}
    cva_paths = {city: write_cog(cvas[city], out / f"cva_{city}.tif") for city in split.test}
    scores = score_change(
        {"test": split.test, "validation": split.valid}, {c: pairs[c][2].values for c in preds},
        {c: p.mask.values for c, p in preds.items()}, {c: p.probability.values for c, p in preds.items()},  # type: ignore[union-attr]
        {c: m.values for c, m in cvas.items()}, {c: magnitudes[c].values for c in preds},
        threshold=threshold["value"], cva_threshold=cva_threshold,
    )
    for part in ("validation", "test"):
        for city, d in scores.per_city[part].items():
            log(f"{part} {city}: F1(change) {config.fusion} {d['model'].f1['change']:.3f} "
                f"(threshold {threshold['value']:.3f})  CVA {d['cva'].f1['change']:.3f}")
    timings["predict_evaluate"] = time.perf_counter() - t3
    record = split.describe({c: pairs[c][2].values for c in pairs}, [c.name for c in CHANGE_CLASSES], ignore_index=IGNORE_INDEX)
    json_path, pngs = write_change_evaluation(scores, out, model_name=config.fusion, split=record, threshold=threshold)
    card, items = _publish_run(
        out, model, config, groups, split, record, scores, {c: (masks[c], preds[c].mask, probs.get(c)) for c in split.test},
        json_path, pngs, threshold, trainer.hyperparameters,
    )
    timings["total"] = time.perf_counter() - t0
    write_json(out / "timings.json", timings)
    return ChangeResult(
        out_dir=out,
        model=model.eval(),
        weights=weights,
        spec=spec_path,
        chips=index_path,
        change_masks=masks,
        probabilities=probs,
        cva_masks=cva_paths,
        test_metrics=scores.per_city["test"],
        test_pooled=scores.pooled["test"],
        valid_metrics=scores.per_city["validation"],
        valid_pooled=scores.pooled["validation"],
        cva_threshold=cva_threshold,
        cva_train_f1=cva_train_f1,
        threshold=threshold["value"],
        threshold_method=threshold["method"],
        precision_recall=scores.curves,
        evaluation=json_path,
        source_items=groups,
        split=split,
        split_record=record,
        history=history,
        catalog=out / "catalog.json",
        model_card=card,
        items=items,
        timings=timings,
    )


# --------------------------------------------------------------------------------------------
# The steps of run_change
# --------------------------------------------------------------------------------------------


def _export_chips(out: Path, pairs: Pairs, split: CitySplit, config: ChangeConfig, log: Callable[[str], None]) -> Path:
    """Chips of the training and validation cities; test cities are never chipped: no pixel of
    theirs reaches training, validation or the statistics."""
    index = export_change_chips(
        {c: pairs[c] for c in (*split.train, *split.valid)}, out / "chips", valid_cities=split.valid,
        tile_size=config.tile_size, stride=config.stride, min_labelled=config.min_labelled, standardize=config.standardize,
    )
    log(f"{int((index.split == 'train').sum())} training chips ({', '.join(split.train)}), "
        f"{int((index.split == 'valid').sum())} validation chips ({', '.join(split.valid)})")
    return out / "chips" / "chips.parquet"


def _weights(dataset: ChipDataset, how: str | None) -> torch.Tensor | None:
    if how is None:
        return None
    w = class_weights(dataset, len(CHANGE_CLASSES))
    if how == "balanced":
        return w
    if how == "sqrt":
        return w.sqrt()
    raise ConfigError(f"class_weights must be 'balanced', 'sqrt' or None, got {how!r}")


def _train(
    index_path: Path, config: ChangeConfig, progress: bool, log: Callable[[str], None]
) -> tuple[nn.Module, Trainer, list[EpochRecord]]:
    """Build the change model from the training chips' statistics and train it, keeping the
    epoch that ``config.monitor`` prefers on the validation chips."""
    mean, std = band_statistics(index_path, "train")
    model = build_change_model(
        list(config.bands), mean=mean, std=std, fusion=config.fusion, encoder=config.encoder,
        encoder_weights=config.encoder_weights, encoder_depth=config.encoder_depth, standardize=config.standardize,
        architecture=config.architecture, width=config.width, layers=config.layers, kernel=config.kernel,
    )
    train_ds = ChipDataset(index_path, "train", fill=mean)
    valid_ds = ChipDataset(index_path, "valid", fill=mean)
    loss = ChangeLoss(_weights(train_ds, config.class_weights), dice=config.dice)
    augment: nn.Module | bool = config.augment
    if config.augment and (config.date_swap or config.radiometric):
        augment = ChangeAugmentation(swap=config.date_swap, radiometric=config.radiometric)
    trainer = Trainer(
        model, train_ds, valid_ds, num_classes=len(CHANGE_CLASSES), batch_size=config.batch_size, loss=loss,
        augment=augment, device=config.device, seed=config.seed,
        oversample={1: config.oversample_change} if config.oversample_change else None,
    )
    history = trainer.fit(
        config.epochs, config.lr, progress=progress, keep_best=True, monitor=config.monitor, patience=config.patience,
        on_epoch=lambda r: log(
            f"epoch {r.epoch:3d}  train_loss {r.train_loss:.4f}  valid_miou {r.valid_miou:.4f}  ({r.seconds:.1f} s)"
        ),
    )
    return model, trainer, history


def _decision_threshold(
    valid_probs: Mapping[str, ChangePrediction], pairs: Pairs, split: CitySplit, config: ChangeConfig,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """``staclearn:threshold``: the threshold on p(change) (F1 on the validation cities unless given)."""
    if config.threshold is None:
        decision, valid_f1 = fit_change_threshold(
            [valid_probs[c].probability.values for c in split.valid], [pairs[c][2].values for c in split.valid]  # type: ignore[union-attr]
        )
        how = (f"highest F1(change) on the pooled pixels of the validation cities {list(split.valid)} "
               f"(F1 {valid_f1:.3f} there); the test cities took no part")
        log(f"decision threshold {decision:.3f}: {how}")
    else:
        decision, how = float(config.threshold), "given (ChangeConfig.threshold / --threshold)"
    return {"value": decision, "method": how, "cities": list(split.valid) if config.threshold is None else []}


def _predict(
    out: Path, model: nn.Module, pairs: Pairs, valid_probs: Mapping[str, ChangePrediction], split: CitySplit,
    config: ChangeConfig, kw: Mapping[str, Any],
) -> tuple[dict[str, ChangePrediction], dict[str, Path], dict[str, Path]]:
    """Change masks and probabilities of every validation and test city; those of the test
    cities written as COGs ``change_<city>.tif`` (and ``change_probability_<city>.tif``)."""
    decision = model.spec.extra["threshold"]  # type: ignore[union-attr]
    preds: dict[str, ChangePrediction] = {}
    masks: dict[str, Path] = {}
    probs: dict[str, Path] = {}
    for city in split.valid:  # the probabilities that chose the threshold, cut at it
        p = valid_probs[city].probability
        preds[city] = ChangePrediction(threshold_change(p, decision), p)  # type: ignore[arg-type]
    for city in split.test:
        masks[city] = out / f"change_{city}.tif"
        if config.probability:
            probs[city] = out / f"change_probability_{city}.tif"
        before, after, _ = pairs[city]
        preds[city] = predict_change(
            model, before, after, out_path=masks[city], prob_path=probs.get(city), probability=True, **kw
        )
    return preds, masks, probs


def _hyperparameters(c: ChangeConfig, split: CitySplit, threshold: Mapping[str, Any]) -> dict[str, Any]:
    """The run's settings for ``mlm:hyperparameters``, beside those the trainer reports."""
    augmentation = "kornia flips/rotation/zoom/shift, one transform for both dates and the mask"
    augmentation += (f"; date swap p={c.date_swap:g}" if c.date_swap else "") + (
        f"; per-date radiometric jitter {c.radiometric:g}" if c.radiometric else "")
    return {
        "tile_size": c.tile_size,
        "stride": c.stride,
        "loss": f"cross-entropy ({c.class_weights or 'unweighted'} class weights) + {c.dice:g} x Dice(change)",
        "augmentation": augmentation if c.augment else "none",
        "resampling": c.resampling,
        "decision_threshold": f"change where p(change) >= {threshold['value']:.4f}: {threshold['method']}",
        "sampling": f"chips holding change drawn {c.oversample_change:g}x as often" if c.oversample_change
        else "each chip once per epoch",
        "seed": c.seed,
        "split_seed": c.split_seed,
        "epoch_selection": f"best {c.monitor} on the validation chips"
        + (f", early stopping after {c.patience} epochs" if c.patience else ""),
        "split": f"by city; training cities {list(split.train)}, validation cities {list(split.valid)}, "
        f"test cities {list(split.test)}",
    }


def _publish_run(
    out: Path, model: nn.Module, config: ChangeConfig, groups: Mapping[str, PairItems], split: CitySplit,
    record: Mapping[str, Any], scores: ChangeScores, outputs: Mapping[str, tuple[Path, xr.DataArray, Path | None]],
    evaluation_json: Path, figures: Mapping[str, Path], threshold: Mapping[str, Any], hyperparameters: Mapping[str, Any],
) -> tuple[pystac.Item, dict[str, pystac.Item]]:
    """Write the MLM card, one change-mask Item per test city and its polygons into ``out/catalog.json``.

    ``outputs``: ``{test city: (change COG, change mask, probability COG or None)}``."""
    run_id = out.resolve().name
    metrics = {
        part: {**{city: change_figures(d) for city, d in scores.per_city[part].items()}, "pooled": change_figures(scores.pooled[part])}
        for part in ("test", "validation")
    }
    card = change_model_card(
        model,
        str((out / "model" / "weights.safetensors").resolve()),
        id=f"{run_id}-model",
        tile_size=config.predict_tile_size,
        hyperparameters={**hyperparameters, **_hyperparameters(config, split, threshold)},
        training_items=[i for c in split.train for i in (*groups[c].before, *groups[c].after, groups[c].labels)],
        metrics=metrics,
        description=(
            f"Change detection ({config.fusion} fusion, U-Net {config.encoder}) on pairs of {len(config.bands)} bands "
            f"{list(config.bands)}, trained by staclearn on {', '.join(split.train)} (epoch chosen on "
            f"{', '.join(split.valid)}; tested on {', '.join(split.test)}). Output: 0 no change, 1 change."
        ),
        split_record=record,
        threshold=threshold,
        evaluation_json=evaluation_json,
        figures=figures,
    )
    items = {}
    for city, (path, mask, prob_path) in outputs.items():
        g = groups[city]
        item = change_mask_item(
            str(path.resolve()), mask, id=f"{run_id}-change-{city}", before=g.before, after=g.after, model_card=card,
            probability_href=str(prob_path.resolve()) if prob_path is not None else None,
            threshold=float(threshold["value"]), threshold_method=str(threshold["method"]),
        )
        item.properties["staclearn:metrics"] = {"test": metrics["test"][city]}
        item.properties["staclearn:split"] = dict(record)
        items[city] = item
    polygons = [vectorize_item(item, outputs[city][0], out, name=f"{city}-polygons.parquet") for city, item in items.items()]
    write_catalog([card, *items.values(), *polygons], out, id=run_id, description="staclearn change-detection run")
    return card, items
