"""STAC Items of change detection: the change-mask Item of a pair and the change model's card.

:func:`change_mask_item` describes a change-mask COG (0 no change, 1 change, 255 nodata) with
``derived_from`` links to both dates and the model card; :func:`change_model_card` is the MLM
card of a change model with its decision threshold, split and evaluation assets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pystac
import xarray as xr

from staclearn.data.pairs import CHANGE_CLASSES
from staclearn.errors import ConfigError, NoGeoreferenceError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["change_mask_item", "change_model_card"]


def change_mask_item(
    cog_href: str,
    mask: xr.DataArray,
    *,
    id: str,
    before: Sequence[pystac.Item],
    after: Sequence[pystac.Item],
    model_card: pystac.Item | None = None,
    probability_href: str | None = None,
    collection: str | None = None,
    threshold: float | None = None,
    threshold_method: str | None = None,
) -> pystac.Item:
    """Describe a change-mask COG as a STAC Item.

    The Item is a :func:`staclearn.stac.items.class_map_item` whose asset ``change_mask`` carries
    ``classification:classes`` 0 no change / 1 change (nodata 255), whose time range runs
    from the start of the before Items to the end of the after Items, with ``derived_from``
    links to every before and after Item and to the model card.

    Args:
        cog_href: href of the change-mask COG (uint8).
        mask: the ``(y, x)`` change mask on its GeoBox (geometry = its non-nodata pixels).
        id: Item id.
        before: Items of the first date.
        after: Items of the second date.
        model_card: the MLM card Item of the change model.
        probability_href: href of the change-probability COG (float32, NaN nodata), added as
            asset ``change_probability``.
        collection: collection id to record.
        threshold: the decision threshold on the change probability that made the mask,
            recorded as ``staclearn:threshold`` ``{"value", "method"}`` and in
            ``processing:lineage``; ``None``: argmax.
        threshold_method: where the threshold came from (e.g. "model card: chosen on the
            validation cities", "given with --threshold").

    Returns:
        The Item (projection, raster, classification and processing extensions).

    Raises:
        NoGeoreferenceError: ``mask`` has no CRS (a PNG pair): it has no geometry to publish.
    """
    from staclearn.stac.items import class_map_item, unsigned_href

    if mask.odc.crs is None:
        raise NoGeoreferenceError(
            f"The change mask for Item {id!r} has no CRS (its pair had no georeference, e.g. LEVIR PNGs), "
            "so it has no geometry and cannot be published as a STAC Item. Keep it as an array or "
            "predict a georeferenced pair loaded from STAC Items."
        )
    item = class_map_item(
        cog_href,
        mask,
        id=id,
        classes=CHANGE_CLASSES,
        source_items=[*before, *after],
        model_card=model_card,
        collection=collection,
        lineage=(
            f"Change between {[i.id for i in before]} (before) and {[i.id for i in after]} (after): both dates loaded onto one GeoBox with "
            "odc-stac, stacked (t1 bands, then t2 bands) and predicted tile by tile by the change model of the "
            "derived_from MLM card"
            + (
                f"; change where p(change) >= {threshold:.4f} ({threshold_method or 'threshold given'})."
                if threshold is not None
                else "; class of highest probability."
            )
        ),
        asset_key="change_mask",
        title="Change mask (0 no change, 1 change)",
    )
    for link in item.links:
        if link.rel == "derived_from":
            for label, group in (("before", before), ("after", after)):
                if any(link.title == f"source: {i.id}" for i in group):
                    link.title = link.title.replace("source", label, 1)
    if threshold is not None:
        item.properties["staclearn:threshold"] = {"value": float(threshold), "method": threshold_method or "given"}
    if probability_href is not None:
        item.add_asset(
            "change_probability",
            pystac.Asset(
                href=unsigned_href(probability_href),
                media_type=pystac.MediaType.COG,
                roles=["data"],
                title="Probability of change (softmax), 0 to 1",
                extra_fields={"raster:bands": [{"nodata": "nan", "data_type": "float32", "unit": "1"}]},
            ),
        )
    return item


def change_model_card(
    model: nn.Module,
    weights_href: str,
    *,
    id: str,
    tile_size: int,
    hyperparameters: Mapping[str, Any],
    training_items: Sequence[pystac.Item],
    metrics: Mapping[str, Any],
    description: str,
    split_record: Mapping[str, Any],
    threshold: Mapping[str, Any],
    evaluation_json: Path,
    figures: Mapping[str, Path],
) -> pystac.Item:
    """The MLM card of a change model, with its split, decision threshold and evaluation assets.

    A :func:`staclearn.stac.modelcard.model_card` (both dates in ``mlm:input``) plus
    ``staclearn:split`` and ``staclearn:threshold``, an ONNX artifact when the export works
    (:func:`staclearn.stac.onnx.add_onnx_artifact`, a warning otherwise), and the
    assets ``evaluation`` (JSON), ``confusion_matrix`` (test),
    ``confusion_matrix_<part>`` (other parts) and ``precision_recall`` (PNGs).

    Args:
        model: the change model (``model.spec`` a ModelSpec with ``extra["dates"] == 2``).
        weights_href: href of its ``.safetensors`` weights.
        id: Item id.
        tile_size: inference tile edge recorded in the card, pixels.
        hyperparameters: training settings recorded as ``mlm:hyperparameters``.
        training_items: the Items the model was trained on (before, after and label Items).
        metrics: ``staclearn:metrics`` (e.g. ``{"test": {...}, "validation": {...}}``).
        description: the card's description.
        split_record: ``staclearn:split`` (:func:`staclearn.data.splits.split_description`).
        threshold: ``staclearn:threshold``: ``{"value": p, "method": words, ...}``.
        evaluation_json: ``evaluation.json`` of the run.
        figures: ``{part: confusion PNG}`` (:func:`staclearn.evaluation.reports.write_evaluation`),
            and optionally ``"precision_recall"``: the precision / recall PNG.

    Returns:
        The card Item (not yet in a catalog).

    Raises:
        ConfigError: ``model`` has no ``spec`` (it was not built by
            :func:`staclearn.models.change.build_change_model` or rebuilt from a card).
    """
    from staclearn.stac.onnx import add_onnx_artifact
    from staclearn.stac.modelcard import model_card

    if getattr(model, "spec", None) is None:
        raise ConfigError(
            f"Model card {id!r}: the model has no .spec (bands, classes, normalisation); build it with "
            "staclearn.models.change.build_change_model or load it with load_change_model."
        )
    card = model_card(
        model,  # type: ignore[arg-type]
        weights_href,
        id=id,
        tile_size=tile_size,
        hyperparameters=dict(hyperparameters),
        training_items=list(training_items),
        metrics=dict(metrics),
        description=description,
    )
    card.properties["staclearn:split"] = dict(split_record)
    card.properties["staclearn:threshold"] = dict(threshold)
    add_onnx_artifact(card, model, required=False)
    card.add_asset(
        "evaluation",
        pystac.Asset(
            str(evaluation_json.resolve()), media_type=pystac.MediaType.JSON, roles=["metadata"],
            title="Evaluation on test cities and, apart, validation cities (model and CVA)",
        ),
    )
    for part, png in figures.items():
        if part == "precision_recall":
            card.add_asset(
                "precision_recall",
                pystac.Asset(str(png.resolve()), media_type=pystac.MediaType.PNG, roles=["overview"],
                             title="Precision / recall of change against the threshold, per test and validation city"),
            )
            continue
        card.add_asset(
            "confusion_matrix" if part == "test" else f"confusion_matrix_{part}",
            pystac.Asset(str(png.resolve()), media_type=pystac.MediaType.PNG, roles=["overview"], title=f"Confusion matrices ({part})"),
        )
    return card
