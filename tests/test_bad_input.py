"""Bad input to the land-cover workflow gives a named error that names the Item / asset / href,
and the CLI prints one line and exits 2. Real files made bad: the NC Landsat scene truncated,
an asset behind a local server that answers 404 / 403, labels moved off the imagery."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import rasterio

from fixtures_nc_run import nc_run  # noqa: F401  (fixture)
from staclearn.errors import AssetReadError, EmptyDataError, LabelError

IMAGE_ITEM = "nc-landsat7/nc-landsat7-2000/nc-landsat7-2000.json"


def _nc_copy(tmp_path: Path, nc_catalog: Path, image_href: str) -> Path:
    """The committed NC catalog copied to tmp_path with the imagery asset pointing at ``image_href``."""
    dst = tmp_path / "nc"
    shutil.copytree(nc_catalog.parent, dst)
    # the label Item's href is relative to the committed catalog: make it absolute
    for item_json in dst.rglob("*.json"):
        doc = json.loads(item_json.read_text())
        if doc.get("type") != "Feature":
            continue
        src_json = nc_catalog.parent / item_json.relative_to(dst)
        for asset in doc["assets"].values():
            if "://" not in asset["href"]:
                asset["href"] = str((src_json.parent / asset["href"]).resolve())
        if item_json.name == Path(IMAGE_ITEM).name:
            doc["assets"]["image"]["href"] = image_href
        item_json.write_text(json.dumps(doc))
    return dst / "catalog.json"


def _image_path(shared: Path) -> Path:
    return shared / "data" / "landcover" / "nc_landsat7" / "landsat_multiband.tif"


def test_truncated_cog_names_item_asset_and_href(tmp_path, nc_catalog, shared_dir):
    from staclearn.workflows.landcover import LandCoverConfig, run_landcover

    data = _image_path(shared_dir).read_bytes()
    bad = tmp_path / "truncated.tif"
    bad.write_bytes(data[: len(data) // 2])
    catalog = _nc_copy(tmp_path, nc_catalog, str(bad))
    with pytest.raises(AssetReadError) as info:
        run_landcover(catalog, tmp_path / "run", LandCoverConfig(epochs=1), progress=False, log=lambda _: None)
    err = info.value
    assert err.item_id == "nc-landsat7-2000" and err.asset == "image" and err.href == str(bad)
    assert "truncated or corrupt" in str(err) and str(bad) in str(err)
    assert isinstance(err, OSError)
    # the CLI: one line, exit 2
    proc = subprocess.run(
        [sys.executable, "-m", "staclearn.cli", "landcover", "run", "--catalog", str(catalog), "--out", str(tmp_path / "cli"), "--epochs", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip() and "Warning" not in ln and "warnings.warn" not in ln]
    assert len(lines) == 1 and "nc-landsat7-2000" in lines[0] and "truncated.tif" in lines[0], proc.stderr


class _Refuser(BaseHTTPRequestHandler):
    status = 404

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET


@pytest.mark.parametrize("status, words", [(404, "HTTP 404"), (403, "HTTP 403")])
def test_asset_behind_404_or_403_is_named(tmp_path, nc_catalog, status, words):
    from staclearn.workflows.landcover import LandCoverConfig, run_landcover

    handler = type("H", (_Refuser,), {"status": status})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    href = f"http://127.0.0.1:{httpd.server_address[1]}/scene.tif"
    try:
        catalog = _nc_copy(tmp_path, nc_catalog, href)
        # the asset's header cannot be read either: odc-stac needs the Item's proj metadata only,
        # so the failure comes at read time and must still name the asset
        with pytest.raises(AssetReadError, match=words) as info:
            run_landcover(catalog, tmp_path / "run", LandCoverConfig(epochs=1), progress=False, log=lambda _: None)
        assert info.value.href == href and info.value.item_id == "nc-landsat7-2000"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_all_nodata_imagery_and_labels_off_the_imagery(tmp_path, nc_catalog, shared_dir):
    from staclearn.workflows.landcover import LandCoverConfig, run_landcover

    with rasterio.open(_image_path(shared_dir)) as src:
        profile, data = src.profile, src.read()
    nod = tmp_path / "nodata.tif"
    with rasterio.open(nod, "w", **profile) as dst:
        dst.write(np.full_like(data, profile["nodata"]))
    with pytest.raises(EmptyDataError, match="nodata .* everywhere"):
        run_landcover(_nc_copy(tmp_path / "a", nc_catalog, str(nod)), tmp_path / "run-a", LandCoverConfig(epochs=1),
                      progress=False, log=lambda _: None)  # fmt: skip
    # labels only where the imagery is nodata: blank the imagery wherever there is a label
    with rasterio.open(shared_dir / "data" / "landcover" / "nc_landsat7" / "landsat96_labelled_pixels.tif") as lsrc:
        lab = lsrc.read(1)
        labelled = (lab != lsrc.nodata) & (lab > 0)
    holes = data.copy()
    holes[:, labelled] = profile["nodata"]
    hol = tmp_path / "holes.tif"
    with rasterio.open(hol, "w", **profile) as dst:
        dst.write(holes)
    with pytest.raises(LabelError, match="Every one of the .* labelled pixels of 'nc-landsat7-labels'"):
        run_landcover(_nc_copy(tmp_path / "b", nc_catalog, str(hol)), tmp_path / "run-b", LandCoverConfig(epochs=1),
                      progress=False, log=lambda _: None)  # fmt: skip


@pytest.mark.parametrize("damage", ["truncate", "no-geometry"])
def test_malformed_item_json_is_named(tmp_path, damage):
    from conftest import NC_CATALOG

    from staclearn.errors import MalformedStacError
    from staclearn.data.search import open_items

    dst = tmp_path / "nc"
    shutil.copytree(NC_CATALOG.parent, dst)
    item = dst / IMAGE_ITEM
    text = item.read_text()
    if damage == "truncate":
        item.write_text(text[: len(text) // 2])
    else:
        doc = json.loads(text)
        del doc["geometry"], doc["properties"]
        item.write_text(json.dumps(doc))
    with pytest.raises(MalformedStacError) as info:
        open_items(dst / "catalog.json")
    assert "nc-landsat7-2000.json" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_run_never_clobbers_and_a_failed_run_leaves_no_folder(tmp_path, nc_catalog, shared_dir):
    from staclearn.errors import RunExistsError
    from staclearn.workflows.landcover import LandCoverConfig, run_landcover

    out = tmp_path / "earlier"
    out.mkdir()
    (out / "catalog.json").write_text("{}")
    with pytest.raises(RunExistsError, match="--overwrite"):
        run_landcover(nc_catalog, out, LandCoverConfig(epochs=1), progress=False, log=lambda _: None)
    assert (out / "catalog.json").read_text() == "{}"  # untouched
    proc = subprocess.run(
        [sys.executable, "-m", "staclearn.cli", "landcover", "run", "--catalog", str(nc_catalog), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "not empty" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    # inputs are read before the folder is made: a bad catalog leaves no folder behind
    data = _image_path(shared_dir).read_bytes()
    (tmp_path / "t.tif").write_bytes(data[:1000])
    bad = _nc_copy(tmp_path, nc_catalog, str(tmp_path / "t.tif"))
    with pytest.raises(AssetReadError):
        run_landcover(bad, tmp_path / "new-run", LandCoverConfig(epochs=1), progress=False, log=lambda _: None)
    assert not (tmp_path / "new-run").exists()


def test_card_whose_weights_are_gone_is_a_named_error(tmp_path):
    """A card copied without its weights: one named error naming the card, asset and href."""
    import torch

    from staclearn.errors import WeightsNotFoundError
    from staclearn.data.labels import ClassInfo
    from staclearn.stac.modelcard import load_model, model_card
    from staclearn.models.segmentation import build_model, save_weights

    classes = [ClassInfo(1, "a"), ClassInfo(2, "b")]
    model = build_model(["r", "g"], classes, mean=[0, 0], std=[1, 1], architecture="PixelConvNet", encoder="none",
                        extra={"width": 4, "layers": 1})  # fmt: skip
    torch.manual_seed(0)
    weights = save_weights(model, tmp_path / "w" / "weights.safetensors")
    card = model_card(model, str(weights), id="tiny")
    card.set_self_href(str(tmp_path / "card.json"))
    card.save_object(include_self_link=False)
    weights.unlink()
    with pytest.raises(WeightsNotFoundError, match="'tiny'.*weights.safetensors.*copy the weights") as info:
        load_model(tmp_path / "card.json")
    assert isinstance(info.value, FileNotFoundError)


# --- Ctrl-C / SIGTERM: one line saying how to resume, exit 130 / 143 --------------------------

_SLOW_STEP = """
import sys, time
import {module} as target

def slow(*args, **kwargs):
    print("ready", flush=True)
    time.sleep(120)

setattr(target, {name!r}, slow)  # the command imports the step when it runs: it finds this one
from staclearn.cli import app

sys.argv = ["staclearn", *{argv!r}]
app()
"""


@pytest.mark.parametrize(
    ("argv", "module", "name", "sig", "code", "hint"),
    [
        (["predict", "--model", "card.json", "--catalog", "catalog.json", "--out", "out"], "staclearn.stac.modelcard",
         "read_card", "SIGINT", 130, "run the same command again to resume"),
        (["landcover", "run", "--out", "run"], "staclearn.workflows.landcover", "run_landcover", "SIGTERM", 143,
         "staclearn landcover run --out run --resume"),
        (["damage", "run", "--out", "run"], "staclearn.workflows.damage", "run_damage", "SIGTERM", 143,
         "staclearn damage run --out run --overwrite"),
        (["change", "run", "--out", "run"], "staclearn.workflows.change", "run_change", "SIGINT", 130,
         "staclearn change run --out run --overwrite"),
    ],
    ids=["predict-int", "landcover-term", "damage-term", "change-int"],  # each command, each signal: ~45 s each
)  # fmt: skip
def test_interrupted_command_says_how_to_resume(tmp_path, argv, module, name, sig, code, hint):
    """A real process, a real signal: the step it runs is replaced by one that waits, so the
    signal arrives where a long run spends its time (inside the step)."""
    import select
    import signal
    import time

    script = _SLOW_STEP.format(module=module, name=name, argv=argv)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240  # imports torch on 2 loaded cores
        line = ""
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                line = proc.stdout.readline()
                if line.strip() == "ready":
                    break
        assert line.strip() == "ready", proc.stderr.read() if proc.poll() is not None else "no 'ready' in time"
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted") and hint in lines[0], err


@pytest.mark.parametrize(
    ("argv", "module", "name", "flag"),
    [
        (["landcover", "run", "--resume"], "staclearn.workflows.landcover", "run_landcover", "resume"),
        (["landcover", "run", "--overwrite"], "staclearn.workflows.landcover", "run_landcover", "overwrite"),
        (["damage", "run", "--overwrite"], "staclearn.workflows.damage", "run_damage", "overwrite"),
        (["change", "run", "--overwrite"], "staclearn.workflows.change", "run_change", "overwrite"),
    ],
)
def test_resume_and_overwrite_reach_the_run(monkeypatch, tmp_path, argv, module, name, flag):
    """--resume / --overwrite are passed to run_*; its named error is one line and exit 2."""
    import importlib

    from typer.testing import CliRunner

    from staclearn.cli import app
    from staclearn.errors import RunExistsError

    seen = {}

    def refuse(*args, **kwargs):
        seen.update(kwargs)
        raise RunExistsError("run folder is not empty")

    monkeypatch.setattr(importlib.import_module(module), name, refuse)
    result = CliRunner().invoke(app, [*argv, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert seen[flag] is True and all(v is False for k, v in seen.items() if k in {"resume", "overwrite"} - {flag})


def test_a_catalog_given_as_the_model_card_is_named(tmp_path):
    """``--model runs/nc/catalog.json`` (the run's catalog, not its card) is a ModelCardError
    naming the file and where the card is, not pystac's STACTypeError traceback."""
    import pystac

    from staclearn.errors import ModelCardError
    from staclearn.stac.modelcard import read_card

    catalog = pystac.Catalog("nc", "a run's catalog")
    catalog.normalize_and_save(str(tmp_path / "run"), catalog_type=pystac.CatalogType.SELF_CONTAINED)
    with pytest.raises(ModelCardError, match=r"catalog\.json' is not a STAC Item .*nc-model\.json"):
        read_card(tmp_path / "run" / "catalog.json")


def test_predict_on_a_truncated_cog_is_one_line(tmp_path, nc_catalog, shared_dir, nc_run):
    """``staclearn predict`` streams tiles from the cube: a truncated COG met mid-stream is the
    same one-line AssetReadError (exit 2) as in a training run, not rasterio's
    ``WarpOperationError: Chunk and warp failed`` traceback."""
    data = _image_path(shared_dir).read_bytes()
    bad = tmp_path / "truncated.tif"
    bad.write_bytes(data[: len(data) // 3])
    catalog = _nc_copy(tmp_path, nc_catalog, str(bad))
    proc = subprocess.run(
        [sys.executable, "-m", "staclearn.cli", "predict", "--model", str(nc_run.card), "--catalog", str(catalog),
         "--out", str(tmp_path / "out"), "--engine", "torch"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip() and "Warning" not in ln and "warnings.warn" not in ln]
    assert len(lines) == 1 and "AssetReadError" in lines[0] and "nc-landsat7-2000" in lines[0] and "truncated.tif" in lines[0], proc.stderr
