"""Per-object results as STAC: a model card and the Item of a classified-objects table, in one catalog.

:func:`object_catalog` publishes what an object-classification run produced (e.g. the
building-damage workflow): the evaluation file as an asset of the MLM card, the result table
(GeoParquet of footprints with their predicted class and confidence) as a vector Item
(:func:`staclearn.stac.items.vector_item`) derived from the imagery Items and the card, the
run's metrics and split record on the Item, and a static catalog holding both
(:func:`staclearn.stac.catalog.write_catalog`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import pystac

from staclearn.data.labels import ClassInfo
from staclearn.stac.catalog import write_catalog
from staclearn.stac.items import vector_item

__all__ = ["object_catalog"]


def object_catalog(
    out: str | os.PathLike[str],
    card: pystac.Item,
    predictions: str | os.PathLike[str],
    *,
    classes: Sequence[ClassInfo],
    metrics: Mapping[str, Any],
    split: Mapping[str, Any],
    source_items: Sequence[pystac.Item] = (),
    evaluation_json: str | os.PathLike[str] | None = None,
    evaluation_title: str = "Evaluation",
    id: str,
    title: str = "Classified footprints",
    description: str = "Outputs of a staclearn run",
) -> Path:
    """Write the model card and the Item of a per-object result table into ``out/catalog.json``.

    Args:
        out: run folder; receives ``catalog.json`` and the Items' folders.
        card: the MLM model card Item (e.g. from :func:`staclearn.stac.modelcard.model_card`);
            it gets the ``evaluation`` asset (when ``evaluation_json`` is given).
        predictions: GeoParquet of the classified objects (as written by
            :func:`staclearn.inference.objects.classify_objects`), one row per object.
        classes: the classes of its ``class_value`` column.
        metrics: JSON-ready figures (e.g. ``{"test": {model name: summary}}``), stored as the
            Item's ``staclearn:metrics``.
        split: the split record (:func:`staclearn.data.splits.split_description`), stored as
            the Item's ``staclearn:split``.
        source_items: imagery Items the objects were classified from (``derived_from`` links).
        evaluation_json: the evaluation file, added to the card as asset ``evaluation``.
        evaluation_title: that asset's title.
        id: id of the objects' Item.
        title: title of its asset.
        description: description of the catalog.

    Returns:
        The path of ``catalog.json``; the catalog's id is the name of ``out``.

    Raises:
        PublishError: as :func:`staclearn.stac.catalog.write_catalog` (unwritable target).
        OSError: ``predictions`` cannot be read.
    """
    out = Path(out)
    predictions = Path(predictions)
    if evaluation_json is not None:
        card.add_asset(
            "evaluation",
            pystac.Asset(
                str(Path(evaluation_json).resolve()), media_type=pystac.MediaType.JSON, roles=["metadata"],
                title=evaluation_title,
            ),
        )  # fmt: skip
    item = vector_item(
        str(predictions.resolve()),
        gpd.read_parquet(predictions),
        id=id,
        classes=classes,
        source_items=source_items,
        model_card=card,
        title=title,
    )
    item.properties["staclearn:metrics"] = dict(metrics)
    item.properties["staclearn:split"] = dict(split)
    write_catalog([card, item], out, id=out.resolve().name, description=description)
    return out / "catalog.json"
