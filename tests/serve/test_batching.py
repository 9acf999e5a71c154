"""Micro-batching: concurrent requests share forward passes, and get the answers they would have got alone."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from tests.serve.servetools import image_bytes, upload

from realfake.detector import Detector
from realfake.serve.app import create_app
from realfake.serve.batching import MicroBatcher


def test_batcher_gathers_concurrent_requests_and_keeps_each_in_order() -> None:
    calls: list[int] = []

    def double(xs: list[int]) -> list[int]:
        calls.append(len(xs))
        return [2 * x for x in xs]

    batcher = MicroBatcher(double, max_items=8, wait_s=0.2)
    requests = [[10 * i + j for j in range(i % 3 + 1)] for i in range(6)]  # 1 to 3 items each, 12 in all
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(batcher.submit, requests))
    batcher.close()
    assert answers == [[2 * x for x in r] for r in requests]
    assert sum(calls) == 12 and max(calls) <= 8
    assert len(calls) < len(requests)  # shared, not one call per request
    assert (batcher.batches, batcher.items) == (len(calls), 12)


def test_batcher_never_splits_a_request_and_runs_an_oversized_one_alone() -> None:
    seen: list[list[int]] = []
    batcher = MicroBatcher(lambda xs: seen.append(list(xs)) or xs, max_items=4, wait_s=0.05)
    assert batcher.submit(list(range(10))) == list(range(10))
    assert seen == [list(range(10))]
    batcher.close()


def test_batcher_failure_reaches_every_waiting_request_and_the_batcher_goes_on() -> None:
    fail = threading.Event()
    fail.set()

    def run(xs: list[int]) -> list[int]:
        if fail.is_set():
            raise ValueError("model failed")
        return xs

    batcher = MicroBatcher(run, max_items=8, wait_s=0.1)
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(batcher.submit, [i]) for i in range(3)]
        for f in futures:
            with pytest.raises(ValueError, match="model failed"):
                f.result(timeout=10)
    fail.clear()
    assert batcher.submit([7]) == [7]
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit([1])


def test_batcher_wait_is_bounded_for_a_lone_request() -> None:
    batcher = MicroBatcher(lambda xs: xs, max_items=64, wait_s=0.05)
    start = time.monotonic()
    assert batcher.submit([1]) == [1]
    assert time.monotonic() - start < 2
    batcher.close()


def test_batched_answers_equal_unbatched_ones(detector: Detector) -> None:
    """The same images through a batching app and a non-batching one give the same p_fake and label.

    Equal to the last digit for a request alone in its batch. Shared with other requests, the forward pass
    has another batch size, and oneDNN's kernels for it may round differently (~1e-7 on a logit; the same
    happens in `Detector.predict` on a list), so there p_fake may differ by one in its last (6th) decimal.
    """
    uploads = [(f"{i}.png", image_bytes((32 + i, 32 + 2 * i), "PNG", 40 + i)) for i in range(12)]
    batched_app = create_app(detector, batch_wait_ms=300, max_batch=64)
    batched, unbatched = TestClient(batched_app), TestClient(create_app(detector, batch_wait_ms=0))
    assert unbatched.app.state.service.batcher is None

    def judge(client: TestClient, item: tuple[str, bytes]) -> dict:
        r = client.post("/v1/predict", files=upload(item))
        assert r.status_code == 200, r.text
        return r.json()[0]

    alone = [judge(unbatched, u) for u in uploads]
    with ThreadPoolExecutor(len(uploads)) as pool:
        together = list(pool.map(lambda u: judge(batched, u), uploads))
    batcher = batched_app.state.service.batcher
    assert batcher.items == len(uploads) and batcher.batches < len(uploads)  # they did share forward passes
    for a, b in zip(alone, together, strict=True):
        assert a["filename"] == b["filename"]
        assert b["p_fake"] == pytest.approx(a["p_fake"], abs=1e-6)
        assert b["label"] == a["label"]
    lone = judge(batched, uploads[0])  # alone in its batch: the very same forward pass as unbatched
    assert lone == alone[0] == {**alone[0], "p_fake": detector.predict(uploads[0][1]).p_fake}


def test_explain_bypasses_the_batcher(detector: Detector) -> None:
    app = create_app(detector, batch_wait_ms=5)
    r = TestClient(app).post("/v1/predict", params={"explain": "true"},
                             files=upload(("a.png", image_bytes((32, 32), "PNG", 60))))
    assert r.status_code == 200, r.text
    assert r.json()[0]["heatmap_png"]
    assert app.state.service.batcher.items == 0
