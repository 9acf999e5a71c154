"""The ONNX file format realfake writes and reads: tensor names, metadata, and the backend that runs a file.

A realfake ONNX file takes exactly what realfake's preprocessing produces, `images`: uint8 [N, 32, 32, 3]
RGB (NHWC, the layout of `realfake.data.images.decode_bytes` and of the cache), and does the rest inside:
NHWC -> NCHW, /255, the model, the run's test-time augmentation (if any), the calibration temperature and
the sigmoid. Outputs: `p_fake` [N] float, `logit` [N] (before calibration) and, for a run with an OOD score,
`ood` [N] (see `calibration.Typicality`; the metadata's `ood` holds its level and quantiles). A consumer in another
language only has to decode, centre-crop and Lanczos-resize to 32x32; nothing about scaling or layout can
be got wrong.

The file's metadata_props carry the threshold, class names, calibration, model, realfake version, an input
description and when it was made, so `Detector.load("model.onnx")` needs neither the run directory nor the
model code. An int8 file (`realfake export RUN --quantize int8`) is the same contract with int8 convolutions
inside; its metadata add `quantization` (JSON: dtype "int8", the scheme, and what it was calibrated on), and
a reader needs nothing else to run it.
The writer is `realfake.export`; this module is all a reader needs (no torch, no trainer).
"""

from __future__ import annotations

__side__ = "predicting"  # see tests/test_layers.py

import contextlib
import json
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from realfake.calibration import Calibration, check_stored
from realfake.contract import CLASS_NAMES, IMAGE_SIZE, __version__
from realfake.errors import RealfakeError, one_line

INPUT_NAME = "images"
OUTPUT_NAME = "p_fake"
LOGIT_NAME = "logit"
OOD_NAME = "ood"  # only in files of runs with an OOD score
INPUT_DESCRIPTION = (
    f"images: uint8 [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3] RGB, NHWC, values 0-255, as realfake.data.images produces "
    f"(EXIF-rotated, centre-cropped to a square, Lanczos-downscaled to {IMAGE_SIZE}x{IMAGE_SIZE}); "
    "scaling to [0, 1] and NCHW happen inside the graph"
)
OUTPUT_DESCRIPTION = (
    "p_fake: float [N], calibrated probability that the image is AI-generated (FAKE); "
    "logit: float [N], the logit before calibration; label = FAKE when p_fake >= threshold; "
    "ood: float [N] (when the run has an OOD score), how atypical the image is of the class it is labelled, "
    "0..1: above the metadata's ood level the label is 'uncertain'"
)
QUANTIZATION_KEY = "quantization"  # only in quantised files: {"dtype": "int8", ...} (see realfake.quantize)
_JSON_KEYS = ("class_names", "uncertain_band", "ood", QUANTIZATION_KEY)
_FLOAT_KEYS = ("threshold", "temperature", "logit_offset")


def metadata(
    info: dict[str, Any], cal: Calibration, source_run: str, torch_version: str,
    quantization: dict[str, Any] | None = None,
) -> dict[str, str]:
    """What the file says about itself (ONNX metadata values are strings; lists and records are JSON)."""
    meta: dict[str, Any] = {
        "threshold": repr(float(cal.threshold)),
        "temperature": repr(float(cal.temperature)),
        "class_names": json.dumps(list(CLASS_NAMES)),
        "positive_class": CLASS_NAMES[1],
        "model": str(info.get("model", "")),
        "weights_used": str(info.get("weights_used", "")),
        "source_run": source_run,
        "realfake_version": __version__,
        "torch_version": torch_version,
        "input": INPUT_DESCRIPTION,
        "output": OUTPUT_DESCRIPTION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for key in ("threshold_policy", "uncertain_band", "tta", "ood"):  # calibration settings, when the run has them
        if info.get(key) is not None:
            meta[key] = info[key] if isinstance(info[key], str) else json.dumps(info[key])
    if quantization is not None:
        meta[QUANTIZATION_KEY] = json.dumps(quantization)
    return {k: str(v) for k, v in meta.items()}


def parse_metadata(props: dict[str, str], source: str = "the ONNX file") -> dict[str, Any]:
    """metadata_props back to Python values (floats, JSON lists), checked by the schema a run.json's settings go
    through (`calibration.check_stored`): a bad value is one line naming `source` and the key. Unknown keys stay
    strings."""
    out: dict[str, Any] = dict(props)
    for keys, parse, fails in ((_FLOAT_KEYS, float, ValueError), (_JSON_KEYS, json.loads, json.JSONDecodeError)):
        for key in keys:
            if key in out:
                # one that does not parse stays a string, which check_stored reports with the rule it breaks
                with contextlib.suppress(fails):
                    out[key] = parse(out[key])
    check_stored(out, source, "export it again with `realfake export RUN`", key="metadata ")
    return out


class OnnxBackend:
    """An exported file run by ONNX Runtime on the CPU: `logits(images)`, like `infer.TorchBackend`.

    It reads the file's `logit` output, so the Detector applies the same calibration to it as to a PyTorch
    run's logits; the file's own `p_fake` output is the same figure, for consumers outside realfake.
    It has no model to explain (`model` is None).
    """

    name = "onnxruntime"
    model = None

    def __init__(self, session: Any, path: str | Path = "the ONNX file") -> None:
        self.session = session
        self.path = path
        self.lock = threading.RLock()

    def logits(self, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """The file's `logit` output, batch by batch; a graph that fails at run time is one RealfakeError.

        A file that loads can still fail here (a node that cannot take this input: a bad Reshape, an op the
        build lacks a kernel for); ONNX Runtime's errors share no public base class, so they are told apart
        by their module, and anything else (a bug here) still surfaces as itself.
        """
        out = []
        for s in range(0, len(images), batch_size):
            batch = np.ascontiguousarray(images[s : s + batch_size])
            try:
                out.append(self.session.run([LOGIT_NAME], {INPUT_NAME: batch})[0])
            except Exception as e:
                if not type(e).__module__.startswith("onnxruntime"):
                    raise
                raise RealfakeError(
                    f"ONNX Runtime could not run {self.path} on {len(batch)} image(s) "
                    f"({type(e).__name__}: {one_line(e)}): the file is damaged or not made by realfake; "
                    f"export it again with `realfake export RUN`"
                ) from None
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0, dtype=np.float64)


def load_onnx(path: str | Path) -> tuple[OnnxBackend, dict[str, Any]]:
    """Open a realfake ONNX file: its backend and its metadata (with `backend` and `onnx_file` added)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise RealfakeError(f"ONNX file not found: {path}")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - truncated, not ONNX, unsupported ops: one line for the user
        raise RealfakeError(f"cannot load {path} with ONNX Runtime: {one_line(e)}") from None
    inputs, outputs = session.get_inputs(), [o.name for o in session.get_outputs()]
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or OUTPUT_NAME not in outputs or LOGIT_NAME not in outputs:
        raise RealfakeError(
            f"{path} is not a realfake export (want input {INPUT_NAME!r} and outputs {OUTPUT_NAME!r}, "
            f"{LOGIT_NAME!r}); make one with `realfake export RUN`"
        )
    meta = parse_metadata(session.get_modelmeta().custom_metadata_map, str(path))
    backend = OnnxBackend(session, path)
    return backend, {**meta, "backend": backend.name, "onnx_file": str(path)}
