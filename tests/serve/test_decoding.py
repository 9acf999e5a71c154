"""Where uploads are decoded: heavy ones on the one low-priority heavy-decode thread, small ones in place."""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from tests.serve.servetools import image_bytes, upload

import realfake.data.images as images_module
import realfake.serve.app as app_module
from realfake.detector import Detector
from realfake.serve import decoding
from realfake.serve.app import create_app

# 80x60 RGB decodes to 14,400 bytes, 32x32 RGB to 3,072: with the threshold at 10,000 the first is heavy.
HEAVY_AT_TEST_SCALE = 10_000


@pytest.fixture
def decoded_on(monkeypatch: pytest.MonkeyPatch) -> dict[bytes, str]:
    """The name of the thread each upload's pixels were decoded on, with heavy uploads made test-sized."""
    threads: dict[bytes, str] = {}
    decode = images_module.decode_bytes_region

    def recording(data: bytes, *args, **kwargs):
        threads[data] = threading.current_thread().name
        return decode(data, *args, **kwargs)

    monkeypatch.setattr(images_module, "decode_bytes_region", recording)
    monkeypatch.setattr(app_module, "HEAVY_DECODE_BYTES", HEAVY_AT_TEST_SCALE)
    return threads


def test_a_heavy_upload_is_decoded_on_the_heavy_thread_and_a_small_one_in_place(
    detector: Detector, decoded_on: dict[bytes, str]
) -> None:
    big, small = image_bytes((80, 60), "PNG", 31), image_bytes((32, 32), "PNG", 32)
    app = create_app(detector)
    client = TestClient(app)
    r = client.post("/v1/predict", files=upload(("big.png", big), ("small.png", small)))
    assert r.status_code == 200, r.text
    assert decoded_on[big].startswith("realfake-heavy-decode")
    assert not decoded_on[small].startswith("realfake-heavy-decode")
    assert app.state.service.heavy.calls == 1
    assert [x["p_fake"] for x in r.json()] == [detector.predict(big).p_fake, detector.predict(small).p_fake]


def test_the_budget_still_refuses_before_routing(detector: Detector, decoded_on: dict[bytes, str]) -> None:
    """The budget is spent in upload order whichever thread decodes; one over it is refused, never queued."""
    big, small = image_bytes((80, 60), "PNG", 33), image_bytes((32, 32), "PNG", 34)
    app = create_app(detector, max_decode_bytes=20_000)
    r = TestClient(app).post("/v1/predict", files=upload(("a.png", big), ("b.png", big), ("c.png", small)))
    assert r.status_code == 200, r.text
    a, b, c = r.json()
    assert a["error"] is None and c["error"] is None
    assert b["p_fake"] is None and b["error"] == "request decode budget exceeded (14,400 bytes decoded; 5,600 of " \
                                                  "20,000 left)"
    assert app.state.service.heavy.calls == 1  # only the first big one went to the heavy thread


def test_heavy_decodes_run_one_at_a_time_on_one_thread() -> None:
    heavy = decoding.HeavyDecoder()
    running, most, names = 0, 0, set()
    lock = threading.Lock()

    def work(i: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            names.add(threading.get_native_id())
        time.sleep(0.01)
        with lock:
            running -= 1
        if i == 3:
            raise ValueError("bad")
        return i

    def call(i: int) -> int | str:
        try:
            return heavy.run(work, i)
        except ValueError as e:
            return str(e)

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(call, range(6)))
    heavy.close()
    assert results == [0, 1, 2, "bad", 4, 5]  # a failure reaches its caller and stops nothing
    assert most == 1 and len(names) == 1 and heavy.calls == 6


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice is Linux's")
def test_the_heavy_thread_alone_is_lowered_on_linux() -> None:
    main_before = os.getpriority(os.PRIO_PROCESS, 0)
    seen: list[tuple[bool, int, int]] = []

    def lowered() -> None:
        tid = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, tid)
        seen.append((decoding.lower_thread_priority(), before, os.getpriority(os.PRIO_PROCESS, tid)))

    t = threading.Thread(target=lowered)
    t.start()
    t.join()
    ok, before, after = seen[0]
    assert ok and after == min(19, before + decoding.HEAVY_DECODE_NICE)
    assert os.getpriority(os.PRIO_PROCESS, 0) == main_before  # the rest of the server keeps its priority


def test_priority_is_left_alone_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    """On macOS and the BSDs the native thread id is no process id: PRIO_PROCESS with it could renice another."""
    calls: list[tuple] = []
    monkeypatch.setattr(decoding.sys, "platform", "darwin")
    monkeypatch.setattr(decoding.os, "setpriority", lambda *a: calls.append(a), raising=False)
    assert decoding.lower_thread_priority() is False
    assert calls == []


def test_release_memory_is_safe_to_call_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    assert decoding.release_memory() in (True, False)
    assert decoding.release_memory() in (True, False)  # and again: the lookup is cached
    monkeypatch.setattr(decoding, "_malloc_trim", lambda: None)  # a C library without malloc_trim
    assert decoding.release_memory() is False
