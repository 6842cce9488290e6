"""The package's shape (issue 14): a light import, a small top level, old paths that still work
for one release, one error hierarchy, small modules and no private names across packages."""

from __future__ import annotations

import ast
import builtins
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

import staclearn
import staclearn.errors

SRC = Path(staclearn.__file__).parent
HEAVY = ("torch", "kornia", "sklearn", "matplotlib")
#: what the CLI must not import before a command runs (``staclearn --help`` answers at once)
CLI_HEAVY = (*HEAVY, "odc", "rasterio", "geopandas")
MAX_LINES = 650


def _loaded_after(code: str, modules: tuple[str, ...]) -> list[str]:
    """Top-level packages among ``modules`` that a fresh interpreter has imported after ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(modules)!r})))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("code", "modules"),
    [
        ("import staclearn", HEAVY),
        ("import staclearn\nstaclearn.__all__\ndir(staclearn)", HEAVY),
        ("import staclearn.cli", CLI_HEAVY),
        ("from staclearn.cli import app", CLI_HEAVY),
        ("import staclearn.errors", CLI_HEAVY),
    ],
    ids=["import", "__all__", "cli", "cli-app", "errors"],
)
def test_imports_are_light(code, modules):
    assert _loaded_after(code, modules) == []


def test_cli_help_and_argument_errors_import_nothing_heavy():
    """``staclearn --help`` and a bad argument answer without loading the steps."""
    probe = (
        "import sys\nfrom staclearn.cli import app\n"
        "for argv in (['--help'], ['predict', '--tile-size', 'big'], ['landcover', 'run', '--epochs', 'x']):\n"
        "    try:\n        app(argv)\n    except SystemExit as e:\n        print('exit', e.code)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(CLI_HEAVY)!r}))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert [ln for ln in lines if ln.startswith("exit")] == ["exit 0", "exit 2", "exit 2"], proc.stdout + proc.stderr
    assert lines[-1] == "[]", proc.stdout


def test_top_level_is_small_and_resolves():
    assert len(staclearn.__all__) <= 20
    assert len(set(staclearn.__all__)) == len(staclearn.__all__)
    for name in staclearn.__all__:
        assert getattr(staclearn, name) is not None, name
        assert getattr(staclearn, name).__doc__, f"staclearn.{name} has no docstring"


def test_old_paths_resolve_to_the_same_objects_with_a_warning():
    from staclearn.evaluation.metrics import compute_metrics as new_compute_metrics
    from staclearn.inference.raster import predict_to_cog
    from staclearn.training.segmentation import Trainer

    sys.modules.pop("staclearn.predict", None)  # the warning is given when the module is made
    sys.modules.pop("staclearn.evaluate", None)
    with pytest.warns(DeprecationWarning, match="staclearn.predict moved to staclearn.inference"):
        import staclearn.predict
    with pytest.warns(DeprecationWarning, match="predict_to_cog"):
        assert staclearn.predict.predict_to_cog is predict_to_cog
    with pytest.warns(DeprecationWarning, match="evaluate"):
        from staclearn.evaluate import compute_metrics
    assert compute_metrics is new_compute_metrics
    with pytest.warns(DeprecationWarning, match="staclearn.Trainer moved to staclearn.training.segmentation"):
        assert staclearn.Trainer is Trainer
    with pytest.warns(DeprecationWarning, match="StacValidationError"):
        assert staclearn.errors.ValidationError is staclearn.errors.StacValidationError
    with pytest.raises(AttributeError):
        staclearn.no_such_name  # noqa: B018


def _classes(module) -> list[type]:
    return [obj for obj in vars(module).values() if inspect.isclass(obj) and obj.__module__ == module.__name__]


def test_one_error_hierarchy():
    errors = staclearn.errors
    assert sorted(errors.__all__) == sorted(c.__name__ for c in _classes(errors)), "errors.__all__ lists every class"
    builtin = {c for c in vars(builtins).values() if inspect.isclass(c) and issubclass(c, BaseException)}
    seen: list[type] = []
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert cls.__doc__ and len(cls.__doc__.strip()) > 20, f"{name} has no docstring"
        if issubclass(cls, Warning):  # warnings come last, under StaclearnWarning
            assert issubclass(cls, errors.StaclearnWarning), name
        else:
            assert issubclass(cls, errors.StaclearnError), name
            # each leaf is also the built-in it stands for (except FileNotFoundError keeps working)
            plain = (Exception, BaseException) if cls is not errors.StaclearnError else (BaseException,)
            assert any(b in builtin and b not in plain for b in cls.__mro__[1:]), f"{name} inherits no built-in exception"
            assert not seen or not issubclass(seen[-1], Warning), f"{name} listed after the warnings"
        # ordered by hierarchy: every base from errors is listed before its subclasses
        for base in cls.__mro__[1:]:
            if base.__module__ == errors.__name__:
                assert base in seen, f"{name} listed before its base {base.__name__}"
        seen.append(cls)
    assert errors.__all__[0] == "StaclearnError"
    assert not issubclass(errors.NoGeoreferenceError, errors.ConfigError)  # it describes data
    assert issubclass(errors.NoGeoreferenceError, ValueError)
    assert errors.StacApiError("x", url="u", status_code=503).status_code == 503
    assert "ValidationError" not in errors.__all__  # the 0.1 name resolves with a warning only


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_module_is_over_650_lines():
    long = {str(p.relative_to(SRC)): n for p in _modules() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def _package(path: Path) -> str:
    """``data`` for staclearn/data/search.py, ``cli`` for staclearn/cli.py."""
    rel = path.relative_to(SRC).parts
    return rel[0] if len(rel) > 1 else Path(rel[0]).stem


def test_no_private_name_imported_across_packages():
    crossings = []
    for path in _modules():
        own = _package(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or node.level or not (node.module or "").startswith("staclearn."):
                continue
            target = node.module.split(".")[1]
            if target == own:
                continue
            private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            if private:
                crossings.append(f"{path.relative_to(SRC)}:{node.lineno} from {node.module} import {', '.join(private)}")
    assert crossings == []


def test_public_names_have_docstrings():
    """Every public function and class of the packages the CLI and the errors live in."""
    missing = []
    for path in _modules():
        rel = path.relative_to(SRC)
        if any(part.startswith("_") and part != "__init__.py" for part in rel.parts):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                if not ast.get_docstring(node):
                    missing.append(f"{rel}:{node.lineno} {node.name}")
    assert missing == []


def test_stage_package_inits_are_in_sync_with_their_modules():
    """Each stage package's lazy ``__init__`` exports exactly its modules' ``__all__``
    (``python scripts/gen_inits.py`` writes them); every name resolves."""
    import ast
    import importlib

    src = Path(staclearn.__file__).parent
    for init in sorted(src.glob("*/__init__.py")):
        pkg = importlib.import_module(f"staclearn.{init.parent.name}")
        expected: set[str] = set()
        for mod in init.parent.glob("[!_]*.py"):
            for node in ast.parse(mod.read_text()).body:
                if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
                    expected |= {e.value for e in node.value.elts}
        modules = {m.stem for m in init.parent.glob("*.py")}
        exported = set(pkg.__all__) - (modules - expected)  # lazy_loader lists the submodules too
        assert exported == expected, f"{init}: run python scripts/gen_inits.py"
        for name in sorted(exported)[:3]:
            assert getattr(pkg, name) is not None


def test_stages_import_only_the_stages_below_them():
    """Data flows one way: a stage imports only stages listed before it (function-level imports
    included); ``errors`` and ``_io`` are below everything, ``cli`` / ``udf`` above."""
    order = ["errors", "_io", "data", "models", "chips", "training", "inference", "evaluation", "stac", "viz",
             "workflows", "openeo_processes", "udf", "cli"]  # fmt: skip
    upward = []
    for path in _modules():
        src = _package(path)
        if src not in order:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("staclearn."):
                dst = node.module.split(".")[1]
                if dst in order and order.index(dst) > order.index(src):
                    upward.append(f"{path.relative_to(SRC)}:{node.lineno} imports {node.module}")
    assert upward == []
