"""Helpers for the server's tests: images as bytes, multipart uploads, and a real uvicorn on a loopback port."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import uvicorn
from fastapi import FastAPI
from PIL import Image


def image_bytes(size: tuple[int, int], fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def upload(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


@contextmanager
def serving(app: FastAPI) -> Iterator[tuple[str, int]]:
    """uvicorn serving `app` from a background thread, on a 127.0.0.1 port the OS picked and we already hold.

    Only a real server shows what a socket-level client (a slow body, headers without a body) does to it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield "127.0.0.1", port
    finally:
        srv.should_exit = True
        thread.join(timeout=30)
        sock.close()


def read_reply(conn: socket.socket, wait_s: float) -> tuple[bytes, bool, float]:
    """Everything the server sends within `wait_s` seconds: (bytes, whether it closed the connection, seconds)."""
    start = time.monotonic()
    data = b""
    conn.settimeout(0.2)
    while time.monotonic() - start < wait_s:
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            return data, True, time.monotonic() - start
        data += chunk
    return data, False, time.monotonic() - start
