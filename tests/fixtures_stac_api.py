"""Pytest fixture: a real STAC API with the Transactions extension on 127.0.0.1.

``transactions_api`` starts ``tests/stac_api_server.py`` (stac-fastapi + an
in-memory backend, served by uvicorn) as a subprocess on a free port, waits for
``GET /`` to answer and yields the base URL, e.g. ``http://127.0.0.1:40123``.
Each test gets a fresh, empty API. Skipped where stac-fastapi or uvicorn is
not installed (``pip install -e '.[dev]'``).

Use it from ``conftest.py``::

    from fixtures_stac_api import transactions_api  # noqa: F401
"""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVER_SCRIPT = Path(__file__).with_name("stac_api_server.py")
HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 30.0
_REQUIRED = ("stac_fastapi.api", "stac_fastapi.types", "stac_fastapi.extensions", "uvicorn")


def _missing_modules() -> list[str]:
    missing = []
    for name in _REQUIRED:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except ModuleNotFoundError:  # parent package absent
            missing.append(name)
    return missing


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def run_stac_api(timeout_s: float = STARTUP_TIMEOUT_S, attempts: int = 3) -> Iterator[str]:
    """Run the test STAC API in a subprocess; yield its base URL; stop it on exit.

    A port taken between choosing it and binding it makes the server exit at
    once; that is retried on a new port (``attempts`` times in all). Fails the
    test with the server's stderr if it does not answer within ``timeout_s``.
    """
    with tempfile.TemporaryDirectory(prefix="stac-api-") as tmp:
        for attempt in range(1, attempts + 1):
            port = _free_port()
            base_url = f"http://{HOST}:{port}"
            log = Path(tmp) / f"stderr-{attempt}.log"
            with open(log, "wb") as err:  # a file, not a pipe: a full pipe would block the server
                proc = subprocess.Popen(
                    [sys.executable, str(SERVER_SCRIPT), "--port", str(port)],
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    cwd=SERVER_SCRIPT.parent,
                )
            try:
                deadline = time.monotonic() + timeout_s
                while proc.poll() is None and time.monotonic() < deadline:
                    if _answers(base_url + "/"):
                        break
                    time.sleep(0.1)
                else:
                    stderr = log.read_text(errors="replace")
                    if proc.poll() is not None:
                        if attempt < attempts and "address already in use" in stderr.lower():
                            continue
                        pytest.fail(
                            f"test STAC API exited with code {proc.returncode} before answering "
                            f"GET {base_url}/\n--- server stderr ---\n{stderr}",
                            pytrace=False,
                        )
                    pytest.fail(
                        f"test STAC API did not answer GET {base_url}/ within {timeout_s:.0f} s"
                        f"\n--- server stderr ---\n{stderr}",
                        pytrace=False,
                    )
                yield base_url
                return
            finally:
                _stop(proc)


@pytest.fixture
def transactions_api() -> Iterator[str]:
    """Base URL (no trailing slash) of a fresh, empty STAC API with Transactions."""
    missing = _missing_modules()
    if missing:
        pytest.skip(
            "needs stac-fastapi and uvicorn for the test STAC API "
            f"(missing: {', '.join(missing)}; pip install -e '.[dev]')"
        )
    with run_stac_api() as url:
        yield url
