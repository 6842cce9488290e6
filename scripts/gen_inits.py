"""Write each stage package's lazy ``__init__.py`` from its modules' ``__all__`` (lazy_loader).

Run after adding a module or changing an ``__all__``: ``python scripts/gen_inits.py``.
tests/test_package.py checks that the inits are in sync.
"""
import ast, pathlib, collections
SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "staclearn"
DOCS = {
 "data": "Reading inputs: STAC search, lazy cubes on one GeoBox, labels, building footprints and the train / validation / test split of regions.",
 "chips": "Training samples: pixel chips (one or two dates), object chips around footprints, sampling and kornia augmentation.",
 "models": "Networks: segmentation models (smp and the per-pixel conv net), the two-date change model, the object classifier and losses.",
 "training": "Fitting: one trainer loop with task hooks, checkpoints, the learning-rate finder and device choice.",
 "inference": "Applying a model: tiled raster prediction to COGs, Dask and ONNX engines, object classification and vectorizing.",
 "evaluation": "Scoring: metrics (overall accuracy, mIoU, precision / recall / F1), classical baselines and reports.",
 "stac": "Publishing: class-map, change-mask and vector Items, the MLM model card, catalogs, STAC API publishing and validation.",
 "workflows": "The three workflows, each a Config, a Result and a run_* that composes the steps below it.",
 "viz": "Figures and maps.",
}
for pkg, doc in DOCS.items():
    d = SRC / pkg
    attrs = {}
    seen = collections.Counter()
    for f in sorted(d.glob("*.py")):
        if f.name.startswith("_"):
            continue
        tree = ast.parse(f.read_text())
        names = []
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
                names = [e.value for e in node.value.elts]
        attrs[f.stem] = names
        seen.update(names)
    dup = [n for n, c in seen.items() if c > 1]
    if dup:
        print(pkg, "DUP", dup)
    lines = [f'"""{doc}', "", "Names load lazily (``lazy_loader``): importing this package imports none of its modules", '"""', "",
             "import lazy_loader as _lazy", "", "__getattr__, __dir__, __all__ = _lazy.attach(", "    __name__,",
             f"    submodules={sorted(attrs)!r},", "    submod_attrs={"]
    for m, names in attrs.items():
        lines.append(f"        {m!r}: {names!r},")
    lines += ["    },", ")", ""]
    (d / "__init__.py").write_text("\n".join(lines))
    print(pkg, {m: len(n) for m, n in attrs.items()})
