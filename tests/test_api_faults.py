"""STAC API faults: 429 / 5xx and dropped connections are retried with backoff, then a named
error carries the HTTP status. Servers run on 127.0.0.1 only, in this process; every loop
is bounded."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from staclearn.errors import CatalogNotFoundError, StacApiError
from staclearn.data.search import open_items

ITEM = {
    "type": "Feature",
    "stac_version": "1.0.0",
    "id": "scene-1",
    "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]},
    "bbox": [0, 0, 1, 1],
    "properties": {"datetime": "2020-06-01T00:00:00Z"},
    "links": [],
    "assets": {},
    "collection": "c",
}


def _server(fail_first: int, status: int = 503):
    """A minimal STAC API whose first ``fail_first`` requests answer ``status``."""
    state = {"requests": 0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def _answer(self) -> None:
            state["requests"] += 1
            if state["requests"] <= fail_first:
                body = b'{"code": "unavailable"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            if self.path.startswith("/search"):
                doc = {"type": "FeatureCollection", "features": [ITEM], "links": []}
            else:
                doc = {
                    "type": "Catalog", "stac_version": "1.0.0", "id": "api", "description": "test API",
                    "conformsTo": ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"],
                    "links": [
                        {"rel": "self", "href": base + "/"},
                        {"rel": "root", "href": base + "/"},
                        {"rel": "search", "href": base + "/search", "type": "application/geo+json", "method": "GET"},
                        {"rel": "search", "href": base + "/search", "type": "application/geo+json", "method": "POST"},
                    ],
                }  # fmt: skip
            body = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = _answer
        do_POST = _answer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    return httpd, state


@pytest.fixture
def flaky():
    servers = []

    def make(fail_first: int, status: int = 503):
        httpd, state = _server(fail_first, status)
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/", state

    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.mark.parametrize("status", [503, 429, 502])
def test_api_failing_then_succeeding_is_retried(flaky, status):
    url, state = flaky(2, status)
    items = open_items(url, backoff=0.01)
    assert [i.id for i in items] == ["scene-1"]
    assert state["requests"] == 2 + 2  # 2 failures, then the landing page and /search


def test_api_that_always_fails_raises_a_named_error_with_the_status(flaky):
    url, state = flaky(10_000, 503)
    with pytest.raises(StacApiError, match="HTTP 503 on 3 attempts") as info:
        open_items(url, retries=2, backoff=0.01)
    assert info.value.status_code == 503 and info.value.url == url
    assert state["requests"] == 3  # bounded: 1 + 2 retries
    assert isinstance(info.value, ConnectionError)


def test_api_404_is_not_retried_and_reads_as_not_found(flaky):
    url, state = flaky(10_000, 404)
    with pytest.raises(CatalogNotFoundError, match="HTTP 404") as info:
        open_items(url, retries=3, backoff=0.01)
    assert state["requests"] == 1
    assert info.value.status_code == 404 and info.value.url == url  # the HTTP status is kept


@pytest.mark.parametrize("status", [404, 503])
def test_static_catalog_url_that_fails_keeps_the_status(flaky, status):
    url, _ = flaky(10_000, status)
    with pytest.raises(CatalogNotFoundError, match=f"HTTP {status}") as info:
        open_items(url + "catalog.json")
    assert info.value.status_code == status and info.value.url == url + "catalog.json"


def test_unreachable_api_is_a_named_error():
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StacApiError, match="Could not reach") as info:
        open_items(f"http://127.0.0.1:{port}/", retries=1, backoff=0.01)
    assert info.value.status_code is None
