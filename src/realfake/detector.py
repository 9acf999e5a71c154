"""A trained detector that answers "is this image fake?": a backend that gives logits, plus the run's
calibration that turns them into p_fake and a verdict.

    Detector = decode (realfake.data.images) -> backend.logits -> calibration -> Prediction

Preprocessing is the trainer's own, so a prediction sees exactly what training saw. The backend is a PyTorch
run (`infer.TorchBackend`, which can also explain its verdicts with Grad-CAM) or an exported ONNX file
(`onnxfile.OnnxBackend`, which needs neither the model code nor the run directory); everything after the
logits is the same code for both.
"""

from __future__ import annotations

__side__ = "predicting"  # see tests/test_layers.py

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from realfake.calibration import Calibration
from realfake.contract import IMAGE_SIZE, check_images, check_precision
from realfake.data.images import NOTE_REDUCTION, Region, decode_all, reduction_note
from realfake.errors import RealfakeError
from realfake.rundir import RunDir

if TYPE_CHECKING:
    from realfake.explain import CamScale

BACKENDS = ("auto", "torch", "onnxruntime")


class Backend(Protocol):
    """What a Detector needs from a backend: raw logits for checked uint8 images, and a model or None."""

    name: str
    model: Any  # the torch module Grad-CAM reads, or None when the backend cannot explain

    def logits(self, images: np.ndarray, batch_size: int = 1024) -> np.ndarray: ...


# The fields of a prediction row, in the order every face writes them (JSON lines, CSV, Parquet, the API). The
# optional ones are left out of a JSON row rather than written as null: `reason` where the label is not
# 'uncertain', `ood` for a run without an OOD score, `note` where the judged square was not reduced more than
# NOTE_REDUCTION x, `error` where the input was read. `width`, `height` and `crop` (the judged square, [left, top,
# right, bottom] in input pixels) say what the verdict is about: a 4000x3000 photo is judged on its centre square.
ROW_FIELDS = ("path", "p_fake", "logit", "label", "reason", "threshold", "ood", "width", "height", "crop", "note",
              "error")
OPTIONAL_FIELDS = ("reason", "ood", "note", "error")


def rounded_row(p: float, logit: float | None, ood: float | None) -> tuple[float, float | None, float | None]:
    """The one rounding rule of a row: p_fake to 6 places, ood to 4, the calibrated log-odds in full, since an
    honest p of a clear-cut image prints as 0.0 or 1.0 and only the log-odds still tell such images apart."""
    return round(p, 6), logit, None if ood is None else round(ood, 4)


@dataclass
class Prediction:
    """One verdict. `error` is set (and p_fake/label are None) when the input could not be read.

    `p_fake` is the calibrated probability that the image is FAKE; `logit` its calibrated log-odds
    (p_fake = sigmoid(logit)); the label is FAKE where p_fake reaches `threshold`. `ood` is how atypical the
    image is of the class it was labelled (0..1, see calibration.Typicality): above the run's level the label is
    'uncertain' whatever p_fake says, and `reason` says why a label is 'uncertain' ('ood' or 'band').
    `width` x `height` is the input's size after EXIF rotation, `crop` the square of it that was judged ([left,
    top, right, bottom], input pixels) and `note` what shrinking that square to the model's 32x32 lost, when it
    was shrunk more than NOTE_REDUCTION x; all None for an unreadable input (or arrays given without their region).
    """

    source: str
    p_fake: float | None
    label: str | None
    threshold: float
    error: str | None = None
    ood: float | None = None
    logit: float | None = None
    reason: str | None = None
    width: int | None = None
    height: int | None = None
    crop: list[int] | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON writes it (`source` for `path`), optional fields left out when None."""
        d = {"source": self.source, **{k: getattr(self, k) for k in ROW_FIELDS[1:]}}
        return {k: v for k, v in d.items() if not (k in OPTIONAL_FIELDS and v is None)}


@dataclass
class PredictionBatch:
    """Many inputs' verdicts as arrays, from one model call: what the batch predictor streams and writes rows
    from, so that no per-image object is made unless a caller asks for `predictions()`.

    `p_fake`, `logit` (calibrated log-odds) and `ood` are unrounded float64 (NaN where the input was unreadable;
    `ood` None when the run stores no OOD score); `errors[i]` is None for a read input and the reason for an
    unreadable one; `reasons[i]` why an 'uncertain' label is one. `regions` is (N, 6) int32, each input's
    `Region` (width, height, left, top, right, bottom; any value where the input was unreadable), or None where
    the inputs' regions are unknown (arrays given as they are): the rows' width, height and crop are then null.
    """

    sources: list[str]
    p_fake: np.ndarray
    labels: list[str | None]
    threshold: float
    errors: list[str | None]
    ood: np.ndarray | None = None
    logit: np.ndarray | None = None
    reasons: list[str | None] | None = None
    regions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def n_read(self) -> int:
        return sum(e is None for e in self.errors)

    def columns(self) -> dict[str, list[Any]]:
        """Every row field (ROW_FIELDS) as a column, rounded by `rounded_row`, None where the input was not read:
        the one place rows are made, for every format."""
        n = len(self)
        p, z = self.p_fake.tolist(), (self.logit.tolist() if self.logit is not None else [None] * n)
        ood = self.ood.tolist() if self.ood is not None else [None] * n
        reasons = self.reasons if self.reasons is not None else [None] * n
        cols: dict[str, list[Any]] = {k: [None] * n for k in ROW_FIELDS}
        cols["path"], cols["label"], cols["error"] = list(self.sources), list(self.labels), list(self.errors)
        cols["threshold"] = [self.threshold] * n
        regions = self.regions.tolist() if self.regions is not None else None
        noted = NOTE_REDUCTION * IMAGE_SIZE
        for i, err in enumerate(self.errors):
            if err is None:
                cols["p_fake"][i], cols["logit"][i], cols["ood"][i] = rounded_row(p[i], z[i], ood[i])
                cols["reason"][i] = reasons[i]
                if regions is not None:
                    w, h, *box = regions[i]
                    cols["width"][i], cols["height"][i], cols["crop"][i] = w, h, box
                    if box[2] - box[0] > noted:
                        cols["note"][i] = reduction_note(w, h, box[2] - box[0])
        return cols

    def predictions(self) -> list[Prediction]:
        """One Prediction per input, rounded as every face reports them (`rounded_row`)."""
        c = self.columns()
        return [Prediction(c["path"][i], c["p_fake"][i], c["label"][i], self.threshold, error=c["error"][i],
                           ood=c["ood"][i], logit=c["logit"][i], reason=c["reason"][i], width=c["width"][i],
                           height=c["height"][i], crop=c["crop"][i], note=c["note"][i]) for i in range(len(self))]


@dataclass
class Explanation:
    """One image's verdict and Grad-CAM map. `heatmap` and `image` are None when the input was unreadable.

    `scale` is the run's one Grad-CAM scale the map was divided by (realfake.explain.CamScale): a map means
    nothing without it, so it travels with the map.
    """

    prediction: Prediction
    image: np.ndarray | None  # (32, 32, 3) uint8, what the model saw
    heatmap: np.ndarray | None  # (32, 32) float32 in [0, 1]; evidence for FAKE, 1.0 = scale.value
    scale: CamScale | None = None

    @property
    def ok(self) -> bool:
        return self.heatmap is not None and self.image is not None

    def overlay(self, size: int = 256, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
        from realfake.explain import overlay

        if self.image is None or self.heatmap is None:
            raise RealfakeError(f"no heatmap for {self.prediction.source}: {self.prediction.error}")
        return overlay(self.image, self.heatmap, size, alpha, cmap)

    def overlay_png(self, size: int = 256, alpha: float = 0.5, cmap: str = "jet") -> bytes:
        """The overlay as PNG bytes, ready to write to a file or send over HTTP."""
        buf = io.BytesIO()
        self.overlay(size, alpha, cmap).save(buf, format="PNG")
        return buf.getvalue()


def _name(x: Any) -> str:
    return str(x) if isinstance(x, str | Path) else type(x).__name__


class Detector:
    """Load once, predict many: `Detector.load("runs/x").predict("photo.jpg")`."""

    def __init__(
        self, backend: Backend, calibration: Calibration, info: dict[str, Any] | None = None,
        run_dir: str | Path | None = None,
    ) -> None:
        self.backend = backend
        self.calibration = calibration
        self.info = dict(info or {})  # run.json (or the ONNX metadata): model, provenance, calibration
        self.run_dir = Path(run_dir) if run_dir is not None else None  # the run's files, when it has a folder
        self._cam_layer: Any = None
        self._cam_scale: Any = None  # the run's Grad-CAM scale (explain.run_scale), found on the first explanation

    # --- loading ----------------------------------------------------------------------------------------------

    @classmethod
    def load(
        cls, path: str | Path, device: str = "auto", backend: str = "auto", precision: str | None = None,
        tuning: bool | None = None,
    ) -> Detector:
        """A run directory (PyTorch) or a .onnx file (ONNX Runtime); backend="onnxruntime" on a run
        directory uses the run's exported model.onnx.

        `precision` (auto | fp32 | bf16, see realfake.device) is what the PyTorch model computes in; None means
        the run's own setting (auto unless it was trained with --precision). ONNX files always run in fp32:
        asking one for bf16 is an error rather than a silent fp32.
        `tuning=True` lets loading change the process for speed (glibc's malloc settings; realfake.tuning); None
        follows the process, which is off unless `realfake.tuning.apply()` ran (the `realfake` command). The
        verdicts are the same either way.
        """
        path = Path(path)
        if backend not in BACKENDS:
            raise RealfakeError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        if precision is not None:
            check_precision(precision)
        is_onnx_file = path.suffix.lower() == ".onnx" and not path.is_dir()
        if backend == "torch" and is_onnx_file:
            raise RealfakeError(f"{path} is an ONNX file: use --backend onnxruntime, or pass the run directory")
        if backend == "onnxruntime" or is_onnx_file:
            if precision == "bf16":
                raise RealfakeError("--precision bf16 needs the PyTorch backend: an ONNX model runs in fp32 "
                                    "(use --precision auto or fp32, or predict from the run directory)")
            if not is_onnx_file:
                if not RunDir(path).has(RunDir.ONNX):
                    raise RealfakeError(f"{path} has no {RunDir.ONNX}: run `realfake export {path}` first")
                path = path / RunDir.ONNX
            return cls.from_onnx(path)
        return cls.from_run(path, device, precision, tuning)

    @classmethod
    def from_run(
        cls, run_dir: str | Path, device: str = "auto", precision: str | None = None, tuning: bool | None = None,
    ) -> Detector:
        """The PyTorch model of a trained run, with the calibration stored in its run.json, computing in
        `precision` (None: the run's own setting); `tuning` as for `load`."""
        from realfake.device import select_device
        from realfake.infer import TorchBackend
        from realfake.models import load_weights
        from realfake.tuning import opted_in

        run = RunDir(run_dir)
        run.require(RunDir.CONFIG, RunDir.WEIGHTS)
        cfg = run.config()
        info = run.info()
        info.setdefault("model", cfg.model)
        cal = Calibration.from_info(info, cfg.threshold)
        model = load_weights(cfg.model, run / RunDir.WEIGHTS)
        with opted_in(tuning):
            backend = TorchBackend(model, select_device(device), cal.tta, precision or cfg.precision)
        return cls(backend, cal, info, run.path)

    @classmethod
    def from_onnx(cls, path: str | Path) -> Detector:
        """An exported file: backend, calibration and facts all come from the file itself."""
        from realfake.onnxfile import load_onnx

        backend, meta = load_onnx(path)
        return cls(backend, Calibration.from_info(meta), meta)

    # --- what it is ----------------------------------------------------------------------------------------

    @property
    def threshold(self) -> float:
        return self.calibration.threshold

    @property
    def temperature(self) -> float:
        return self.calibration.temperature

    @property
    def model(self) -> Any:
        """The PyTorch model (None for an ONNX file)."""
        return self.backend.model

    @property
    def device(self) -> Any:
        return getattr(self.backend, "device", "cpu")

    @property
    def precision(self) -> str:
        """What the model computes in: fp32, bf16 or fp16 (an ONNX file: fp32)."""
        p = getattr(self.backend, "precision", None)
        return p.name if p is not None else "fp32"

    @property
    def can_explain(self) -> bool:
        """Grad-CAM needs a PyTorch model: a run can explain, an ONNX file cannot."""
        return self.backend.model is not None

    # --- predicting -------------------------------------------------------------------------------------

    def predict_logits(self, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Raw logits (before calibration, after the run's test-time augmentation) for (N, 32, 32, 3) uint8."""
        return self.backend.logits(check_images(images), batch_size)

    def predict_proba(self, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Calibrated p_fake for (N, 32, 32, 3) uint8 images already in model form."""
        return self.calibration.p_fake(self.predict_logits(images, batch_size))

    def label_for(self, p_fake: float, threshold: float | None = None, ood: float | None = None) -> str:
        """REAL / FAKE by the threshold, or "uncertain" inside the run's uncertain_band or out of distribution."""
        return self.calibration.with_threshold(threshold).label(p_fake, ood)

    def predict(self, x: Any, threshold: float | None = None) -> Prediction | list[Prediction]:
        """A path, PIL image, array or bytes gives one Prediction; a list gives a list, bad items included."""
        if isinstance(x, list | tuple):
            return self.predict_many(x, threshold)
        return self.predict_many([x], threshold)[0]

    def predict_many(self, xs: Sequence[Any], threshold: float | None = None) -> list[Prediction]:
        names, decoded, errors, regions = self.decode(xs)
        return self.predictions(names, decoded, errors, threshold, regions)

    def decode(
        self, xs: Sequence[Any], read: Callable[[Any], bytes] | None = None
    ) -> tuple[list[str], list[np.ndarray | None], list[str | None], list[Region | None]]:
        """Each input decoded with the region it shows, or None with the reason: one bad item never sinks the
        others. `read` (see `read_and_decode`) lets a caller check each input before it is decoded, as the
        server's budget does."""
        decoded, errors, regions = decode_all(xs, read)
        return [_name(x) for x in xs], decoded, errors, regions

    def predictions(
        self,
        names: Sequence[str],
        decoded: Sequence[np.ndarray | None],
        errors: Sequence[str | None],
        threshold: float | None = None,
        regions: Sequence[Region | None] | None = None,
    ) -> list[Prediction]:
        """Predictions for already-decoded images (None where decoding failed, with the reason in `errors`),
        in one model call; `regions` (from `decode`) say what each image is of its input, for the rows."""
        good = [a for a in decoded if a is not None]
        images = np.stack(good) if good else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        why = [None if a is not None else (e or "unreadable") for a, e in zip(decoded, errors, strict=True)]
        seen = None if regions is None else [r for a, r in zip(decoded, regions, strict=True) if a is not None]
        return self.predict_batch(list(names), images, why, threshold, seen).predictions()

    def predict_batch(
        self, names: list[str], images: np.ndarray, errors: list[str | None], threshold: float | None = None,
        regions: Sequence[Sequence[int]] | np.ndarray | None = None,
    ) -> PredictionBatch:
        """Verdicts, as arrays, for `names` whose readable ones (errors[i] None) are `images` in order, stacked:
        one model call, then calibration, OOD score and labels in whole-array operations. The batch predictor
        decodes in worker processes, which hand back exactly this stacked form (with the images' regions)."""
        logits = self.predict_logits(images) if len(images) else np.zeros(0)
        return self.verdicts(names, logits, errors, threshold, regions)

    def verdicts(
        self, names: list[str], logits: np.ndarray, errors: list[str | None], threshold: float | None = None,
        regions: Sequence[Sequence[int]] | np.ndarray | None = None,
    ) -> PredictionBatch:
        """`predict_batch` after the model: raw logits of the readable inputs (errors[i] None), in order, and
        their regions (`Region`s or an (n_read, 6) array; None: unknown)."""
        cal = self.calibration.with_threshold(threshold)
        z = np.asarray(logits, dtype=np.float64).ravel()
        read = np.array([e is None for e in errors], dtype=bool)
        if int(read.sum()) != len(z):
            raise ValueError(f"{len(z)} logits for {int(read.sum())} readable inputs")
        regions_all = None
        if regions is not None:
            seen = np.asarray(regions, dtype=np.int32).reshape(-1, len(Region._fields))
            if len(seen) != len(z):
                raise ValueError(f"{len(seen)} regions for {len(z)} readable inputs")
            regions_all = np.full((len(names), len(Region._fields)), -1, dtype=np.int32)
            regions_all[read] = seen
        p, log_odds = np.full(len(names), np.nan), np.full(len(names), np.nan)
        p[read], log_odds[read] = cal.p_fake(z), cal.log_odds(z)
        labels: list[str | None] = [None] * len(names)
        reasons: list[str | None] = [None] * len(names)
        ood = cal.ood_scores(z)
        ood_all = None if ood is None else np.full(len(names), np.nan)
        if ood_all is not None:
            ood_all[read] = ood
        rows = np.flatnonzero(read).tolist()
        for i, label, why in zip(rows, cal.labels(p[read], ood), cal.reasons(p[read], ood), strict=True):
            labels[i], reasons[i] = label, why
        return PredictionBatch(names, p, labels, cal.threshold, list(errors), ood_all, log_odds, reasons, regions_all)

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
        names, decoded, errors, regions = self.decode(xs)
        return self.explanations(names, decoded, errors, threshold, regions)

    def explanations(
        self,
        names: Sequence[str],
        decoded: Sequence[np.ndarray | None],
        errors: Sequence[str | None],
        threshold: float | None = None,
        regions: Sequence[Region | None] | None = None,
    ) -> list[Explanation]:
        """`predictions` plus a Grad-CAM map for each decoded image (the batch explainer hands its work here)."""
        if not self.can_explain:
            raise RealfakeError("explanations need the PyTorch run, not an ONNX file")
        from realfake.explain import cam_layer, heatmaps, run_scale

        preds = self.predictions(names, decoded, errors, threshold, regions)
        good = [i for i, img in enumerate(decoded) if img is not None]
        maps: np.ndarray = np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        if good:
            with self.backend.lock:  # type: ignore[attr-defined]  # a TorchBackend: Grad-CAM hooks its model
                if self._cam_layer is None:
                    self._cam_layer = cam_layer(self.model)
                if self._cam_scale is None:  # one scale for every map of the run
                    self._cam_scale = run_scale(self.run_dir, self.model, self._cam_layer)
                maps = heatmaps(self.model, np.stack([decoded[i] for i in good]), self._cam_layer,  # type: ignore[misc]
                                scale=self._cam_scale.value)
        by_index = dict(zip(good, maps, strict=True))
        return [Explanation(p, img, by_index.get(i), self._cam_scale if i in by_index else None)
                for i, (p, img) in enumerate(zip(preds, decoded, strict=True))]
