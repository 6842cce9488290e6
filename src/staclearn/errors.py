"""Errors raised by staclearn.

Every error derives from :class:`StaclearnError`, and each leaf also inherits the built-in
exception that matches it (as torchgeo's ``DatasetNotFoundError(FileNotFoundError)``), so
``except FileNotFoundError`` keeps working for callers that do not know staclearn.
Messages name the Item, asset or file involved and say how to fix the problem.
"""

from __future__ import annotations

__all__ = [
    "StaclearnError",
    "CatalogNotFoundError",
    "StacApiError",
    "AssetReadError",
    "EmptyDataError",
    "MalformedStacError",
    "RunExistsError",
    "WeightsNotFoundError",
    "NoItemsFoundError",
    "AssetNotFoundError",
    "BandMismatchError",
    "GeoBoxMismatchError",
    "NoOverlapError",
    "LabelError",
    "ModelCardError",
    "UnsafeWeightsError",
    "ValidationError",
    "ConfigError",
]


class StaclearnError(Exception):
    """Base class of every error staclearn raises."""


class CatalogNotFoundError(StaclearnError, FileNotFoundError):
    """A STAC catalog, ItemCollection file or API URL could not be opened."""


class StacApiError(StaclearnError, ConnectionError):
    """A STAC API kept failing (HTTP 429 / 5xx or no connection) after the retries.

    Attributes:
        url: the API URL.
        status_code: the last HTTP status, or ``None`` when no answer came (connection error).
    """

    def __init__(self, message: str, *, url: str, status_code: int | None) -> None:
        super().__init__(message)
        self.url = url
        self.status_code = status_code


class AssetReadError(StaclearnError, OSError):
    """An asset's file exists in the Item but its pixels cannot be read: truncated or corrupt
    file, HTTP 404 / 403, or an unreachable host. The message names the Item, the asset key
    and the href.

    Attributes:
        item_id: the Item.
        asset: the asset key.
        href: the asset href.
    """

    def __init__(self, message: str, *, item_id: str, asset: str, href: str) -> None:
        super().__init__(message)
        self.item_id, self.asset, self.href = item_id, asset, href


class EmptyDataError(StaclearnError, ValueError):
    """The imagery (or a chip set) holds no valid pixel: nodata everywhere in the area asked for."""


class MalformedStacError(StaclearnError, ValueError):
    """A STAC JSON file (Catalog, Collection, Item, ItemCollection) is not valid JSON or lacks
    required fields; the message names the file and what is wrong."""


class RunExistsError(StaclearnError, FileExistsError):
    """The run folder already holds files: a run never writes into it unless told to overwrite."""


class WeightsNotFoundError(StaclearnError, FileNotFoundError):
    """A model card's weights file is not where its asset href points."""


class NoItemsFoundError(StaclearnError, LookupError):
    """A search or catalog walk returned no Items (empty result, bbox or datetime that misses)."""


class AssetNotFoundError(StaclearnError, KeyError):
    """An Item has no asset with the requested key, or the asset's file cannot be read."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class BandMismatchError(StaclearnError, ValueError):
    """The bands of a cube do not match what a model or another date expects."""


class GeoBoxMismatchError(StaclearnError, ValueError):
    """Two rasters that must share a GeoBox (CRS, transform, shape) do not."""


class NoOverlapError(StaclearnError, ValueError):
    """Two footprints (imagery and labels, bbox and Items, before and after) do not overlap."""


class LabelError(StaclearnError, ValueError):
    """Labels cannot be used: missing class field, unknown class value, no labelled pixel."""


class ModelCardError(StaclearnError, ValueError):
    """An MLM model-card Item lacks what is needed to rebuild the model."""


class UnsafeWeightsError(StaclearnError, ValueError):
    """Model weights in a format that could execute code on load (e.g. a pickle) were refused."""


class ValidationError(StaclearnError, ValueError):
    """A STAC object does not validate against its core or extension JSON schemas."""


class ConfigError(StaclearnError, ValueError):
    """An argument value is out of range or inconsistent with another one."""


class PublishError(StaclearnError, OSError):
    """Outputs cannot be published to the target (read-only location, missing asset file,
    or a STAC API that refuses the request)."""


class FootprintsNotFoundError(StaclearnError, FileNotFoundError):
    """A footprint (building polygon) file, or the label file of a tile, does not exist."""


class FieldNotFoundError(LabelError, KeyError):
    """A table lacks a field it must have (an id field, a class-value field, a tile field)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateIdError(LabelError):
    """Footprint ids are not unique, so predictions could not be joined back to footprints."""


class ImageryNotFoundError(StaclearnError, FileNotFoundError):
    """An image file (or the image asset of an Item) does not exist or cannot be opened."""


class CheckpointError(StaclearnError, ValueError):
    """A training checkpoint cannot be resumed: missing, holds weights only, or was written for
    another model, schedule (epochs, learning rate, steps per epoch) or trainer."""


class StaclearnWarning(UserWarning):
    """Base class of every warning staclearn emits."""


class FootprintWarning(StaclearnWarning):
    """Footprints kept but not used: empty geometry, outside the imagery, excluded class."""


__all__ += [
    "FootprintsNotFoundError",
    "FieldNotFoundError",
    "DuplicateIdError",
    "ImageryNotFoundError",
    "CheckpointError",
    "StaclearnWarning",
    "FootprintWarning",
]


class SplitError(ConfigError):
    """A train / validation / test split cannot be made: test regions (file, bboxes, mask raster,
    tile ids, cities) unreadable or empty, or a part left without labels."""


class NodataLabelsWarning(StaclearnWarning):
    """Labelled pixels fall where the imagery is nodata and are dropped (counted in the message)."""


class DateOrderError(ConfigError):
    """The "before" Items of a pair are later than its "after" Items."""


class NoGeoreferenceError(ConfigError):
    """A result without CRS (e.g. from a PNG pair) was asked to become a COG or a STAC Item."""


class NoGeoreferenceWarning(StaclearnWarning):
    """Imagery without georeference is used: results are in pixel coordinates only."""


__all__ += ["DateOrderError", "NoGeoreferenceError", "NoGeoreferenceWarning"]


class MissingDependencyError(StaclearnError, ImportError):
    """An optional package a function needs is not installed (the message says what to pip install)."""


__all__ += ["MissingDependencyError"]
