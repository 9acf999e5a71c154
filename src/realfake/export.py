"""Write a trained run as one self-describing ONNX file that runs anywhere ONNX Runtime does.

This is the writer only: the file's contract (tensor names, metadata) lives in `realfake.onnxfile`, which
is all a reader needs. The graph wraps the run's model with the trainer's own scaling (`to_float`), the one
test-time augmentation (`infer.tta_logits`) and the run's calibration temperature.

`quantize="int8"` (`realfake export RUN --quantize int8`) writes the graph's int8 twin instead, by default to
RUN/model.int8.onnx: the same fp32 graph, traced as always, then quantised statically on a few hundred of the
run's training images by `realfake.quantize` (which says which layers and why); same input, outputs and
metadata, plus a `quantization` record.

Exporter: torch.onnx's dynamo exporter (torch.export), which on torch 2.14 handles the dynamic batch
dimension cleanly (opset 20) and is the maintained path; the legacy TorchScript exporter is kept only as
a fallback for a model torch.export cannot trace, since it is deprecated from torch 2.9 on.
"""

from __future__ import annotations

__side__ = "predicting"  # see tests/test_layers.py

import io
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from scipy.special import logit as scipy_logit
from torch import nn

from realfake.atomic import atomic_write_bytes, check_writable
from realfake.calibration import QUANTILE_MIN_WIDTH, Calibration
from realfake.contract import IMAGE_SIZE, check_tta
from realfake.data.tensors import to_float
from realfake.detector import Detector
from realfake.errors import RealfakeError, one_line
from realfake.infer import tta_logits
from realfake.onnxfile import INPUT_NAME, LOGIT_NAME, OOD_NAME, OUTPUT_NAME, metadata
from realfake.quantize import CALIBRATION_IMAGES, calibration_set, check_quantize, quantize_int8
from realfake.rundir import RunDir

FORMATS = ("onnx",)


def _quantile_cdf(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """`calibration.quantile_cdf` in torch ops (clamped ramps summed), so the graph's ood is the Detector's."""
    width = (q[1:] - q[:-1]).clamp_min(QUANTILE_MIN_WIDTH)
    return ((z.unsqueeze(1) - q[:-1]) / width).clamp(0.0, 1.0).sum(dim=1) / (q.numel() - 1)


class OnnxGraph(nn.Module):
    """uint8 NHWC images in; (p_fake, logit[, ood]) out. Wraps a registry model (float NCHW in [0, 1]).

    The run's prediction settings go inside too, so the file answers exactly as `Detector` does: test-time
    augmentation (tta="flip": the logit is the mean of the image's and its mirror image's), the calibration
    temperature (p_fake = sigmoid(logit / T)) and, when the run has one, the OOD score of the labelled class,
    whose class is decided on the log-odds (logit / T >= logit(threshold)): float32 p rounds to 1 far sooner.
    """

    def __init__(self, model: nn.Module, cal: Calibration) -> None:
        super().__init__()
        check_tta(cal.tta)
        self.model = model
        self.temperature = float(cal.temperature)
        self.cut = float(scipy_logit(cal.threshold))  # the threshold as calibrated log-odds, in float64
        self.tta = cal.tta
        self.with_ood = cal.ood is not None
        if cal.ood is not None:
            self.register_buffer("q_real", torch.tensor(cal.ood.real, dtype=torch.float32))
            self.register_buffer("q_fake", torch.tensor(cal.ood.fake, dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = to_float(images.permute(0, 3, 1, 2))  # the trainer's own scaling, traced into the graph
        logit = tta_logits(self.model, x, self.tta)
        p_fake = torch.sigmoid(logit / self.temperature)
        if not self.with_ood:
            return p_fake, logit
        ood = torch.where(logit / self.temperature >= self.cut, 1.0 - _quantile_cdf(logit, self.q_fake),
                          _quantile_cdf(logit, self.q_real))
        return p_fake, logit, ood


def _to_proto(graph: OnnxGraph) -> Any:
    """Trace the graph with a dynamic batch; dynamo first, the legacy exporter only if dynamo fails."""
    import onnx

    example = (torch.zeros(2, IMAGE_SIZE, IMAGE_SIZE, 3, dtype=torch.uint8),)
    outputs = [OUTPUT_NAME, LOGIT_NAME] + ([OOD_NAME] if graph.with_ood else [])
    names = {"input_names": [INPUT_NAME], "output_names": outputs}
    try:
        program = torch.onnx.export(
            graph, example, None, dynamo=True, dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}},
            optimize=True, verbose=False, **names,
        )
        return program.model_proto
    except Exception as e:  # noqa: BLE001 - any tracing failure: try the older exporter before giving up
        first = f"{e.__class__.__name__}: {one_line(e, 200)}"
        print(f"warning: dynamo ONNX export failed ({first}); using the legacy exporter", file=sys.stderr)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            graph, example, buf, dynamo=False, opset_version=17,
            dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]}, **names,
        )
    return onnx.load_from_string(buf.getvalue())


def export_onnx(
    run_dir: str | Path, out: str | Path | None = None, *, quantize: str | None = None,
    calibration_data: str | Path | None = None, calibration_images: int = CALIBRATION_IMAGES, progress: bool = False,
) -> Path:
    """Write RUN/model.onnx (or `out`), atomically; returns its path. See the module docstring for the contract.

    With quantize="int8", the int8 file (default RUN/model.int8.onnx), calibrated on `calibration_images` of the
    run's training images, or of `calibration_data` when given. Those are read before the model is traced, so
    a run whose data is gone fails at once, in one line, not after a minute of tracing.
    """
    import onnx

    check_quantize(quantize)
    run_dir = Path(run_dir)
    if run_dir.suffix.lower() == ".onnx" and run_dir.is_file():
        raise RealfakeError(f"{run_dir} is already an ONNX file; export takes a run directory")
    path = Path(out) if out is not None else run_dir / (RunDir.ONNX_INT8 if quantize else RunDir.ONNX)
    if path.is_dir():
        raise RealfakeError(f"--out {path} is a folder; give a file name such as {path / RunDir.ONNX}")
    if out is not None:  # a read-only folder or a file in the way: say so before loading and tracing the model
        check_writable(path)
    detector = Detector.from_run(run_dir, device="cpu")
    calibration = None
    if quantize:
        calibration = calibration_set(run_dir, calibration_data, calibration_images, progress=progress)
    cal = detector.calibration
    graph = OnnxGraph(detector.model.float().eval(), cal).eval()
    proto = _to_proto(graph)
    record = None
    if calibration is not None:
        proto, record = quantize_int8(proto, calibration)
    kind = f"{quantize} " if quantize else ""
    proto.doc_string = (f"realfake detector ({detector.info.get('model', '')}, {kind}ONNX): "
                        "p_fake for 32x32 RGB uint8 images")
    del proto.metadata_props[:]
    for k, v in metadata(detector.info, cal, run_dir.resolve().name, torch.__version__, record).items():
        proto.metadata_props.add(key=k, value=v)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:  # pragma: no cover - a bug in the exporter, not the user
        raise RealfakeError(f"the exported graph is not valid ONNX: {one_line(e)}") from None
    atomic_write_bytes(path, proto.SerializeToString())
    return path
