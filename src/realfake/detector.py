"""A trained detector, loaded from a run directory or an exported ONNX file, that answers "is this image fake?".

Preprocessing is `realfake.data.images` (the trainer's own), so a prediction sees exactly what training saw.
Two backends share one API: `Detector` runs the PyTorch model of a run (and can explain its verdicts);
`OnnxDetector` runs a file written by `realfake export` with ONNX Runtime, needing neither the model code
nor the run directory.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from realfake.config import CLASS_NAMES, IMAGE_SIZE, RunConfig, load_yaml, validated
from realfake.data.images import BadImage, from_any
from realfake.device import select_device
from realfake.errors import RealfakeError
from realfake.evaluate import sigmoid
from realfake.fit import predict_logits as model_logits

if TYPE_CHECKING:
    from realfake.explain import Explanation

BACKENDS = ("auto", "torch", "onnxruntime")
ONNX_FILE = "model.onnx"  # where `realfake export RUN` writes by default, and where --backend onnxruntime looks


@dataclass
class Prediction:
    """One verdict. `error` is set (and p_fake/label are None) when the input could not be read."""

    source: str
    p_fake: float | None
    label: str | None
    threshold: float
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["error"] is None:
            del d["error"]
        return d


def _name(x: Any) -> str:
    return str(x) if isinstance(x, str | Path) else type(x).__name__


def check_images(images: Any) -> np.ndarray:
    """(N, 32, 32, 3) uint8, the form `realfake.data.images` produces; anything else is a user error."""
    a = np.asarray(images)
    if a.ndim != 4 or a.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3) or a.dtype != np.uint8:
        raise RealfakeError(
            f"want (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3) uint8 images (see realfake.data.images.from_any); "
            f"got {a.dtype} of shape {a.shape}"
        )
    return a


class Detector:
    """Load once, predict many: `Detector.load("runs/x").predict("photo.jpg")`."""

    backend = "torch"

    def __init__(self, model: torch.nn.Module, threshold: float, device: torch.device, info: dict[str, Any]):
        self.model = model.to(device).eval()
        self.threshold = float(threshold)
        self.device = device
        self.info = info
        # Calibration (temperature scaling) stored by the run: p_fake = sigmoid(logit / T); 1 when absent.
        self.temperature = float(info.get("temperature") or 1.0)
        # Grad-CAM hooks a layer for the length of a call: a prediction running meanwhile in another thread
        # (a web server) would trip them, so model calls take turns.
        self._lock = threading.RLock()
        self._cam_layer: torch.nn.Module | None = None

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", backend: str = "auto") -> Detector:
        """A run directory (PyTorch) or a .onnx file (ONNX Runtime); backend="onnxruntime" on a run
        directory uses the run's exported model.onnx."""
        path = Path(path)
        if backend not in BACKENDS:
            raise RealfakeError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        is_onnx_file = path.suffix.lower() == ".onnx" and not path.is_dir()
        if backend == "torch" and is_onnx_file:
            raise RealfakeError(f"{path} is an ONNX file: use --backend onnxruntime, or pass the run directory")
        if backend == "onnxruntime" or is_onnx_file:
            if not is_onnx_file:
                if not (path / ONNX_FILE).is_file():
                    raise RealfakeError(f"{path} has no {ONNX_FILE}: run `realfake export {path}` first")
                path = path / ONNX_FILE
            return OnnxDetector.from_file(path)
        return cls._load_run(path, device)

    @classmethod
    def _load_run(cls, run_dir: Path, device: str) -> Detector:
        from safetensors.torch import load_file

        from realfake.models import build

        weights = run_dir / "model.safetensors"
        if not (run_dir / "config.yaml").is_file() or not weights.is_file():
            raise RealfakeError(f"{run_dir} is not a trained run (needs config.yaml and model.safetensors)")
        cfg = validated(RunConfig, load_yaml(run_dir / "config.yaml"))
        info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
        model = build(cfg.model, "none").model
        try:
            model.load_state_dict(load_file(str(weights)))
        except Exception as e:  # noqa: BLE001 - a corrupt or foreign file, reported in one line
            raise RealfakeError(f"cannot load {weights}: {e}".splitlines()[0][:300]) from None
        info.setdefault("model", cfg.model)
        return cls(model, info.get("threshold", cfg.threshold), select_device(device), info)

    # --- predicting -------------------------------------------------------------------------------------

    def predict_logits(self, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Raw logits (before calibration) for (N, 32, 32, 3) uint8 images."""
        images = check_images(images)
        with self._lock:
            # the run's test-time augmentation (tta: flip averages with the mirror image), as in evaluation
            return model_logits(self.model, images, self.device, batch_size, tta=self.info.get("tta") or "none")

    def predict_proba(self, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """p_fake for (N, 32, 32, 3) uint8 images already in model form."""
        return sigmoid(self.predict_logits(images, batch_size) / self.temperature)

    def label_for(self, p_fake: float, threshold: float | None = None) -> str:
        """REAL / FAKE by the threshold, or "uncertain" inside the run's uncertain_band (if it stored one)."""
        band = self.info.get("uncertain_band")
        if band and band[0] <= p_fake <= band[1]:
            return "uncertain"
        return CLASS_NAMES[int(p_fake >= (self.threshold if threshold is None else threshold))]

    def predict(self, x: Any, threshold: float | None = None) -> Prediction | list[Prediction]:
        """A path, PIL image, array or bytes gives one Prediction; a list gives a list, bad items included."""
        if isinstance(x, list | tuple):
            return self.predict_many(x, threshold)
        return self.predict_many([x], threshold)[0]

    def predict_many(self, xs: Sequence[Any], threshold: float | None = None) -> list[Prediction]:
        return [pred for pred, _ in self._decode_and_predict(xs, threshold)]

    def _decode_and_predict(
        self, xs: Sequence[Any], threshold: float | None
    ) -> list[tuple[Prediction, np.ndarray | None]]:
        """Each input's Prediction and decoded image (None, with the error in the Prediction, if unreadable)."""
        decoded: list[np.ndarray | None] = []
        errors: list[str | None] = []
        for x in xs:
            try:
                decoded.append(from_any(Path(x).read_bytes() if isinstance(x, str | Path) else x))
                errors.append(None)
            except (BadImage, OSError) as e:
                decoded.append(None)
                errors.append(str(e))
        preds = self.predictions([_name(x) for x in xs], decoded, errors, threshold)
        return list(zip(preds, decoded, strict=True))

    def predictions(
        self,
        names: Sequence[str],
        decoded: Sequence[np.ndarray | None],
        errors: Sequence[str | None],
        threshold: float | None = None,
    ) -> list[Prediction]:
        """Predictions for already-decoded images (None where decoding failed, with the reason in `errors`),
        in one model call; the batch predictor decodes in worker processes and hands its results here."""
        t = self.threshold if threshold is None else threshold
        good = [i for i, a in enumerate(decoded) if a is not None]
        p = self.predict_proba(np.stack([decoded[i] for i in good])) if good else np.zeros(0)  # type: ignore[misc]
        p_by_index = dict(zip(good, p, strict=True))
        out: list[Prediction] = []
        for i, name in enumerate(names):
            if i in p_by_index:
                pf = float(p_by_index[i])
                out.append(Prediction(name, round(pf, 6), self.label_for(pf, t), t))
            else:
                out.append(Prediction(name, None, None, t, error=errors[i] or "unreadable"))
        return out

    # --- explaining -------------------------------------------------------------------------------------

    def explain(self, x: Any, threshold: float | None = None) -> Explanation | list[Explanation]:
        """Like `predict`, plus a Grad-CAM map of the evidence for FAKE (see realfake.explain).

        The verdict is exactly `predict`'s; the map is of the model's logit for the image as given (with
        tta="flip" the verdict also averages in the mirror image, the map does not).
        """
        if isinstance(x, list | tuple):
            return self.explain_many(x, threshold)
        return self.explain_many([x], threshold)[0]

    def explain_many(self, xs: Sequence[Any], threshold: float | None = None) -> list[Explanation]:
        from realfake.explain import Explanation, cam_layer, heatmaps

        results = self._decode_and_predict(xs, threshold)
        good = [i for i, (_, img) in enumerate(results) if img is not None]
        maps: np.ndarray = np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        if good:
            with self._lock:
                if self._cam_layer is None:
                    self._cam_layer = cam_layer(self.model)
                maps = heatmaps(self.model, np.stack([results[i][1] for i in good]), self._cam_layer)  # type: ignore[misc]
        by_index = dict(zip(good, maps, strict=True))
        return [Explanation(pred, img, by_index.get(i)) for i, (pred, img) in enumerate(results)]


class OnnxDetector(Detector):
    """The same API over an exported .onnx file, run by ONNX Runtime on the CPU.

    Threshold, class names, calibration and provenance come from the file's metadata (see realfake.export).
    """

    backend = "onnxruntime"

    def __init__(self, session: Any, threshold: float, info: dict[str, Any]):
        self.session = session
        self.model = None  # type: ignore[assignment]
        self.device = torch.device("cpu")
        self.threshold = float(threshold)
        self.info = info
        self.temperature = float(info.get("temperature") or 1.0)  # already applied inside the graph
        self._lock = threading.RLock()

    @classmethod
    def from_file(cls, path: str | Path) -> OnnxDetector:
        import onnxruntime as ort

        from realfake.export import INPUT_NAME, OUTPUT_NAME, parse_metadata

        path = Path(path)
        if not path.is_file():
            raise RealfakeError(f"ONNX file not found: {path}")
        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - truncated, not ONNX, unsupported ops: one line for the user
            raise RealfakeError(f"cannot load {path} with ONNX Runtime: {e}".splitlines()[0][:300]) from None
        inputs, outputs = session.get_inputs(), [o.name for o in session.get_outputs()]
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or OUTPUT_NAME not in outputs:
            raise RealfakeError(
                f"{path} is not a realfake export (want input {INPUT_NAME!r} and output {OUTPUT_NAME!r}); "
                "make one with `realfake export RUN`"
            )
        meta = parse_metadata(session.get_modelmeta().custom_metadata_map)
        if list(meta.get("class_names", CLASS_NAMES)) != list(CLASS_NAMES):
            raise RealfakeError(f"{path} has class names {meta['class_names']}, not {list(CLASS_NAMES)}")
        info = {**meta, "backend": cls.backend, "onnx_file": str(path)}
        return cls(session, float(meta.get("threshold", 0.5)), info)

    def predict_logits(self, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        from realfake.export import LOGIT_NAME

        return self._run(LOGIT_NAME, images, batch_size)

    def predict_proba(self, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        from realfake.export import OUTPUT_NAME

        return self._run(OUTPUT_NAME, images, batch_size)

    def _run(self, output: str, images: np.ndarray, batch_size: int) -> np.ndarray:
        from realfake.export import INPUT_NAME

        images = check_images(images)
        out = [
            self.session.run([output], {INPUT_NAME: np.ascontiguousarray(images[s : s + batch_size])})[0]
            for s in range(0, len(images), batch_size)
        ]
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0, dtype=np.float64)

    def explain_many(self, xs: Sequence[Any], threshold: float | None = None) -> list[Explanation]:
        raise RealfakeError("explanations need the PyTorch run, not an ONNX file")
