"""Model cards as STAC Items with the MLM (Machine Learning Model) extension, v1.5.2.

The card says everything needed to run the model again: architecture and encoder, the input
bands in order, their z-score ``value_scaling``, the input/output structures, the output
classes (``classification:classes``), training hyperparameters, and the weights as a
safetensors asset (role ``mlm:model``). pystac's bundled MLM helper writes v1.4.0; staclearn
writes v1.5.2 (the version whose schema the project validates against, where
``value_scaling`` is a list with one object per band) as plain properties.

Spec: https://github.com/stac-extensions/mlm (v1.5.2).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import pystac
import torch
from pystac.extensions.file import FileExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension

from staclearn._io import FsspecStacIO, file_multihash, is_url, local_path
from staclearn.errors import (
    ModelCardError,
    StacApiError,
    StaclearnError,
    WeightsChecksumError,
    WeightsNotFoundError,
)
from staclearn.models.classifier import ClassifierSpec, ObjectClassifier
from staclearn.models.segmentation import (
    LANDSAT_ETM_BANDS,
    PIXEL_CONV,
    ModelSpec,
    SegmentationModel,
    SiameseDiffUnet,
    load_weights,
    model_from_spec,
    pair_band_names,
)
from staclearn.stac.items import add_schema, unsigned_href

__all__ = [
    "MLM_SCHEMA",
    "CLASSIFICATION_SCHEMA",
    "model_card",
    "spec_from_card",
    "read_card",
    "check_weights",
    "load_model",
    "WEIGHTS_ASSET",
]

MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"
CLASSIFICATION_SCHEMA = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
RASTER_SCHEMA = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
WEIGHTS_ASSET = "weights"
SAFETENSORS_MEDIA_TYPE = "application/octet-stream; application=safetensors"


def _torch_version() -> str:
    return torch.__version__.split("+")[0]


def model_card(
    model: SegmentationModel | SiameseDiffUnet | ObjectClassifier,
    weights_href: str,
    *,
    id: str,
    geometry: dict[str, Any] | None = None,
    bbox: Sequence[float] | None = None,
    tile_size: int = 256,
    hyperparameters: Mapping[str, Any] | None = None,
    tasks: Sequence[str] | None = None,
    training_items: Sequence[pystac.Item] = (),
    metrics: Mapping[str, Any] | None = None,
    description: str | None = None,
    input_name: str | None = None,
    input_description: str | None = None,
) -> pystac.Item:
    """Build the MLM model-card Item of a trained model.

    Args:
        model: the trained model (its ``spec`` gives bands, normalisation and classes): an
            smp segmentation model (class map per pixel) or a timm object classifier (one
            class per chip).
        weights_href: href of the safetensors weights (relative hrefs are resolved against
            the card when it is saved).
        id: Item id.
        geometry: GeoJSON geometry (WGS84) of the training area; default: the union of the
            training Items' geometries (null without training Items).
        bbox: bbox of ``geometry``.
        tile_size: input tile edge in pixels, written into ``mlm:input`` shape (a classifier's
            ``spec.chip_size`` is used instead).
        hyperparameters: training settings (epochs, lr, batch size, ...) for
            ``mlm:hyperparameters``; staclearn adds the smp architecture/encoder used to
            rebuild the model.
        tasks: MLM task names (``mlm:tasks``); default ``semantic-segmentation`` +
            ``segmentation`` for segmentation models, ``classification`` for classifiers.
        training_items: imagery/label Items the model was trained on (``derived_from`` links).
        metrics: evaluation figures to record in ``staclearn:metrics``.
        description: Item description.
        input_name: name of the ``mlm:input`` entry.
        input_description: how the input is built (e.g. how two dates are stacked).

    Returns:
        A STAC 1.1 Item with the MLM v1.5.2, classification v1.1.0 and raster v1.1.0 extensions.
    """
    spec = model.spec
    n_params = sum(p.numel() for p in model.parameters())
    mem = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    classifier = isinstance(spec, ClassifierSpec)
    if classifier:
        hp: dict[str, Any] = {
            "timm.model": spec.model_name,
            "chip_size": spec.chip_size,
            "buffer_m": spec.buffer_m,
            "mask_outside": spec.mask_outside,
        }
        tile_size = spec.chip_size
        architecture, pretrained = spec.model_name, spec.pretrained
        tasks = list(tasks or ("classification",))
    else:
        hp = {
            "smp.architecture": spec.architecture,
            "smp.encoder": spec.encoder,
            "smp.encoder_depth": spec.encoder_depth,
        }
        architecture = "U-Net" if spec.architecture == "Unet" else spec.architecture
        pretrained = spec.encoder_weights
        tasks = list(tasks or ("semantic-segmentation", "segmentation"))
    if spec.extra:
        hp["staclearn.extra"] = dict(spec.extra)
    if hyperparameters:
        hp.update({k: v for k, v in hyperparameters.items() if v is not None})
    name = spec.model_name if classifier else _segmentation_name(spec)
    if classifier:
        result = {
            "shape": [-1, spec.num_classes],
            "dim_order": ["batch", "class"],
            "data_type": "float32",
        }
        out_name, out_text = "class", "Logits per class for one chip; softmax gives the confidence, argmax the class."
    else:
        result = {
            "shape": [-1, spec.num_classes, tile_size, tile_size],
            "dim_order": ["batch", "class", "height", "width"],
            "data_type": "float32",
        }
        out_name = "class map"
        out_text = "Logits per class; the class map is argmax over 'class', mapped to the class values below."
    value_scaling = [{"type": "z-score", "mean": float(m), "stddev": float(s)} for m, s in zip(spec.mean, spec.std, strict=True)]
    two_dates = not classifier and spec.extra.get("dates") == 2
    if two_dates:
        inputs = _two_date_inputs(spec, tile_size, value_scaling, input_description)
    else:
        inputs = [
            {
                "name": input_name or f"{len(spec.bands)}-band imagery",
                "bands": list(spec.bands),
                "input": {
                    "shape": [-1, spec.in_channels, tile_size, tile_size],
                    "dim_order": ["batch", "bands", "height", "width"],
                    "data_type": "float32",
                },
                "description": input_description
                or (
                    "Bands in this order, in the source imagery's units (no rescaling before "
                    + (
                        f"value_scaling); one chip of {tile_size} x {tile_size} px centred on each "
                        f"footprint with a {spec.buffer_m:g} m buffer, resampled to the chip size."
                        if classifier
                        else f"value_scaling); height and width multiples of {spec.stride} px; nodata "
                        "pixels replaced by the band mean."
                        + (
                            f" Spectral indices {list(spec.extra['indices'])} are computed inside the model from "
                            f"these bands (roles {dict(spec.extra.get('index_bands') or LANDSAT_ETM_BANDS)})."
                            if spec.extra.get("indices")
                            else ""
                        )
                    )
                ),
                "value_scaling": value_scaling,
                "resize_type": None,
            }
        ]
    props: dict[str, Any] = {
        "description": description or f"{name} trained with staclearn",
        "mlm:name": id,
        "mlm:architecture": architecture,
        "mlm:tasks": tasks,
        "mlm:framework": "PyTorch",
        "mlm:framework_version": _torch_version(),
        "mlm:total_parameters": int(n_params),
        "mlm:memory_size": int(mem),
        "mlm:pretrained": pretrained is not None,
        "mlm:pretrained_source": pretrained,
        "mlm:batch_size_suggestion": int(hp.get("batch_size", 8)),
        "mlm:accelerator": None,
        "mlm:accelerator_constrained": False,
        "mlm:accelerator_summary": "Runs on CPU, CUDA or Apple MPS (device chosen at run time).",
        "mlm:input": inputs,
        "mlm:output": [
            {
                "name": out_name,
                "tasks": tasks,
                "result": result,
                "description": out_text,
                "classification:classes": [c.to_dict() for c in spec.classes],
                "post_processing_function": None,
            }
        ],
        "mlm:hyperparameters": hp,
    }
    if metrics:
        props["staclearn:metrics"] = dict(metrics)
    # MLM best practice: the card's time is the time range of its training data
    from staclearn.data.search import item_time_range

    when: datetime | None = datetime.now(timezone.utc)
    if training_items:
        ranges = [item_time_range(i) for i in training_items]
        start, end = min(r[0] for r in ranges), max(r[1] for r in ranges)
        when = None
        props["start_datetime"] = start.isoformat().replace("+00:00", "Z")
        props["end_datetime"] = end.isoformat().replace("+00:00", "Z")
    if geometry is None and training_items:
        geometry, bbox = _union_geometry(training_items)
    item = pystac.Item(id=id, geometry=geometry, bbox=list(bbox) if bbox else None, datetime=when, properties=props)
    # pystac's MLM and classification classes write v1.4.0 / v2.0.0: the v1.5.2 / v1.1.0 fields
    # are plain properties and their schemas are declared; raster and file go through pystac
    add_schema(item, MLM_SCHEMA)
    add_schema(item, CLASSIFICATION_SCHEMA)
    weights = pystac.Asset(
        href=weights_href,
        media_type=SAFETENSORS_MEDIA_TYPE,
        roles=["mlm:model", "mlm:weights", "data"],
        title=f"{name} weights (safetensors)",
        extra_fields={"mlm:artifact_type": "safetensors"},
    )
    item.add_asset(WEIGHTS_ASSET, weights)
    # MLM requires named input bands described by eo, raster or STAC 1.1 bands; raster:bands on
    # the model asset is the MLM spec's own example and its schema is available offline
    RasterExtension.ext(weights, add_if_missing=True).bands = [
        RasterBand({"name": b, "data_type": DataType.FLOAT32})
        for b in (spec.extra["date_bands"] if two_dates else spec.bands)
    ]
    local = local_path(weights_href)
    if not is_url(weights_href) and os.path.isabs(local) and os.path.isfile(local):
        # issue 17: load_model checks the weights against this before loading them
        FileExtension.ext(weights, add_if_missing=True).checksum = file_multihash(local)
    for src in training_items:
        href = src.get_self_href()
        if href:
            item.add_link(pystac.Link("derived_from", unsigned_href(href), pystac.MediaType.JSON, title=f"training data: {src.id}"))
    return item


def _segmentation_name(spec: ModelSpec) -> str:
    if spec.architecture == PIXEL_CONV:
        e = spec.extra
        k, n, w = int(e.get("kernel", 3)), int(e.get("layers", 3)), int(e.get("width", 32))
        name = f"{spec.architecture} ({n} x {k}x{k} conv, {w} channels)"
    else:
        name = f"{spec.architecture} ({spec.encoder})"
    members = int(spec.extra.get("members", 1))
    return f"ensemble of {members} x {name}" if members > 1 else name


def _two_date_inputs(
    spec: ModelSpec, tile_size: int, value_scaling: list[dict[str, Any]], note: str | None
) -> list[dict[str, Any]]:
    """``mlm:input`` of a change model: one input object per date, each naming the C bands.

    MLM has no change-detection task and no pair input; it allows several input objects, so
    each date is one (``t1`` before, ``t2`` after, each with its own bands and z-scores) and
    the descriptions say how they are stacked into the one tensor the model takes.
    """
    bands = list(spec.extra["date_bands"])
    c = len(bands)
    fusion = spec.extra.get("fusion", "early")
    how = (
        "early fusion: a U-Net on all 2C channels (FC-EF, Daudt et al. 2018)"
        if fusion == "early"
        else "siamese: each date through one shared encoder, the decoder on |f1 - f2| (FC-Siam-diff, Daudt et al. 2018)"
    )
    stacking = (
        f"The model takes ONE tensor (batch, 2 x {c} bands, height, width): the before date's {c} bands "
        f"as channels 0-{c - 1}, then the after date's {c} bands as channels {c}-{2 * c - 1}, both dates on one "
        f"GeoBox; {how}. Height and width multiples of {spec.stride} px; nodata pixels replaced by the "
        "band mean."
        + (" Each date is first z-scored by its own band statistics." if spec.extra.get("standardize") else "")
    )
    out = []
    for k, (prefix, label) in enumerate((("t1", "before"), ("t2", "after"))):
        out.append(
            {
                "name": f"{prefix} ({label})",
                "bands": bands,
                "input": {
                    "shape": [-1, c, tile_size, tile_size],
                    "dim_order": ["batch", "bands", "height", "width"],
                    "data_type": "float32",
                },
                "description": f"The {label} ({'earlier' if k == 0 else 'later'}) date, in the source imagery's "
                "units (no rescaling before value_scaling). " + stacking + (f" {note}" if note else ""),
                "value_scaling": value_scaling[k * c : (k + 1) * c],
                "resize_type": None,
            }
        )
    return out


def _union_geometry(items: Sequence[pystac.Item]) -> tuple[dict[str, Any] | None, list[float] | None]:
    from shapely.geometry import mapping, shape
    from shapely.ops import unary_union

    shapes = [shape(i.geometry) for i in items if i.geometry]
    if not shapes:
        return None, None
    union = unary_union(shapes)
    return dict(mapping(union)), list(union.bounds)


def spec_from_card(card: pystac.Item | Mapping[str, Any]) -> ModelSpec | ClassifierSpec:
    """Rebuild the model description an MLM card holds.

    Args:
        card: the card Item or its dict.

    Returns:
        A :class:`ModelSpec` (smp segmentation; ``mlm:hyperparameters`` ``smp.*``) or a
        :class:`~staclearn.models.classifier.ClassifierSpec` (timm classifier; ``timm.model``):
        bands, normalisation, classes, architecture.

    Raises:
        ModelCardError: a required MLM field is missing (the message names it).
    """
    props = card.properties if isinstance(card, pystac.Item) else card.get("properties", {})
    cid = card.id if isinstance(card, pystac.Item) else card.get("id")
    try:
        inputs = props["mlm:input"]
        inp = inputs[0]
        out = props["mlm:output"][0]
        hp = props.get("mlm:hyperparameters", {})
        extra = dict(hp.get("staclearn.extra") or {})
        scaling = [s for i in inputs for s in (i.get("value_scaling") or [])]
        bands = [b["name"] if isinstance(b, dict) else b for b in inp["bands"]]
        if extra.get("dates") == 2:  # one input per date, stacked t1:* then t2:*
            if len(inputs) != 2:
                raise ModelCardError(f"Model card {cid!r} is a two-date model but has {len(inputs)} mlm:input objects, not 2.")
            bands = pair_band_names(bands)
        if len(scaling) != len(bands) or any(s.get("type") != "z-score" for s in scaling):
            raise ModelCardError(
                f"Model card {cid!r}: mlm:input value_scaling must hold one 'z-score' object per band "
                f"({len(bands)} bands, {len(scaling)} objects)."
            )
        classes = out["classification:classes"]
        mean, std = [s["mean"] for s in scaling], [s["stddev"] for s in scaling]
        if "timm.model" in hp:
            return ClassifierSpec.from_dict(
                {
                    "model_name": hp["timm.model"],
                    "bands": bands,
                    "classes": classes,
                    "mean": mean,
                    "std": std,
                    "chip_size": hp.get("chip_size", inp["input"]["shape"][-1]),
                    "buffer_m": hp.get("buffer_m", 10.0),
                    "mask_outside": hp.get("mask_outside"),
                    "pretrained": None,
                    "extra": extra,
                }
            )
        return ModelSpec.from_dict(
            {
                "architecture": hp.get("smp.architecture", "Unet"),
                "encoder": hp["smp.encoder"],
                "encoder_depth": hp.get("smp.encoder_depth", 5),
                "bands": bands,
                "classes": classes,
                "mean": mean,
                "std": std,
                "encoder_weights": None,
                "extra": extra,
            }
        )
    except (KeyError, IndexError, TypeError) as err:
        raise ModelCardError(
            f"Model card {cid!r} lacks {err} needed to rebuild the model; it must carry mlm:input "
            "(bands, value_scaling), mlm:output (classification:classes) and "
            "mlm:hyperparameters 'smp.encoder' (segmentation) or 'timm.model' (classification)."
        ) from err


def read_card(href: str | os.PathLike[str]) -> pystac.Item:
    """Read a model-card Item from a local path, an http(s) URL or any fsspec URL.

    Args:
        href: path or URL of the card Item JSON (a local path is made absolute, so the
            card's relative asset hrefs resolve).

    Returns:
        The card Item, with its self href set.

    Raises:
        ModelCardError: the file cannot be read or is not a STAC Item.
        StacApiError: an http(s) server kept answering 429 / 5xx (or could not be reached)
            after the retries of :class:`~staclearn._io.FsspecStacIO`.
    """
    href = os.fspath(href)
    if "://" not in href:
        href = os.path.abspath(href)
    try:
        return pystac.Item.from_file(href, stac_io=FsspecStacIO())
    except StacApiError:  # the server kept failing after the retries: its status says more
        raise
    except (OSError, ValueError, pystac.errors.STACTypeError) as err:
        what = "is not a STAC Item (a catalog or collection?)" if isinstance(err, pystac.errors.STACTypeError) else f"cannot be read ({err})"
        raise ModelCardError(
            f"Model card {href!r} {what}; pass the path or URL of the MLM card "
            "Item JSON (e.g. runs/nc/nc/nc-model/nc-model.json)."
        ) from err


def check_weights(card: pystac.Item, asset_key: str = WEIGHTS_ASSET) -> bool:
    """Check a card's weights file against the SHA-256 its asset records (``file:checksum``).

    Args:
        card: the model-card Item (with its self href, so relative asset hrefs resolve).
        asset_key: key of the weights asset.

    Returns:
        True when the checksum was checked and matches; False when the asset records no
        ``file:checksum`` (cards written before 0.2) or one that is not a sha2-256 multihash,
        so there is nothing to check.

    Raises:
        WeightsChecksumError: the file's SHA-256 differs from the recorded one (the message
            names the card, the asset href and both checksums).
        FileNotFoundError: the weights file is not at the asset's href.
        ModelCardError: the card has no asset ``asset_key``.
    """
    asset = card.assets.get(asset_key)
    if asset is None:
        raise ModelCardError(f"Model card {card.id!r} has no asset {asset_key!r}; its assets are {sorted(card.assets)}.")
    expected = FileExtension.ext(asset).checksum if FileExtension.has_extension(card) else None
    if not expected or not expected.lower().startswith("1220"):
        return False
    href = asset.get_absolute_href() or asset.href
    found = file_multihash(href)
    if found != expected.lower():
        where = card.get_self_href() or card.id
        raise WeightsChecksumError(
            f"The weights of model card {card.id!r} ({where}) do not match it: asset {asset_key!r} at {href} "
            f"has file:checksum {expected} but the file's is {found}. The file was changed, replaced or only "
            "partly copied: re-download the weights (or the whole run folder) from where the card was "
            "published, or, if these are the weights you mean to use, re-export the card with "
            "staclearn.model_card() so it records them."
        )
    return True



def weights_asset(card: pystac.Item) -> tuple[str, pystac.Asset]:
    """The card's safetensors weights: the first asset with role ``mlm:model`` that is not the
    ONNX artifact (``mlm:artifact_type`` ``torch.onnx.export``).

    Returns:
        ``(asset key, asset)``.

    Raises:
        ModelCardError: the card has no such asset.
    """
    for key, asset in card.assets.items():
        if "mlm:model" in (asset.roles or []) and asset.extra_fields.get("mlm:artifact_type") != "torch.onnx.export":
            return key, asset
    raise ModelCardError(f"Model card {card.id!r} has no asset with role 'mlm:model' (the weights).")

def load_model(
    card: str | os.PathLike[str] | pystac.Item, *, engine: str = "torch", device: str = "cpu"
) -> SegmentationModel | SiameseDiffUnet | ObjectClassifier:
    """Rebuild a trained model from its MLM card alone.

    Reads the card (local path or http(s)/fsspec URL), rebuilds the architecture, loads the
    safetensors weights of the ``mlm:model`` asset and restores band order, normalisation and
    classes. Nothing is unpickled and no code from the card is executed. With ``engine``
    ``"auto"`` or ``"onnx"`` the card's ONNX asset (:func:`staclearn.stac.onnx.add_onnx_artifact`)
    is run by ONNX Runtime instead, when ``onnxruntime`` is installed (see
    :mod:`staclearn.inference.engines`); ``model.engine`` says which engine was chosen.

    Args:
        card: path/URL of the card Item JSON, or the Item.
        engine: ``"torch"`` (default: a trainable PyTorch module), ``"onnx"`` (ONNX Runtime;
            falls back to PyTorch with a warning) or ``"auto"`` (ONNX Runtime when possible).
        device: for the ONNX engine, ``"cuda"`` selects ONNX Runtime's CUDA provider.

    Returns:
        The model in eval mode; ``model.spec`` holds bands, normalisation and classes. A
        two-date change card (``staclearn.extra`` ``dates: 2``) gives the model its fusion
        names (:class:`~staclearn.models.segmentation.SiameseDiffUnet` for ``"siam-diff"``), taking the
        stacked pair, bands ``t1:*`` then ``t2:*``.

    Raises:
        ModelCardError: the card has no ``mlm:model`` asset or lacks MLM fields.
        WeightsNotFoundError: the weights file is not at the asset's href.
        WeightsChecksumError: the weights file does not match the asset's ``file:checksum``
            (cards written before 0.2 carry none and are loaded unchecked).
        UnsafeWeightsError: the weights are not safetensors.
    """
    from staclearn.inference.engines import load_onnx_model, resolve_engine

    item = card if isinstance(card, pystac.Item) else read_card(card)
    spec = spec_from_card(item)
    if resolve_engine(engine, item) == "onnx":
        return load_onnx_model(item, spec, device=device)  # type: ignore[return-value]
    key, weights = weights_asset(item)
    model: SegmentationModel | SiameseDiffUnet | ObjectClassifier = (
        ObjectClassifier(spec) if isinstance(spec, ClassifierSpec) else model_from_spec(spec)
    )
    href = weights.get_absolute_href() or weights.href
    try:
        check_weights(item, key)
        load_weights(model, href)
    except FileNotFoundError as err:
        if isinstance(err, StaclearnError):
            raise
        raise WeightsNotFoundError(
            f"The weights of model card {item.id!r} are not at {href} (asset {key!r}): "
            "copy the weights file beside the card, or fix the asset href."
        ) from err
    model.engine = "torch"  # type: ignore[assignment]
    return model.eval()
