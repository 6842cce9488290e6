"""The land-cover workflow end to end: STAC -> cube -> chips -> U-Net -> class map -> STAC.

:func:`run_landcover` is what ``staclearn landcover run`` calls. Each step is a public
function of its own module, so a notebook can run them one by one:

1. :func:`staclearn.data.search.open_items` - imagery and label Items from a catalog / API;
2. :func:`staclearn.data.cube.load_cube` - the imagery cube on its GeoBox;
3. :func:`staclearn.data.labels.load_label_raster` - labels aligned to that GeoBox;
4. :func:`staclearn.chips.pixel.block_split` and :func:`staclearn.chips.pixel.export_chips`;
5. :class:`staclearn.training.segmentation.Trainer` - ``fit(epochs, lr)``;
6. :func:`staclearn.inference.raster.predict_class_map` - the class-map COG;
7. :mod:`staclearn.evaluation.metrics` - held-out blocks, with a per-pixel RandomForest baseline;
8. :mod:`staclearn.stac.modelcard` and :mod:`staclearn.stac.items` - MLM card + class-map Item.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pystac

from staclearn._io import check_run_folder, write_json
from staclearn.chips.pixel import (
    ChipDataset,
    band_statistics,
    block_split,
    export_chips,
)
from staclearn.data.cube import load_cube, read_pixels, valid_mask
from staclearn.data.labels import (
    IGNORE_INDEX,
    indices_to_values,
    load_label_raster,
    split_label_items,
)
from staclearn.data.search import open_items
from staclearn.data.splits import (
    TEST,
    TRAIN,
    VALID,
    part_counts,
    regions_mask,
    split_description,
)
from staclearn.errors import (
    EmptyDataError,
    LabelError,
    NodataLabelsWarning,
    NoItemsFoundError,
)
from staclearn.evaluation.baselines import random_forest_baseline
from staclearn.evaluation.metrics import ClassificationMetrics, compute_metrics, summary
from staclearn.evaluation.reports import write_evaluation
from staclearn.stac.onnx import add_onnx_artifact
from staclearn.inference.raster import CLASS_MAP_NODATA, predict_class_map, write_cog
from staclearn.stac.items import vectorize_item
from staclearn.models.segmentation import build_model, save_weights
from staclearn.stac.catalog import write_catalog
from staclearn.stac.items import chips_collection, class_map_item, geobox_geometry
from staclearn.stac.modelcard import model_card
from staclearn.training.segmentation import EpochRecord, train_ensemble
from staclearn.workflows._resume import (
    TRAIN_STATE_DIR,
    can_resume,
    complete_chips,
    run_settings,
)

__all__ = ["LandCoverConfig", "LandCoverResult", "run_landcover"]


DEFAULT_MODEL_OPTIONS: dict[str, Any] = {
    "width": 16,
    "layers": 3,
    "kernel": 3,
    "dropout": 0.1,
    "indices": ["ndvi", "ndwi", "mndwi", "ndbi"],
}
"""The default land-cover model: what won ``bench/landcover.py`` (spatial checkerboard
cross-validation on the NC scene, 4 folds x 3 seeds, against a 500-tree RandomForest on the
same training pixels): a 3-layer, 16-channel PixelConvNet with dropout 0.1 and four spectral
indices as inputs, 5 members averaged, sqrt class weights, label smoothing 0.1, weight decay
1e-2, last epoch kept."""


@dataclass(frozen=True)
class LandCoverConfig:
    """Settings of a land-cover run. Pixel sizes are in pixels of the imagery cube.

    The defaults are the recipe that won ``bench/landcover.py`` (see
    :data:`DEFAULT_MODEL_OPTIONS`); ``architecture="Unet", encoder="resnet18",
    model_options=None, members=1, class_weights="balanced", label_smoothing=0,
    weight_decay=1e-4, keep_best=True`` is the earlier U-Net recipe.

    Attributes:
        bands: imagery bands, in model input order; ``None``: every band of the Item.
        label_asset: key of the label raster asset in the label Item.
        engine: cube loader, ``"odc"`` or ``"stackstac"``.
        tile_size: training chip edge (pixels); a multiple of 32 for a depth-5 U-Net.
        stride: step between chips (pixels); < tile_size gives overlapping chips.
        min_labelled: minimum share of labelled pixels in a chip, in [0, 1].
        test_regions: the test part, given by the user: a vector file (GeoJSON, GeoParquet,
            GeoPackage... in any CRS), a ``(west, south, east, north)`` WGS84 bbox or a list
            of them, a mask raster (``.tif``: non-zero = test; on the label grid, or
            reprojected onto it with nearest resampling), or a ``(H, W)`` bool array on the
            label grid. ``None``: test blocks are drawn with ``test_fraction`` and
            ``split_seed``. See :func:`staclearn.data.splits.regions_mask`.
        test_fraction: share of labelled pixels drawn as whole test blocks when
            ``test_regions`` is None, in [0, 1); 0 gives no test part (the figures are then
            validation figures, named so).
        block_size: edge of the square blocks of the spatial split (pixels).
        valid_fraction: target share of the labelled pixels outside the test part held out
            in validation blocks (epoch selection).
        split_seed: seed of the block draws; separate from ``seed`` so the split stays
            when the training seed changes.
        architecture: ``"PixelConvNet"`` (default: a small fully convolutional net of
            ``layers`` 3x3 convolutions, receptive field 7 px, :class:`staclearn.models.segmentation.PixelConvNet`)
            or an smp architecture (``"Unet"``, ``"FPN"``...).
        encoder: smp encoder name (``"resnet18"``, ``"resnet34"``...) for smp architectures;
            ignored by ``"PixelConvNet"``.
        encoder_weights: ``None`` or ``"imagenet"`` (needs internet).
        model_options: JSON-able model options (:func:`staclearn.models.segmentation.build_model` ``extra``):
            ``width``, ``layers``, ``kernel``, ``dropout`` of the PixelConvNet and
            ``indices``, spectral indices computed inside the model (NDVI, NDWI, MNDWI, NDBI)
            from the bands whose STAC ``common_name`` is their role (``red``, ``nir``,
            ``swir16``...; an index whose bands are missing is left out, with a log line);
            their z-score statistics come from the training part's pixels.
        members: models trained from seeds ``seed * 1000 + m`` and averaged (mean softmax)
            into one model, one safetensors file, one card.
        epochs: training epochs per member.
        lr: peak learning rate of the one-cycle schedule.
        weight_decay: AdamW weight decay.
        label_smoothing: cross-entropy label smoothing (Szegedy et al. 2016).
        keep_best: keep each member's best validation epoch; ``False`` (default) keeps the
            last epoch and only monitors validation (what won on the benchmark).
        batch_size: chips per batch.
        class_weights: ``"sqrt"`` (square root of median-frequency weights, default),
            ``"balanced"`` (median-frequency) or ``None``; from the training chips only.
        augment: kornia rotation / zoom / shift / flips during training.
        predict_tile_size: inference tile edge (pixels, padding included).
        padding: inference context discarded on each tile side (pixels).
        rf_estimators: trees of the RandomForest baseline (0 skips it).
        onnx: also export the network as ONNX beside the safetensors and list it in the card
            (:func:`staclearn.stac.onnx.add_onnx_artifact`; skipped with a warning when the
            ``onnx`` extra is not installed), so ``load_model(card, engine="auto")`` runs it in
            ONNX Runtime.
        vectorize: also write the class map as polygons (``polygons.parquet``) published as
            a vector Item derived from the class-map Item (:func:`staclearn.stac.items.vectorize_item`).
        min_mapping_unit_m2: regions smaller than this (m²) merge into their largest
            neighbour before polygonizing.
        simplify_m: polygon simplification tolerance in metres (``None``: exact pixel edges).
        seed: training seed: initialisation, shuffling and augmentation (not the split).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
    """

    bands: tuple[str, ...] | None = None
    label_asset: str = "labels"
    engine: str = "odc"
    tile_size: int = 64
    stride: int = 32
    min_labelled: float = 0.002
    test_regions: Any = None
    test_fraction: float = 0.25
    block_size: int = 64
    valid_fraction: float = 0.2
    split_seed: int = 0
    architecture: str = "PixelConvNet"
    encoder: str = "none"
    encoder_weights: str | None = None
    model_options: dict[str, Any] | None = field(default_factory=lambda: dict(DEFAULT_MODEL_OPTIONS))
    members: int = 5
    epochs: int = 30
    lr: float = 3e-3
    weight_decay: float = 1e-2
    label_smoothing: float = 0.1
    keep_best: bool = False
    batch_size: int = 16
    class_weights: str | None = "sqrt"
    augment: bool = True
    predict_tile_size: int = 256
    padding: int = 32
    rf_estimators: int = 500
    vectorize: bool = True
    onnx: bool = True
    min_mapping_unit_m2: float = 0.0
    simplify_m: float | None = None
    seed: int = 0
    device: str = "auto"


@dataclass
class LandCoverResult:
    """What a land-cover run produced.

    Attributes:
        out_dir: the run folder.
        class_map: path of the class-map COG.
        catalog: path of the output ``catalog.json``.
        model_card: the MLM card Item (saved).
        prediction: the class-map Item (saved).
        metrics: ``{"test": {"model": ..., "random_forest": ...}, "validation": {...}}``:
            test figures on the test part (seen by no choice), validation figures on the
            blocks that chose the epoch (optimistic); ``"test"`` is absent without a test part.
        split: the split description (``staclearn:split`` of the card and the Item).
        history: per-epoch training records.
        timings: seconds per step (``train``, ``predict``...) and ``predict_mpx_per_s``.
    """

    out_dir: Path
    class_map: Path
    catalog: Path
    model_card: pystac.Item
    prediction: pystac.Item
    metrics: dict[str, dict[str, ClassificationMetrics]]
    history: list[EpochRecord]
    split: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _resolve_indices(
    imagery: Sequence[pystac.Item], bands: Sequence[str], indices: Sequence[str]
) -> tuple[list[str], dict[str, str], list[str]]:
    """Map spectral-index band roles to the cube's bands through their STAC ``common_name``
    (eo:bands or bands); return ``(indices kept, role -> band name, indices left out)``."""
    from staclearn.models.segmentation import SPECTRAL_INDICES

    roles: dict[str, str] = {}
    for item in imagery:
        for asset in item.assets.values():
            for b in asset.extra_fields.get("eo:bands", []) + asset.extra_fields.get("bands", []):
                name, common = b.get("name"), b.get("common_name") or b.get("eo:common_name")
                if name in bands and common and common not in roles:
                    roles[common] = name
    kept = [i for i in indices if i in SPECTRAL_INDICES and all(r in roles for r in SPECTRAL_INDICES[i])]
    return kept, roles, [i for i in indices if i not in kept]


def run_landcover(
    source: Any,
    out_dir: str | os.PathLike[str],
    config: LandCoverConfig = LandCoverConfig(),
    *,
    bbox: Sequence[float] | None = None,
    datetime: str | None = None,
    collections: Sequence[str] | None = None,
    modifier: Callable[[Any], Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
    resume: bool = False,
) -> LandCoverResult:
    """Run the land-cover workflow and publish its outputs into ``out_dir``.

    Args:
        source: STAC catalog / ItemCollection path, STAC API URL, or Items (see
            :func:`staclearn.data.search.open_items`); must yield imagery Items and one label Item.
        out_dir: run folder, created if needed. It receives ``class_map.tif`` (COG),
            ``evaluation.json`` + ``evaluation_confusion.png``, ``history.json``,
            ``baseline_rf.tif``, ``chips/`` (GeoTIFF chips + ``chips.parquet``),
            ``model/weights.safetensors``, ``train_state/`` (the run's settings and each
            member's training state, for ``resume``) and a static STAC catalog
            (``catalog.json``, the MLM card Item and the class-map Item).
        config: the run settings.
        bbox: ``(west, south, east, north)`` degrees to search / crop.
        datetime: RFC 3339 interval for the search.
        collections: collection ids for the search.
        modifier: href signer, e.g. ``planetary_computer.sign_inplace``.
        progress: show progress bars.
        log: where step messages go.
        overwrite: write into a non-empty ``out_dir`` (its chips are replaced). Without it a
            non-empty folder is refused before anything is read; the folder itself is created
            only once the inputs have been read and split, so a run that fails on its inputs
            leaves nothing behind.
        resume: continue the interrupted run in ``out_dir`` (one started with the same source,
            search and chip / split / model / training settings, recorded in
            ``train_state/run.json``): its chips are reused when their export finished, each
            member continues from the training state it wrote after its last epoch
            (``train_state/member{m}.safetensors``; finished members are not retrained), and
            the steps after training run again. On the CPU the model equals that of an
            uninterrupted run. An empty or missing ``out_dir`` starts a fresh run.

    Returns:
        A :class:`LandCoverResult`.

    Raises:
        RunExistsError: ``out_dir`` holds files and ``overwrite`` is False, unless ``resume``
            is True and they are an interrupted run with the same settings.
        CheckpointError: a member's training state cannot be resumed (see
            :meth:`staclearn.training.segmentation.Trainer.fit`).
        NoItemsFoundError: no imagery Item, or no label Item.
        AssetReadError: an imagery asset is truncated, corrupt or unreachable (named).
        EmptyDataError: the imagery is nodata everywhere.
        LabelError: no label, or every label falls on imagery nodata.
        SplitError: the test regions hold no label, or leave none for training.
        plus the errors of each step (see the step functions).
    """
    out = Path(out_dir)
    settings = run_settings(source, config, bbox=bbox, datetime=datetime, collections=collections)
    resuming = resume and can_resume(out, settings, overwrite=overwrite)
    if not resuming:
        check_run_folder(out, overwrite=overwrite)
    else:
        log(f"resuming the interrupted run in {out}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    items = open_items(source, bbox=bbox, datetime=datetime, collections=collections, modifier=modifier)
    imagery, label_items = split_label_items(items)
    if not imagery:
        raise NoItemsFoundError(f"No imagery Item in {source!r}: every Item found is a label Item.")
    if not label_items:
        raise NoItemsFoundError(
            f"No label Item in {source!r}: add an Item with the STAC label extension whose asset "
            f"{config.label_asset!r} is the label raster."
        )
    label_item = label_items[0]
    cube = load_cube(imagery, bands=config.bands, bbox=bbox, engine=config.engine)  # type: ignore[arg-type]
    if cube.sizes["time"] > 1:
        log(f"{cube.sizes['time']} imagery dates found: using their median composite")
        cube = cube.median("time", keep_attrs=True).expand_dims(time=1)
    geobox = cube.odc.geobox
    bands = [str(b) for b in cube.band.values]
    image = read_pixels(cube.isel(time=0), imagery).astype(np.float32, copy=False)
    nodata = cube.attrs.get("nodata")
    labels_da = load_label_raster(label_item, geobox, asset=config.label_asset)
    classes = labels_da.attrs["classes"]
    names = [c.name for c in classes]
    ok = valid_mask(image, nodata)
    if not ok.any():
        raise EmptyDataError(
            f"The imagery of Items {[i.id for i in imagery]} is nodata (value {nodata}) everywhere"
            + (f" in bbox {list(bbox)}" if bbox is not None else "")
            + ": check the bbox, the nodata value declared in raster:bands, and the assets."
        )
    n_labelled = int((labels_da.values != IGNORE_INDEX).sum())
    dropped = int(((labels_da.values != IGNORE_INDEX) & ~ok).sum())
    if n_labelled and dropped == n_labelled:
        raise LabelError(
            f"Every one of the {n_labelled} labelled pixels of {label_item.id!r} (asset {config.label_asset!r}) falls "
            f"where the imagery {[i.id for i in imagery]} is nodata: the labels and the imagery do not cover the same "
            "ground; check their CRS and extent."
        )
    if dropped:
        warnings.warn(
            f"{dropped} labelled pixels of {label_item.id!r} (asset {config.label_asset!r}) fall where the imagery "
            f"{[i.id for i in imagery]} is nodata and are dropped from training and scoring.",
            NodataLabelsWarning,
            stacklevel=2,
        )
    labels = np.where(ok, labels_da.values, IGNORE_INDEX).astype(np.uint8)
    log(f"cube {dict(cube.sizes)} bands {bands}; {int((labels != IGNORE_INDEX).sum())} labelled pixels, {len(classes)} classes"
        + (f"; {dropped} labels on nodata dropped" if dropped else ""))

    test_mask = regions_mask(config.test_regions, geobox) if config.test_regions is not None else None
    split = block_split(
        labels,
        block_size=config.block_size,
        valid_fraction=config.valid_fraction,
        test_fraction=config.test_fraction,
        test_mask=test_mask,
        seed=config.split_seed,
    )
    has_test = bool(((split == TEST) & (labels != IGNORE_INDEX)).any())
    split_record = split_description(
        (
            "test: user test regions" if test_mask is not None
            else f"test: spatial blocks of {config.block_size} px, {config.test_fraction:.0%} of labels"
            if has_test else "no test part"
        )
        + f"; validation: spatial blocks of {config.block_size} px, {config.valid_fraction:.0%} of the other labels",
        split_seed=config.split_seed,
        counts=part_counts(labels, split, names),
        unit="pixels",
        block_size=config.block_size,
        labels_dropped_on_nodata=dropped,
    )
    log("labelled pixels per part: " + ", ".join(f"{k} {sum(v.values())}" for k, v in split_record["counts"].items()))
    out.mkdir(parents=True, exist_ok=True)
    state_dir = out / TRAIN_STATE_DIR
    if not resuming:
        for old in ("chips", TRAIN_STATE_DIR):  # a previous run's chips or states would mix with these
            if (out / old).exists():
                shutil.rmtree(out / old)
        write_json(state_dir / "run.json", settings)
    index = complete_chips(out / "chips") if resuming else None
    reused = index is not None
    if index is None:
        if (out / "chips").exists():
            shutil.rmtree(out / "chips")  # an interrupted export
        index = export_chips(
            image,
            labels,
            split,
            geobox,
            out / "chips",
            tile_size=config.tile_size,
            stride=config.stride,
            min_labelled=config.min_labelled,
            nodata=nodata,
            band_names=bands,
        )
    n_train, n_valid = int((index.split == "train").sum()), int((index.split == "valid").sum())
    log(f"{n_train} training and {n_valid} validation chips of {config.tile_size} px in {out / 'chips'}"
        + (" (reused from the interrupted run)" if reused else ""))
    timings["prepare"] = time.perf_counter() - t0

    mean, std = band_statistics(out / "chips" / "chips.parquet", "train")
    options = dict(config.model_options or {})
    if options.get("indices") and not options.get("index_bands"):
        options["indices"], options["index_bands"], dropped_indices = _resolve_indices(imagery, bands, options["indices"])
        if dropped_indices:
            log(f"spectral indices {dropped_indices} left out: the imagery has no band with the common_name they need")
        if not options["indices"]:
            options.pop("indices"), options.pop("index_bands")
    train_pixels = image[:, (split == TRAIN) & ok]  # index statistics from the training part only

    def build(_member_seed: int):
        return build_model(
            bands,
            classes,
            mean=mean,
            std=std,
            architecture=config.architecture,
            encoder=config.encoder,
            encoder_weights=config.encoder_weights,
            extra=options or None,
            index_pixels=train_pixels if options.get("indices") else None,
        )

    index_path = out / "chips" / "chips.parquet"
    if resuming:
        from staclearn.training.checkpoint import load_training_state

        for m in range(config.members):
            state = state_dir / f"member{m}.safetensors"
            if state.is_file():
                info = load_training_state(state).info
                log(f"member {m + 1}: resuming after epoch {info['epoch']} of {info['epochs']}"
                    + (" (finished)" if info["epoch"] >= info["epochs"] or info["stopped"] else ""))
    t1 = time.perf_counter()
    model, trainers = train_ensemble(
        build,
        ChipDataset(index_path, "train", fill=mean),
        ChipDataset(index_path, "valid", fill=mean),
        members=config.members,
        seed=config.seed,
        epochs=config.epochs,
        lr=config.lr,
        fit_kwargs={
            "weight_decay": config.weight_decay,
            "keep_best": config.keep_best,
            "progress": progress,
            "on_epoch": lambda r: log(
                f"epoch {r.epoch:3d}  train_loss {r.train_loss:.4f}  valid_loss {r.valid_loss:.4f}  "
                f"valid_OA {r.valid_accuracy:.3f}  valid_mIoU {r.valid_miou:.3f}  ({r.seconds:.1f} s)"
            ),
        },
        on_member=(lambda m, _t: log(f"member {m + 1} of {config.members} trained")) if config.members > 1 else None,
        state_dir=state_dir,
        resume=resuming,
        num_classes=len(classes),
        batch_size=config.batch_size,
        weights=config.class_weights,
        label_smoothing=config.label_smoothing,
        augment=config.augment,
        device=config.device,
        checkpoint=out / "model" / "best.safetensors" if config.keep_best else None,
    )
    history = [r for t in trainers for r in t.history]
    timings["train"] = time.perf_counter() - t1
    weights = save_weights(model, out / "model" / "weights.safetensors")
    (out / "model" / "best.safetensors").unlink(missing_ok=True)
    epoch_selection = "best validation mIoU per member" if config.keep_best else "last epoch (validation monitored only)"
    write_json(
        out / "history.json",
        {
            "epoch_selection": epoch_selection,
            "members": [{"seed": t_seed, "best_epoch": t.best_epoch, "epochs": t.history_table()}
                        for t_seed, t in zip((config.seed * 1000 + m for m in range(len(trainers))), trainers, strict=True)],
        },
    )

    t2 = time.perf_counter()
    class_map = predict_class_map(
        model,
        cube,
        tile_size=config.predict_tile_size,
        padding=config.padding,
        batch_size=max(1, config.batch_size // 4),
        device=config.device,
        out_path=out / "class_map.tif",
    )
    timings["predict"] = time.perf_counter() - t2
    timings["predict_mpx_per_s"] = class_map.size / 1e6 / timings["predict"]

    values = np.asarray([c.value for c in classes], dtype=np.uint8)
    label_values = indices_to_values(labels, classes)

    def reference(part: int) -> np.ndarray:
        return np.where((split == part) & (labels != IGNORE_INDEX), label_values, IGNORE_INDEX).astype(np.uint8)

    parts = {"test": TEST, "validation": VALID} if has_test else {"validation": VALID}
    metrics: dict[str, dict[str, ClassificationMetrics]] = {
        part: {"model": compute_metrics(reference(code), class_map.values, values.tolist(), names)} for part, code in parts.items()
    }
    if config.rf_estimators > 0:
        t3 = time.perf_counter()
        train_mask = (split == TRAIN) & (labels != IGNORE_INDEX)
        rf_idx = random_forest_baseline(
            image, labels, train_mask, nodata_mask=~ok, n_estimators=config.rf_estimators, seed=config.seed
        )
        rf_map = indices_to_values(rf_idx, classes, nodata=CLASS_MAP_NODATA)
        for part, code in parts.items():
            metrics[part]["random_forest"] = compute_metrics(reference(code), rf_map, values.tolist(), names)
        write_cog(class_map.copy(data=rf_map), out / "baseline_rf.tif")
        timings["random_forest"] = time.perf_counter() - t3
    json_path, pngs = write_evaluation(metrics, out, split=split_record, name="evaluation")
    png_path = pngs["test" if has_test else "validation"]
    for part, results in metrics.items():
        for name, m in results.items():
            log(f"{part:10s} {name:14s} OA {m.overall_accuracy:.3f}  kappa {m.kappa:.3f}  macro-F1 {m.macro_f1:.3f}  mIoU {m.miou:.3f}")
    if not has_test:
        log("no test part: these are validation figures (the blocks that chose the epoch), optimistic")
    card_metrics = {part: {k: summary(v) for k, v in results.items()} for part, results in metrics.items()}

    geometry, bbox4326 = geobox_geometry(geobox)
    hp = {
        **trainers[0].hyperparameters,
        "tile_size": config.tile_size,
        "stride": config.stride,
        "class_weights": {"balanced": "median-frequency", "sqrt": "square root of median-frequency"}.get(config.class_weights or "", "none"),
        "augmentation": "kornia rotation/zoom/shift/flips" if config.augment else "none",
        "seed": config.seed,
        "split_seed": config.split_seed,
        "architecture": config.architecture,
        "model_options": options,
        "members": config.members,
        "member_seeds": [config.seed * 1000 + m for m in range(config.members)],
        "weight_decay": config.weight_decay,
        "label_smoothing": config.label_smoothing,
        "epoch_selection": epoch_selection,
        "split": split_record["method"],
    }
    card = model_card(
        model,
        str(weights.resolve()),
        id=f"{out.resolve().name}-model",
        geometry=geometry,
        bbox=bbox4326,
        tile_size=config.predict_tile_size,
        hyperparameters=hp,
        training_items=[*imagery, label_item],
        metrics=card_metrics,
        description=f"Land-cover {config.architecture} ({config.encoder}) for {len(bands)} bands {bands}, trained by staclearn on {label_item.id}.",
    )
    if config.onnx:
        t5 = time.perf_counter()
        add_onnx_artifact(card, model, required=False)
        timings["onnx_export"] = time.perf_counter() - t5
    card.add_asset(
        "evaluation",
        pystac.Asset(str(json_path.resolve()), media_type=pystac.MediaType.JSON, roles=["metadata"], title="Evaluation: test part and validation part apart"),
    )
    prediction = class_map_item(
        str((out / "class_map.tif").resolve()),
        class_map,
        id=f"{out.resolve().name}-class-map",
        classes=classes,
        source_items=imagery,
        model_card=card,
    )
    card.properties["staclearn:split"] = split_record
    prediction.properties["staclearn:metrics"] = card_metrics
    prediction.properties["staclearn:split"] = split_record
    prediction.add_asset(
        "confusion_matrix",
        pystac.Asset(str(png_path.resolve()), media_type=pystac.MediaType.PNG, roles=["overview"], title="Confusion matrices"),
    )
    run_id = out.resolve().name
    chips = chips_collection(index_path, id=f"{run_id}-chips", source_items=[*imagery, label_item])
    outputs = [card, prediction]
    if config.vectorize:
        t4 = time.perf_counter()
        outputs.append(
            vectorize_item(prediction, out / "class_map.tif", out, min_area_m2=config.min_mapping_unit_m2, simplify_m=config.simplify_m)
        )
        timings["vectorize"] = time.perf_counter() - t4
    write_catalog(outputs, out, id=run_id, description="staclearn land-cover run", children=[chips])
    timings["total"] = time.perf_counter() - t0
    write_json(out / "timings.json", timings)
    return LandCoverResult(
        out_dir=out,
        class_map=out / "class_map.tif",
        catalog=out / "catalog.json",
        model_card=card,
        prediction=prediction,
        metrics=metrics,
        history=history,
        timings=timings,
        split=split_record,
    )
