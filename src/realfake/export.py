"""Export a trained run as one self-describing ONNX file that runs anywhere ONNX Runtime does.

The graph takes exactly what realfake's preprocessing produces, `images`: uint8 [N, 32, 32, 3] RGB (NHWC,
the layout of `realfake.data.images.decode_bytes` and of the cache), and does the rest inside: NHWC -> NCHW,
/255, the model, the run's test-time augmentation (if any), the calibration temperature and the sigmoid.
Outputs: `p_fake` [N] float and `logit` [N] (before calibration, as `Detector.predict_logits`). A consumer
in another language only has to decode, centre-crop and Lanczos-resize to 32x32; nothing about scaling or
layout can be got wrong.

The file's metadata_props carry the threshold, class names, model, realfake version, an input description
and when it was made, so `Detector.load("model.onnx")` needs neither the run directory nor the model code.

Exporter: torch.onnx's dynamo exporter (torch.export), which on torch 2.14 handles the dynamic batch
dimension cleanly (opset 20) and is the maintained path; the legacy TorchScript exporter is kept only as
a fallback for a model torch.export cannot trace, since it is deprecated from torch 2.9 on.
"""

from __future__ import annotations

import io
import json
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from realfake import __version__
from realfake.atomic import atomic_write_bytes
from realfake.config import CLASS_NAMES, IMAGE_SIZE
from realfake.data.batches import to_float
from realfake.errors import RealfakeError
from realfake.fit import tta_logits

INPUT_NAME = "images"
OUTPUT_NAME = "p_fake"
LOGIT_NAME = "logit"
FORMATS = ("onnx",)
INPUT_DESCRIPTION = (
    f"images: uint8 [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3] RGB, NHWC, values 0-255, as realfake.data.images produces "
    f"(EXIF-rotated, centre-cropped to a square, Lanczos-downscaled to {IMAGE_SIZE}x{IMAGE_SIZE}); "
    "scaling to [0, 1] and NCHW happen inside the graph"
)
OUTPUT_DESCRIPTION = (
    "p_fake: float [N], calibrated probability that the image is AI-generated (FAKE); "
    "logit: float [N], the logit before calibration; label = FAKE when p_fake >= threshold"
)
_JSON_KEYS = ("class_names",)
_FLOAT_KEYS = ("threshold", "temperature")


class OnnxGraph(nn.Module):
    """uint8 NHWC images in; (p_fake, logit) out. Wraps a registry model, which takes float NCHW in [0, 1].

    The run's prediction settings go inside too, so the file answers exactly as `Detector` does: test-time
    augmentation (tta="flip": the logit is the mean of the image's and its mirror image's) and the
    calibration temperature (p_fake = sigmoid(logit / T)).
    """

    def __init__(self, model: nn.Module, temperature: float = 1.0, tta: str = "none") -> None:
        super().__init__()
        if tta not in ("none", "flip"):
            raise RealfakeError(f"cannot export test-time augmentation {tta!r} (known: none, flip)")
        self.model = model
        self.temperature = float(temperature)
        self.tta = tta

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_float(images.permute(0, 3, 1, 2))  # the trainer's own scaling, traced into the graph
        logit = tta_logits(self.model, x, self.tta)
        return torch.sigmoid(logit / self.temperature), logit


def _to_proto(graph: OnnxGraph) -> Any:
    """Trace the graph with a dynamic batch; dynamo first, the legacy exporter only if dynamo fails."""
    import onnx

    example = (torch.zeros(2, IMAGE_SIZE, IMAGE_SIZE, 3, dtype=torch.uint8),)
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME, LOGIT_NAME]}
    try:
        program = torch.onnx.export(
            graph, example, None, dynamo=True, dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}},
            optimize=True, verbose=False, **names,
        )
        return program.model_proto
    except Exception as e:  # noqa: BLE001 - any tracing failure: try the older exporter before giving up
        first = f"{e.__class__.__name__}: {e}".splitlines()[0][:200]
        print(f"warning: dynamo ONNX export failed ({first}); using the legacy exporter", file=sys.stderr)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            graph, example, buf, dynamo=False, opset_version=17,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}, LOGIT_NAME: {0: "batch"}}, **names,
        )
    return onnx.load_from_string(buf.getvalue())


def metadata_for(detector: Any, run_dir: Path) -> dict[str, str]:
    """What the file says about itself (ONNX metadata values are strings; lists are JSON)."""
    info = detector.info
    meta: dict[str, Any] = {
        "threshold": repr(float(detector.threshold)),
        "temperature": repr(float(getattr(detector, "temperature", 1.0))),
        "class_names": json.dumps(list(CLASS_NAMES)),
        "positive_class": CLASS_NAMES[1],
        "model": str(info.get("model", "")),
        "weights_used": str(info.get("weights_used", "")),
        "source_run": run_dir.resolve().name,
        "realfake_version": __version__,
        "torch_version": torch.__version__,
        "input": INPUT_DESCRIPTION,
        "output": OUTPUT_DESCRIPTION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for key in ("threshold_policy", "uncertain_band", "tta"):  # calibration settings, when the run has them
        if info.get(key) is not None:
            meta[key] = info[key] if isinstance(info[key], str) else json.dumps(info[key])
    return {k: str(v) for k, v in meta.items()}


def parse_metadata(props: dict[str, str]) -> dict[str, Any]:
    """metadata_props back to Python values (floats, JSON lists); unknown keys stay strings."""
    out: dict[str, Any] = dict(props)
    for key in _FLOAT_KEYS:
        if key in out:
            try:
                out[key] = float(out[key])
            except ValueError:
                raise RealfakeError(f"ONNX metadata {key}={out[key]!r} is not a number") from None
    for key in (*_JSON_KEYS, "uncertain_band"):
        if key in out:
            try:
                out[key] = json.loads(out[key])
            except json.JSONDecodeError:
                raise RealfakeError(f"ONNX metadata {key}={out[key]!r} is not JSON") from None
    return out


def export_onnx(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write RUN/model.onnx (or `out`), atomically; returns its path. See the module docstring for the contract."""
    import onnx

    from realfake.detector import ONNX_FILE, Detector

    run_dir = Path(run_dir)
    if run_dir.suffix.lower() == ".onnx" and run_dir.is_file():
        raise RealfakeError(f"{run_dir} is already an ONNX file; export takes a run directory")
    detector = Detector.load(run_dir, device="cpu", backend="torch")
    path = Path(out) if out is not None else run_dir / ONNX_FILE
    if path.is_dir():
        raise RealfakeError(f"--out {path} is a folder; give a file name such as {path / ONNX_FILE}")
    tta = detector.info.get("tta") or "none"
    graph = OnnxGraph(detector.model.float().eval(), detector.temperature, tta).eval()
    proto = _to_proto(graph)
    proto.doc_string = f"realfake detector ({detector.info.get('model', '')}): p_fake for 32x32 RGB uint8 images"
    del proto.metadata_props[:]
    for k, v in metadata_for(detector, run_dir).items():
        proto.metadata_props.add(key=k, value=v)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:  # pragma: no cover - a bug in the exporter, not the user
        raise RealfakeError(f"the exported graph is not valid ONNX: {e}".splitlines()[0][:300]) from None
    atomic_write_bytes(path, proto.SerializeToString())
    return path
