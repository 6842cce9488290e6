"""File and href helpers shared by every stage: atomic writes, JSON, URL tests.

Private to the package (``staclearn._io``): stable names for staclearn's own modules, not a
public API.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "write_json", "is_url", "local_path", "check_run_folder"]


def is_url(href: str) -> bool:
    """True for an href with a scheme other than ``file://`` (``https://``, ``s3://``, ``gs://``, ...)."""
    return "://" in str(href) and not str(href).startswith("file://")


def local_path(href: str) -> str:
    """``href`` without a leading ``file://``."""
    return str(href).removeprefix("file://")


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Write ``path`` through a temporary file in the same folder and :func:`os.replace`.

    A reader never sees a half-written file, and a failed ``write`` leaves the old file (or
    none) in place. The file gets mode 0644 (outputs are meant to be shared).

    Args:
        path: destination file; its folder is created if missing.
        write: called with the open binary temporary file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: the folder cannot be created or written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike[str], data: Any, *, allow_nan: bool = True) -> Path:
    """Write ``data`` as indented JSON (``default=str`` for paths, dates, ...), atomically.

    Raises:
        ValueError: ``allow_nan=False`` and ``data`` holds NaN or infinity.
        OSError: the folder cannot be created or written.
    """
    text = json.dumps(data, indent=2, default=str, allow_nan=allow_nan) + "\n"
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def check_run_folder(out: Path, *, overwrite: bool) -> None:
    """Refuse to write a run into a folder that already holds files, unless ``overwrite``.

    Raises:
        RunExistsError: ``out`` exists, is not empty, and ``overwrite`` is False.
        ConfigError: ``out`` is a file.
    """
    from staclearn.errors import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the run.")
    if not overwrite and out.is_dir() and any(out.iterdir()):
        from staclearn.errors import RunExistsError

        raise RunExistsError(
            f"Run folder {out} is not empty (it holds {', '.join(sorted(p.name for p in out.iterdir())[:4])}...): "
            "choose another --out, or pass --overwrite (Python: overwrite=True) to replace that run."
        )
