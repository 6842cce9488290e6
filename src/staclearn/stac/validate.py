"""Offline validation of STAC objects against core and extension JSON schemas.

:class:`OfflineSTACValidator` is pystac's
:class:`~pystac.validation.stac_validator.JsonSchemaSTACValidator` with an offline schema
cache: the core STAC schemas bundled inside pystac (``pystac/validation/jsonschemas``, STAC
1.1.0 only, :func:`pystac.validation.local_validator.get_local_schema_cache`, which the
parent class starts from) plus the extension schemas of a local folder of JSON files
(``schema_dir``). Every ``$ref`` is resolved from these two sources through one
:class:`referencing.Registry` whose retrieve function refuses any other URI: nothing is ever
fetched from the network. An extension listed in ``stac_extensions`` without a local schema
is not fetched; it is reported as skipped.

Why a path and an object can give different answers: pystac migrates extension URIs when it
reads a file (for example classification v1.1.0 becomes v2.0.0 in memory), so validating a
:class:`pystac.Item` read from disk checks the migrated object. Pass the file's dict, or the
catalog's path to :func:`validate_catalog`, to check what is on disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pystac
import referencing
import referencing.jsonschema
from pystac.stac_object import STACObjectType
from pystac.validation.schema_uri_map import SchemaUriMap
from pystac.validation.stac_validator import JsonSchemaSTACValidator
from referencing.exceptions import Unresolvable

from staclearn.errors import ArgumentTypeError, CatalogNotFoundError, ConfigError, StacValidationError

__all__ = ["SCHEMA_DIR_ENV", "ValidationReport", "OfflineSTACValidator", "validate", "validate_catalog"]

#: Environment variable naming the default extension schema folder of :func:`validate`.
SCHEMA_DIR_ENV = "STACLEARN_SCHEMA_DIR"

_CORE_SCHEMA = "https://schemas.stacspec.org/v{version}/{kind}-spec/json-schema/{kind}.json"
_KINDS = {"Feature": "item", "Collection": "collection", "Catalog": "catalog"}
#: Errors quoted per failing schema in a StacValidationError message.
_MAX_ERRORS = 5


@dataclass(frozen=True)
class ValidationReport:
    """What :func:`validate` checked for one STAC object.

    A report is only returned when every schema that was checked passed; a failure raises
    :class:`~staclearn.errors.StacValidationError` instead.
    """

    object_id: str
    """``id`` of the Item, Collection or Catalog."""
    core_schema: str | None
    """URI of the core STAC schema it validated against; None when pystac bundles no core
    schema for its ``stac_version`` (that URI is then listed in ``skipped``)."""
    validated: tuple[str, ...]
    """Extension schema URIs, from ``stac_extensions``, that it validated against."""
    skipped: tuple[str, ...]
    """Schema URIs with no local copy; they were neither fetched nor checked."""


def _refuse_retrieve(uri: str) -> referencing.Resource[Any]:
    """Registry fallback for URIs not bundled: never fetch, fail instead."""
    # referencing's attrs classes are not understood by mypy, hence the ignores here.
    raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]


def _normalise(uri: str) -> str:
    return uri.rstrip("#")


def _declared_extension_uris(schema: Any) -> set[str]:
    """URIs a schema requires in ``stac_extensions`` (its ``contains: {const: ...}``)."""
    found: set[str] = set()
    if isinstance(schema, dict):
        ext = schema.get("stac_extensions")
        if isinstance(ext, dict) and isinstance(ext.get("contains"), dict):
            const = ext["contains"].get("const")
            if isinstance(const, str):
                found.add(_normalise(const))
        for value in schema.values():
            found |= _declared_extension_uris(value)
    elif isinstance(schema, list):
        for value in schema:
            found |= _declared_extension_uris(value)
    return found


def _read_schema_dir(schema_dir: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Read ``*.json`` schemas; return (registry resources, extension URI -> schema)."""
    if not schema_dir.is_dir():
        raise ConfigError(
            f"Schema folder {schema_dir} does not exist; pass an existing folder of extension "
            f"JSON schemas as schema_dir (or {SCHEMA_DIR_ENV}), or None for core-only checks."
        )
    resources: dict[str, Any] = {}
    extensions: dict[str, dict[str, Any]] = {}
    for path in sorted(schema_dir.glob("*.json")):
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(
                f"Schema file {path} cannot be read as JSON ({err}); fix or remove it."
            ) from err
        schema_id = schema.get("$id") if isinstance(schema, dict) else None
        if not isinstance(schema_id, str):
            raise ConfigError(
                f"Schema file {path} has no $id; only schemas that name their URI can be "
                "matched to stac_extensions. Add its $id or remove it from the folder."
            )
        resource = referencing.jsonschema.specification_with(
            schema.get("$schema", ""), default=referencing.jsonschema.DRAFT7
        ).create_resource(schema)
        declared = _declared_extension_uris(schema)
        # The $id is authoritative unless the schema itself demands another URI in
        # stac_extensions: processing v1.1.0 shipped with the $id of v1.0.0.
        names = declared if len(declared) == 1 else {_normalise(schema_id)}
        for uri in names | {_normalise(schema_id)}:
            resources[uri] = resource
        for uri in names:
            extensions[uri] = schema
    return resources, extensions


class _CoreSchemaUris(SchemaUriMap):
    """Core schema URI of an object: ``https://schemas.stacspec.org/v{version}/...`` for every
    version (pystac's default map also knows pre-1.0 locations, which are never local)."""

    def get_object_schema_uri(self, object_type: STACObjectType, stac_version: str) -> str | None:
        kind = _KINDS.get(str(object_type))
        return _CORE_SCHEMA.format(version=stac_version, kind=kind) if kind else None


class _SchemaFailure(StacValidationError):
    """One schema's failures, collected by :func:`_validate_dict` into one StacValidationError."""


class OfflineSTACValidator(JsonSchemaSTACValidator):
    """pystac's JSON-schema validator, offline: schemas come from a local cache only.

    The cache starts as pystac's bundled core schemas (the parent class's ``schema_cache``)
    and gets every ``*.json`` of ``schema_dir``, keyed by its ``$id`` and, when a schema
    requires one other URI in ``stac_extensions`` (processing v1.1.0 carries the ``$id`` of
    v1.0.0), by that URI. A schema or ``$ref`` outside the cache is never fetched:
    :meth:`validate_core` and :meth:`validate_extension` skip (return None for) objects
    whose schema has no local copy, and a ``$ref`` to an unknown URI fails with a message
    that names it.

    Use it with pystac (``pystac.validation.set_validator(OfflineSTACValidator(folder))``
    makes ``item.validate()`` offline) or through :func:`validate` / :func:`validate_catalog`,
    which report every failing schema at once.

    Args:
        schema_dir: Folder of extension schema ``*.json`` files; None: core schemas only.

    Raises:
        ConfigError: ``schema_dir`` is not a folder, or a schema file in it is not JSON or
            has no ``$id``.
    """

    def __init__(self, schema_dir: str | os.PathLike[str] | None = None) -> None:
        super().__init__(_CoreSchemaUris())
        top_level = tuple(f"/{kind}.json" for kind in _KINDS.values())
        self.core_uris: frozenset[str] = frozenset(u for u in self.schema_cache if u.endswith(top_level))
        """URIs of the core Catalog / Collection / Item schemas in the cache."""
        resources = {
            uri: referencing.jsonschema.DRAFT7.create_resource(contents) for uri, contents in self.schema_cache.items()
        }
        extensions: dict[str, dict[str, Any]] = {}
        if schema_dir is not None:
            local, extensions = _read_schema_dir(Path(schema_dir))
            resources.update(local)
            self.schema_cache.update({uri: resource.contents for uri, resource in local.items()})
        self.extension_uris: frozenset[str] = frozenset(extensions)
        """Extension URIs (as named in ``stac_extensions``, without ``#``) with a local schema."""
        self._registry: referencing.Registry[Any] = referencing.Registry(
            retrieve=_refuse_retrieve  # type: ignore[call-arg]
        ).with_resources(resources.items())
        self._validators: dict[str, jsonschema.protocols.Validator] = {}

    @property
    def registry(self) -> Any:
        """The offline :class:`referencing.Registry` of every cached schema."""
        return self._registry

    def _get_schema(self, schema_uri: str) -> dict[str, Any]:
        """The cached schema of ``schema_uri``; never fetched.

        Raises:
            StacValidationError: no local copy of ``schema_uri``.
        """
        uri = _normalise(schema_uri)
        if uri not in self.schema_cache:
            raise StacValidationError(
                f"No local copy of the schema {schema_uri} (nothing is fetched); add it to the schema "
                f"folder ({SCHEMA_DIR_ENV})."
            )
        return self.schema_cache[uri]

    def validate_core(
        self,
        stac_dict: dict[str, Any],
        stac_object_type: STACObjectType,
        stac_version: str,
        href: str | None = None,
    ) -> str | None:
        """Validate against the core schema of ``stac_version``; None (skipped) when pystac
        bundles none for that version.

        Raises:
            StacValidationError: the object fails its core schema.
        """
        if self.schema_uri_map.get_object_schema_uri(stac_object_type, stac_version) not in self.core_uris:
            return None
        return super().validate_core(stac_dict, stac_object_type, stac_version, href)

    def validate_extension(
        self,
        stac_dict: dict[str, Any],
        stac_object_type: STACObjectType,
        stac_version: str,
        extension_id: str,
        href: str | None = None,
    ) -> str | None:
        """Validate against the local schema of ``extension_id``; None (skipped, never
        fetched) when there is no local copy.

        Raises:
            StacValidationError: the object fails the extension schema.
        """
        if _normalise(extension_id) not in self.extension_uris:
            return None
        return super().validate_extension(stac_dict, stac_object_type, stac_version, extension_id, href)

    def _validator(self, schema_uri: str) -> jsonschema.protocols.Validator:
        uri = _normalise(schema_uri)
        if uri not in self._validators:
            schema = self._get_schema(uri)
            cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
            self._validators[uri] = cls(schema, registry=self._registry)
        return self._validators[uri]

    def _validate_from_uri(
        self,
        stac_dict: dict[str, Any],
        stac_object_type: STACObjectType,
        schema_uri: str,
        href: str | None = None,
    ) -> None:
        """Validate against one cached schema.

        Raises:
            StacValidationError: the object fails the schema, or a ``$ref`` has no local copy
                (the message names the JSON paths and errors).
        """
        failure = _check(stac_dict, schema_uri, self._validator(schema_uri))
        if failure is not None:
            raise _SchemaFailure(failure)


def _leaves(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """The leaf errors under a oneOf/anyOf error, from the branch that got deepest.

    Extension schemas start with ``oneOf: [Item, Collection]``; ``best_match`` alone often stops
    there (the message is then the whole object), so this follows the branch whose errors lie
    deepest in the instance, i.e. the one that matched the object's kind.
    """
    if not error.context:
        return [error]
    branches: dict[Any, list[jsonschema.ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    best = max(branches.values(), key=lambda errs: max(len(e.absolute_path) for e in errs))
    return [leaf for sub in best for leaf in _leaves(sub)]


def _check(stac: dict[str, Any], uri: str, validator: jsonschema.protocols.Validator) -> str | None:
    """Return the failing JSON paths and messages under schema ``uri``, or None if valid."""
    try:
        leaves = [leaf for error in validator.iter_errors(stac) for leaf in _leaves(error)]
    except Unresolvable as err:
        return (
            f"{uri} refers to {getattr(err, 'ref', err)}, which has no local copy (nothing is "
            f"fetched); add that schema file to the schema folder ({SCHEMA_DIR_ENV})"
        )
    if not leaves:
        return None
    parts = list(
        dict.fromkeys(
            f"at {leaf.json_path}: "
            + (leaf.message if len(leaf.message) <= 200 else leaf.message[:197] + "...")
            for leaf in leaves
        )
    )
    more = f" (and {len(parts) - _MAX_ERRORS} more)" if len(parts) > _MAX_ERRORS else ""
    parts = parts[:_MAX_ERRORS]
    return f"{uri} " + ", ".join(parts) + more


def _validate_dict(stac: dict[str, Any], validator: OfflineSTACValidator) -> ValidationReport:
    object_id = str(stac.get("id", "<no id>"))
    kind = _KINDS.get(str(stac.get("type")))
    if kind is None:
        raise StacValidationError(
            f"STAC object {object_id!r} has type {stac.get('type')!r}; only Item ('Feature'), "
            "Collection and Catalog can be validated."
        )
    object_type = STACObjectType(str(stac.get("type")))
    version = str(stac.get("stac_version", "?"))
    core_uri = _CORE_SCHEMA.format(version=version, kind=kind)
    failures: list[str] = []
    skipped: list[str] = []
    has_core = core_uri in validator.core_uris
    if not has_core:
        skipped.append(core_uri)
    else:
        try:
            validator.validate_core(stac, object_type, version)
        except _SchemaFailure as failure:
            failures.append(str(failure))
    validated: list[str] = []
    for uri in stac.get("stac_extensions") or []:
        if _normalise(uri) not in validator.extension_uris:
            skipped.append(uri)
            continue
        validated.append(uri)
        try:
            validator.validate_extension(stac, object_type, version, uri)
        except _SchemaFailure as failure:
            failures.append(str(failure))
    if failures:
        raise StacValidationError(
            f"STAC {kind} {object_id!r} does not validate: "
            + "; ".join(failures)
            + ". Fix the fields named; for an extension the object does not use, drop its URI "
            "from stac_extensions instead."
        )
    return ValidationReport(
        object_id=object_id,
        core_schema=core_uri if has_core else None,
        validated=tuple(validated),
        skipped=tuple(skipped),
    )


def _validator_for(schema_dir: str | os.PathLike[str] | None) -> OfflineSTACValidator:
    if schema_dir is None:
        schema_dir = os.environ.get(SCHEMA_DIR_ENV) or None
    return OfflineSTACValidator(schema_dir)


def _as_dict(obj: pystac.STACObject | dict[str, Any]) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    if isinstance(obj, pystac.STACObject):
        return obj.to_dict(include_self_link=False, transform_hrefs=False)
    raise ArgumentTypeError(f"validate() takes a pystac STAC object or a dict, not {type(obj).__name__}.")


def validate(
    obj: pystac.STACObject | dict[str, Any],
    schema_dir: str | os.PathLike[str] | None = None,
) -> ValidationReport:
    """Validate one Item, Collection or Catalog offline against core and extension schemas.

    The core schema is the one pystac bundles for the object's ``stac_version`` (1.1.0 in
    pystac 1.15). Each URI in ``stac_extensions`` is checked against the schema in
    ``schema_dir`` whose ``$id`` is that URI; when a schema requires a different single URI in
    ``stac_extensions`` than its ``$id`` (processing v1.1.0 carries the ``$id`` of v1.0.0),
    the required URI wins. URIs with no local schema are skipped, never fetched. All
    ``$ref``\\ s (to the core schemas, the metaschemas or other local schemas) resolve
    offline.

    Args:
        obj: A pystac Item, Collection or Catalog (serialised with ``to_dict``, so extension
            URIs are those after pystac's migration on read), or the JSON dict of one
            (checked as is).
        schema_dir: Folder of extension schema ``*.json`` files. None means the folder named
            by the ``STACLEARN_SCHEMA_DIR`` environment variable, or, if that is unset, core
            validation only (every extension is then skipped).

    Returns:
        A :class:`ValidationReport` of the schemas checked and skipped.

    Raises:
        StacValidationError: If the object fails its core schema or any local extension schema
            (the message names the object id, each failing schema URI, the JSON path and the
            error), if a ``$ref`` cannot be resolved offline, or if its ``type`` is not an
            Item, Collection or Catalog.
        ConfigError: If ``schema_dir`` (or ``STACLEARN_SCHEMA_DIR``) is not a folder, or a
            schema file in it is not JSON or has no ``$id``.
        ArgumentTypeError: (a TypeError) ``obj`` is neither a pystac STAC object nor a dict.
    """
    return _validate_dict(_as_dict(obj), _validator_for(schema_dir))


def _walk_files(root: str) -> Iterator[dict[str, Any]]:
    """Yield the JSON dict of a catalog file and of every child and item below it.

    ``root`` is a local path or an fsspec URL (``memory://``, ``s3://``...); links are
    followed relative to the file that holds them, on the same file system.
    """
    import posixpath

    import fsspec

    fs, root_path = fsspec.core.url_to_fs(root)
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    pending = [root_path]
    seen: set[str] = set()
    while pending:
        path = posixpath.normpath(pending.pop())
        if path in seen:
            continue
        seen.add(path)
        where = path if protocol in ("file", "local") else f"{protocol}://{path}"
        try:
            with fs.open(path, "r", encoding="utf-8") as f:
                stac = json.loads(f.read())
        except (OSError, json.JSONDecodeError) as err:
            raise CatalogNotFoundError(
                f"STAC file {where} cannot be read as JSON ({err}); check the child/item link "
                "that points to it."
            ) from err
        yield stac
        for link in stac.get("links", []):
            if link.get("rel") not in ("child", "item"):
                continue
            href = str(link.get("href", ""))
            if "://" in href and not href.startswith("file://"):
                raise CatalogNotFoundError(
                    f"{where} links to {href}; validate_catalog follows relative and local links "
                    "only. Download the catalog first, or pass a pystac.Catalog."
                )
            href = href.removeprefix("file://")
            pending.append(href if href.startswith("/") else posixpath.join(posixpath.dirname(path), href))


def validate_catalog(
    root: pystac.Catalog | str | os.PathLike[str],
    schema_dir: str | os.PathLike[str] | None = None,
) -> int:
    """Validate a catalog and every child Catalog, Collection and Item below it.

    A path is validated as the JSON files on disk (following ``child`` and ``item`` links,
    local files only); a :class:`pystac.Catalog` is validated as pystac serialises it, after
    its migration of extension URIs on read. Schemas are loaded once for the whole walk.

    Args:
        root: The root catalog, or the path or fsspec URL (``memory://``, ``s3://``...) of
            its ``catalog.json``.
        schema_dir: Folder of extension schemas; see :func:`validate`.

    Returns:
        The number of STAC objects validated, root included.

    Raises:
        StacValidationError: If any object fails validation (the first failure, in walk order).
        CatalogNotFoundError: If ``root`` or a linked file is missing, unreadable or remote.
        ConfigError: If ``schema_dir`` is not a folder of readable schemas with ``$id``.
    """
    schemas = _validator_for(schema_dir)
    count = 0
    if isinstance(root, pystac.Catalog):
        for catalog, _, items in root.walk():
            _validate_dict(_as_dict(catalog), schemas)
            count += 1
            for item in items:
                _validate_dict(_as_dict(item), schemas)
                count += 1
        return count
    href = os.fspath(root)
    if "://" not in href or href.startswith("file://"):
        path = Path(href.removeprefix("file://")).resolve()
        if not path.is_file():
            raise CatalogNotFoundError(f"Catalog file {path} does not exist; pass the path of a catalog.json.")
        href = str(path)
    for stac in _walk_files(href):
        _validate_dict(stac, schemas)
        count += 1
    return count
