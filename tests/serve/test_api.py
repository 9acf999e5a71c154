"""The REST API against a real trained run: answers, limits, and that bad uploads are 4xx, never 500."""

from __future__ import annotations

import base64
import copy
import io
import json
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from realfake.detector import Detector
from realfake.report.summary import run_summary
from realfake.serve.app import create_app


def image_bytes(size: tuple[int, int], fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels in a few hundred bytes: a decompression bomb's first step."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    rows = zlib.compress(b"\0" * ((width + 7) // 8 + 1) * 8)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def detector(trained_run: Path) -> Detector:
    return Detector.load(trained_run, device="cpu")


@pytest.fixture(scope="module")
def client(trained_run: Path) -> TestClient:
    return TestClient(create_app(trained_run, device="cpu"))


@pytest.fixture(scope="module")
def small_client(detector: Detector) -> TestClient:
    """An app with tight limits, sharing the already loaded detector."""
    return TestClient(create_app(detector, max_upload_bytes=20_000, max_images=2))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("uploads")
    files = {
        "a.png": image_bytes((32, 32), "PNG", 1),
        "b.jpg": image_bytes((80, 60), "JPEG", 2),
        "c.png": image_bytes((45, 70), "PNG", 3),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    return {name: d / name for name in files}


def upload(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


def from_disk(*paths: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    return upload(*((p.name, p.read_bytes()) for p in paths))


def assert_valid(result: dict, threshold: float) -> None:
    assert result["error"] is None
    assert 0.0 <= result["p_fake"] <= 1.0
    assert result["threshold"] == pytest.approx(threshold)
    by_threshold = "FAKE" if result["p_fake"] >= threshold else "REAL"
    # 'uncertain' only when the image is out of distribution (the run stores its level; 0.9 is below any default)
    assert result["label"] == by_threshold or (result["label"] == "uncertain" and result["ood"] > 0.9)


def test_healthz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_model_info_comes_from_the_run(client: TestClient, trained_run: Path, detector: Detector) -> None:
    info = client.get("/v1/model").json()
    run = json.loads((trained_run / "run.json").read_text())
    report = json.loads((trained_run / "data_report.json").read_text())
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert info["model"] == run["model"] == "seed-resnet50"
    assert info["created"] == run["created"]
    assert info["weights_used"] == run["weights_used"]
    assert info["threshold"] == pytest.approx(detector.threshold)
    assert info["training_data"]["per_class"] == report["per_class"]
    assert info["training_data"]["n_images"] == report["n_images"]
    assert info["training_data"]["source"] == Path(report["data"]).name  # a name, not the server's path
    assert info["test_metrics"]["accuracy"] == metrics["accuracy"]
    assert info["limits"] == {"max_upload_bytes": 10_000_000, "max_images": 32, "max_decode_bytes": 200_000_000,
                              "body_timeout_s": 10.0, "heavy_queue": 8}


def test_model_info_opens_with_the_summary(client: TestClient, trained_run: Path) -> None:
    """/v1/model says what the report and the model card say first, with the figures it is made from."""
    info = client.get("/v1/model").json()
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert info["summary"] == run_summary(trained_run).text
    assert "Performance on generators it was not trained on is unknown" in info["summary"]
    figures = info["summary_figures"]
    assert figures["test_accuracy"] == pytest.approx(metrics["accuracy"]) and figures["measured"] == []
    assert figures["test_ood"]["n_flagged"] == metrics["ood"]["n_flagged"]
    assert info["ood_level"] == pytest.approx(metrics["ood"]["level"])


def test_model_info_names_measured_other_data(detector: Detector, trained_run: Path, tmp_path: Path) -> None:
    """An evaluation on other data in the run folder shows up in the summary and its figures (old ones too)."""
    (tmp_path / "metrics.json").write_bytes((trained_run / "metrics.json").read_bytes())
    for name, m in [("ganC-fake.zip", {"accuracy": 0.792, "n": 4000, "confusion_matrix": [[1998, 2], [830, 1170]],
                                       "ood": {"level": 0.95, "n_flagged": 7, "confidently_wrong": 0.031}}),
                    ("old-set", {"accuracy": 0.5, "n": 2})]:  # evaluated before the OOD score existed
        (tmp_path / "evaluations" / name).mkdir(parents=True)
        (tmp_path / "evaluations" / name / "metrics.json").write_text(json.dumps(m))
    det = copy.copy(detector)
    det.run_dir = tmp_path  # the same model, a run folder with evaluations
    info = TestClient(create_app(det, batch_wait_ms=0)).get("/v1/model").json()
    assert "On ganC-fake (never trained on): threshold accuracy 79.2% (41.5% of fakes called REAL" in info["summary"]
    assert "3.1% confidently wrong after 'I don't know'). On old-set (never trained on): threshold accuracy 50.0%." \
        in info["summary"]
    ganc, old = info["summary_figures"]["measured"]
    assert (ganc["name"], ganc["kind"], ganc["ood"]["n_flagged"]) == ("ganC-fake", "other data", 7)
    assert old["ood"] is None and old["fakes_called_real"] is None
    # The figures are the summary itself, served (its sentence is `summary`): the two cannot drift apart.
    assert info["summary_figures"] == {k: v for k, v in run_summary(tmp_path).to_dict().items() if k != "text"}
    assert ganc["fakes_called_real"] == 0.415


def test_predict_one_png_matches_the_detector(client: TestClient, detector: Detector, images: dict) -> None:
    r = client.post("/v1/predict", files=from_disk(images["a.png"]))
    assert r.status_code == 200, r.text
    [result] = r.json()
    assert result["filename"] == "a.png"
    assert_valid(result, detector.threshold)
    # The same preprocessing as the library's own path-based prediction, to the last digit.
    assert result["p_fake"] == detector.predict(images["a.png"]).p_fake


def test_predict_two_images_in_upload_order(client: TestClient, detector: Detector, images: dict) -> None:
    r = client.post("/v1/predict", files=from_disk(images["b.jpg"], images["c.png"]))
    assert r.status_code == 200, r.text
    results = r.json()
    assert [x["filename"] for x in results] == ["b.jpg", "c.png"]
    for result, name in zip(results, ["b.jpg", "c.png"], strict=True):
        assert_valid(result, detector.threshold)
        assert result["p_fake"] == detector.predict(images[name]).p_fake


def test_uncertain_label_is_a_valid_answer(
    small_client: TestClient, detector: Detector, images: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run with an uncertain band labels p_fake inside it 'uncertain': a normal 200, not a 500."""
    monkeypatch.setattr(detector, "calibration", replace(detector.calibration, uncertain_band=(0.0, 1.0)))
    r = small_client.post("/v1/predict", files=from_disk(images["a.png"]))
    assert r.status_code == 200, r.text
    assert r.json()[0]["label"] == "uncertain"
    assert small_client.get("/v1/model").json()["uncertain_band"] == [0.0, 1.0]


def test_text_file_is_415(client: TestClient) -> None:
    r = client.post("/v1/predict", files=upload(("notes.txt", b"this is not an image\n")))
    assert r.status_code == 415
    assert "not an image" in r.json()["detail"]


def test_truncated_image_is_422(client: TestClient) -> None:
    data = image_bytes((64, 64), "PNG", 4)
    r = client.post("/v1/predict", files=upload(("cut.png", data[: len(data) // 2])))
    assert r.status_code == 422
    assert "cut.png" in r.json()["detail"]


def test_empty_file_is_422(client: TestClient) -> None:
    r = client.post("/v1/predict", files=upload(("empty.png", b"")))
    assert r.status_code == 422
    assert "empty" in r.json()["detail"]


def test_no_files_is_422(client: TestClient) -> None:
    r = client.post("/v1/predict")
    assert r.status_code == 422
    assert isinstance(r.json()["detail"], str)


@pytest.mark.parametrize("size", [(30000, 30000), (9000, 8000)])  # past Pillow's own guard; past only ours
def test_decompression_bomb_is_refused(client: TestClient, size: tuple[int, int]) -> None:
    r = client.post("/v1/predict", files=upload(("bomb.png", png_header_only(*size))))
    assert r.status_code == 422
    assert "too many pixels" in r.json()["detail"]


def test_one_bad_file_does_not_sink_the_others(client: TestClient, detector: Detector, images: dict) -> None:
    r = client.post("/v1/predict", files=from_disk(images["a.png"]) + upload(("notes.txt", b"hello")))
    assert r.status_code == 200, r.text
    good, bad = r.json()
    assert_valid(good, detector.threshold)
    assert bad["filename"] == "notes.txt"
    assert bad["p_fake"] is None and bad["label"] is None
    assert bad["error"] == "not an image"


def test_body_over_the_limit_is_413(small_client: TestClient) -> None:
    r = small_client.post("/v1/predict", files=upload(("big.png", image_bytes((120, 120), "PNG", 5))))
    assert r.status_code == 413
    assert "too large" in r.json()["detail"]


def test_body_over_the_limit_without_content_length_is_413(small_client: TestClient) -> None:
    """A client that declares no size (chunked) is stopped by counting the bytes as they arrive."""
    boundary = "realfake-test-boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + image_bytes((120, 120), "PNG", 6) + f"\r\n--{boundary}--\r\n".encode()
    def chunks():
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    r = small_client.post(
        "/v1/predict", content=chunks(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert r.status_code == 413
    assert "too large" in r.json()["detail"]


def test_too_many_files_is_413(small_client: TestClient) -> None:
    tiny = image_bytes((8, 8), "PNG", 7)
    r = small_client.post("/v1/predict", files=upload(("1.png", tiny), ("2.png", tiny), ("3.png", tiny)))
    assert r.status_code == 413
    assert "too many files" in r.json()["detail"]


def test_explain(client: TestClient, detector: Detector, images: dict) -> None:
    r = client.post("/v1/predict", params={"explain": "true"}, files=from_disk(images["b.jpg"]))
    if not hasattr(detector, "explain"):
        assert r.status_code == 501
        assert isinstance(r.json()["detail"], str)
        return
    assert r.status_code == 200, r.text
    [result] = r.json()
    assert result["p_fake"] == detector.predict(images["b.jpg"]).p_fake
    png = base64.b64decode(result["heatmap_png"])
    assert png.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(png)) as img:  # the overlay, and under it a strip with the verdict and the scale
        assert min(img.size) >= 32
        assert img.text["realfake:label"] == result["label"] and float(img.text["realfake:heatmap_scale"]) > 0


def test_explain_in_the_form_still_works_but_is_not_in_the_schema(client: TestClient, images: dict) -> None:
    """`explain` sent as a form field, as some clients do, is still honoured; /openapi.json promises only the query
    parameter, so a value the schema never offered (null) is no longer refused with 422."""
    can_explain = client.get("/v1/model").json()["explain"]
    r = client.post("/v1/predict", data={"explain": "true"}, files=from_disk(images["b.jpg"]))
    assert r.status_code == (200 if can_explain else 501), r.text
    if can_explain:
        assert r.json()[0]["heatmap_png"] is not None
    for value in ("null", "false"):
        r = client.post("/v1/predict", data={"explain": value}, files=from_disk(images["b.jpg"]))
        assert r.status_code == 200, r.text
        assert r.json()[0]["heatmap_png"] is None


def test_explain_without_detector_support_is_501(detector: Detector, images: dict) -> None:
    """A detector that cannot explain (say, an older one) still predicts; only explain=true is refused."""

    class NoModel:  # a backend with logits but no model to explain, as an ONNX file is
        name, model = "stub", None
        logits = staticmethod(detector.backend.logits)

    client = TestClient(create_app(Detector(NoModel(), detector.calibration, detector.info)))
    assert client.post("/v1/predict", files=from_disk(images["a.png"])).status_code == 200
    r = client.post("/v1/predict", params={"explain": "true"}, files=from_disk(images["a.png"]))
    assert r.status_code == 501
    assert "explain" in r.json()["detail"]
    assert client.get("/v1/model").json()["explain"] is False


def test_page_and_docs_are_served(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert 'id="file-input"' in r.text
    assert "http://" not in r.text and "https://" not in r.text  # self-contained: nothing fetched from elsewhere
    assert 'id="summary"' in r.text  # filled in from /v1/model
    assert client.get("/docs").status_code == 200
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]


def test_cli_serve_starts_uvicorn_on_localhost(trained_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from realfake.cli import app

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda api, **kw: calls.append((api, kw)))
    result = CliRunner().invoke(app, ["serve", str(trained_run), "--port", "8123", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    [(api, kw)] = calls
    assert kw == {"host": "127.0.0.1", "port": 8123}
    assert TestClient(api).get("/healthz").json() == {"status": "ok"}


def test_cli_serve_bad_run_is_one_line_error(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from realfake.cli import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path)])
    assert result.exit_code == 1
    assert "is not a trained run" in result.output
    assert "Traceback" not in result.output


def test_uvicorn_runs_on_uvloop_and_httptools() -> None:
    """`realfake serve` leaves uvicorn's loop and http at "auto": with uvicorn[standard] installed they are
    uvloop and httptools, which spend less CPU per request than asyncio's loop and h11."""
    from uvicorn.loops.auto import auto_loop_factory
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    assert AutoHTTPProtocol.__name__ == "HttpToolsProtocol"
    loop = auto_loop_factory()()
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()


def test_each_worker_builds_the_app_from_the_settings_serve_hands_it(trained_run, monkeypatch):
    """`serve --workers N`: every worker process builds its app from SETTINGS_ENV, with the same limits, and
    takes its share of the cores; a missing or malformed setting is one line, not a traceback."""
    import torch

    from realfake.errors import RealfakeError
    from realfake.serve.app import SETTINGS_ENV, app_from_env

    threads = torch.get_num_threads()
    try:
        monkeypatch.setenv(SETTINGS_ENV, json.dumps({"run": str(trained_run), "workers": 64, "max_images": 3,
                                                     "device": "cpu", "token": "s3cret"}))
        with TestClient(app_from_env()) as client:
            assert client.get("/v1/model").status_code == 401  # the token travelled too
            info = client.get("/v1/model", headers={"Authorization": "Bearer s3cret"}).json()
            assert info["limits"]["max_images"] == 3
        assert torch.get_num_threads() == 1  # 64 workers share the cores: one thread each
    finally:
        torch.set_num_threads(threads)
    for bad in ("", "{not json", json.dumps({"workers": 2})):
        monkeypatch.setenv(SETTINGS_ENV, bad)
        with pytest.raises(RealfakeError, match="realfake serve --server-workers"):
            app_from_env()
