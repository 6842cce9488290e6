"""Pytest fixture: a real pgstac database behind stac-fastapi-pgstac on 127.0.0.1.

``pgstac_api`` (module scope) starts a private PostgreSQL cluster with PostGIS (the Debian
packages ``postgresql-15`` and ``postgresql-15-postgis-3``, which ``.ci/run`` installs) in
a temporary folder on a free port, runs ``pypgstac migrate``, starts
``stac_fastapi.pgstac.app:create_app`` under uvicorn with the Transactions extension, and
yields a :class:`PgstacApi` (API URL, database DSN, environment for ``pypgstac``). The
cluster is stopped and deleted at teardown. As root, ``initdb``/``pg_ctl`` run as the
``postgres`` user (initdb refuses root). Skipped, with the reason, only where the database
cannot be started (no PostgreSQL binaries, no PostGIS, initdb or pg_ctl failing).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

HOST = "127.0.0.1"
PASSWORD = "staclearn"  # trust authentication; stac-fastapi-pgstac still wants a password set


@dataclass(frozen=True)
class PgstacApi:
    url: str
    """root URL of stac-fastapi-pgstac"""
    dsn: str
    """``postgresql://`` DSN of the pgstac database (for ``pypgstac load``)"""
    versions: dict[str, str]
    """PostgreSQL, PostGIS and pgstac versions of the running database"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _script(name: str) -> str:
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name) or name


@pytest.fixture(scope="module")
def pgstac_api() -> Iterator[PgstacApi]:
    pytest.importorskip("pypgstac", reason="pypgstac is not installed (pip install -e '.[dev]')")
    pytest.importorskip("stac_fastapi.pgstac", reason="stac-fastapi-pgstac is not installed (pip install -e '.[dev]')")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL cannot be started: no initdb (apt-get install postgresql-15 postgresql-15-postgis-3)")
    major = bindir.parent.name
    if not list(Path("/usr/share/postgresql").glob(f"{major}/extension/postgis.control")):
        pytest.skip(f"PostgreSQL {major} has no PostGIS (apt-get install postgresql-{major}-postgis-3 postgresql-{major}-postgis-3-scripts)")
    as_root = os.geteuid() == 0
    run_as = ["runuser", "-u", "postgres", "--"] if as_root else []
    tmp = Path(tempfile.mkdtemp(prefix="staclearn-pgstac-"))
    data, sock = tmp / "data", tmp / "sock"
    sock.mkdir()
    if as_root:
        shutil.chown(tmp, "postgres")
        shutil.chown(sock, "postgres")
    port = _free_port()
    log = tmp / "postgres.log"
    procs: list[subprocess.Popen] = []

    def sh(cmd: list[str], what: str, timeout: float = 120) -> None:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            pytest.skip(f"the database cannot be started: {what} failed: {proc.stderr.strip()[-400:] or proc.stdout[-400:]}")

    try:
        sh([*run_as, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"], "initdb")
        opts = f"-p {port} -k {sock} -c listen_addresses={HOST} -c fsync=off -c full_page_writes=off"
        sh([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(log), "-w", "-t", "60", "start"], "pg_ctl start")
        dsn = f"postgresql://postgres:{PASSWORD}@{HOST}:{port}/postgres"
        migrate = subprocess.run([_script("pypgstac"), "migrate", "--dsn", dsn], capture_output=True, text=True, timeout=300)
        assert migrate.returncode == 0, f"pypgstac migrate failed: {migrate.stderr[-2000:]}"
        env = {
            **os.environ, "PGHOST": HOST, "PGPORT": str(port), "PGUSER": "postgres", "PGPASSWORD": PASSWORD,
            "PGDATABASE": "postgres", "ENABLE_TRANSACTIONS_EXTENSIONS": "TRUE",
        }
        api_port = _free_port()
        url = f"http://{HOST}:{api_port}"
        api_log = open(tmp / "api.log", "w")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app", "--factory", "--host", HOST,
                 "--port", str(api_port), "--log-level", "warning"],
                env=env, stdout=api_log, stderr=api_log, cwd=tmp,
            )
        )
        deadline = time.monotonic() + 60
        while True:
            if procs[0].poll() is not None:
                pytest.fail(f"stac-fastapi-pgstac exited: {(tmp / 'api.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{url}/_mgmt/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"stac-fastapi-pgstac did not answer within 60 s: {(tmp / 'api.log').read_text()[-2000:]}")
            time.sleep(0.3)
        import psycopg

        with psycopg.connect(dsn) as conn:
            pg = conn.execute("show server_version").fetchone()[0]
            postgis = conn.execute("select postgis_lib_version()").fetchone()[0]
            pgstac = conn.execute("select pgstac.get_version()").fetchone()[0]
        yield PgstacApi(url=url, dsn=dsn, versions={"postgresql": pg, "postgis": postgis, "pgstac": pgstac})
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if (data / "postmaster.pid").exists():
            subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)
