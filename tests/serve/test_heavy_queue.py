"""The heavy-decode queue is bounded: over it a heavy upload is refused at once (503 + Retry-After, or that item's
error in a batch) instead of waiting in one of the server's 40 request threads, which 48 clients with a 121 KB
16-bit PNG each once took, every one, so small requests waited 24-29 s behind them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import pytest
from tests.serve.servetools import image_bytes, serving, upload

import realfake.data.images as images_module
import realfake.serve.app as app_module
from realfake.detector import Detector
from realfake.errors import RealfakeError
from realfake.serve import decoding
from realfake.serve.app import BUSY, create_app

# 80x60 RGB decodes to 14,400 bytes, 32x32 RGB to 3,072: with the threshold at 10,000 the first is heavy.
HEAVY_AT_TEST_SCALE = 10_000
FLOOD = 44  # more heavy uploads at once than the server has request threads (anyio's 40)
WAIT_S = 60  # generous bounds for a busy shared machine; nothing here asserts on speed


@pytest.fixture
def held() -> Iterator[tuple[threading.Event, threading.Event]]:
    """(started, release): the heavy thread's decode signals `started` and then waits for `release`."""
    started, release = threading.Event(), threading.Event()
    yield started, release
    release.set()  # whatever a test asserted, nothing stays blocked


@pytest.fixture
def heavy_decodes_held(monkeypatch: pytest.MonkeyPatch, held: tuple[threading.Event, threading.Event]) -> None:
    """Test-sized heavy uploads whose decode, on the heavy thread only, holds until the test releases it."""
    started, release = held
    decode = images_module.decode_bytes_region

    def holding(data: bytes, *args, **kwargs):
        if threading.current_thread().name.startswith("realfake-heavy-decode"):
            started.set()
            release.wait(WAIT_S)
        return decode(data, *args, **kwargs)

    monkeypatch.setattr(images_module, "decode_bytes_region", holding)
    monkeypatch.setattr(app_module, "HEAVY_DECODE_BYTES", HEAVY_AT_TEST_SCALE)


def test_the_queue_admits_one_running_and_max_waiting_then_refuses_at_once(
    held: tuple[threading.Event, threading.Event]
) -> None:
    heavy = decoding.HeavyDecoder(max_waiting=1)
    started, release = held

    def hold(i: int) -> int:
        started.set()
        release.wait(WAIT_S)
        return i

    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(heavy.run, hold, 1)
        assert started.wait(WAIT_S)
        queued = pool.submit(heavy.run, hold, 2)
        for _ in range(1000):  # bounded: until the second call has taken the one waiting place
            if heavy.admitted == 2:
                break
            time.sleep(0.01)
        assert heavy.admitted == 2
        with pytest.raises(decoding.HeavyQueueFull) as refused:
            heavy.run(hold, 3)  # would block the caller for both: refused instead, while they still wait
        assert not running.done() and not queued.done()
        release.set()
        assert (running.result(WAIT_S), queued.result(WAIT_S)) == (1, 2)
    assert 1 <= refused.value.retry_after_s <= 60
    assert f"send it again in {refused.value.retry_after_s} s" in str(refused.value)
    assert (heavy.calls, heavy.refused, heavy.admitted) == (2, 1, 0)
    assert heavy.run(lambda: "room again") == "room again"
    heavy.close()


@pytest.mark.parametrize("bound", [-1, decoding.MAX_HEAVY_QUEUE + 1])
def test_a_bound_that_could_take_the_request_threads_is_refused(detector: Detector, bound: int) -> None:
    with pytest.raises(RealfakeError, match="--heavy-queue must be 0..20"):
        create_app(detector, heavy_queue=bound)
    with pytest.raises(ValueError):
        decoding.HeavyDecoder(bound)


@pytest.mark.usefixtures("heavy_decodes_held")
def test_a_flood_of_heavy_uploads_is_refused_at_once_and_small_requests_still_pass(
    detector: Detector, held: tuple[threading.Event, threading.Event]
) -> None:
    """44 heavy uploads at once against a queue of 1: one decodes, one waits, 42 get 503 + Retry-After while
    those two are still held, and a small request sent in that moment is judged before either finishes.

    Before the bound every heavy upload waited in a request thread: the 44 took all 40, the small request
    found none, and no 503 ever came."""
    started, release = held
    heavy, small = image_bytes((80, 60), "PNG", 61), image_bytes((32, 32), "PNG", 62)
    app = create_app(detector, heavy_queue=1)
    limits = httpx.Limits(max_connections=FLOOD + 8, max_keepalive_connections=FLOOD + 8)
    with serving(app) as (host, port), httpx.Client(timeout=WAIT_S, limits=limits) as http, \
            ThreadPoolExecutor(FLOOD) as pool:
        url = f"http://{host}:{port}/v1/predict"

        def send(name: str, data: bytes) -> httpx.Response:
            return http.post(url, files=upload((name, data)))

        first = pool.submit(send, "heavy-0.png", heavy)
        assert started.wait(WAIT_S)  # it is on the heavy thread, held there
        rest = [pool.submit(send, f"heavy-{i}.png", heavy) for i in range(1, FLOOD)]
        deadline = time.monotonic() + WAIT_S
        while sum(f.done() for f in rest) < FLOOD - 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        answered = [f for f in rest if f.done()]
        # Every refusal came back while both admitted uploads were still held: none waited for the decoder.
        assert len(answered) == FLOOD - 2, f"{len(answered)} of {FLOOD - 1} answered while the decoder was held"
        small_reply = send("small.png", small)
        admitted: list[Future[httpx.Response]] = [first, *(f for f in rest if f not in answered)]
        assert not any(f.done() for f in admitted)  # the small request was judged before either of them
        release.set()
        refused = [f.result() for f in answered]
        replies = [f.result(WAIT_S) for f in admitted]

    assert small_reply.status_code == 200, small_reply.text
    assert small_reply.json()[0]["p_fake"] == detector.predict(small).p_fake
    assert {r.status_code for r in refused} == {503}
    for r in refused:
        assert int(r.headers["retry-after"]) >= 1
        assert f"{BUSY}decoding other large images" in r.json()["detail"]
    assert [r.status_code for r in replies] == [200, 200]
    assert app.state.service.heavy.calls == 2
    assert app.state.service.heavy.refused == app.state.refusals[503] == FLOOD - 2


@pytest.mark.usefixtures("heavy_decodes_held")
def test_in_a_batch_only_the_heavy_item_over_the_bound_is_refused(
    detector: Detector, held: tuple[threading.Event, threading.Event]
) -> None:
    """A bad item in a batch is reported and skipped, nothing else is lost: with the queue full, the small item
    of a batch is judged and the heavy one carries a "server busy" error; only when nothing was judged is the
    whole request 503 (not 415/422, which would tell the client not to try again)."""
    started, release = held
    heavy, small = image_bytes((80, 60), "PNG", 63), image_bytes((32, 32), "PNG", 64)
    app = create_app(detector, heavy_queue=0)
    with serving(app) as (host, port), httpx.Client(base_url=f"http://{host}:{port}", timeout=WAIT_S) as client, \
            ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/v1/predict", files=upload(("held.png", heavy)))
        assert started.wait(WAIT_S)  # the one place is taken
        batches_before = app.state.service.batcher.batches
        alone = client.post("/v1/predict", files=upload(("big.png", heavy)))
        with_junk = client.post("/v1/predict", files=upload(("big.png", heavy), ("junk.png", b"not an image")))
        assert app.state.service.batcher.batches == batches_before  # nothing judged: no model call waited for
        mixed = client.post("/v1/predict", files=upload(("small.png", small), ("big.png", heavy)))
        release.set()
        assert first.result(WAIT_S).status_code == 200
        # Once the decoder is free again the same upload is judged.
        again = client.post("/v1/predict", files=upload(("big.png", heavy)))

    assert alone.status_code == 503 and int(alone.headers["retry-after"]) >= 1
    assert with_junk.status_code == 503 and "junk.png: not an image" in with_junk.json()["detail"]
    assert mixed.status_code == 200, mixed.text
    judged, busy = mixed.json()
    assert judged["error"] is None and judged["p_fake"] == detector.predict(small).p_fake
    assert busy["p_fake"] is None and busy["label"] is None and busy["error"].startswith(BUSY)
    assert "retry-after" not in mixed.headers
    assert again.status_code == 200 and again.json()[0]["p_fake"] == detector.predict(heavy).p_fake
