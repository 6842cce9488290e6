"""File and href helpers shared by every stage: atomic writes, JSON, URL tests, the fsspec
STAC IO (with retried http(s) reads) and href helpers.

Private to the package (``staclearn._io``): stable names for staclearn's own modules, not a
public API.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import pystac

__all__ = [
    "atomic_write",
    "write_json",
    "is_url",
    "local_path",
    "check_run_folder",
    "HTTP_RETRY_STATUSES",
    "HTTP_RETRIES",
    "HTTP_BACKOFF",
    "http_retry",
    "read_http_text",
    "FsspecStacIO",
    "copy_file",
    "join_href",
    "absolute_href",
    "same_href",
    "file_multihash",
]

#: HTTP statuses worth retrying: rate limiting and server-side failures (RFC 9110, RFC 6585).
HTTP_RETRY_STATUSES = (429, 500, 502, 503, 504)
#: Default retries (after the first attempt) of an http(s) read by :class:`FsspecStacIO`.
HTTP_RETRIES = 4
#: Default base of the exponential backoff of http(s) reads, seconds (0.5, 1, 2, 4 s).
HTTP_BACKOFF = 0.5


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


def http_retry(retries: int = 4, backoff: float = 0.5) -> Any:
    """The retry policy of staclearn's http(s) reads: ``retries`` attempts after the first on
    connection errors and HTTP 429 / 500 / 502 / 503 / 504, waiting ``backoff * 2**(n - 1)`` s
    before the n-th retry (a ``Retry-After`` header is honoured). The last answer is returned,
    not raised, so the caller sees its status.

    Args:
        retries: retries after the first attempt (0: none).
        backoff: base of the exponential wait, seconds.

    Returns:
        A ``urllib3.util.retry.Retry``.
    """
    from urllib3.util.retry import Retry

    return Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=backoff,
        status_forcelist=HTTP_RETRY_STATUSES,
        allowed_methods=None,
        respect_retry_after_header=True,
        raise_on_status=False,
    )


def read_http_text(
    href: str,
    *,
    retries: int = 4,
    backoff: float = 0.5,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> str:
    """GET an http(s) URL as text, retrying with backoff (:func:`http_retry`).

    Args:
        href: the URL.
        retries: retries after the first attempt on 429 / 5xx and connection errors.
        backoff: base of the exponential wait between attempts, seconds.
        headers: extra request headers.
        timeout: seconds per attempt.

    Returns:
        The body, decoded as the server says (UTF-8 by default).

    Raises:
        StacApiError: still HTTP 429 / 5xx, or no connection, after the retries (its
            ``status_code`` is the last HTTP status, None without an answer).
        CatalogNotFoundError: any other HTTP error (404, 403, ...); not retried.
    """
    import requests
    from requests.adapters import HTTPAdapter

    from staclearn.errors import CatalogNotFoundError, StacApiError

    attempts = 1 + retries
    with requests.Session() as session:
        adapter = HTTPAdapter(max_retries=http_retry(retries, backoff))
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        try:
            resp = session.get(href, headers=dict(headers or {}), timeout=timeout)
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as err:
            raise StacApiError(
                f"Could not reach {href} on {attempts} attempts ({type(err).__name__}). Check the URL "
                "and your network, or try again later.",
                url=href,
                status_code=None,
            ) from err
        except requests.exceptions.RequestException as err:
            raise StacApiError(
                f"Reading {href} failed on {attempts} attempts: {err}. Try again later.", url=href, status_code=None
            ) from err
    status = resp.status_code
    if status in HTTP_RETRY_STATUSES or status >= 500:
        raise StacApiError(
            f"{href} answered HTTP {status} on {attempts} attempts: {resp.text[:200]}. The service is "
            "failing or rate-limiting; try again later.",
            url=href,
            status_code=status,
        )
    if status >= 400:
        raise CatalogNotFoundError(
            f"{href} answered HTTP {status} {resp.reason}: {resp.text[:200]}. Check the URL "
            "(and, for 401 / 403, that the link is signed or public)."
        )
    if resp.encoding is None:
        resp.encoding = "utf-8"
    return resp.text


class FsspecStacIO(pystac.stac_io.DefaultStacIO):
    """pystac reader/writer for local paths and any fsspec URL (``memory://``, ``s3://``,
    ``gs://``, ``az://``...).

    Local files are written to a temporary name and renamed, so an interrupted run never
    leaves a truncated JSON that looks complete; object stores write whole objects anyway.
    http(s) hrefs are read with :func:`read_http_text`: HTTP 429 / 5xx and connection errors
    are retried with exponential backoff, then raise
    :class:`~staclearn.errors.StacApiError` carrying the HTTP status.

    Args:
        headers: extra HTTP headers for http(s) reads.
        retries: retries after the first attempt of an http(s) read; default
            :data:`HTTP_RETRIES`.
        backoff: base of the exponential wait between attempts, seconds; default
            :data:`HTTP_BACKOFF`.
    """

    def __init__(
        self, headers: dict[str, str] | None = None, *, retries: int | None = None, backoff: float | None = None
    ) -> None:
        super().__init__(headers=headers)
        self.retries = retries
        self.backoff = backoff

    def read_text_from_href(self, href: str) -> str:
        """Text of ``href``: http(s) with retries, other fsspec URLs through fsspec, local
        paths through pystac."""
        if href.startswith(("http://", "https://")):
            return read_http_text(
                href,
                retries=HTTP_RETRIES if self.retries is None else self.retries,
                backoff=HTTP_BACKOFF if self.backoff is None else self.backoff,
                headers=self.headers,
            )
        if is_url(href):
            import fsspec

            with fsspec.open(href, "r", encoding="utf-8") as f:
                return str(f.read())
        return super().read_text_from_href(href)

    def write_text_to_href(self, href: str, txt: str) -> None:
        """Write ``txt`` to ``href``: atomically for local paths, through fsspec for object
        stores.

        Raises:
            PublishError: ``href`` is http(s) (read-only).
        """
        if is_url(href):
            if href.startswith(("http://", "https://")):
                from staclearn.errors import PublishError

                raise PublishError(
                    f"Cannot write {href}: http(s) locations are read-only. Publish into a STAC API "
                    "with publish_to_api(), or write to a local folder or an object-store URL."
                )
            import fsspec

            with fsspec.open(href, "w", encoding="utf-8") as f:
                f.write(txt)
            return
        path = Path(local_path(href))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(txt, encoding="utf-8")
        os.replace(tmp, path)


def copy_file(src: str, dst: str) -> None:
    """Copy a local file to a local path (atomically) or an fsspec URL."""
    import fsspec

    if is_url(dst):
        with open(src, "rb") as fi, fsspec.open(dst, "wb") as fo:
            shutil.copyfileobj(fi, fo)
        return
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    tmp = dst + ".tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)



def join_href(root: str, rel: str) -> str:
    """``rel`` under ``root``: a ``/``-join for URLs, a path join for local folders."""
    return f"{root.rstrip('/')}/{rel}" if is_url(root) else str(Path(root) / rel)



def absolute_href(href: str, start: str | None) -> str:
    """Absolute form of ``href``; local paths become ``file://`` URIs, which stay unambiguous
    when the Item is read back from an http(s) API."""
    if not is_url(href) and not os.path.isabs(local_path(href)) and start is not None:
        from pystac.utils import make_absolute_href

        href = make_absolute_href(href, start)
    if not is_url(href):
        return Path(local_path(href)).resolve().as_uri()
    return href




def same_href(a: str, b: str) -> bool:
    """True when two local hrefs (paths or ``file://`` URIs) name the same path."""
    return os.path.normpath(local_path(a)) == os.path.normpath(local_path(b))


def file_multihash(href: str) -> str:
    """SHA-256 of a file as the STAC file extension's ``file:checksum`` writes it: a multihash
    in hex, ``1220`` (sha2-256, 32 bytes) followed by the 64 hex digits of the digest.

    Args:
        href: local path, ``file://`` URI or fsspec URL; read in 1 MiB blocks.

    Returns:
        The multihash hex string.

    Raises:
        FileNotFoundError: the file does not exist.
    """
    import hashlib

    import fsspec

    digest = hashlib.sha256()
    with fsspec.open(href, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return "1220" + digest.hexdigest()
