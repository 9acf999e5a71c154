"""int8 static quantisation of an exported graph (`realfake export RUN --quantize int8`): the writer's side.

ONNX Runtime's own tools do the work (`quant_pre_process`, then `quantize_static` with a calibration reader);
this module chooses their settings and the calibration images, and says what it did in a `quantization`
record that `realfake.export` stores in the file's metadata. A reader needs nothing from here: the int8 file
has the same input, outputs and metadata as the fp32 one, and ONNX Runtime runs its QDQ nodes as int8 kernels.

The settings, each chosen on a `fast` run against the alternatives (the figures: docs/guide/export.md, int8):
- The convolutions, the ReLUs after them and the residual additions are quantised (QDQ format, per-channel int8
  weights, uint8 activations): so ONNX Runtime folds each ReLU into its int8 convolution (QLinearConv) and
  adds in int8 (QLinearAdd); with convolutions alone each ReLU kept a dequantise -> ReLU -> quantise chain and
  the int8 file was slower than fp32. A GELU (`fast` version 1) has no int8 kernel and stays fp32 between
  dequantise and quantise whatever the list. The head (one Gemm), the temperature, the sigmoid and the OOD
  quantiles stay fp32: quantising them saves no time and puts the logit, which the threshold and the OOD score
  read, on a coarse grid. The scaling to [0, 1] before the first convolution stays fp32 too; its output is
  quantised like any convolution input, 256 levels for 256 levels.
- `reduce_range` (7-bit weights): without it, x86 CPUs without VNNI saturate in the u8 x s8 multiply-add
  (vpmaddubsw) and accuracy collapses. A file is made once and run anywhere, so it is made safe for every x86
  CPU, VNNI or not.
- QOperator format, per-tensor weights and other calibration methods or counts measured no better; MinMax
  calibration on 512 training images is the default.
- Speed: int8 convolutions pay off on CPUs with VNNI, and on CPUs without it little or not at all.
"""

from __future__ import annotations

__side__ = "predicting"  # see tests/test_layers.py

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from realfake.contract import IMAGE_SIZE
from realfake.data.cache import decode_items, load_dataset, stratified_subset
from realfake.data.sources import open_source
from realfake.data.splits import split_from_json
from realfake.errors import RealfakeError
from realfake.onnxfile import INPUT_NAME
from realfake.rundir import RunDir

QUANTIZE_CHOICES = ("int8",)
CALIBRATION_IMAGES = 512  # "a few hundred": ranges settle by then (see the module docstring)
CALIBRATION_BATCH = 64
# ONNX Runtime keeps every activation of every calibration image until the end (its CalibMaxIntermediateOutputs,
# meant to bound that, drops the batches it holds without folding them into the ranges in 1.32), so the count is
# capped. For `fast` the peak is the tracer's, not the calibration's, up to 512 images
# (docs/performance.md#memory); a bigger model keeps proportionally more per image.
MAX_CALIBRATION_IMAGES = 2048
CALIBRATION_SEED = 0
QUANTIZED_OPS = ("Conv", "Relu", "Add")


@dataclass
class CalibrationSet:
    """The images the activation ranges are measured on, and a one-line account of where they came from."""

    images: np.ndarray  # (N, 32, 32, 3) uint8, exactly what the graph's `images` input takes
    description: str


def check_quantize(quantize: str | None) -> str | None:
    """None (fp32) or a supported scheme; anything else is a one-line error before any work is done."""
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise RealfakeError(f"--quantize must be {' or '.join(QUANTIZE_CHOICES)}; got {quantize!r}")
    return quantize


def _pick(n_available: int, n: int) -> np.ndarray:
    """A fixed random choice of min(n, available) positions, in order (the same file every time)."""
    rng = np.random.default_rng(CALIBRATION_SEED)
    return np.sort(rng.permutation(n_available)[: min(n, n_available)])


def calibration_set(
    run_dir: str | Path, data: str | Path | None = None, n: int = CALIBRATION_IMAGES, *, progress: bool = False,
) -> CalibrationSet:
    """`n` training images for calibration: the run's own training split, or images of `data` when given.

    The run's images come as `realfake evaluate RUN` gets them (its config's data, limit and seed, through the
    cache) and are picked from split.json's train indices, never validation or test. With `data` (a folder,
    zip or CSV, as --data takes), its train/ images when it has a train/ folder, else any; only the images
    picked are decoded. A run whose data is gone without `data` is a one-line error that says what to pass.
    """
    if not 1 <= n <= MAX_CALIBRATION_IMAGES:
        raise RealfakeError(f"--calibration-images must be 1 to {MAX_CALIBRATION_IMAGES}; got {n}")
    if data is not None:
        return _from_data(data, n)
    run = RunDir(run_dir)
    cfg = run.config()
    hint = "pass --calibration-data PATH (images like the training set's: a folder, zip or CSV)"
    if not run.has(RunDir.SPLIT):
        raise RealfakeError(f"{run.path} has no {RunDir.SPLIT}, so its training images are not known: {hint}")
    try:
        ds = load_dataset(cfg.data, cfg.limit, cfg.seed, cfg.workers, progress)
        train = split_from_json(run.read_json(RunDir.SPLIT), len(ds))["train"]
    except RealfakeError as e:
        raise RealfakeError(f"cannot read the run's training images for int8 calibration ({e}): {hint}") from None
    idx = train[_pick(len(train), n)]
    images = np.ascontiguousarray(ds.images[idx])
    name = "the bundled demo sample" if cfg.data is None else Path(str(cfg.data)).name
    return CalibrationSet(images, f"{len(images)} images of the run's training split ({name})")


def _from_data(data: str | Path, n: int) -> CalibrationSet:
    source = open_source(data)
    items = [it for it in source.items() if it.refused is None]
    train = [it for it in items if it.split == "train"]
    pool = train or items
    chosen = stratified_subset(pool, n, CALIBRATION_SEED)  # both classes in the data's own proportion
    images, errors = decode_items(source, chosen, progress=False)
    ok = np.array([e is None for e in errors], dtype=bool)
    if not ok.any():
        raise RealfakeError(f"no readable image among the {len(chosen)} picked from {source.display} for calibration")
    where = "its train/ folder" if train else "all of it"
    described = f"{int(ok.sum())} images of {Path(str(data)).name} ({where})"
    return CalibrationSet(np.ascontiguousarray(images[ok]), described)


class _Reader:
    """ONNX Runtime's CalibrationDataReader (by its protocol: `get_next`): the images in batches, then None."""

    def __init__(self, images: np.ndarray) -> None:
        self._batches = iter([images[s : s + CALIBRATION_BATCH] for s in range(0, len(images), CALIBRATION_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantiser logs a warning per tensor it leaves alone (the uint8 input, the fp32 head): ours by design."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def quantize_int8(fp32: Any, calibration: CalibrationSet) -> tuple[Any, dict[str, Any]]:
    """The int8 twin of an fp32 realfake graph (an onnx.ModelProto), and the record of how it was made.

    The fp32 graph goes through ONNX Runtime's pre-processing (shape inference, and the basic graph
    optimisations that fold BatchNorm into the convolutions, so each convolution gets one scale) and is then
    quantised statically on the calibration images, fed exactly as the graph takes them (uint8 NHWC).
    """
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images = calibration.images
    if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3) or images.dtype != np.uint8:
        raise RealfakeError(f"calibration images must be uint8 [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3]; got "
                            f"{images.dtype} {list(images.shape)}")
    settings: dict[str, Any] = dict(
        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8, op_types_to_quantize=list(QUANTIZED_OPS),
        calibrate_method=CalibrationMethod.MinMax,
    )
    with tempfile.TemporaryDirectory(prefix="realfake-int8-") as tmp, _quiet_quantizer():
        src, pre, out = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        onnx.save(fp32, str(src))
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), _Reader(images), **settings)
        model = onnx.load(str(out))
    record = {
        "dtype": "int8",
        "method": "static, ONNX Runtime quantize_static",
        "format": "QDQ",
        "weights": "int8 per channel, reduced range (7 bit)",
        "activations": "uint8 per tensor",
        "quantized_ops": list(QUANTIZED_OPS),
        "calibration_method": "MinMax",
        "calibration_images": int(len(images)),
        "calibration_data": calibration.description,
        "onnxruntime_version": onnxruntime.__version__,
    }
    return model, record
