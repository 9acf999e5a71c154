"""/docs and /redoc work offline: their pages name only this server's own URLs, and each of those answers.

FastAPI's default pages load Swagger UI and ReDoc from a CDN (and ReDoc's fonts from Google): blank in a lab
without internet access. The server itself serves them now, from the installed fastapi-offline package.
"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from realfake.detector import Detector
from realfake.serve.app import create_app

TOKEN = "docs-token"
# What a page's markup and inline script load: src/href attributes, Swagger UI's `url:` and ReDoc's spec-url.
REFERENCE = re.compile(r"""(?:\bsrc|\bhref|\bspec-url)\s*=\s*["']([^"']+)["']|\burl:\s*'([^']+)'""")
CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


def references(html: str) -> list[str]:
    return [a or b for a, b in REFERENCE.findall(html)]


@pytest.mark.parametrize("token", [TOKEN, None], ids=["with-token", "open"])
@pytest.mark.parametrize(("page", "loads"), [("/docs", {".js", ".css", ".png", ".json"}),
                                             ("/redoc", {".js", ".png", ".json"})])
def test_docs_pages_load_only_their_own_assets(detector: Detector, token: str | None, page: str,
                                               loads: set[str]) -> None:
    """Without any Authorization header either: the docs and the schema are open like the page at /; the
    token guards /v1/* only, and Swagger UI's Authorize button sends it there."""
    client = TestClient(create_app(detector, token=token))
    r = client.get(page)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "http://" not in r.text and "https://" not in r.text  # no CDN, no fonts from elsewhere
    csp = r.headers["content-security-policy"]  # and the browser may fetch nothing from elsewhere for it
    assert "default-src 'self'" in csp and "img-src 'self' data:" in csp and "http" not in csp
    urls = references(r.text)
    assert {url[url.rfind("."):] for url in urls} == loads, urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url  # same origin
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert CONTENT_TYPES[url[url.rfind("."):]] in asset.headers["content-type"], (url, asset.headers)
        assert len(asset.content) > 1000, url  # the real file, not an error page
    assert client.get("/v1/model").status_code == (401 if token else 200)


def test_the_docs_pages_are_not_in_the_schema(detector: Detector) -> None:
    paths = TestClient(create_app(detector)).get("/openapi.json").json()["paths"]
    assert not any(p.startswith(("/docs", "/redoc", "/static")) for p in paths)
