"""The API says what it judged (issue 27): each result carries the upload's size, the square judged, the note when
shrinking it lost the fine detail, and the 32x32 pixels the model saw as a PNG."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from tests.serve.servetools import image_bytes, upload

from realfake.data.images import decode_bytes
from realfake.detector import Detector
from realfake.serve.app import create_app

BIG_NOTE = ("reduced 9.4x to 32x32 (centre 300x300 of 400x300): generator traces at the original resolution "
            "are lost")


def judged_pixels(result: dict) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(result["judged_png"]))) as img:
        assert img.format == "PNG" and img.size == (32, 32) and img.mode == "RGB"
        return np.asarray(img)


@pytest.mark.parametrize("batch_wait_ms", [5.0, 0.0], ids=["batched", "unbatched"])
def test_results_say_what_was_judged(detector: Detector, batch_wait_ms: float) -> None:
    big, small = image_bytes((400, 300), "PNG", 1), image_bytes((32, 32), "PNG", 2)
    client = TestClient(create_app(detector, batch_wait_ms=batch_wait_ms))
    r = client.post("/v1/predict", files=upload(("big.png", big), ("small.png", small), ("notes.txt", b"hello")))
    assert r.status_code == 200, r.text
    b, s, bad = r.json()
    assert (b["width"], b["height"], b["crop"], b["note"]) == (400, 300, [50, 0, 350, 300], BIG_NOTE)
    assert (s["width"], s["height"], s["crop"], s["note"]) == (32, 32, [0, 0, 32, 32], None)
    # the PNG is exactly what the model saw: the centre square of the upload, shrunk by the one decoder
    assert np.array_equal(judged_pixels(b), decode_bytes(big))
    assert np.array_equal(judged_pixels(s), decode_bytes(small))
    assert np.array_equal(judged_pixels(s), np.asarray(Image.open(io.BytesIO(small))))  # 32x32: untouched
    assert bad["error"] == "not an image"
    assert [bad[k] for k in ("width", "height", "crop", "note", "judged_png")] == [None] * 5
    # and the verdict is the one the model gives those pixels (up to the float noise of another batch)
    assert b["p_fake"] == pytest.approx(detector.predict(judged_pixels(b)).p_fake, abs=2e-6)


def test_explained_results_say_what_was_judged_too(detector: Detector) -> None:
    if not detector.can_explain:
        pytest.skip("an ONNX detector cannot explain")
    big = image_bytes((300, 400), "PNG", 3)
    r = TestClient(create_app(detector)).post("/v1/predict?explain=true", files=upload(("tall.png", big)))
    assert r.status_code == 200, r.text
    [res] = r.json()
    assert (res["width"], res["height"], res["crop"]) == (300, 400, [0, 50, 300, 350])
    assert res["note"] == BIG_NOTE.replace("of 400x300", "of 300x400")
    assert res["heatmap_png"] and np.array_equal(judged_pixels(res), decode_bytes(big))


def test_the_schema_documents_the_fields(detector: Detector) -> None:
    schema = TestClient(create_app(detector)).get("/openapi.json").json()
    fields = schema["components"]["schemas"]["ImageResult"]["properties"]
    assert {"width", "height", "crop", "note", "judged_png"} <= fields.keys()
    assert "32x32" in fields["judged_png"]["description"]
