"""Old import paths, kept for one release (0.2) with a ``DeprecationWarning``; removed in 0.3.

Until 0.1 staclearn was 28 flat modules (``staclearn.predict``, ``staclearn.change``, ...). They now
live in one package per pipeline stage. ``import staclearn.predict`` and
``from staclearn.evaluate import compute_metrics`` still work: a finder on ``sys.meta_path``,
which answers only for the names in :data:`MOVED`, returns a module that forwards each public name
to its new home and warns once per name. ``staclearn.chips`` and ``staclearn.models`` kept their
names: they are packages now and export what the modules did.

Removing this file (and its one line in ``staclearn/__init__.py``) ends the aliases.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
import warnings
from typing import Any

__all__ = ["MOVED", "TOP_LEVEL"]

#: old module (under ``staclearn.``) -> the modules its public names now live in, searched in order
MOVED: dict[str, tuple[str, ...]] = {
    "search": ("staclearn.data.search",),
    "cube": ("staclearn.data.cube",),
    "labels": ("staclearn.data.labels",),
    "footprints": ("staclearn.data.footprints",),
    "splits": ("staclearn.data.splits",),
    "footprint_chips": ("staclearn.chips.objects", "staclearn.chips.object_dataset"),
    "sampling": ("staclearn.chips.sampling",),
    "augment": ("staclearn.chips.augment",),
    "classifier": ("staclearn.models.classifier",),
    "checkpoint": ("staclearn.training.checkpoint",),
    "train": ("staclearn.training.segmentation", "staclearn.training.trainer", "staclearn.training.device"),
    "lr_finder": ("staclearn.training.lr_finder",),
    "classify": ("staclearn.training.objects", "staclearn.inference.objects"),
    "predict": ("staclearn.inference.raster",),
    "distributed": ("staclearn.inference.dask",),
    "engines": ("staclearn.inference.engines", "staclearn.stac.onnx"),
    "vectorize": ("staclearn.inference.vectorize", "staclearn.stac.items"),
    "evaluate": ("staclearn.evaluation.metrics", "staclearn.evaluation.baselines", "staclearn.evaluation.reports"),
    "plots": ("staclearn.viz.plots",),
    "maps": ("staclearn.viz.maps",),
    "publish": ("staclearn.stac.items", "staclearn.stac.catalog", "staclearn.stac.api", "staclearn._io"),
    "modelcard": ("staclearn.stac.modelcard",),
    "validate": ("staclearn.stac.validate",),
    "landcover": ("staclearn.workflows.landcover", "staclearn.data.labels"),
    "damage": ("staclearn.workflows.damage", "staclearn.data.xbd"),
    "change": (
        "staclearn.data.pairs", "staclearn.data.splits", "staclearn.chips.pairs", "staclearn.models.change",
        "staclearn.models.segmentation", "staclearn.inference.change", "staclearn.evaluation.cva",
        "staclearn.evaluation.change", "staclearn.stac.change", "staclearn.workflows.change",
    ),
}

#: names that ``staclearn.<name>`` exported in 0.1 but no longer does -> their module now
TOP_LEVEL: dict[str, str] = {
    "Augmentation": "staclearn.chips.augment",
    "ChipDataset": "staclearn.chips.pixel",
    "band_statistics": "staclearn.chips.pixel",
    "block_split": "staclearn.chips.pixel",
    "chip_windows": "staclearn.chips.pixel",
    "export_chips": "staclearn.chips.pixel",
    "ClassInfo": "staclearn.data.labels",
    "load_label_raster": "staclearn.data.labels",
    "rasterize_labels": "staclearn.data.labels",
    "build_model": "staclearn.models.segmentation",
    "Trainer": "staclearn.training.segmentation",
    "predict_probabilities": "staclearn.inference.raster",
    "ClassificationMetrics": "staclearn.evaluation.metrics",
    "compute_metrics": "staclearn.evaluation.metrics",
    "random_forest_baseline": "staclearn.evaluation.baselines",
    "write_report": "staclearn.evaluation.reports",
    "class_map_item": "staclearn.stac.items",
}


def _public_name(new_modules: tuple[str, ...], name: str) -> tuple[str, Any]:
    for mod_name in new_modules:
        mod = importlib.import_module(mod_name)
        if hasattr(mod, name):
            return mod_name, getattr(mod, name)
    raise AttributeError(f"{name!r} is not in {' or '.join(new_modules)}")


def top_level(name: str) -> Any:
    """Resolve a name ``staclearn`` exported in 0.1, warning that it moved.

    Raises:
        AttributeError: ``name`` was never a top-level name.
    """
    if name not in TOP_LEVEL:
        raise AttributeError(f"module 'staclearn' has no attribute {name!r}")
    where = TOP_LEVEL[name]
    warnings.warn(
        f"staclearn.{name} moved to {where}.{name}; the old name goes in 0.3", DeprecationWarning, stacklevel=3
    )
    return getattr(importlib.import_module(where), name)


class _Forward(types.ModuleType):
    """A 0.1 module path whose attributes come from the 0.2 modules, with a warning."""

    def __init__(self, old: str, new_modules: tuple[str, ...]) -> None:
        super().__init__(old, f"Deprecated alias of {', '.join(new_modules)}.")
        self.__new_modules = new_modules

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        where, value = _public_name(self.__new_modules, name)
        warnings.warn(
            f"{self.__name__}.{name} moved to {where}.{name}; the old path goes in 0.3",
            DeprecationWarning,
            stacklevel=2,
        )
        return value


class _Finder:
    """Answers ``import staclearn.<old>`` for the names in :data:`MOVED` only (a meta path
    finder and loader by protocol; not subclassing ``importlib.abc`` keeps ``import staclearn``
    from importing ``importlib.resources``)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        pkg, _, leaf = fullname.partition(".")
        if pkg != "staclearn" or leaf not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        leaf = spec.name.split(".", 1)[1]
        warnings.warn(
            f"{spec.name} moved to {' / '.join(MOVED[leaf])}; the old path goes in 0.3",
            DeprecationWarning,
            stacklevel=2,
        )
        return _Forward(spec.name, MOVED[leaf])

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (idempotent)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
