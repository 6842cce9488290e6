"""Errors raised by staclearn.

Every error derives from :class:`StaclearnError`, and each leaf also inherits the built-in
exception that matches it (as torchgeo's ``DatasetNotFoundError(FileNotFoundError)``), so
``except FileNotFoundError`` keeps working for callers that do not know staclearn.
Messages name the Item, asset or file involved and say how to fix the problem.
"""

from __future__ import annotations

__all__ = [
    # every error derives from StaclearnError; indented names derive from the name above them
    "StaclearnError",
    # STAC sources
    "CatalogNotFoundError",
    "StacApiError",
    "MalformedStacError",
    "StacValidationError",
    "NoItemsFoundError",
    # assets and the pixels behind them
    "AssetNotFoundError",
    "AssetReadError",
    "ImageryNotFoundError",
    "FootprintsNotFoundError",
    "EmptyDataError",
    "BandMismatchError",
    "GeoBoxMismatchError",
    "NoOverlapError",
    "NoGeoreferenceError",
    # labels
    "LabelError",
    "FieldNotFoundError",
    "DuplicateIdError",
    # arguments and runs
    "ConfigError",
    "ArgumentTypeError",
    "SplitError",
    "DateOrderError",
    "RunExistsError",
    "CheckpointError",
    # models
    "ModelCardError",
    "WeightsChecksumError",
    "WeightsNotFoundError",
    "UnsafeWeightsError",
    # outputs and environment
    "PublishError",
    "MissingDependencyError",
    # warnings (not errors): StaclearnWarning and its subclasses
    "StaclearnWarning",
    "FootprintWarning",
    "NodataLabelsWarning",
    "NoGeoreferenceWarning",
]


class StaclearnError(Exception):
    """Base class of every error staclearn raises.

    Catch it to handle any staclearn failure at once (the CLI prints its message on one line
    and exits 2). It is never raised itself: the message of each subclass names the Item,
    asset or file involved and says how to fix the problem.
    """


class CatalogNotFoundError(StaclearnError, FileNotFoundError):
    """A STAC catalog, ItemCollection file or API URL could not be opened.

    Raised by :func:`staclearn.data.open_items` (and everything that takes a catalog) when the
    path does not exist, is a folder, is JSON of another kind, or the URL is not a STAC API
    root (e.g. HTTP 404). Fix: pass the path of the ``catalog.json`` / ItemCollection file, or
    the API root URL (the page with ``conformsTo``).

    Attributes:
        url: the URL that failed, or ``None`` for a local path.
        status_code: the HTTP status the server answered, or ``None`` (no HTTP answer).
    """

    def __init__(self, *args: object, url: str | None = None, status_code: int | None = None) -> None:
        super().__init__(*args)
        self.url = url
        self.status_code = status_code


class StacApiError(StaclearnError, ConnectionError):
    """A STAC API kept failing (HTTP 429 / 5xx or no connection) after the retries.

    Raised by :func:`staclearn.data.open_items` on a STAC API URL once the retries with backoff
    are spent. Fix: try again later, check the URL and the network, or raise ``retries=`` /
    ``backoff=``.

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

    Raised when a cube is computed (:func:`staclearn.data.cube.read_pixels`, the workflows,
    ``staclearn predict``). Fix: download or rebuild the file (check it with ``rio info
    --checksum``), fix the href, or sign it (``modifier=planetary_computer.sign_inplace``).

    Attributes:
        item_id: the Item.
        asset: the asset key.
        href: the asset href.
    """

    def __init__(self, message: str, *, item_id: str, asset: str, href: str) -> None:
        super().__init__(message)
        self.item_id, self.asset, self.href = item_id, asset, href


class EmptyDataError(StaclearnError, ValueError):
    """The imagery (or a chip set) holds no valid pixel: nodata everywhere in the area asked for.

    Raised before training or predicting on an all-nodata cube or chip set. Fix: choose a bbox /
    datetime where the imagery has data, or check the assets' nodata value.
    """


class MalformedStacError(StaclearnError, ValueError):
    """A STAC JSON file (Catalog, Collection, Item, ItemCollection) is not valid JSON or lacks
    required fields; the message names the file and what is wrong.

    Raised while reading a catalog. Fix the named file (or rebuild the catalog).
    """


class RunExistsError(StaclearnError, FileExistsError):
    """The run folder already holds files: a run never writes into it unless told to overwrite.

    Raised by the workflows' ``run_*`` before anything is written. Fix: pass another ``--out``,
    ``--overwrite`` (``overwrite=True``) to replace that run, or ``--resume`` to continue it.
    """


class WeightsNotFoundError(StaclearnError, FileNotFoundError):
    """A model card's weights file is not where its asset href points.

    Raised by :func:`staclearn.load_model`. Fix: copy the weights beside the card (the href is
    usually relative to it) or correct the asset href.
    """


class NoItemsFoundError(StaclearnError, LookupError):
    """A search or catalog walk returned no Items (empty result, bbox or datetime that misses).

    Raised by :func:`staclearn.data.open_items` and :func:`staclearn.load_cube`; also for an
    Item without any datetime. Fix: widen the bbox (west, south, east, north in degrees) or the
    datetime range, or drop the collections filter.
    """


class AssetNotFoundError(StaclearnError, KeyError):
    """An Item has no asset with the requested key, or a requested band is not in the Items.

    Raised when loading cubes, labels and maps; the message lists the assets / bands there are.
    Fix: pass one of those keys or band names.
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class BandMismatchError(StaclearnError, ValueError):
    """The bands of a cube do not match what a model or another date expects.

    Raised before predicting or pairing dates. Fix: load the cube with the model card's bands
    (``model.spec.bands``), in that order.
    """


class GeoBoxMismatchError(StaclearnError, ValueError):
    """Two rasters that must share a GeoBox (CRS, transform, shape) do not.

    Raised when pairing dates or stacking labels on imagery. Fix: load the second raster with
    ``load_cube(..., geobox=first.odc.geobox)``.
    """


class NoOverlapError(StaclearnError, ValueError):
    """Two footprints (imagery and labels, bbox and Items, before and after) do not overlap.

    Raised by :func:`staclearn.load_cube` and the label loaders. Fix: pass a bbox inside the
    Items, or labels / a second date that cover the same area.
    """


class LabelError(StaclearnError, ValueError):
    """Labels cannot be used: missing class field, unknown class value, no labelled pixel.

    Raised by :mod:`staclearn.data.labels` and the workflows. Fix: declare the classes
    (``classification:classes``), name the right class field, or use labels on the imagery.
    """


class ModelCardError(StaclearnError, ValueError):
    """An MLM model-card Item lacks what is needed to rebuild the model.

    Raised by :func:`staclearn.load_model`. Fix: use a card written by staclearn (``mlm:input``,
    ``mlm:output`` and a weights asset), or rewrite it with :func:`staclearn.model_card`.
    """


class UnsafeWeightsError(StaclearnError, ValueError):
    """Model weights in a format that could execute code on load (e.g. a pickle) were refused.

    Raised by :func:`staclearn.load_model`. Fix: convert the weights to safetensors.
    """


class WeightsChecksumError(ModelCardError):
    """A model card's weights file does not match the SHA-256 its asset records (``file:checksum``).

    Raised by :func:`staclearn.load_model` and :func:`staclearn.stac.modelcard.read_card`; the
    message names the card, the asset href and both checksums. Fix: re-download the weights
    (or the whole run folder), or re-export the card with :func:`staclearn.model_card`.
    """


class StacValidationError(StaclearnError, ValueError):
    """A STAC object does not validate against its core or extension JSON schemas.

    Raised by :mod:`staclearn.stac.validate`; the message quotes the failing schema and field.
    Fix the object (or the code that wrote it). Named ``ValidationError`` before 0.2 (that name
    clashed with jsonschema's and pydantic's; it still imports, with a ``DeprecationWarning``).
    """


class ConfigError(StaclearnError, ValueError):
    """An argument value is out of range or inconsistent with another one.

    Raised before any work starts (bbox, datetime, engine, resolution, tile sizes...). Fix the
    argument named in the message.
    """


class ArgumentTypeError(ConfigError, TypeError):
    """An argument is of the wrong type (e.g. ``validate()`` given something that is neither a
    pystac object nor a dict). Pass the type the message names."""


class PublishError(StaclearnError, OSError):
    """Outputs cannot be published to the target (read-only location, missing asset file,
    or a STAC API that refuses the request).

    Raised by ``write_catalog`` / ``publish_to_api`` / ``staclearn publish``. Fix: check the
    target is writable, the run's assets exist, and the API token and collection.
    """


class FootprintsNotFoundError(StaclearnError, FileNotFoundError):
    """A footprint (building polygon) file, or the label file of a tile, does not exist.

    Raised by the footprint and damage steps. Fix: pass the path of an existing vector file
    (GeoJSON, GeoParquet, GeoPackage...).
    """


class FieldNotFoundError(LabelError, KeyError):
    """A table lacks a field it must have (an id field, a class-value field, a tile field).

    Raised by the footprint and damage steps. Fix: pass the name of an existing column (the
    message lists them).
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateIdError(LabelError):
    """Footprint ids are not unique, so predictions could not be joined back to footprints.

    Fix: pass an id field with unique values, or none (ids are then made from the row order).
    """


class ImageryNotFoundError(StaclearnError, FileNotFoundError):
    """An image file (or the image asset of an Item) does not exist or cannot be opened.

    Raised by the object-chip and map steps. Fix the path / href named in the message.
    """


class CheckpointError(StaclearnError, ValueError):
    """A training checkpoint cannot be resumed: missing, holds weights only, or was written for
    another model, schedule (epochs, learning rate, steps per epoch) or trainer.

    Raised when resuming training. Fix: resume with the same settings as the interrupted run,
    or start over (``--overwrite``).
    """


class StaclearnWarning(UserWarning):
    """Base class of every warning staclearn emits (filter them all with
    ``warnings.filterwarnings("ignore", category=StaclearnWarning)``)."""


class FootprintWarning(StaclearnWarning):
    """Footprints kept but not used: empty geometry, outside the imagery, excluded class."""



class SplitError(ConfigError):
    """A train / validation / test split cannot be made: test regions (file, bboxes, mask raster,
    tile ids, cities) unreadable or empty, or a part left without labels.

    Raised by :mod:`staclearn.data.splits` and the workflows. Fix the test regions named in the
    message, or change the fractions / seed so that every part keeps labels.
    """


class NodataLabelsWarning(StaclearnWarning):
    """Labelled pixels fall where the imagery is nodata and are dropped (counted in the message)."""


class DateOrderError(ConfigError):
    """The "before" Items of a pair are later than its "after" Items.

    Raised when loading a change pair. Fix: swap the two dates.
    """


class NoGeoreferenceError(StaclearnError, ValueError):
    """A result without CRS (e.g. from a PNG pair) was asked to become a COG or a STAC Item.

    It describes the data, not an argument. Fix: use georeferenced imagery (GeoTIFF / STAC
    Items with ``proj:`` metadata), or keep the result as an array.
    """


class NoGeoreferenceWarning(StaclearnWarning):
    """Imagery without georeference is used: results are in pixel coordinates only."""



class MissingDependencyError(StaclearnError, ImportError):
    """An optional package a function needs is not installed.

    Fix: ``pip install`` the package the message names.
    """


def __getattr__(name: str) -> type:
    """``ValidationError`` (0.1) is :class:`StacValidationError`, with a ``DeprecationWarning``."""
    if name == "ValidationError":
        import warnings

        warnings.warn(
            "staclearn.errors.ValidationError is renamed StacValidationError; the old name goes "
            "in the next release.",
            DeprecationWarning,
            stacklevel=2,
        )
        return StacValidationError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
