"""Who may use the model: an optional bearer token on /v1/*, loopback by default, and a warning when exposed."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from tests.serve.servetools import image_bytes, read_reply, serving, upload
from typer.testing import CliRunner

from realfake.cli import app as cli
from realfake.detector import Detector
from realfake.serve.app import create_app

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def guarded(detector: Detector) -> FastAPI:
    return create_app(detector, token=TOKEN)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_v1_needs_the_token(guarded: FastAPI) -> None:
    client = TestClient(guarded)
    png = upload(("a.png", image_bytes((32, 32), "PNG", 30)))
    missing = client.post("/v1/predict", files=png)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in missing.json()["detail"]
    wrong = client.get("/v1/model", headers=bearer("guess"))
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"].startswith("Bearer")
    assert wrong.json() == {"detail": "wrong access token"}
    assert client.get("/v1/model", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert client.get("/v1/model", headers=bearer(TOKEN)).status_code == 200
    assert client.post("/v1/predict", files=png, headers=bearer(TOKEN)).status_code == 200
    assert guarded.state.refusals[401] >= 3


def test_the_page_and_health_check_stay_open(guarded: FastAPI) -> None:
    client = TestClient(guarded)
    assert client.get("/healthz").json() == {"status": "ok"}
    page = client.get("/")
    assert page.status_code == 200
    assert 'id="token"' in page.text  # where a user pastes the token when the API answers 401


def test_the_token_is_in_the_schema_only_when_there_is_one(guarded: FastAPI, detector: Detector) -> None:
    schema = TestClient(guarded).get("/openapi.json").json()
    [scheme] = schema["components"]["securitySchemes"].values()
    assert scheme["scheme"] == "bearer"
    assert "security" in schema["paths"]["/v1/predict"]["post"]
    assert "401" in schema["paths"]["/v1/model"]["get"]["responses"]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    open_schema = TestClient(create_app(detector)).get("/openapi.json").json()
    assert "securitySchemes" not in open_schema.get("components", {})


def test_no_token_is_401_before_the_body_is_read(guarded: FastAPI) -> None:
    """A stranger's upload is refused from its headers: the server never waits for, or parses, its body."""
    head = (b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 5000000\r\n\r\n")
    with serving(guarded) as address, socket.create_connection(address, timeout=5) as conn:
        conn.sendall(head)
        reply, closed, seconds = read_reply(conn, wait_s=8)
    assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
    assert closed and seconds < 5  # not the body timeout (10 s): the body was never waited for


@pytest.fixture()
def uvicorn_calls(monkeypatch: pytest.MonkeyPatch) -> list:
    calls: list = []
    monkeypatch.setattr(uvicorn, "run", lambda api, **kw: calls.append((api, kw)))
    monkeypatch.delenv("REALFAKE_TOKEN", raising=False)
    return calls


def test_cli_serve_passes_its_settings_and_guards_v1(trained_run: Path, uvicorn_calls: list) -> None:
    result = CliRunner().invoke(cli, ["serve", str(trained_run), "--device", "cpu", "--token", TOKEN,
                                      "--body-timeout", "3", "--max-decode-mb", "50", "--batch-wait-ms", "0",
                                      "--heavy-queue", "3"])
    assert result.exit_code == 0, result.output
    [(api, kw)] = uvicorn_calls
    assert kw == {"host": "127.0.0.1", "port": 8000}
    assert "warning" not in result.output
    assert TOKEN not in result.output  # never echoed
    service = api.state.service
    assert (service.limits.body_timeout_s, service.limits.max_decode_bytes) == (3.0, 50_000_000)
    assert (service.limits.heavy_queue, service.heavy.max_waiting) == (3, 3)
    assert service.batcher is None
    client = TestClient(api)
    assert client.get("/v1/model").status_code == 401
    assert client.get("/v1/model", headers=bearer(TOKEN)).status_code == 200


def test_cli_serve_reads_the_token_from_the_environment(
    trained_run: Path, uvicorn_calls: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REALFAKE_TOKEN", TOKEN)
    result = CliRunner().invoke(cli, ["serve", str(trained_run), "--device", "cpu", "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    [(api, _)] = uvicorn_calls
    assert TestClient(api).get("/v1/model", headers=bearer(TOKEN)).status_code == 200


@pytest.mark.parametrize(("host", "warned"), [("0.0.0.0", True), ("192.168.1.5", True), ("example.org", True),
                                              ("127.0.0.1", False), ("localhost", False), ("::1", False)])
def test_cli_serve_warns_when_exposed_without_a_token(
    trained_run: Path, uvicorn_calls: list, host: str, warned: bool
) -> None:
    result = CliRunner().invoke(cli, ["serve", str(trained_run), "--device", "cpu", "--host", host])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == (1 if warned else 0), result.stderr
    if warned:
        assert host in warnings[0] and "--token" in warnings[0]


def test_cli_serve_bad_setting_is_one_line(trained_run: Path, uvicorn_calls: list) -> None:
    result = CliRunner().invoke(cli, ["serve", str(trained_run), "--body-timeout", "0"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert uvicorn_calls == []
