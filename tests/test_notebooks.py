"""The notebooks in notebooks/ are committed without outputs and run top to bottom.

Each is executed with nbclient in a fresh kernel with small settings
(``STACLEARN_NOTEBOOK_SMALL=1``: few epochs, few tiles / cities), its outputs written under a
temporary folder. They read ../shared/data and are skipped, with the reason, where it is
absent; without the data the notebook itself stops at its first cell with a message saying
which folder is missing.
"""

from __future__ import annotations

import os

import nbformat
import pytest
from conftest import REPO, SHARED_DIR

NOTEBOOKS = REPO / "notebooks"
NEEDS = {
    "landcover.ipynb": "landcover/nc_landsat7",
    "damage.ipynb": "damage/xbd_santarosa",
    "change.ipynb": "change/oscd",
}


def test_every_notebook_is_listed_and_stripped_of_outputs():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NEEDS)
    for name in NEEDS:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code, name
        assert all(c.outputs == [] and c.execution_count is None for c in code), f"{name} has outputs: strip them"


def _run(name: str, tmp_path, env: dict[str, str]) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute(env={**os.environ, **env})  # the kernel's own environment; ours is left alone
    return nb


def _text(nb: nbformat.NotebookNode) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def _images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NEEDS))
def test_notebook_runs_top_to_bottom(name, tmp_path):
    if not (SHARED_DIR / "data" / NEEDS[name]).is_dir():
        pytest.skip(f"{name} needs ../shared/data/{NEEDS[name]}")
    nb = _run(name, tmp_path, {"STACLEARN_NOTEBOOK_SMALL": "1", "STACLEARN_NOTEBOOK_OUT": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    text = _text(nb)
    assert "small settings" in text and "STAC objects valid" in text
    assert _images(nb) >= 5  # chips, lr curve, results, confusion matrix, map
    out = tmp_path / name.removesuffix(".ipynb")
    assert (out / "catalog.json").is_file()


def test_notebook_without_shared_data_stops_with_a_clear_message(tmp_path, monkeypatch):
    """The first cell names the missing folder (run here with the data folder pointed elsewhere)."""
    nb = nbformat.read(NOTEBOOKS / "change.ipynb", as_version=4)
    setup = nb.cells[1].source.replace('REPO.parent / "shared" / "data"', f'Path({str(tmp_path / "nowhere")!r})')
    with pytest.raises(FileNotFoundError, match=r"nowhere/change/oscd, which is not there.*\.\./shared/data"):
        exec(compile(setup, "setup", "exec"), {"__name__": "nb"})
