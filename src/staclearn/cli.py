"""``staclearn`` command line: the same steps as the Python API, in the field's words.

Units: tile sizes, strides, padding and block sizes are in *pixels of the imagery cube*;
bbox is (west, south, east, north) in WGS84 degrees; datetime is an RFC 3339 instant or
``start/end`` interval.

Importing this module imports typer and staclearn's errors only: every command imports the
steps it runs (torch, odc-stac, rasterio...) when it is called, so ``staclearn --help`` and
argument errors answer at once. The long commands (``predict``, ``landcover run``,
``damage run``, ``change run``) stop on Ctrl-C (SIGINT) or SIGTERM with one line saying how to
resume, and exit 130 / 143 (128 + the signal number, as a shell reports them).
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from staclearn.errors import StaclearnError

app = typer.Typer(
    help="STAC-native GeoAI: land cover, building damage and change detection from STAC Items "
    "to published STAC Items with MLM model cards.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
landcover_app = typer.Typer(help="Land-cover pixel classification (small FCN ensemble by default, or a U-Net).", no_args_is_help=True)
app.add_typer(landcover_app, name="landcover")
damage_app = typer.Typer(help="Building-damage classification of footprints (timm classifier).", no_args_is_help=True)
app.add_typer(damage_app, name="damage")
change_app = typer.Typer(help="Change detection on before/after pairs (early fusion or siamese; threshold chosen on validation cities).", no_args_is_help=True)
app.add_typer(change_app, name="change")


@app.callback()
def _main() -> None:
    """STAC-native GeoAI: land cover, building damage and change detection from STAC Items to
    published STAC Items with MLM model cards."""
    import logging

    # odc-stac logs every failed chunk read (from its worker threads, even after the read has
    # failed); the CLI says it once, as a named error naming the Item, asset and href
    logging.getLogger("odc.loader").setLevel(logging.CRITICAL)


def _bbox(value: Optional[str]) -> Optional[list[float]]:
    if value is None:
        return None
    parts = [float(v) for v in value.split(",")]
    if len(parts) != 4:
        raise typer.BadParameter("bbox is 'west,south,east,north' in degrees")
    return parts


def _modifier(name: Optional[str]):
    if name is None:
        return None
    if name == "planetary-computer":
        import planetary_computer

        return planetary_computer.sign_inplace
    raise typer.BadParameter("modifier must be 'planetary-computer'")


def _fail(err: StaclearnError) -> None:
    typer.secho(f"error: {type(err).__name__}: {err}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=2)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt (so that the code that
    cleans up on Ctrl-C, e.g. DataLoader workers and temporary files, runs for it too)."""


def _command_line(extra: str | None = None) -> str:
    """The command as typed (``staclearn`` + its arguments), with ``extra`` appended once."""
    import shlex
    import sys

    args = sys.argv[1:]
    if extra is not None and extra not in args:
        args = [*args, extra]
    return "staclearn " + shlex.join(args)


def _on_interrupt(how: Callable[[dict[str, Any]], str]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Run a command inside :func:`_resumable`, with the hint ``how(arguments)``."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(command)  # typer reads the signature through __wrapped__
        def run(**arguments: Any) -> None:
            with _resumable(how(arguments)):
                command(**arguments)

        return run

    return decorate


@contextlib.contextmanager
def _resumable(how: str) -> Iterator[None]:
    """Turn Ctrl-C (SIGINT) and SIGTERM during a long command into one line on stderr saying
    how to resume (``how``) and exit code 130 / 143."""
    import signal
    import threading

    def on_term(signum: int, frame: object) -> None:
        raise _Terminated()

    main = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, on_term) if main else None
    try:
        yield
    except KeyboardInterrupt as err:
        code = 143 if isinstance(err, _Terminated) else 130
        typer.secho(f"interrupted ({'SIGTERM' if code == 143 else 'Ctrl-C'}): {how}", err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(code=code) from None
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


@app.command()
def search(
    source: Annotated[str, typer.Argument(help="catalog.json / ItemCollection path, or STAC API URL")],
    bbox: Annotated[Optional[str], typer.Option(help="west,south,east,north in WGS84 degrees")] = None,
    datetime: Annotated[Optional[str], typer.Option(help="RFC 3339 instant or start/end interval ('..' = open)")] = None,
    collections: Annotated[Optional[list[str]], typer.Option("--collection", help="collection id (repeatable)")] = None,
    max_items: Annotated[Optional[int], typer.Option(help="stop after this many Items")] = None,
    modifier: Annotated[Optional[str], typer.Option(help="'planetary-computer' signs asset hrefs")] = None,
) -> None:
    """List the STAC Items a source holds (id, collection, datetime, assets) as JSON lines."""
    from staclearn.data.search import open_items

    try:
        items = open_items(
            source, bbox=_bbox(bbox), datetime=datetime, collections=collections, max_items=max_items, modifier=_modifier(modifier)
        )
    except StaclearnError as err:
        _fail(err)
    for item in items:
        typer.echo(
            json.dumps(
                {
                    "id": item.id,
                    "collection": item.collection_id,
                    "datetime": item.properties.get("datetime") or item.properties.get("start_datetime"),
                    "bbox": item.bbox,
                    "assets": sorted(item.assets),
                }
            )
        )


@landcover_app.command("run")
@_on_interrupt(lambda a: f"continue from the last training checkpoint with: {_command_line('--resume')}")
def landcover_run(
    catalog: Annotated[str, typer.Option(help="STAC catalog / ItemCollection path or STAC API URL with imagery and one label Item")] = "catalogs/nc-landsat/catalog.json",
    out: Annotated[Path, typer.Option(help="run folder for chips, model, class map, report and STAC catalog")] = Path("runs/nc"),
    bands: Annotated[Optional[list[str]], typer.Option("--band", help="imagery band, in model input order (repeatable; default: all)")] = None,
    label_asset: Annotated[str, typer.Option(help="asset key of the label raster in the label Item")] = "labels",
    bbox: Annotated[Optional[str], typer.Option(help="west,south,east,north in WGS84 degrees")] = None,
    datetime: Annotated[Optional[str], typer.Option(help="RFC 3339 interval of the imagery")] = None,
    tile_size: Annotated[int, typer.Option(help="training chip edge, pixels (multiple of 32)")] = 64,
    stride: Annotated[int, typer.Option(help="step between chips, pixels")] = 32,
    min_labelled: Annotated[float, typer.Option(help="minimum labelled fraction of a chip, 0-1")] = 0.002,
    test_regions: Annotated[Optional[str], typer.Option(help="test part: vector file (GeoJSON, GeoParquet... any CRS) or mask raster (.tif, non-zero = test); default: drawn test blocks")] = None,
    test_bbox: Annotated[Optional[list[str]], typer.Option("--test-bbox", help="test part as west,south,east,north in WGS84 degrees (repeatable)")] = None,
    test_fraction: Annotated[float, typer.Option(help="share of labelled pixels drawn as test blocks when no test regions are given (0 = no test part)")] = 0.25,
    block_size: Annotated[int, typer.Option(help="edge of the spatial split blocks, pixels")] = 64,
    valid_fraction: Annotated[float, typer.Option(help="share of the non-test labelled pixels held out for validation (epoch selection), 0-1")] = 0.2,
    split_seed: Annotated[int, typer.Option(help="seed of the test / validation block draws (separate from --seed)")] = 0,
    architecture: Annotated[str, typer.Option(help="PixelConvNet (default: small FCN + spectral indices, the benchmark's winner) or an smp architecture (Unet, FPN...)")] = "PixelConvNet",
    encoder: Annotated[str, typer.Option(help="smp encoder for smp architectures (resnet18, resnet34, efficientnet-b0...)")] = "resnet18",
    encoder_weights: Annotated[Optional[str], typer.Option(help="'imagenet' needs internet; default random init")] = None,
    members: Annotated[int, typer.Option(help="models trained from different seeds and averaged into one")] = 5,
    epochs: Annotated[int, typer.Option(help="training epochs per member")] = 30,
    lr: Annotated[float, typer.Option(help="peak learning rate of the one-cycle schedule")] = 3e-3,
    batch_size: Annotated[int, typer.Option(help="chips per batch")] = 16,
    predict_tile_size: Annotated[int, typer.Option(help="inference tile edge incl. padding, pixels")] = 256,
    padding: Annotated[int, typer.Option(help="inference context discarded on each tile side, pixels")] = 32,
    rf_estimators: Annotated[int, typer.Option(help="trees of the RandomForest baseline (0 = skip)")] = 500,
    seed: Annotated[int, typer.Option(help="training seed: initialisation, shuffling, augmentation")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps")] = "auto",
    engine: Annotated[str, typer.Option(help="cube loader: odc (odc-stac) or stackstac")] = "odc",
    modifier: Annotated[Optional[str], typer.Option(help="'planetary-computer' signs asset hrefs")] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    overwrite: Annotated[bool, typer.Option(help="write into a non-empty --out (replaces that run)")] = False,
    resume: Annotated[bool, typer.Option(help="continue an interrupted run in the same --out from its last training checkpoint")] = False,
    vectorize: Annotated[bool, typer.Option(help="also publish the class map as polygons (polygons.parquet)")] = True,
    min_mapping_unit_m2: Annotated[float, typer.Option(help="polygons: regions smaller than this (m2) merge into a neighbour")] = 0.0,
    simplify_m: Annotated[Optional[float], typer.Option(help="polygons: simplification tolerance, metres")] = None,
) -> None:
    """Train a land-cover model on STAC imagery + labels, predict the whole scene, evaluate and publish.

    Writes into OUT: class_map.tif (COG, class values, nodata 255), evaluation.json (model
    and RandomForest: "test" figures on the test part that no choice saw, "validation"
    figures on the epoch-selection blocks, "split" counts) and evaluation_confusion.png
    (test), history.json,
    chips/ (GeoTIFF chips + chips.parquet index), model/weights.safetensors (+ weights.onnx),
    polygons.parquet and catalog.json with the MLM model-card Item, the class-map Item and
    the polygons Item.

    Interrupted (Ctrl-C / SIGTERM), it says how to continue: the same command with --resume.
    """
    from staclearn.workflows.landcover import LandCoverConfig, run_landcover

    config = LandCoverConfig(
        bands=tuple(bands) if bands else None,
        label_asset=label_asset,
        engine=engine,
        tile_size=tile_size,
        stride=stride,
        min_labelled=min_labelled,
        test_regions=test_regions if test_regions else ([_bbox(b) for b in test_bbox] if test_bbox else None),
        test_fraction=test_fraction,
        block_size=block_size,
        valid_fraction=valid_fraction,
        split_seed=split_seed,
        encoder=encoder,
        encoder_weights=encoder_weights,
        **(
            {}
            if architecture == "PixelConvNet"
            else {"architecture": architecture, "model_options": None, "class_weights": "balanced", "label_smoothing": 0.0,
                  "weight_decay": 1e-4, "keep_best": True}
        ),
        members=members,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        predict_tile_size=predict_tile_size,
        padding=padding,
        rf_estimators=rf_estimators,
        seed=seed,
        device=device,
        vectorize=vectorize,
        min_mapping_unit_m2=min_mapping_unit_m2,
        simplify_m=simplify_m,
    )
    try:
        result = run_landcover(
            catalog, out, config, bbox=_bbox(bbox), datetime=datetime, modifier=_modifier(modifier), progress=progress,
            overwrite=overwrite, resume=resume,
        )
    except StaclearnError as err:
        _fail(err)
    for part, results in result.metrics.items():
        typer.echo(part + ": " + "  ".join(f"{k} OA {m.overall_accuracy:.3f} macro-F1 {m.macro_f1:.3f}" for k, m in results.items()))
    typer.echo(f"class map: {result.class_map}\nreport:    {out / 'evaluation.json'}\ncatalog:   {result.catalog}")


@damage_app.command("run")
@_on_interrupt(lambda a: f"{a['out']} holds a partial run; start it again with: {_command_line('--overwrite')}")
def damage_run(
    catalog: Annotated[str, typer.Option(help="STAC catalog with per-tile pre/post imagery and label Items, or an xBD folder")] = "catalogs/xbd-santarosa/catalog.json",
    out: Annotated[Path, typer.Option(help="run folder for chips, model, per-building table, report and STAC catalog")] = Path("runs/damage"),
    tiles: Annotated[Optional[list[str]], typer.Option("--tile", help="tile id to use (repeatable; default all)")] = None,
    test_tiles: Annotated[Optional[list[str]], typer.Option("--test-tile", help="test tile, scored only (repeatable); default drawn with --split-seed")] = None,
    test_regions: Annotated[Optional[str], typer.Option(help="vector file of test regions: tiles with a building centroid inside are test tiles (whole tiles)")] = None,
    test_fraction: Annotated[float, typer.Option(help="share of tiles drawn as test when no test tile / region is given")] = 0.2,
    valid_tiles: Annotated[Optional[list[str]], typer.Option("--valid-tile", help="validation tile: picks the epoch (repeatable); default drawn from the non-test tiles")] = None,
    valid_fraction: Annotated[float, typer.Option(help="share of the non-test tiles drawn for validation")] = 0.2,
    split_seed: Annotated[int, typer.Option(help="seed of the test / validation draws (the training --seed keeps the split)")] = 0,
    classvalue_field: Annotated[str, typer.Option(help="footprint field with the damage label")] = "subtype",
    class_map: Annotated[str, typer.Option(help="xbd_binary, xbd_destroyed or xbd_four")] = "xbd_binary",
    chip_size: Annotated[int, typer.Option(help="chip edge, pixels")] = 32,
    buffer_m: Annotated[float, typer.Option(help="context around each footprint, metres")] = 10.0,
    stack_pre: Annotated[bool, typer.Option(help="stack the pre-disaster image with the post one")] = True,
    mask_outside: Annotated[Optional[float], typer.Option(help="factor for pixels outside the footprint (0 = black)")] = None,
    model_name: Annotated[str, typer.Option(help="timm classifier (resnet18, resnet34...)")] = "resnet18",
    epochs: Annotated[int, typer.Option(help="training epochs")] = 10,
    patience: Annotated[Optional[int], typer.Option(help="early stopping: epochs without a better validation macro-F1")] = 3,
    lr: Annotated[float, typer.Option(help="peak learning rate of the one-cycle schedule")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="chips per batch")] = 32,
    seed: Annotated[int, typer.Option(help="training seed (initialisation, shuffling, augmentation)")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="write into a non-empty --out (replaces that run)")] = False,
) -> None:
    """Train a classifier on chips around each footprint with whole test tiles held out (scored
    only) and validation tiles picking the epoch; classify the test and validation buildings
    (class + confidence), report test and validation figures apart and publish card + Item.

    Interrupted (Ctrl-C / SIGTERM), it says how to start again: the same command with
    --overwrite (the run has no checkpoint to resume from)."""
    from staclearn.workflows.damage import DamageConfig, run_damage

    config = DamageConfig(
        classvalue_field=classvalue_field,
        class_map=class_map,
        chip_size=chip_size,
        buffer_m=buffer_m,
        stack_pre=stack_pre,
        mask_outside=mask_outside,
        model_name=model_name,
        epochs=epochs,
        patience=patience,
        lr=lr,
        batch_size=batch_size,
        test_tiles=tuple(test_tiles) if test_tiles else None,
        test_regions=test_regions,
        test_fraction=test_fraction,
        valid_tiles=tuple(valid_tiles) if valid_tiles else None,
        valid_fraction=valid_fraction,
        split_seed=split_seed,
        seed=seed,
        device=device,
    )
    try:
        result = run_damage(catalog, out, config, tiles=tiles, overwrite=overwrite)
    except StaclearnError as err:
        _fail(err)
    pos = result.classes[-1].name
    typer.echo(
        f"test F1({pos}) {result.test_metrics.f1[pos]:.3f} on {result.n_test} buildings of {len(result.test_tiles)} tiles "
        f"(validation {result.valid_metrics.f1[pos]:.3f})\n"
        f"buildings: {result.predictions}\nreport:    {result.evaluation_json}\ncatalog:   {result.catalog}"
    )


@change_app.command("run")
@_on_interrupt(lambda a: f"{a['out']} holds a partial run; start it again with: {_command_line('--overwrite')}")
def change_run(
    catalog: Annotated[str, typer.Option(help="STAC catalog with per-city before/after imagery Items and one label Item each")] = "catalogs/oscd/catalog.json",
    out: Annotated[Path, typer.Option(help="run folder for chips, model, change masks, report and STAC catalog")] = Path("runs/change"),
    test_cities: Annotated[Optional[list[str]], typer.Option("--test-city", help="test city: used only for the final figures, never for training or choices (repeatable; default: drawn with --split-seed)")] = None,
    test_items: Annotated[Optional[list[str]], typer.Option("--test-item", help="Item id; the city of its before/after/label Items is a test city (repeatable)")] = None,
    valid_cities: Annotated[Optional[list[str]], typer.Option("--valid-city", help="validation city: chooses the epoch, reported apart (repeatable; default: drawn from the non-test cities)")] = None,
    split_seed: Annotated[int, typer.Option(help="seed of the drawing of test / validation cities (independent of --seed)")] = 0,
    test_fraction: Annotated[float, typer.Option(help="share of the cities drawn as test cities when none is named (at least 1)")] = 0.2,
    test_count: Annotated[Optional[int], typer.Option(help="number of test cities drawn when none is named (overrides --test-fraction)")] = None,
    valid_fraction: Annotated[float, typer.Option(help="share of the non-test cities drawn as validation cities when none is named (at least 1)")] = 0.2,
    valid_count: Annotated[Optional[int], typer.Option(help="number of validation cities drawn when none is named (overrides --valid-fraction)")] = None,
    bands: Annotated[Optional[list[str]], typer.Option("--band", help="band of each date (repeatable; default S2 10 m + 20 m)")] = None,
    city_property: Annotated[str, typer.Option(help="Item property naming the city")] = "staclearn:city",
    fusion: Annotated[str, typer.Option(help="early (FC-EF) or siam-diff (FC-Siam-diff)")] = "early",
    encoder: Annotated[str, typer.Option(help="smp encoder")] = "resnet18",
    tile_size: Annotated[int, typer.Option(help="training chip edge, pixels")] = 64,
    stride: Annotated[int, typer.Option(help="step between training chips, pixels")] = 64,
    epochs: Annotated[int, typer.Option(help="training epochs")] = 40,
    lr: Annotated[float, typer.Option(help="peak learning rate of the one-cycle schedule")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="chips per batch")] = 16,
    dice: Annotated[float, typer.Option(help="weight of the Dice(change) loss term")] = 0.5,
    probability: Annotated[bool, typer.Option(help="write change-probability COGs, published beside the masks")] = True,
    patience: Annotated[Optional[int], typer.Option(help="stop after this many epochs without a better validation mIoU")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="decision threshold on p(change) (default: chosen on the validation cities, kept in the card)")] = None,
    architecture: Annotated[Optional[str], typer.Option(help="Unet or PixelConvNet (default: the benchmarked one)")] = None,
    standardize: Annotated[Optional[bool], typer.Option(help="z-score each date by its own band statistics (default: the benchmarked setting)")] = None,
    seed: Annotated[int, typer.Option(help="training seed (initialisation, shuffling, augmentation); not the split's")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="write into a non-empty --out (replaces that run)")] = False,
) -> None:
    """Train a change model on training cities, choose its epoch on validation cities, evaluate
    it (with a CVA baseline) on test cities, and publish the MLM card and one change-mask Item
    per test city. Whole cities: test cities (--test-city / --test-item, else drawn with
    --split-seed) are used for nothing but the final figures; validation cities (--valid-city,
    else drawn from the rest) choose the epoch and the decision threshold and are reported
    apart; the others train.

    Interrupted (Ctrl-C / SIGTERM), it says how to start again: the same command with
    --overwrite (the run has no checkpoint to resume from)."""
    from staclearn.workflows.change import S2_10M_20M, ChangeConfig, run_change

    try:
        recipe = {k: v for k, v in (("architecture", architecture), ("standardize", standardize)) if v is not None}
        config = ChangeConfig(
            valid_cities=tuple(valid_cities or ()), test_cities=tuple(test_cities or ()), test_items=tuple(test_items or ()),
            split_seed=split_seed, test_fraction=test_fraction, test_count=test_count, valid_fraction=valid_fraction,
            valid_count=valid_count, bands=tuple(bands) if bands else S2_10M_20M, city_property=city_property,
            fusion=fusion, encoder=encoder, tile_size=tile_size, stride=stride, epochs=epochs, lr=lr,
            batch_size=batch_size, dice=dice, probability=probability, patience=patience, seed=seed, device=device,
            threshold=threshold, **recipe,
        )
        result = run_change(catalog, out, config, overwrite=overwrite)
    except StaclearnError as err:
        _fail(err)
    for part, per_city, pooled in (("validation", result.valid_metrics, result.valid_pooled), ("test", result.test_metrics, result.test_pooled)):
        for city, m in {**per_city, "pooled": pooled}.items():
            typer.echo(f"{part} {city}: F1(change) model {m['model'].f1['change']:.3f}  CVA {m['cva'].f1['change']:.3f}")
    typer.echo(f"threshold: p(change) >= {result.threshold:.4f} ({result.threshold_method})")
    typer.echo(f"report:    {result.evaluation}\ncatalog:   {result.catalog}")


@change_app.command("predict")
def change_predict(
    model: Annotated[str, typer.Option(help="MLM card of a change model (path or URL)")],
    catalog: Annotated[str, typer.Option(help="STAC catalog / ItemCollection path or API URL with the imagery")],
    before: Annotated[str, typer.Option(help="RFC 3339 datetime interval of the before date")],
    after: Annotated[str, typer.Option(help="RFC 3339 datetime interval of the after date")],
    out: Annotated[Path, typer.Option(help="output folder (change_mask.tif + catalog.json)")],
    bbox: Annotated[Optional[str], typer.Option(help="west,south,east,north in WGS84 degrees")] = None,
    collections: Annotated[Optional[list[str]], typer.Option("--collection", help="collection id (repeatable)")] = None,
    probability: Annotated[bool, typer.Option(help="write change_probability.tif, published beside the mask")] = True,
    threshold: Annotated[Optional[float], typer.Option(help="decision threshold on p(change), overriding the card's (recorded in the Item)")] = None,
    tile_size: Annotated[int, typer.Option(help="inference tile edge incl. padding, pixels")] = 256,
    padding: Annotated[int, typer.Option(help="inference context discarded on each tile side, pixels")] = 32,
    batch_size: Annotated[int, typer.Option(help="tiles per forward pass")] = 4,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps")] = "auto",
    modifier: Annotated[Optional[str], typer.Option(help="'planetary-computer' signs asset hrefs")] = None,
) -> None:
    """Predict a change mask with a published change model: one search, two datetime ranges
    (before, after), both dates on one GeoBox; publish it as a change-mask Item. The mask is
    p(change) >= the card's threshold (chosen on validation cities), or --threshold."""

    from staclearn.stac.change import change_mask_item
    from staclearn.data.cube import naming_unreadable_assets
    from staclearn.data.pairs import load_pair
    from staclearn.inference.change import predict_change
    from staclearn.errors import ConfigError
    from staclearn.data.labels import split_label_items
    from staclearn.stac.modelcard import load_model, read_card
    from staclearn.stac.catalog import write_catalog
    from staclearn.data.search import open_items

    try:
        card = read_card(model)
        net = load_model(card)
        date_bands = net.spec.extra.get("date_bands")
        if net.spec.extra.get("dates") != 2 or not date_bands:
            raise ConfigError(f"{model} is not a two-date change model card (no staclearn.extra dates: 2); use 'staclearn predict'.")
        found = {}
        for name, when in (("before", before), ("after", after)):
            items = open_items(catalog, bbox=_bbox(bbox), datetime=when, collections=collections, modifier=_modifier(modifier))
            found[name], _ = split_label_items(items)
        b, a, _ = load_pair(found["before"], found["after"], bands=date_bands)
        prob_path = out / "change_probability.tif" if probability else None
        with naming_unreadable_assets([*found["before"], *found["after"]]):
            pred = predict_change(
                net, b, a, tile_size=tile_size, padding=padding, batch_size=batch_size, device=device,
                out_path=out / "change_mask.tif", prob_path=prob_path, threshold=threshold,
            )
        card_threshold = net.spec.extra.get("threshold")
        if threshold is not None:
            how = "given with --threshold" + (f" (the card's is {card_threshold:.4f})" if card_threshold is not None else "")
        else:
            how = f"model card: {net.spec.extra.get('threshold_method') or 'as recorded'}" if card_threshold is not None else None
        item = change_mask_item(
            str((out / "change_mask.tif").resolve()), pred.mask, id=f"{out.resolve().name}-change", before=found["before"],
            after=found["after"], model_card=card, probability_href=str(prob_path.resolve()) if prob_path else None,
            threshold=pred.mask.attrs.get("threshold"), threshold_method=how,
        )
        write_catalog([item], out, id=out.resolve().name, description="staclearn change prediction")
    except StaclearnError as err:
        _fail(err)
    n = int((pred.mask.values == 1).sum())
    typer.echo(f"change mask: {out / 'change_mask.tif'} ({n} change px)\ncatalog:     {out / 'catalog.json'}")


@app.command()
@_on_interrupt(lambda a: f"run the same command again to resume (finished tiles are kept): {_command_line()}")
def predict(
    model: Annotated[str, typer.Option(help="MLM model-card Item (path or URL)")],
    catalog: Annotated[str, typer.Option(help="STAC catalog / ItemCollection path or API URL with the imagery")],
    out: Annotated[Path, typer.Option(help="output folder (class_map.tif + catalog.json)")],
    bbox: Annotated[Optional[str], typer.Option(help="west,south,east,north in WGS84 degrees")] = None,
    datetime: Annotated[Optional[str], typer.Option(help="RFC 3339 interval of the imagery")] = None,
    tile_size: Annotated[str, typer.Option(help="inference tile edge incl. padding, pixels, or 'auto' (fewest pixels through the model within --memory-budget-mb)")] = "auto",
    padding: Annotated[int, typer.Option(help="inference context on each tile side, pixels")] = 32,
    batch_size: Annotated[int, typer.Option(help="tiles per forward pass (at most, with --tile-size auto)")] = 4,
    blend: Annotated[str, typer.Option(help="linear (seamless) or none (cut the padding)")] = "linear",
    tta: Annotated[bool, typer.Option(help="average the 8 flips/rotations (test-time augmentation)")] = False,
    probabilities: Annotated[bool, typer.Option(help="also write probabilities.tif (float32, one band per class)")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps")] = "auto",
    engine: Annotated[str, typer.Option(help="auto (ONNX Runtime when installed and the card has an ONNX asset), onnx or torch")] = "auto",
    memory_budget_mb: Annotated[float, typer.Option(help="memory budget of --tile-size auto, MiB")] = 512,
    modifier: Annotated[Optional[str], typer.Option(help="'planetary-computer' signs asset hrefs")] = None,
) -> None:
    """Predict a class map with a published model, from its MLM card alone, and publish it.

    Streams tiles from the lazy cube to the COG (memory does not grow with the raster); an
    interrupted run resumes where it stopped when called again with the same arguments. The
    model runs in ONNX Runtime when the card has an ONNX asset and onnxruntime is installed
    (--engine auto), else in PyTorch; the engine used is printed. Interrupted (Ctrl-C /
    SIGTERM), it says so: the same command again resumes."""
    if tile_size != "auto" and not tile_size.isdigit():
        raise typer.BadParameter("--tile-size is a number of pixels or 'auto'")
    import pystac
    import rioxarray

    from staclearn.data.cube import load_cube, naming_unreadable_assets
    from staclearn.data.labels import split_label_items
    from staclearn.stac.modelcard import load_model, read_card
    from staclearn.inference.raster import predict_to_cog
    from staclearn.stac.items import class_map_item
    from staclearn.stac.catalog import write_catalog
    from staclearn.data.search import open_items

    from staclearn.training.device import resolve_device

    try:
        card = read_card(model)
        net = load_model(card, engine=engine, device=resolve_device(device).type)
        typer.echo(f"engine: {net.engine}" + (f" ({net.provider})" if net.engine == "onnx" else ""))
        imagery, _ = split_label_items(open_items(catalog, bbox=_bbox(bbox), datetime=datetime, modifier=_modifier(modifier)))
        cube = load_cube(imagery, bands=net.spec.bands, bbox=_bbox(bbox))
        with naming_unreadable_assets(imagery):  # a broken asset: one line naming it
            done = predict_to_cog(
                net, cube, out / "class_map.tif", probabilities_path=out / "probabilities.tif" if probabilities else None,
                tile_size="auto" if tile_size == "auto" else int(tile_size), padding=padding, batch_size=batch_size,
                device=device, blend=blend, test_time_augmentation=tta, memory_budget_mb=memory_budget_mb,  # type: ignore[arg-type]
            )
        cmap = rioxarray.open_rasterio(done.class_map, chunks=True).squeeze("band", drop=True)
        cmap = cmap.odc.assign_crs(cmap.rio.crs.to_wkt())
        item = class_map_item(
            str((out / "class_map.tif").resolve()), cmap, id=f"{out.resolve().name}-class-map", classes=net.spec.classes, source_items=imagery, model_card=card
        )
        if probabilities:
            item.add_asset("probabilities", pystac.Asset(str((out / "probabilities.tif").resolve()), media_type=pystac.MediaType.COG, roles=["data"], title="Class probabilities (softmax), one band per class"))
        write_catalog([item], out, id=out.resolve().name, description="staclearn prediction")
    except StaclearnError as err:
        _fail(err)
    typer.echo(f"class map: {out / 'class_map.tif'} ({done.tiles_predicted} tiles predicted, {done.tiles_skipped} resumed)\ncatalog:   {out / 'catalog.json'}")


@app.command("export-onnx")
def export_onnx(
    card: Annotated[Path, typer.Argument(help="MLM model-card Item JSON (local path); rewritten with the ONNX asset")],
    out_dir: Annotated[Optional[Path], typer.Option(help="folder for the .onnx file; default: beside the safetensors")] = None,
) -> None:
    """Export an existing card's model to ONNX beside its safetensors weights and list it in
    the card as a second mlm:model asset (mlm:artifact_type torch.onnx.export)."""
    from staclearn.stac.onnx import add_onnx_artifact
    from staclearn.stac.modelcard import load_model, read_card

    try:
        item = read_card(card)
        path = add_onnx_artifact(item, load_model(item, engine="torch"), out_dir)
        card.write_text(json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False), indent=2), encoding="utf-8")
    except StaclearnError as err:
        _fail(err)
    typer.echo(f"onnx: {path}\ncard: {card}")


@app.command()
def publish(
    catalog: Annotated[str, typer.Option(help="catalog.json of a staclearn run (path or fsspec URL)")],
    to: Annotated[Optional[str], typer.Option(help="folder or fsspec URL (s3://, gs://, az://, memory://) for a static copy")] = None,
    api: Annotated[Optional[str], typer.Option(help="STAC API root URL with the Transactions extension")] = None,
    ndjson: Annotated[Optional[Path], typer.Option(help="also write the Items as newline-delimited JSON (for pypgstac load)")] = None,
    collection: Annotated[Optional[str], typer.Option(help="collection id in the API; default: the run's collection")] = None,
    token: Annotated[Optional[str], typer.Option(envvar="STACLEARN_API_TOKEN", help="bearer token for the API")] = None,
) -> None:
    """Publish a run's Items (model card, predictions): copy the static catalog with its
    assets to TO, and/or POST them into a STAC API, and/or write ndjson for pgstac."""
    import pystac

    from staclearn.errors import PublishError
    from staclearn._io import FsspecStacIO
    from staclearn.stac.api import api_items, publish_to_api
    from staclearn.stac.catalog import write_catalog

    if not (to or api or ndjson):
        raise typer.BadParameter("give --to, --api and/or --ndjson")
    try:
        root = pystac.Catalog.from_file(catalog, stac_io=FsspecStacIO())
        cols = [c for c in root.get_children() if isinstance(c, pystac.Collection) and any(True for _ in c.get_items())]
        if not cols:
            raise PublishError(f"{catalog} has no Collection with Items; pass the catalog.json a staclearn run wrote.")
        col = cols[0]
        items = list(col.get_items())
        for item in items:
            item.make_asset_hrefs_absolute()
        if to:
            local_root = None if "://" in catalog else Path(catalog).resolve().parent
            write_catalog(items, to, id=root.id, description=root.description, collection_id=col.id, asset_root=local_root)
            typer.echo(f"catalog:    {to.rstrip('/')}/catalog.json")
        if ndjson:
            rows = api_items(items, collection or col.id, api_url=api)
            ndjson.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
            typer.echo(f"ndjson:     {ndjson} ({len(rows)} Items)")
        if api:
            if collection:
                col.id = collection
            headers = {"Authorization": f"Bearer {token}"} if token else None
            for url in publish_to_api(items, api, col, headers=headers):
                typer.echo(f"published:  {url}")
    except StaclearnError as err:
        _fail(err)


@app.command()
def vectorize(
    out: Annotated[Path, typer.Option(help="output folder (polygons.parquet, and catalog.json with --item)")],
    item: Annotated[Optional[str], typer.Option(help="class-map / change-mask Item JSON (path or URL)")] = None,
    raster: Annotated[Optional[Path], typer.Option(help="a bare class-map GeoTIFF instead of an Item")] = None,
    min_area_m2: Annotated[float, typer.Option(help="minimum mapping unit, square metres (smaller regions merged into a neighbour)")] = 0.0,
    simplify_m: Annotated[Optional[float], typer.Option(help="coverage-simplification tolerance, metres")] = None,
    probabilities: Annotated[Optional[str], typer.Option(help="probability raster (default: the Item's probability asset)")] = None,
) -> None:
    """Polygons from a class map or change mask (Raster to Polygon): class value and name,
    area in m2, mean probability; GeoParquet, published as a vector Item derived_from the
    raster Item."""
    import pystac

    from staclearn.errors import ConfigError
    from staclearn._io import FsspecStacIO
    from staclearn.stac.catalog import write_catalog
    from staclearn.inference.vectorize import class_map_asset, vectorize as polygonize
    from staclearn.stac.items import vectorize_item

    if (item is None) == (raster is None):
        raise typer.BadParameter("give --item or --raster")
    try:
        if raster is not None:
            table = polygonize(raster, min_area_m2=min_area_m2, simplify_m=simplify_m, probabilities=probabilities)
            out.mkdir(parents=True, exist_ok=True)
            table.to_parquet(out / "polygons.parquet")
            typer.echo(f"polygons: {out / 'polygons.parquet'} ({len(table)})")
            return
        if min_area_m2 < 0 or (simplify_m is not None and simplify_m < 0):
            raise ConfigError(f"--min-area-m2 and --simplify-m must be >= 0, got {min_area_m2} and {simplify_m}.")
        src = pystac.Item.from_file(item, stac_io=FsspecStacIO())
        cog = src.assets[class_map_asset(src)].get_absolute_href()
        vec = vectorize_item(src, cog, out, min_area_m2=min_area_m2, simplify_m=simplify_m, probabilities=probabilities)
        write_catalog([vec], out, id=out.resolve().name, description="staclearn polygons")
    except StaclearnError as err:
        _fail(err)
    typer.echo(f"polygons: {out / 'polygons.parquet'} ({vec.assets['polygons'].extra_fields['staclearn:row_count']})\ncatalog:  {out / 'catalog.json'}")


if __name__ == "__main__":  # pragma: no cover
    app()
