"""What one client can cost the others: a body that never arrives."""

from __future__ import annotations

import logging
import socket
import time

import pytest
from tests.serve.servetools import image_bytes, read_reply, serving

from realfake.detector import Detector
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
