"""What one client can cost the others: a body that never arrives, decode-heavy uploads, names that look like paths."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from tests.serve.servetools import image_bytes, read_reply, serving, upload

import realfake.data.images as images_module
from realfake.detector import Detector
from realfake.errors import RealfakeError
from realfake.serve.app import create_app

SLOW_BODY = (
    b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 9000000\r\n\r\n"
    b"--b\r\nConte"  # 10 of the 9,000,000 bytes it declared, and then nothing
)


def test_a_body_that_never_arrives_is_408_and_logged(detector: Detector, caplog: pytest.LogCaptureFixture) -> None:
    """Declaring 9 MB and sending 10 bytes used to hold the connection (and a form parser) with no end."""
    app = create_app(detector, body_timeout_s=1)
    caplog.set_level(logging.WARNING, logger="realfake.serve")
    with serving(app) as address, socket.create_connection(address, timeout=5) as conn:
        conn.sendall(SLOW_BODY)
        reply, closed, seconds = read_reply(conn, wait_s=8)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"not complete within 1 s" in reply
    assert closed and seconds < 6  # answered after ~1 s, and the connection is not kept
    assert app.state.refusals[408] == 1
    [line] = [r.getMessage() for r in caplog.records if r.name == "realfake.serve"]
    assert "408" in line and "/v1/predict" in line and "127.0.0.1" in line


def test_a_body_that_arrives_in_time_is_judged(detector: Detector) -> None:
    """The deadline is for the whole body; one sent in pieces, quickly enough, is read as usual."""
    app = create_app(detector, body_timeout_s=5)
    data = image_bytes((32, 32), "PNG", 20)
    body = (b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + data + b"\r\n--b--\r\n")
    head = (b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    with serving(app) as address, socket.create_connection(address, timeout=5) as conn:
        conn.sendall(head + body[:100])
        time.sleep(0.3)
        conn.sendall(body[100:])
        reply, _, _ = read_reply(conn, wait_s=30)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    assert app.state.refusals[408] == 0


def test_a_slow_decode_does_not_hold_up_other_requests(detector: Detector, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding ran inside the model lock: one upload being decoded held every other request behind it."""
    heavy, light = image_bytes((40, 40), "PNG", 21), image_bytes((32, 32), "PNG", 22)
    decoding, release = threading.Event(), threading.Event()
    decode = images_module.decode_bytes_region

    def slow_decode(data: bytes, *args, **kwargs):  # stands in for a large PNG near the pixel limit
        if data == heavy:
            decoding.set()
            release.wait(8)
        return decode(data, *args, **kwargs)

    monkeypatch.setattr(images_module, "decode_bytes_region", slow_decode)
    with serving(create_app(detector)) as (host, port):
        url = f"http://{host}:{port}/v1/predict"
        slow = threading.Thread(target=lambda: httpx.post(url, files=upload(("heavy.png", heavy)), timeout=30))
        slow.start()
        assert decoding.wait(20)
        start = time.monotonic()
        r = httpx.post(url, files=upload(("light.png", light)), timeout=30)
        seconds = time.monotonic() - start
        release.set()
        slow.join(30)
    assert r.status_code == 200, r.text
    assert seconds < 5  # before the fix: the whole 8 s the heavy decode was held


def test_the_decode_budget_is_per_request_and_read_from_headers(
    detector: Detector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image that would take the request past its decode budget is refused before its pixels are read."""
    big, small = image_bytes((80, 60), "JPEG", 23), image_bytes((32, 32), "PNG", 24)  # 14,400 and 3,072 bytes
    expected = detector.predict(small).p_fake
    decoded: list[bytes] = []
    decode = images_module.decode_bytes_region
    monkeypatch.setattr(images_module, "decode_bytes_region",
                        lambda data, *a, **k: decoded.append(data) or decode(data))
    client = TestClient(create_app(detector, max_decode_bytes=10_000))
    r = client.post("/v1/predict", files=upload(("big.jpg", big), ("small.png", small)))
    assert r.status_code == 200, r.text
    over, fits = r.json()
    assert over["p_fake"] is None and over["error"].startswith("request decode budget exceeded")
    assert fits["error"] is None and fits["p_fake"] == expected
    assert decoded == [small]  # the big one was never decoded
    # The budget is per request: the next request starts with all of it.
    r = client.post("/v1/predict", files=upload(("small.png", small), ("small2.png", small)))
    assert [x["error"] for x in r.json()] == [None, None]
    r = client.post("/v1/predict", files=upload(("big.jpg", big)))
    assert r.status_code == 422
    assert "decode budget" in r.json()["detail"]
    assert client.get("/v1/model").json()["limits"]["max_decode_bytes"] == 10_000


def test_upload_names_are_never_paths(detector: Detector, tmp_path: Path) -> None:
    """The server judges the bytes it was sent; a file name is only echoed back, even one naming a real file."""
    on_disk = tmp_path / "real.png"
    on_disk.write_bytes(image_bytes((32, 32), "PNG", 25))
    data = image_bytes((32, 32), "PNG", 26)
    client = TestClient(create_app(detector))
    names = [str(on_disk), "../../../../etc/passwd", "<img src=x>"]
    r = client.post("/v1/predict", files=upload(*((n, data) for n in names)) + upload((str(on_disk), b"hello")))
    assert r.status_code == 200, r.text
    results = r.json()
    assert [x["filename"] for x in results] == [*names, str(on_disk)]
    assert {x["p_fake"] for x in results[:-1]} == {detector.predict(data).p_fake}
    assert results[-1]["error"] == "not an image"  # the bytes sent, not the file that name points to


@pytest.mark.parametrize(("flags", "message"), [
    (("--max-upload-mb", "0"), "--max-upload-mb (max_upload_bytes) must be above 0"),
    (("--max-images", "0"), "--max-images must be at least 1"),
    (("--body-timeout", "inf"), "--body-timeout (body_timeout_s) must be a finite number above 0"),
    (("--batch-wait-ms", "-1"), "--batch-wait-ms must be a finite number, at least 0"),
    (("--heavy-queue", "99"), "--heavy-queue must be 0.."),
    (("--max-decode-mb", "nan"), "--max-upload-mb and --max-decode-mb must be finite numbers"),
])
def test_serve_limits_are_checked_in_one_place_with_the_options_name(flags, message, tmp_path) -> None:
    """`realfake serve` and `create_app` share one check (serve.app.check_limits): the same line either way, before
    any model loads (the run folder here does not exist)."""
    from tests.clitools import assert_one_line_error, cli_inline

    assert_one_line_error(cli_inline("serve", tmp_path / "no-run", *flags), message)
    if flags[0] != "--max-decode-mb":  # the CLI turns MB into bytes; a NaN never reaches create_app
        with pytest.raises(RealfakeError, match=re.escape(message)):
            create_app(tmp_path / "no-run", **{_ARG[flags[0]]: _value(flags)})


_ARG = {"--max-upload-mb": "max_upload_bytes", "--max-images": "max_images", "--body-timeout": "body_timeout_s",
        "--batch-wait-ms": "batch_wait_ms", "--heavy-queue": "heavy_queue"}


def _value(flags: tuple[str, str]) -> float:
    v = float(flags[1])
    return int(v) if flags[0] in ("--max-upload-mb", "--max-images", "--heavy-queue") else v
