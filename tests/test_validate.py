"""Tests for staclearn.stac.validate: offline core and extension schema validation."""

from __future__ import annotations

import copy
import json
import shutil
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pystac
import pytest

from staclearn.errors import CatalogNotFoundError, ConfigError, StacValidationError
from staclearn.stac.validate import SCHEMA_DIR_ENV, ValidationReport, validate, validate_catalog

REPO = Path(__file__).parents[1]
CATALOG = REPO / "catalogs" / "nc-landsat" / "catalog.json"
ITEMS = CATALOG.parent / "nc-landsat7"

EXT = "https://stac-extensions.github.io/{}/schema.json"
LABEL = EXT.format("label/v1.0.1")
RASTER = EXT.format("raster/v1.1.0")
CLASSIFICATION = EXT.format("classification/v1.1.0")
PROJECTION = EXT.format("projection/v2.0.0")
EO = EXT.format("eo/v1.1.0")
PROCESSING_110 = EXT.format("processing/v1.1.0")
ITEM_SCHEMA = "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json"
UNKNOWN = "https://stac-extensions.github.io/not-an-extension/v9.9.9/schema.json"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make every socket connection, DNS lookup and urlopen fail, and check none was tried.

    The attempts are also recorded, since a retrieve hook could swallow the exception.
    """
    attempts: list[tuple[Any, ...]] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise OSError(f"network access attempted in an offline test: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    yield
    assert attempts == []


@pytest.fixture(autouse=True)
def no_schema_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SCHEMA_DIR_ENV, raising=False)


@pytest.fixture
def schema_dir(shared_dir: Path) -> Path:
    return shared_dir / "schemas"


def _item(item_id: str) -> dict[str, Any]:
    return json.loads((ITEMS / item_id / f"{item_id}.json").read_text())


# --- core only: runs on a fresh clone without ../shared --------------------------------------


def test_core_only_without_schema_dir(offline: None) -> None:
    report = validate(_item("nc-landsat7-labels"))
    assert report == ValidationReport(
        object_id="nc-landsat7-labels",
        core_schema=ITEM_SCHEMA,
        validated=(),
        skipped=(LABEL, PROJECTION, RASTER, CLASSIFICATION),
    )


def test_core_failure_names_item_and_path(offline: None) -> None:
    stac = _item("nc-landsat7-2000")
    stac["bbox"] = "not a bbox"
    with pytest.raises(StacValidationError) as info:
        validate(stac)
    message = str(info.value)
    assert "'nc-landsat7-2000'" in message
    assert ITEM_SCHEMA in message
    assert "$.bbox" in message


def test_validate_catalog_core_only(offline: None) -> None:
    assert validate_catalog(CATALOG) == 4
    assert validate_catalog(str(CATALOG)) == 4
    assert validate_catalog(pystac.Catalog.from_file(str(CATALOG))) == 4


def test_in_memory_item(offline: None) -> None:
    item = pystac.Item(
        "synthetic",
        geometry={"type": "Point", "coordinates": [0.0, 0.0]},
        bbox=[0.0, 0.0, 0.0, 0.0],
        datetime=None,
        properties={
            "start_datetime": "2020-01-01T00:00:00Z",
            "end_datetime": "2020-12-31T00:00:00Z",
        },
    )
    item.stac_extensions.append(UNKNOWN)
    report = validate(item)
    assert report.core_schema == ITEM_SCHEMA
    assert report.skipped == (UNKNOWN,)


def test_unsupported_stac_version_skips_core(offline: None) -> None:
    stac = _item("nc-landsat7-2000")
    stac["stac_version"] = "1.0.0"
    report = validate(stac)
    assert report.core_schema is None
    assert "https://schemas.stacspec.org/v1.0.0/item-spec/json-schema/item.json" in report.skipped


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(StacValidationError, match="FeatureCollection"):
        validate({"type": "FeatureCollection", "features": []})
    with pytest.raises(TypeError):
        validate([])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="does not exist"):
        validate(_item("nc-landsat7-2000"), tmp_path / "absent")
    (tmp_path / "noid.json").write_text('{"type": "object"}')
    with pytest.raises(ConfigError, match=r"noid\.json has no \$id"):
        validate(_item("nc-landsat7-2000"), tmp_path)
    with pytest.raises(CatalogNotFoundError):
        validate_catalog(tmp_path / "catalog.json")


def test_remote_link_is_refused(tmp_path: Path, offline: None) -> None:
    catalog = json.loads(CATALOG.read_text())
    catalog["links"][1]["href"] = "https://example.com/collection.json"
    (tmp_path / "catalog.json").write_text(json.dumps(catalog))
    with pytest.raises(CatalogNotFoundError, match="relative and local links only"):
        validate_catalog(tmp_path / "catalog.json")


# --- with the extension schemas of ../shared/schemas ----------------------------------------


@pytest.mark.realdata
def test_items_validate_with_shared_schemas(schema_dir: Path, offline: None) -> None:
    labels = validate(_item("nc-landsat7-labels"), schema_dir)
    assert labels.core_schema == ITEM_SCHEMA
    assert labels.validated == (LABEL, RASTER, CLASSIFICATION)
    assert labels.skipped == (PROJECTION,)
    image = validate(_item("nc-landsat7-2000"), schema_dir)
    assert image.validated == (RASTER,)
    assert image.skipped == (PROJECTION, EO)
    assert validate_catalog(CATALOG, schema_dir) == 4


@pytest.mark.realdata
def test_schema_dir_from_environment(
    schema_dir: Path, monkeypatch: pytest.MonkeyPatch, offline: None
) -> None:
    monkeypatch.setenv(SCHEMA_DIR_ENV, str(schema_dir))
    assert validate(_item("nc-landsat7-labels")).validated == (LABEL, RASTER, CLASSIFICATION)


@pytest.mark.realdata
def test_pystac_migrates_classification_on_read(schema_dir: Path, offline: None) -> None:
    # pystac rewrites classification v1.1.0 to v2.0.0 when reading, and no v2.0.0 schema is
    # available locally: the object is checked as migrated, the file as written.
    item = pystac.Item.from_file(str(ITEMS / "nc-landsat7-labels" / "nc-landsat7-labels.json"))
    report = validate(item, schema_dir)
    assert report.validated == (LABEL, RASTER)
    assert EXT.format("classification/v2.0.0") in report.skipped


@pytest.mark.realdata
def test_broken_classification_value_names_item(schema_dir: Path, offline: None) -> None:
    stac = _item("nc-landsat7-labels")
    stac["assets"]["labels"]["classification:classes"][2]["value"] = "3"
    with pytest.raises(StacValidationError) as info:
        validate(stac, schema_dir)
    message = str(info.value)
    assert "'nc-landsat7-labels'" in message
    assert CLASSIFICATION in message
    assert "$.assets.labels['classification:classes'][2].value" in message
    assert "'3' is not of type 'integer'" in message


@pytest.mark.realdata
def test_broken_label_and_raster_fields(schema_dir: Path, offline: None) -> None:
    stac = _item("nc-landsat7-labels")
    stac["properties"]["label:type"] = "pixels"
    stac["assets"]["labels"]["raster:bands"][0]["data_type"] = "f32"
    with pytest.raises(StacValidationError) as info:
        validate(stac, schema_dir)
    message = str(info.value)
    assert f"{LABEL} at $.properties['label:type']: 'pixels' is not one of" in message
    assert f"{RASTER} at $.assets.labels['raster:bands'][0].data_type: 'f32'" in message


@pytest.mark.realdata
def test_unknown_extension_skipped_not_fetched(schema_dir: Path, offline: None) -> None:
    stac = _item("nc-landsat7-2000")
    stac["stac_extensions"].append(UNKNOWN)
    stac["properties"]["not-an-extension:field"] = 1
    report = validate(stac, schema_dir)
    assert report.validated == (RASTER,)
    assert report.skipped == (PROJECTION, EO, UNKNOWN)


@pytest.fixture
def probe_schema_dir(schema_dir: Path, tmp_path: Path) -> Path:
    """Shared schemas plus one that $refs processing v1.1.0, the core Item and a missing URI."""
    folder = tmp_path / "schemas"
    shutil.copytree(schema_dir, folder)
    probe = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": "https://example.org/probe/v1.0.0/schema.json",
        "type": "object",
        "properties": {
            "properties": {
                "type": "object",
                "properties": {
                    "probe:expr": {
                        "$ref": PROCESSING_110
                        + "#/definitions/fields/properties/processing:expression"
                    },
                    "probe:item": {"$ref": ITEM_SCHEMA},
                    "probe:missing": {"$ref": "https://example.com/missing/schema.json"},
                },
            }
        },
    }
    (folder / "probe.json").write_text(json.dumps(probe))
    return folder


@pytest.mark.realdata
def test_refs_across_schemas_resolve_offline(probe_schema_dir: Path, offline: None) -> None:
    stac = _item("nc-landsat7-2000")
    stac["stac_extensions"].append("https://example.org/probe/v1.0.0/schema.json")
    good = copy.deepcopy(stac)
    good["properties"]["probe:expr"] = {"format": "gdal-calc", "expression": "A * 2"}
    good["properties"]["probe:item"] = _item("nc-landsat7-2000")
    assert (
        validate(good, probe_schema_dir).validated[-1]
        == "https://example.org/probe/v1.0.0/schema.json"
    )

    bad = copy.deepcopy(stac)
    bad["properties"]["probe:expr"] = {"format": 1}
    bad["properties"]["probe:item"] = {"type": "Feature"}
    with pytest.raises(StacValidationError) as info:
        validate(bad, probe_schema_dir)
    assert "$.properties['probe:expr'].format: 1 is not of type 'string'" in str(info.value)
    assert "$.properties['probe:item']: 'geometry' is a required property" in str(info.value)


@pytest.mark.realdata
def test_ref_to_missing_schema_is_not_fetched(probe_schema_dir: Path, offline: None) -> None:
    stac = _item("nc-landsat7-2000")
    stac["stac_extensions"].append("https://example.org/probe/v1.0.0/schema.json")
    stac["properties"]["probe:missing"] = 1
    with pytest.raises(StacValidationError, match=r"https://example\.com/missing/schema\.json, which "):
        validate(stac, probe_schema_dir)


@pytest.mark.realdata
def test_processing_110_mapped_by_the_uri_it_requires(schema_dir: Path, offline: None) -> None:
    # processing-1.1.0.json carries "$id": ".../processing/v1.0.0/schema.json#" but requires
    # v1.1.0 in stac_extensions; it validates Items that declare v1.1.0.
    stac = _item("nc-landsat7-2000")
    stac["stac_extensions"].append(PROCESSING_110)
    stac["properties"]["processing:software"] = {"scripts/build_nc_catalog.py": "0.1.0"}
    assert validate(stac, schema_dir).validated == (RASTER, PROCESSING_110)
    stac["properties"]["processing:software"] = "0.1.0"
    with pytest.raises(StacValidationError, match=r"processing:software"):
        validate(stac, schema_dir)
    stac["stac_extensions"][-1] = EXT.format("processing/v1.0.0")
    del stac["properties"]["processing:software"]
    assert EXT.format("processing/v1.0.0") in validate(stac, schema_dir).skipped
