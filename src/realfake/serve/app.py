"""A FastAPI app around one trained Detector: `POST /v1/predict`, `GET /v1/model`, `GET /healthz`, `GET /`.

The app is thin: routes live on APIRouters, and each handler gets the one shared `Service` (the Detector,
the run's facts and the limits) as a FastAPI dependency. The model is loaded once. Every upload is decoded by
`realfake.data.images.read_and_decode` (the trainer's own preprocessing) outside the model lock, in a worker
thread (a decode-heavy one on the server's one low-priority thread: `decoding`), and judged by
`Detector.predictions`, so the API answers what `realfake predict` and `Detector.predict` answer; concurrent
requests share forward passes (`batching.MicroBatcher`). Limits hold from the first byte (`guards`): a body
over `max_upload_bytes` or slower than `body_timeout_s` is refused while it is being read, and a request's
images may not decode to more than `max_decode_bytes` together, and a decode-heavy upload that finds the heavy
thread's queue full (`heavy_queue` waiting) is refused at once (503 with Retry-After) instead of holding a
worker thread. With a token, /v1/* needs `Authorization: Bearer TOKEN`; /, /healthz and the API docs (/docs,
/redoc) stay open.
"""

from __future__ import annotations

__side__ = "predicting"  # see tests/test_layers.py

import base64
import io
import math
import threading
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from realfake import tuning
from realfake.contract import __version__
from realfake.data.images import BadImage, Region, header_decoded_bytes
from realfake.detector import Detector, Prediction
from realfake.errors import RealfakeError
from realfake.report.summary import Summary, run_summary, summarize
from realfake.rundir import RunDir
from realfake.serve.batching import MicroBatcher
from realfake.serve.decoding import (
    DEFAULT_HEAVY_QUEUE,
    HEAVY_DECODE_BYTES,
    MAX_HEAVY_QUEUE,
    HeavyDecoder,
    HeavyQueueFull,
)
from realfake.serve.guards import BodyGuard, TokenGuard, count_refusal

# decode_bytes' reason for data Pillow cannot identify at all: the one failure that is "not an image" (415)
# rather than "an image we cannot read" (422: truncated, corrupt, empty, too many pixels).
NOT_AN_IMAGE = "not an image"
NO_FILES = "no files: send one or more images in the multipart field 'files'"
# How an upload refused by the full heavy-decode queue is marked in its `error`: a request whose uploads all
# failed with at least one of these is answered 503 (try again later), not 415/422 (do not try again).
BUSY = "server busy: "
HEATMAP_SIZE = 128  # pixels per side of the returned overlay (the 32x32 model view, enlarged), above its strip
# One image at the pixel limit, as 8-bit RGB (64 MP x 3 bytes), fits; two such images in one request do not.
DEFAULT_DECODE_BYTES = 200_000_000


class ImageResult(BaseModel):
    """The verdict on one uploaded file; `error` is set (and p_fake/label are null) when it could not be read."""

    filename: str
    p_fake: float | None = Field(description="calibrated probability that the image is AI-generated, 0..1, "
                                 "rounded to 6 places (on images like the run's training data)")
    logit: float | None = Field(None, description="the calibrated log-odds in full (p_fake = sigmoid(logit)): "
                                "they keep apart clear-cut images whose p_fake prints as 0.0 or 1.0")
    label: Literal["REAL", "FAKE", "uncertain"] | None = Field(
        description="FAKE when p_fake >= threshold, else REAL; 'uncertain' when out of distribution (ood above the "
        "run's ood_level) or inside the run's uncertain band, if any"
    )
    reason: Literal["ood", "band"] | None = Field(
        None, description="why the label is 'uncertain': ood (atypical of the class it would get) or band (p_fake "
        "inside the run's uncertain band); null for REAL and FAKE")
    threshold: float
    ood: float | None = Field(None, description="how atypical the image is of the class it was labelled, 0..1 "
                              "(0.97: more extreme than 97% of validation images of that class); null when the run "
                              "has no OOD score")
    width: int | None = Field(None, description="the upload's width in pixels, after its EXIF rotation")
    height: int | None = Field(None, description="the upload's height in pixels, after its EXIF rotation")
    crop: list[int] | None = Field(None, min_length=4, max_length=4, description="the square of the upload that was "
                                   "judged, [left, top, right, bottom] in its pixels: the centre square, shrunk to "
                                   "32x32")
    note: str | None = Field(None, description="what shrinking that square to 32x32 lost, when it was shrunk more "
                             "than 4x: fine generator traces do not survive it")
    error: str | None = None
    heatmap_png: str | None = Field(None, description="base64 PNG of where the model looked (explain=true only)")
    judged_png: str | None = Field(None, description="base64 PNG of the 32x32 pixels the model judged (the crop, "
                                   "shrunk), exactly as it saw them")


class TrainingData(BaseModel):
    source: str | None = Field(description="file or folder name the run was trained on")
    n_images: int | None
    per_class: dict[str, int]
    split: dict[str, Any] | None = Field(description="protocol and images per class in train/val/test")


class Limits(BaseModel):
    max_upload_bytes: int
    max_images: int
    max_decode_bytes: int = Field(description="decoded pixels' bytes (width x height x bands x bytes per sample) "
                                  "allowed per request, summed over its images")
    body_timeout_s: float = Field(description="seconds a client has to send its whole request body")
    heavy_queue: int = Field(DEFAULT_HEAVY_QUEUE, description="decode-heavy uploads (over 16 MiB decoded) that may "
                             "wait for the server's one heavy-decode thread; one more is refused at once (503 "
                             "with Retry-After, or that item's error in a request with others)")


class ModelInfo(BaseModel):
    summary: str = Field(description="one plain sentence for people: the test accuracy on images like the training "
                         "data beside every figure measured on other data or a held-out generator, or that "
                         "performance there is unknown; the same sentence opens the run's report and model card")
    summary_figures: Summary = Field(description="the figures `summary` is made from (realfake.report.summary)")
    model: str
    threshold: float
    uncertain_band: list[float] | None = Field(description="p_fake range labelled 'uncertain', if the run has one")
    ood_level: float | None = Field(description="an image whose ood score is above this is labelled 'uncertain'; "
                                    "null when the run has no OOD score")
    created: str | None
    weights_used: str | None
    training_data: TrainingData | None
    test_metrics: dict[str, Any] | None = Field(description="the run's metrics.json (FAKE is the positive class)")
    explain: bool = Field(description="whether this server can return heatmaps")
    limits: Limits


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class ErrorBody(BaseModel):
    detail: str


class Service:
    """What the handlers share: the Detector, the run's facts and the limits.

    Decoding runs outside any lock: small uploads in the request's worker thread, decode-heavy ones one at a
    time on one low-priority thread (`decoding.HeavyDecoder`), so large uploads being decoded never hold up
    the others, nor take all the cores or keep their memory; only model calls take turns (through the batcher's
    one thread, or `_model_lock` when batching is off and for explanations), which keeps memory flat under
    load. The run's files are read once, here, so a damaged run folder stops the server from starting (one
    line) instead of failing requests.
    """

    def __init__(self, detector: Detector, limits: Limits, batch_wait_ms: float = 5.0, max_batch: int = 64):
        self.detector = detector
        self.limits = limits
        self._model_lock = threading.Lock()
        self.heavy = HeavyDecoder(limits.heavy_queue)
        self.batcher: MicroBatcher[Any, Prediction] | None = (
            MicroBatcher(self._judge, max_items=max_batch, wait_s=batch_wait_ms / 1000) if batch_wait_ms > 0 else None
        )
        self.training_data, self.test_metrics = self._run_facts()
        run = self.detector.run_dir
        self.summary: Summary = run_summary(run) if run is not None else summarize({}, [])

    def decode(self, data: Sequence[bytes]) -> tuple[list[np.ndarray | None], list[str | None], list[Region | None]]:
        """Each upload decoded with its region, or None with the reason, within the request's decode budget (in
        upload order).

        The budget is checked from each header before its pixels are read, so an image that would pass it is
        never decoded; the ones that fit are still judged. An upload that fits but decodes to more than
        HEAVY_DECODE_BYTES is decoded on the server's one heavy-decode thread (`decoding.HeavyDecoder`), the
        others here, in the request's worker thread; one upload at a time either way, so the budget is spent
        in upload order as before. A heavy one that finds that thread's queue full gets a BUSY error at once
        and spends no budget; the others are still decoded.
        """
        left = self.limits.max_decode_bytes

        def within_budget(upload: tuple[bytes, int]) -> bytes:
            nonlocal left
            data, need = upload
            if need > left:
                raise BadImage(f"request decode budget exceeded ({need:,} bytes decoded; {left:,} of "
                               f"{self.limits.max_decode_bytes:,} left)")
            left -= need
            return data

        decoded: list[np.ndarray | None] = []
        errors: list[str | None] = []
        regions: list[Region | None] = []
        for upload in data:
            item = (upload, header_decoded_bytes(upload))  # the header is read once: for the route and the budget
            if HEAVY_DECODE_BYTES < item[1] <= left:  # one over the budget is refused here, without queueing
                try:
                    _, d, e, r = self.heavy.run(self.detector.decode, [item], within_budget)
                except HeavyQueueFull as full:
                    d, e, r = [None], [f"{BUSY}{full}"], [None]
            else:
                _, d, e, r = self.detector.decode([item], within_budget)
            decoded += d
            errors += e
            regions += r
        return decoded, errors, regions

    def predict(self, uploads: list[tuple[str, bytes]], explain: bool) -> list[ImageResult]:
        """Blocking: decode every upload, then judge the readable ones; unreadable ones become per-item errors.

        File names are only echoed back: the bytes are decoded, never a path. With `explain`, one call gives the
        prediction and its Grad-CAM overlay; explanations bypass the batcher (Grad-CAM hooks the model).
        """
        names = [name for name, _ in uploads]
        decoded, errors, regions = self.decode([d for _, d in uploads])
        heatmaps: list[str | None] = [None] * len(uploads)
        if all(d is None for d in decoded):
            # Nothing to judge, so no model call: such a request (a flood of refused heavy uploads) waits
            # neither for the batcher nor for the model lock.
            preds = self.detector.predictions(names, decoded, errors, regions=regions)
        elif explain:
            with self._model_lock:
                explained = self.detector.explanations(names, decoded, errors, regions=regions)
            preds = [e.prediction for e in explained]
            # the overlay with its strip (verdict, p_fake, the run's Grad-CAM scale): a heatmap saved from the page
            # or the API still says what it shows
            from realfake.explain import annotated_png

            heatmaps = [
                base64.b64encode(annotated_png(e, size=HEATMAP_SIZE)).decode("ascii") if e.ok else None
                for e in explained
            ]
        else:
            items = list(zip(names, decoded, errors, regions, strict=True))
            preds = self.batcher.submit(items) if self.batcher is not None else self._judge(items)
        return [
            ImageResult(filename=name, p_fake=p.p_fake, logit=p.logit, label=p.label, reason=p.reason,
                        threshold=p.threshold, ood=p.ood, width=p.width, height=p.height, crop=p.crop, note=p.note,
                        error=p.error, heatmap_png=h, judged_png=judged_png(image))
            for name, p, h, image in zip(names, preds, heatmaps, decoded, strict=True)
        ]

    def _judge(self, items: list[tuple[str, np.ndarray | None, str | None, Region | None]]) -> list[Prediction]:
        """One model call for decoded items (name, image or None, error, region); the batcher hands it many
        requests'."""
        names, decoded, errors, regions = zip(*items, strict=True) if items else ((), (), (), ())
        with self._model_lock:
            return self.detector.predictions(names, decoded, errors, regions=regions)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.heavy.close()

    def _run_facts(self) -> tuple[TrainingData | None, dict[str, Any] | None]:
        """Training data and test metrics from the run folder (none for an ONNX file), read once."""
        run = RunDir(self.detector.run_dir) if self.detector.run_dir is not None else None
        report = run.read_json(RunDir.DATA_REPORT) if run else {}
        metrics = run.read_json(RunDir.METRICS) if run else {}
        data = report.get("data")
        training = (
            TrainingData(
                # Only the name: the server's own paths are nobody else's business.
                source=Path(data).name if data else None,
                n_images=report.get("n_images"),
                per_class={k: int(v) for k, v in (report.get("per_class") or {}).items()},
                split=report.get("split"),
            )
            if report
            else None
        )
        return training, metrics or None

    def model_info(self) -> ModelInfo:
        det = self.detector
        band = det.calibration.uncertain_band
        return ModelInfo(
            summary=self.summary.text,
            summary_figures=self.summary,
            model=str(det.info.get("model", "unknown")),
            threshold=det.threshold,
            uncertain_band=list(band) if band else None,
            ood_level=det.calibration.ood.level if det.calibration.ood else None,
            created=det.info.get("created"),
            weights_used=det.info.get("weights_used"),
            training_data=self.training_data,
            test_metrics=self.test_metrics,
            explain=det.can_explain,
            limits=self.limits,
        )


def judged_png(image: np.ndarray | None) -> str | None:
    """The 32x32 pixels the model judged, as a base64 PNG (lossless, ~1-3 KB), so that the page can show what was
    judged beside the upload, which may be far larger and of another shape; None for an unreadable upload."""
    if image is None:
        return None
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def unreadable_status(results: list[ImageResult]) -> int:
    """415 when no upload was an image at all, 422 when some were images we could not read."""
    return 415 if all(r.error == NOT_AN_IMAGE for r in results) else 422


async def get_service(request: Request) -> Service:
    """The app's one Service, as a FastAPI dependency (async: FastAPI runs a plain `def` dependency in its
    thread pool, which cost every request a thread hop for one attribute lookup)."""
    return request.app.state.service  # type: ignore[no-any-return]


ServiceDep = Annotated[Service, Depends(get_service)]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "the multipart body could not be parsed"},
    408: {"model": ErrorBody, "description": "the body did not arrive completely within the server's body timeout"},
    413: {"model": ErrorBody, "description": "body over the size limit, or too many files"},
    415: {"model": ErrorBody, "description": "no upload was an image"},
    422: {"model": ErrorBody, "description": "no files, a malformed parameter, or no upload could be read (corrupt, "
                                            "too many pixels, over the request's decode budget)"},
    501: {"model": ErrorBody, "description": "explain=true but this detector cannot explain"},
    503: {"model": ErrorBody, "description": "no upload was judged and at least one was a decode-heavy image that "
                                            "found the server's heavy-decode queue full: send it again after "
                                            "Retry-After seconds",
          "headers": {"Retry-After": {"description": "seconds to wait before sending it again",
                                      "schema": {"type": "integer", "minimum": 1}}}},
}
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong access token (send 'Authorization: Bearer TOKEN')"},
}
# Declares the scheme in /openapi.json when the app has a token; `guards.TokenGuard` does the checking, before
# any body is read (a dependency would run only after FastAPI has parsed the upload).
BEARER = HTTPBearer(auto_error=False, description="the token the server was started with (--token)")
router = APIRouter()  # open to everyone: the page and the health check
v1 = APIRouter(prefix="/v1")  # the model: behind the token, when there is one


@cache
def _page() -> str:
    return resources.files("realfake.serve").joinpath("static/index.html").read_text(encoding="utf-8")


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: the app is up and its model is loaded."""
    return Health()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    """The drag-and-drop page (self-contained: no external requests)."""
    return HTMLResponse(_page())


# The API docs, served whole by this server: FastAPI's own /docs and /redoc load Swagger UI and ReDoc from a CDN
# (and ReDoc its fonts from Google), which left them blank in a lab without internet access. The scripts come
# from the fastapi-offline package (Swagger UI 5 and ReDoc 2, MIT), mounted at DOCS_ASSETS by create_app.
DOCS_ASSETS = "/docs-assets"
DOCS_PACKAGE = ("fastapi_offline", "static")
# And the browser may fetch nothing from elsewhere for them: ReDoc's side menu loads its maker's logo from
# their CDN whatever its options say (it hides the image when that fails, as it does here). Inline script and
# styles: FastAPI's Swagger page starts Swagger UI from an inline script, and both libraries style inline;
# ReDoc's search runs in a worker made from a blob.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; worker-src 'self' blob:; frame-ancestors 'self'")


def _docs_page(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


@router.get("/docs", response_class=HTMLResponse, include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI on /openapi.json (its Authorize button takes the token for /v1/*)."""
    root = request.scope.get("root_path", "")
    return _docs_page(get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}", title=f"{request.app.title} - API docs",
        swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css", swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
    ))


@router.get("/redoc", response_class=HTMLResponse, include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc on /openapi.json, without the Google fonts FastAPI's page would load."""
    root = request.scope.get("root_path", "")
    return _docs_page(get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}", title=f"{request.app.title} - API reference",
        redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js", redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
        with_google_fonts=False,
    ))


@v1.get("/model", response_model=ModelInfo)
async def model(service: ServiceDep) -> ModelInfo:
    """The model being served: a summary sentence and its figures, name, training data, test metrics, threshold,
    creation time, weights, limits."""
    return service.model_info()


@v1.post("/predict", response_model=list[ImageResult], responses=ERRORS)
async def predict(
    request: Request,
    service: ServiceDep,
    files: Annotated[list[UploadFile], File(description="one or more images", min_length=1)],
    explain: Annotated[bool, Query(description="add a heatmap_png to each result")] = False,
) -> list[ImageResult]:
    """Judge each uploaded image (multipart field `files`); results come back in upload order.

    A file that cannot be read does not sink the others: when at least one upload is readable the answer is
    200 and each unreadable one carries an `error` (with `p_fake` and `label` null). Only when none is
    readable is the whole request refused: 415 if none was an image at all, 422 if some were images that
    could not be read (truncated, corrupt, empty, over the pixel limit or the request's decode budget). No
    files is 422; more than `max_images` files or a body over `max_upload_bytes` is 413; a body slower than
    the body timeout is 408; `explain=true` on a detector without `explain` is 501. A decode-heavy upload
    (over 16 MiB decoded) that finds the server's heavy-decode queue full is refused at once: its item's
    `error` starts with "server busy", and when nothing in the request was judged the answer is 503 with a
    Retry-After header.
    """
    explain = explain or await _explain_in_form(request)
    if explain and not service.detector.can_explain:
        raise HTTPException(501, "this detector cannot explain: explanations need a PyTorch run, not an ONNX file")
    max_images = service.limits.max_images
    if len(files) > max_images:
        raise HTTPException(413, f"too many files ({len(files)}; at most {max_images} per request)")
    uploads = [(f.filename or f"upload-{i + 1}", await f.read()) for i, f in enumerate(files)]
    results = await run_in_threadpool(service.predict, uploads, explain)
    if all(r.error is not None for r in results):
        detail = "; ".join(f"{r.filename}: {r.error}" for r in results)
        if any(r.error is not None and r.error.startswith(BUSY) for r in results):
            count_refusal(request.app.state.refusals, request.scope, 503, detail)
            raise HTTPException(503, detail, headers={"Retry-After": str(service.heavy.retry_after_s())})
        raise HTTPException(unreadable_status(results), detail)
    return results


async def _explain_in_form(request: Request) -> bool:
    """Whether the multipart form also says explain=true (the page uses the query; some clients send a field).

    Read from the form FastAPI already parsed rather than declared as a Form parameter: a declared one shows in
    /openapi.json whatever `include_in_schema` says (FastAPI builds the body's schema from every form field),
    and the value it documented there, null, was then refused with 422, a drift schemathesis found.
    """
    value = (await request.form()).get("explain")
    return isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on")


def validation_detail(errors: Sequence[Any]) -> str:
    """FastAPI's validation errors (a list) as the one-line string every error body promises in /openapi.json."""
    parts = []
    for e in errors:
        loc = [str(x) for x in e.get("loc", ())]
        if loc[-1:] == ["files"] and e.get("type") == "missing":
            return NO_FILES
        where = ".".join(x for x in loc if x != "body") or "request"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return " ".join(("invalid request: " + "; ".join(parts)).split())


async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": validation_detail(exc.errors())}, status_code=422)


def _document_file_count(app: FastAPI, max_images: int) -> None:
    """Put the per-request file limit into /openapi.json: it is a server setting, so the route cannot say it."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
            name = body["schema"]["$ref"].rsplit("/", 1)[-1]
            schema["components"]["schemas"][name]["properties"]["files"]["maxItems"] = max_images
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    app.state.service.close()  # the batcher's thread finishes its queue and stops


def check_limits(max_upload_bytes: int, max_images: int, body_timeout_s: float, max_decode_bytes: int,
                 batch_wait_ms: float, max_batch: int, heavy_queue: int) -> None:
    """The server's limits, checked in this one place (for `realfake serve` and `create_app` alike): a bad one is
    one line naming the command's option and the argument, before anything loads."""
    bad = [name for name, ok in (
        ("--max-upload-mb (max_upload_bytes) must be above 0", max_upload_bytes >= 1),
        ("--max-images must be at least 1", max_images >= 1),
        ("--body-timeout (body_timeout_s) must be a finite number above 0", 0 < body_timeout_s < math.inf),
        ("--max-decode-mb (max_decode_bytes) must be above 0", max_decode_bytes >= 1),
        ("--batch-wait-ms must be a finite number, at least 0", 0 <= batch_wait_ms < math.inf),
        ("--max-batch must be at least 1", max_batch >= 1),
        (f"--heavy-queue must be 0..{MAX_HEAVY_QUEUE} (each waiting upload holds one of the server's 40 request "
         f"threads)", 0 <= heavy_queue <= MAX_HEAVY_QUEUE),
    ) if not ok]
    if bad:
        raise RealfakeError("; ".join(bad))


def create_app(
    run_dir_or_detector: str | Path | Detector,
    *,
    max_upload_bytes: int = 10_000_000,
    max_images: int = 32,
    device: str = "auto",
    body_timeout_s: float = 10.0,
    max_decode_bytes: int = DEFAULT_DECODE_BYTES,
    token: str | None = None,
    batch_wait_ms: float = 5.0,
    max_batch: int = 64,
    precision: str | None = None,
    heavy_queue: int = DEFAULT_HEAVY_QUEUE,
) -> FastAPI:
    """The app for one detector, loaded once here from a run directory (or an exported .onnx file).

    `token` guards /v1/* (None or "": open); `batch_wait_ms` is how long a request may wait for others to share
    its forward pass (0: no batching), up to `max_batch` images; `precision` is the model's (auto | fp32 | bf16,
    None: the run's; see Detector.load); `heavy_queue` is how many decode-heavy uploads may wait for the heavy
    thread (0..MAX_HEAVY_QUEUE; see `decoding`). Raises RealfakeError when the path is not a
    trained run (or its files are damaged) or a limit is out of range, so a bad setting fails before the
    server starts.
    """
    check_limits(max_upload_bytes, max_images, body_timeout_s, max_decode_bytes, batch_wait_ms, max_batch, heavy_queue)
    if isinstance(run_dir_or_detector, Detector):
        detector = run_dir_or_detector
    else:
        detector = Detector.load(run_dir_or_detector, device=device, precision=precision)
    limits = Limits(max_upload_bytes=max_upload_bytes, max_images=max_images, max_decode_bytes=max_decode_bytes,
                    body_timeout_s=body_timeout_s, heavy_queue=heavy_queue)
    app = FastAPI(title="realfake", summary="Tell AI-generated images from real photographs.", version=__version__,
                  lifespan=_lifespan, docs_url=None, redoc_url=None)  # /docs and /redoc: the router's, offline
    app.mount(DOCS_ASSETS, StaticFiles(packages=[DOCS_PACKAGE]), name="docs-assets")
    app.state.service = Service(detector, limits, batch_wait_ms, max_batch)
    app.state.refusals = refusals = Counter[int]()
    app.add_middleware(BodyGuard, limit=max_upload_bytes, timeout_s=body_timeout_s, refusals=refusals)
    app.include_router(router)
    if token:
        app.add_middleware(TokenGuard, token=token, refusals=refusals)  # outermost: before the body is read
        app.include_router(v1, dependencies=[Depends(BEARER)], responses=UNAUTHORIZED)
    else:
        app.include_router(v1)
    app.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]
    _document_file_count(app, max_images)
    return app


# How `realfake serve --server-workers N` hands its settings to each worker process (uvicorn imports the factory by
# name in every worker, so the settings cannot travel as Python objects). Only the server's own user can read
# a process's environment.
SETTINGS_ENV = "REALFAKE_SERVE_SETTINGS"


def app_from_env() -> FastAPI:
    """The app of one worker of `realfake serve --server-workers N`: create_app with the settings in SETTINGS_ENV.

    Why workers: one process serves Python's share of each request (parsing, routing, JSON) under one GIL,
    which capped a 2-core machine near 220 single-image requests/s however the model was batched. Each worker
    loads its own Detector and batches its own requests, and takes an equal share of the cores for PyTorch
    (so N workers do not start N x cores threads). A worker is part of `realfake serve`, which opts its process
    in to realfake's process-wide tricks (realfake.tuning; REALFAKE_TUNING=0, inherited, still turns them off).
    """
    import json
    import os

    import torch

    try:
        settings = json.loads(os.environ[SETTINGS_ENV])
        run, workers, kwargs = settings.pop("run"), int(settings.pop("workers")), settings
    except (KeyError, ValueError, TypeError, AttributeError):
        raise RealfakeError(f"{SETTINGS_ENV} is missing or malformed: start workers with "
                            "`realfake serve --server-workers N`") from None
    tuning.apply()
    if tuning.enabled():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, workers)))
        tuning.record(tuning.THREADS)
    return create_app(run, **kwargs)
