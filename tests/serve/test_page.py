"""The web page in a real browser (system Chromium via Playwright) against a real server on localhost."""

from __future__ import annotations

import base64
import io
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from realfake.serve.app import create_app

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000  # generous: the test machine may be busy; nothing here asserts on speed

pytestmark = pytest.mark.slow  # every test here drives Chromium (Playwright), seconds each


@pytest.fixture(scope="module")
def server(trained_run: Path) -> Iterator[str]:
    """uvicorn serving the app from a background thread, on a port the OS picked and we already hold."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(trained_run, device="cpu"), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=30)
    sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no Chromium found: install Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    """A fresh page on the app that records every request it makes, to prove it fetches nothing from outside."""
    pg = browser.new_page(viewport={"width": 1000, "height": 760})
    pg.set_default_timeout(TIMEOUT_MS)
    pg.requested = []
    pg.on("request", lambda req: pg.requested.append(req.url))
    pg.goto(server + "/")
    pg.wait_for_selector("#model-info b")  # the model line is filled in from /v1/model
    yield pg
    pg.close()


def write_image(path: Path, size: tuple[int, int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def api_predict(server: str, path: Path) -> dict:
    r = httpx.post(server + "/v1/predict", files=[("files", (path.name, path.read_bytes()))], timeout=60)
    r.raise_for_status()
    return r.json()[0]


def assert_only_local(page: Any, server: str) -> None:
    outside = [u for u in page.requested if not u.startswith((server, "blob:", "data:"))]
    assert not outside, f"the page fetched from outside: {outside}"


def test_pick_an_image_and_see_its_verdict(page: Any, server: str, tmp_path: Path) -> None:
    img = write_image(tmp_path / "photo.png", (48, 48), 1)
    page.set_input_files("#file-input", str(img))
    verdict = page.wait_for_selector(".result .verdict")
    expected = api_predict(server, img)
    assert verdict.inner_text() in ("REAL", "FAKE", "UNCERTAIN")  # noise may well be out of distribution
    assert verdict.inner_text() == expected["label"].upper()
    shown = float(page.inner_text(".result .p-fake"))
    assert abs(shown - expected["p_fake"]) <= 0.0005 + 1e-9  # displayed to 3 decimals
    assert page.inner_text(".result .filename") == "photo.png"
    assert page.is_visible(".result img.thumb")
    assert page.is_hidden("#error")
    page.screenshot(path=str(tmp_path / "verdict.png"), full_page=True)
    assert (tmp_path / "verdict.png").stat().st_size > 0
    assert_only_local(page, server)


def test_text_file_shows_an_error(page: Any, server: str, tmp_path: Path) -> None:
    txt = tmp_path / "notes.txt"
    txt.write_text("not an image\n")
    page.set_input_files("#file-input", str(txt))
    error = page.wait_for_selector("#error:not([hidden])")
    assert "Unsupported file" in error.inner_text()  # the page's words for a 415
    assert "notes.txt: not an image" in error.inner_text()  # and the server's reason
    assert page.query_selector(".result") is None
    page.screenshot(path=str(tmp_path / "error.png"), full_page=True)


def test_drop_two_images_with_explain(page: Any, server: str, tmp_path: Path) -> None:
    """Drag-and-drop of several files, with explain ticked: one card per file, in order, each with a heatmap."""
    can_explain = httpx.get(server + "/v1/model", timeout=60).json()["explain"]
    if can_explain:
        page.check("#explain")
    files = []
    for name, size, seed in [("one.png", (32, 32), 2), ("two.png", (64, 40), 3)]:
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
            buf, "PNG"
        )
        files.append({"name": name, "b64": base64.b64encode(buf.getvalue()).decode()})
    transfer = page.evaluate_handle(
        """files => {
            const dt = new DataTransfer();
            for (const f of files) {
                const bytes = Uint8Array.from(atob(f.b64), c => c.charCodeAt(0));
                dt.items.add(new File([bytes], f.name, { type: "image/png" }));
            }
            return dt;
        }""",
        files,
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    page.wait_for_function("document.querySelectorAll('.result .verdict').length === 2")
    names = page.eval_on_selector_all(".result .filename", "els => els.map(e => e.textContent)")
    assert names == ["one.png", "two.png"]
    if can_explain:
        page.wait_for_selector(".result img.heatmap")
        assert len(page.query_selector_all(".result img.heatmap")) == 2
    page.screenshot(path=str(tmp_path / "explain.png"), full_page=True)
    assert_only_local(page, server)


def test_summary_is_at_the_top(page: Any, server: str) -> None:
    """The page opens with the server's summary sentence, not a bare test accuracy."""
    info = httpx.get(server + "/v1/model", timeout=60).json()
    page.wait_for_function("document.querySelector('#summary').textContent.length > 0")
    assert page.inner_text("#summary") == info["summary"].replace("`", "")
    assert page.query_selector("#summary code").inner_text() == "realfake evaluate RUN --data OTHER"
    box = page.eval_on_selector("#summary", "e => e.getBoundingClientRect().top")
    assert box < page.eval_on_selector("#model-info", "e => e.getBoundingClientRect().top")


def stubbed_page(browser: Any, server: str, info: dict, answer: list[dict]) -> Any:
    """The page, loaded, with /v1/model and /v1/predict answered by `info` and `answer`: every case on demand."""
    pg = browser.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.route("**/v1/model", lambda route: route.fulfill(json=info))
    pg.route("**/v1/predict*", lambda route: route.fulfill(json=answer))
    pg.goto(server + "/")
    pg.wait_for_selector("#model-info b")
    return pg


def test_uncertain_result_says_why(browser: Any, server: str, tmp_path: Path) -> None:
    """An 'uncertain' label out of distribution shows its ood and the reason (answers stubbed: a small trained run
    rarely meets such an image on demand)."""
    info = httpx.get(server + "/v1/model", timeout=60).json()
    info.update(ood_level=0.95, uncertain_band=None, summary="Test accuracy 99.9% on images like its training data; "
                "on other data it was measured on: ganC-fake 79.2% (41.5% of fakes called REAL).")
    answer = [{"filename": "odd.png", "p_fake": 0.2, "label": "uncertain", "threshold": 0.5, "ood": 0.991,
               "error": None, "heatmap_png": None}]
    pg = stubbed_page(browser, server, info, answer)
    try:
        assert "ganC-fake 79.2%" in pg.inner_text("#summary")
        pg.set_input_files("#file-input", str(write_image(tmp_path / "odd.png", (32, 32), 4)))
        assert pg.wait_for_selector(".result .verdict").inner_text() == "UNCERTAIN"
        assert pg.inner_text(".result .ood") == "ood 0.991 (uncertain above 0.95)"
        why = pg.inner_text(".result .why")
        assert "Out of distribution" in why and "0.991 is above 0.95" in why
    finally:
        pg.close()


@pytest.mark.parametrize(("path", "shows"), [("/docs", ".opblock-summary-path"), ("/redoc", "[data-section-id]")],
                         ids=["swagger-ui", "redoc"])
def test_api_docs_render_without_internet(browser: Any, server: str, path: str, shows: str) -> None:
    """/docs and /redoc as a lab without internet access sees them: every request to another host is refused,
    and the page still lists the API (it loaded its scripts from this server). Nothing went elsewhere: the one
    outside URL ReDoc asks for (its maker's logo) the page's Content-Security-Policy stops in the browser."""
    pg = browser.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.requested = []
    stopped_by_csp: list[str] = []
    pg.on("request", lambda req: pg.requested.append(req.url))
    pg.on("requestfailed", lambda req: req.failure == "csp" and stopped_by_csp.append(req.url))
    pg.route(lambda url: not url.startswith((server, "blob:", "data:")), lambda route: route.abort())
    try:
        pg.goto(server + path)
        pg.wait_for_selector(shows)
        assert "/v1/predict" in pg.inner_text("body")
        pg.requested = [u for u in pg.requested if u not in stopped_by_csp]
        assert_only_local(pg, server)
    finally:
        pg.close()


def test_the_judged_square_is_shown_beside_the_upload(page: Any, server: str, tmp_path: Path) -> None:
    """A 400x300 upload is shown whole, with the square the model judged drawn on it, beside those 32x32 pixels
    enlarged (pixelated, not smoothed), and the note that shrinking them 9.4x lost the fine detail."""
    img = write_image(tmp_path / "wide.png", (400, 300), 5)
    expected = api_predict(server, img)
    page.set_input_files("#file-input", str(img))
    judged = page.wait_for_selector(".result img.judged")
    page.wait_for_function("document.querySelector('.result img.judged').complete")
    assert judged.get_attribute("src") == "data:image/png;base64," + expected["judged_png"]
    assert judged.evaluate("e => [e.naturalWidth, e.naturalHeight]") == [32, 32]
    assert judged.evaluate("e => getComputedStyle(e).imageRendering") == "pixelated"
    assert judged.bounding_box()["width"] >= 3 * 32  # enlarged
    assert page.inner_text(".result .note") == f"Judged at 32\u00d732: {expected['note']}."
    assert "centre 300x300 of 400x300" in expected["note"]
    captions = page.eval_on_selector_all(".result figcaption", "els => els.map(e => e.textContent)")
    assert captions[:2] == ["upload 400\u00d7300", "judged 32\u00d732"]
    # the box on the whole upload (object-fit: contain) is the crop, [50, 0, 350, 300] of 400x300
    frame = page.eval_on_selector(".result .frame", "e => { const r = e.getBoundingClientRect(); "
                                  "return [r.left + e.clientLeft, r.top + e.clientTop, e.clientWidth]; }")
    box = page.query_selector(".result .crop-box").bounding_box()
    scale = frame[2] / 400
    shown_top = (frame[2] - 300 * scale) / 2  # the picture is letterboxed: it is wider than tall
    assert box["x"] - frame[0] == pytest.approx(50 * scale, abs=1)
    assert box["y"] - frame[1] == pytest.approx(shown_top, abs=1)
    assert box["width"] == pytest.approx(300 * scale, abs=1) and box["height"] == pytest.approx(300 * scale, abs=1)
    text = page.inner_text(".result .p-fake-text")
    assert "threshold" in text or "training data" in text or "uncertain band" in text  # never a bare p
    page.screenshot(path=str(tmp_path / "judged.png"), full_page=True)
    assert_only_local(page, server)


def test_label_and_number_never_contradict(browser: Any, server: str, tmp_path: Path) -> None:
    """Beside UNCERTAIN, p(fake) comes with what it means and why it does not settle the image; beside REAL and
    FAKE, with the threshold it was held to, written with the digits it takes (a threshold of 0.0012 is not
    0.001). Answers stubbed, to have every case on demand."""
    info = httpx.get(server + "/v1/model", timeout=60).json()
    info.update(threshold=0.0012, ood_level=0.95, uncertain_band=[0.4, 0.6])
    base = {"threshold": 0.0012, "logit": 0.0, "ood": 0.2, "error": None, "heatmap_png": None, "width": 32,
            "height": 32, "crop": [0, 0, 32, 32], "note": None, "judged_png": None}
    answer = [{**base, "filename": "odd.png", "p_fake": 0.998, "label": "uncertain", "reason": "ood", "ood": 0.991},
              {**base, "filename": "close.png", "p_fake": 0.52, "label": "uncertain", "reason": "band"},
              {**base, "filename": "fake.png", "p_fake": 0.004, "label": "FAKE", "reason": None},
              {**base, "filename": "real.png", "p_fake": 0.00119, "label": "REAL", "reason": None}]
    pg = stubbed_page(browser, server, info, answer)
    try:
        assert "threshold 0.0012" in pg.inner_text("#model-info")
        files = [str(write_image(tmp_path / r["filename"], (32, 32), i)) for i, r in enumerate(answer)]
        pg.set_input_files("#file-input", files)
        pg.wait_for_function("document.querySelectorAll('.result .verdict').length === 4")
        cards = pg.query_selector_all(".result")
        texts = [c.query_selector(".p-fake-text").inner_text() for c in cards]
        assert texts == ["p(fake) 0.998 on images like its training data \u2014 this one is not",
                         "p(fake) 0.520 is inside the uncertain band 0.40\u20130.60 (threshold 0.0012): too close "
                         "to call",
                         "p(fake) 0.004 \u2265 threshold 0.0012",
                         "p(fake) 0.00119 < threshold 0.00120"]
        reasons = [c.query_selector(".reason-text") for c in cards]
        assert reasons[0].inner_text() == "unlike the images it was trained on"
        assert reasons[1].inner_text() == "inside the run's uncertain band"
        assert reasons[2] is None and reasons[3] is None
        assert cards[0].query_selector(".bar") is None  # out of distribution: p is not drawn as a score
        assert "Out of distribution" in cards[0].query_selector(".why").inner_text()
        assert "too close to call" in cards[1].query_selector(".why").inner_text()
        for card in cards:
            assert card.query_selector(".note") is None  # 32x32 uploads: nothing was shrunk
            assert card.query_selector(".crop-box") is None  # nor cut: a box round all of it would say nothing
        pg.screenshot(path=str(tmp_path / "labels.png"), full_page=True)
    finally:
        pg.close()
