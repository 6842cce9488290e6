"""Resuming an interrupted land-cover run: what makes two runs the same run, whether a run
folder holds one to continue, and whether its chip export finished.

Private to :mod:`staclearn.workflows` (``run_landcover(resume=True)`` uses it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from staclearn.errors import (
    RunExistsError,
)

#: sub-folder of the run folder holding what a resumed run needs: ``run.json`` (the settings
#: of the run) and ``member{m}.safetensors`` (each member's training state after its last epoch)
TRAIN_STATE_DIR = "train_state"


# settings that do not change the chips or the trained model: a run may resume with others
RESUME_FREE = ("device", "predict_tile_size", "padding", "rf_estimators", "vectorize", "onnx", "min_mapping_unit_m2", "simplify_m")


def json_ready(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        import hashlib

        return {"array": list(value.shape), "dtype": str(value.dtype), "sha256": hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()}
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def run_settings(source: Any, config: Any, **search: Any) -> dict[str, Any]:
    """What makes two land-cover runs the same run (JSON-ready): the source, the search and
    every setting that shapes the chips or the model."""
    from dataclasses import asdict

    if isinstance(source, (str, os.PathLike)):
        src: Any = os.fspath(source)
        if Path(src).exists():
            src = str(Path(src).resolve())
    else:
        src = [getattr(i, "id", repr(i)) for i in source] if isinstance(source, Sequence) else repr(source)
    settings = {k: v for k, v in asdict(config).items() if k not in RESUME_FREE}
    return json_ready({"source": src, **search, "config": settings})


def can_resume(out: Path, settings: dict[str, Any], *, overwrite: bool) -> bool:
    """Whether ``out`` holds an interrupted run with these settings to continue.

    Raises:
        RunExistsError: ``out`` holds files but no land-cover run, or a run with other
            settings (without ``overwrite``).
    """
    import json

    if not out.is_dir() or not any(out.iterdir()):
        return False  # nothing there yet: a fresh run
    saved_path = out / TRAIN_STATE_DIR / "run.json"
    if not saved_path.is_file():
        if overwrite:
            return False
        raise RunExistsError(
            f"Run folder {out} holds files but no interrupted land-cover run to resume ({saved_path} is missing): "
            "choose another --out, or pass --overwrite (Python: overwrite=True) to replace it."
        )
    saved = json.loads(saved_path.read_text())
    if saved == settings:
        return True
    if overwrite:
        return False
    config, old = settings.get("config", {}), saved.get("config", {})
    diff = sorted({k for k in settings if k != "config" and settings.get(k) != saved.get(k)}
                  | {k for k in set(config) | set(old) if config.get(k) != old.get(k)})  # fmt: skip
    raise RunExistsError(
        f"The run in {out} was started with other settings ({', '.join(diff)} differ), so it cannot be resumed "
        "with these: pass the same settings, choose another --out, or pass --overwrite to replace it."
    )


def complete_chips(chips: Path):  # -> geopandas.GeoDataFrame | None
    """The chip index of a finished :func:`export_chips` in ``chips`` (its ``chips.parquet``
    is written last, atomically, and every chip it lists exists), else ``None``."""
    import geopandas as gpd

    index_path = chips / "chips.parquet"
    if not index_path.is_file():
        return None
    try:
        index = gpd.read_parquet(index_path)
    except Exception:  # noqa: BLE001 (an unreadable index is an incomplete export: written again)
        return None
    if not all((chips / p).is_file() for p in [*index["image"], *index["label"]]):
        return None
    return index
