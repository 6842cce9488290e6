"""One per-process cache of loaded models, keyed by the content of their weights.

Inference that runs once per chunk - the openEO UDF (:mod:`staclearn.udf`, called by the
back-end for every chunk) and Dask workers (:mod:`staclearn.inference.dask`, one task per
chunk) - must not rebuild the model each time. Both keep their models here, keyed by the
SHA-256 of the weights file (:func:`file_digest`) plus whatever else decides the model (the
spec, the device): two copies of the same weights share one model, and new weights written
to the same path give a new one. The digest itself is memoised by the file's path, size and
modification time, so a call costs a ``stat``, not a read of the weights.

The cache holds at most :data:`MAX_MODELS` models (least recently used go first); it is
guarded by a lock, so a worker that runs several threads loads each model once.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple, TypeVar

from staclearn._io import is_url, local_path
from staclearn.errors import WeightsNotFoundError

__all__ = ["MAX_MODELS", "CacheInfo", "cache_info", "cached_model", "clear_model_cache", "file_digest", "model_digest"]

MAX_MODELS = 4
"""Most models the cache holds per process."""

T = TypeVar("T")

_LOCK = threading.RLock()
_MODELS: OrderedDict[Hashable, Any] = OrderedDict()
_DIGESTS: dict[tuple[str, tuple[Any, ...]], str] = {}
_STATS = {"hits": 0, "misses": 0}
_CHUNK = 1 << 20


class CacheInfo(NamedTuple):
    """Counters of the model cache (as ``functools.lru_cache``'s ``cache_info()``).

    Attributes:
        hits: lookups served by a model already loaded.
        misses: lookups that loaded a model.
        maxsize: :data:`MAX_MODELS`.
        currsize: models held now.
    """

    hits: int
    misses: int
    maxsize: int
    currsize: int


def _stamp(href: str) -> tuple[Any, ...]:
    """What identifies a version of the file without reading it: size and modification time."""
    if not is_url(href):
        try:
            st = os.stat(local_path(href))
        except FileNotFoundError as err:
            raise WeightsNotFoundError(f"The weights file {href} does not exist.") from err
        return (st.st_size, st.st_mtime_ns)
    import fsspec

    fs, path = fsspec.core.url_to_fs(href)
    try:
        info = fs.info(path)
    except FileNotFoundError as err:
        raise WeightsNotFoundError(f"The weights file {href} does not exist.") from err
    changed = next((info[k] for k in ("mtime", "LastModified", "last_modified", "ETag", "etag") if info.get(k)), None)
    return (info.get("size"), str(changed))


def file_digest(href: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's content, memoised by its path, size and modification time.

    Args:
        href: local path, ``file://`` URL or fsspec URL (``https://``, ``s3://``...) of the
            file. For a URL without a modification time or ETag the digest is memoised by its
            size only.

    Returns:
        The digest as 64 lowercase hex characters.

    Raises:
        WeightsNotFoundError: no file at ``href``.
    """
    href = os.fspath(href)
    key = (href, _stamp(href))
    with _LOCK:
        known = _DIGESTS.get(key)
    if known is not None:
        return known
    h = hashlib.sha256()
    if is_url(href):
        import fsspec

        opened = fsspec.open(href, "rb")
    else:
        opened = open(local_path(href), "rb")  # noqa: SIM115 - closed by the with below
    with opened as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    with _LOCK:
        for old in [k for k in _DIGESTS if k[0] == href]:  # an older version of the same file
            del _DIGESTS[old]
        _DIGESTS[key] = digest
    return digest


def model_digest(model: Any) -> str:
    """A digest of a model's weights in memory.

    Args:
        model: a PyTorch module, or an :class:`~staclearn.inference.engines.OnnxModel` (which
            carries the SHA-256 of its ONNX graph as ``digest``).

    Returns:
        ``"onnx:<sha256 of the ONNX file>"`` for an ONNX Runtime model, else the SHA-256 (hex)
        of the state dict's names and float bytes, in name order.
    """
    if getattr(model, "digest", None):
        return f"onnx:{model.digest}"
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cached_model(key: Hashable, load: Callable[[], T]) -> T:
    """The model cached under ``key``, loaded with ``load()`` on the first call.

    Args:
        key: hashable; should start with the weights' :func:`file_digest` and hold whatever
            else decides the model (spec, device), so the same weights under another path
            share one model and changed weights get a new one.
        load: builds the model when it is not cached (called under the cache's lock, so
            concurrent threads of one process load it once).

    Returns:
        The cached (or freshly loaded) model; the least recently used beyond
        :data:`MAX_MODELS` is dropped.
    """
    with _LOCK:
        if key in _MODELS:
            _STATS["hits"] += 1
            _MODELS.move_to_end(key)
            return _MODELS[key]
        _STATS["misses"] += 1
        model = load()
        _MODELS[key] = model
        while len(_MODELS) > MAX_MODELS:
            _MODELS.popitem(last=False)
        return model


def cache_info() -> CacheInfo:
    """Hits, misses and size of this process's model cache."""
    with _LOCK:
        return CacheInfo(_STATS["hits"], _STATS["misses"], MAX_MODELS, len(_MODELS))


def clear_model_cache() -> None:
    """Forget every cached model and weights digest of this process, and reset the counters."""
    with _LOCK:
        _MODELS.clear()
        _DIGESTS.clear()
        _STATS.update(hits=0, misses=0)
