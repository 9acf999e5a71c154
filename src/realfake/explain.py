"""Where in the image the detector saw "fake": Grad-CAM heatmaps and the overlays a person looks at.

Grad-CAM only: `Detector.explain` pairs these maps with its verdicts (an `Explanation`), and `predict`
writes the overlay files.

Grad-CAM (Selvaraju et al., 2017, via captum's LayerGradCam) weighs a convolutional layer's feature maps by
the gradient of the FAKE logit and keeps the positive part. So a map always shows evidence *for FAKE*,
whatever the verdict: on an image judged REAL it shows what little pointed the other way (often nothing).

The layer matters more than usual at 32x32: a ResNet's last block sees a 1x1 map, which says nothing about
where. Each model may name its layer with a `cam_layer()` method; otherwise the last stage whose output is
still at least 4x4 is found by running the model once (`find_cam_layer`).

One scale per run. A raw Grad-CAM value means the same evidence whatever the image, so every map of a run is
divided by one number, the run's `CamScale`, and clipped to [0, 1]: an image with little evidence for FAKE
shows little, instead of being stretched until its strongest pixel is as red as a fake's. The number is the
99th percentile of the raw maps of the FAKE images among the run's test samples (`samples.npz`, written by
every evaluation), computed on first use, so runs trained before the scale existed have one too. Only where a
run has no such images does a map fall back to its own maximum, and the scale says so.
"""

from __future__ import annotations

__side__ = "predicting"  # see tests/test_layers.py

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo
from torch import nn

from realfake.contract import IMAGE_SIZE
from realfake.data.tensors import to_float
from realfake.errors import RealfakeError
from realfake.rundir import RunDir

MIN_CAM_SIDE = 4  # a map smaller than this cannot say where in a 32x32 image the evidence is
EXPLAIN_BATCH = 64  # Grad-CAM keeps activations and gradients: smaller batches than prediction
SCALE_QUANTILE = 0.99  # the raw value shown as 1.0: high enough that a typical fake's evidence is not all clipped
CAPTION_MIN_WIDTH = 224  # a narrower overlay gets side margins, so the caption's lines stay readable


@dataclass(frozen=True)
class CamScale:
    """The raw Grad-CAM value a heatmap shows as 1.0, and what that number is: a map is only readable
    against a stated scale, so it travels with every map (`Explanation.scale`) and is printed on the overlay."""

    value: float | None  # None: no shared scale, each map was divided by its own maximum
    basis: str  # where the number comes from, in words

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "basis": self.basis}

    def describe(self) -> str:
        """One sentence for a person: what full colour means on the map."""
        if self.value is None:
            return f"Grad-CAM evidence for FAKE, scaled to each image's own maximum ({self.basis})"
        return f"Grad-CAM evidence for FAKE; 1.0 = {self.value:.4g}, {self.basis}"


def find_cam_layer(model: nn.Module, image_size: int = IMAGE_SIZE) -> nn.Module:
    """The last stage of `model` whose output map is at least MIN_CAM_SIDE on each side.

    Stages are the model's own children and the children of any nn.Sequential/ModuleList in it: modules
    inside a residual block are skipped, because a shortcut goes around them and their maps are not what
    the rest of the network reads.
    """
    stages: list[nn.Module] = list(model.children())
    for m in model.modules():
        if isinstance(m, nn.Sequential | nn.ModuleList):
            stages.extend(m.children())
    seen: list[nn.Module] = []

    def hook(module: nn.Module, _inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.ndim == 4 and min(out.shape[-2:]) >= MIN_CAM_SIDE:
            seen.append(module)

    handles = [s.register_forward_hook(hook) for s in {id(s): s for s in stages}.values()]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(2, 3, image_size, image_size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not seen:
        raise RealfakeError(
            f"{type(model).__name__} has no layer with a map of at least {MIN_CAM_SIDE}x{MIN_CAM_SIDE}; "
            "give the model a cam_layer() method"
        )
    return seen[-1]  # hooks fire when a module finishes, so the last one seen is the deepest such stage


def cam_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM reads: the model's own choice (`cam_layer()` or attribute), else `find_cam_layer`."""
    declared = getattr(model, "cam_layer", None)
    if isinstance(declared, nn.Module):
        return declared
    if callable(declared):
        layer = declared()
        if isinstance(layer, nn.Module):
            return layer
    return find_cam_layer(model)


def raw_gradcam(model: nn.Module, layer: nn.Module, images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Raw Grad-CAM maps of `model`'s logit (positive = FAKE) at `layer`, for (N, 3, H, W) float images.

    Returns (N, H, W) float32 >= 0, upsampled bilinearly to the input size and not rescaled: the values are
    comparable across images of one model, which is what a shared scale needs. Works for any model that
    returns one logit per image, so tests can use tiny synthetic models.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    x = torch.as_tensor(images, dtype=torch.float32)
    if x.ndim != 4 or x.shape[1] != 3:
        raise RealfakeError(f"gradcam wants (N, 3, H, W) float images; got shape {tuple(x.shape)}")
    if len(x) == 0:
        return np.zeros((0, *x.shape[-2:]), dtype=np.float32)
    param = next(model.parameters(), None)
    if param is not None:
        x = x.to(param.device)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            cam = LayerGradCam(model, layer).attribute(x, relu_attributions=True)
            cam = LayerAttribution.interpolate(cam.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
    finally:
        model.train(was_training)
    maps = torch.nan_to_num(cam[:, 0].float(), nan=0.0, posinf=0.0, neginf=0.0).clamp_(min=0)
    return maps.cpu().numpy().astype(np.float32)


def normalise(raw: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Raw maps (N, H, W) on [0, 1]: divided by `scale` and clipped, or, with scale None, each by its own
    maximum (an all-zero map stays zero: no positive evidence)."""
    raw = np.asarray(raw, dtype=np.float32)
    if scale is not None:
        if not np.isfinite(scale) or scale <= 0:
            raise RealfakeError(f"a Grad-CAM scale must be a positive number; got {scale!r}")
        return np.clip(raw / np.float32(scale), 0.0, 1.0).astype(np.float32)
    peak = raw.reshape(len(raw), -1).max(1).reshape(-1, 1, 1) if raw.size else np.zeros((len(raw), 1, 1))
    out = np.divide(raw, peak, out=np.zeros_like(raw), where=peak > 0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def gradcam(
    model: nn.Module, layer: nn.Module, images: torch.Tensor | np.ndarray, scale: float | None = None
) -> np.ndarray:
    """Grad-CAM maps in [0, 1] for (N, 3, H, W) float images: `raw_gradcam` divided by `scale` (clipped), or
    with scale None by each map's own maximum."""
    return normalise(raw_gradcam(model, layer, images), scale)


def raw_heatmaps(
    model: nn.Module, images: np.ndarray, layer: nn.Module | None = None, batch_size: int = EXPLAIN_BATCH
) -> np.ndarray:
    """Raw Grad-CAM maps for (N, 32, 32, 3) uint8 images (turned into floats exactly as training does), in
    batches: Grad-CAM keeps every activation and gradient of a batch."""
    layer = layer if layer is not None else cam_layer(model)
    out = []
    for start in range(0, len(images), batch_size):
        chunk = torch.tensor(np.asarray(images[start : start + batch_size]))  # a copy: decoded images may be read-only
        out.append(raw_gradcam(model, layer, to_float(chunk.permute(0, 3, 1, 2))))
    return np.concatenate(out) if out else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)


def heatmaps(
    model: nn.Module, images: np.ndarray, layer: nn.Module | None = None, batch_size: int = EXPLAIN_BATCH,
    scale: float | None = None,
) -> np.ndarray:
    """Grad-CAM maps in [0, 1] for (N, 32, 32, 3) uint8 images: divided by the run's `scale` (see CamScale),
    or with scale None each by its own maximum."""
    return normalise(raw_heatmaps(model, images, layer, batch_size), scale)


def reference_scale(
    model: nn.Module, images: np.ndarray, layer: nn.Module | None = None, quantile: float = SCALE_QUANTILE
) -> float | None:
    """The `quantile` of all raw Grad-CAM values of `images` (uint8, N x 32 x 32 x 3), or their maximum where
    the quantile is 0 (evidence on under 1% of the pixels); None when they hold no positive evidence at all."""
    raw = raw_heatmaps(model, images, layer)
    if raw.size == 0:
        return None
    value = float(np.quantile(raw, quantile))
    if not value > 0:
        value = float(raw.max())
    return value if np.isfinite(value) and value > 0 else None


def run_scale(run_dir: str | Path | None, model: nn.Module, layer: nn.Module | None = None) -> CamScale:
    """The run's one Grad-CAM scale: `reference_scale` over the FAKE images of its samples.npz.

    Those images are fixed by the run's last evaluation of its test split, so every image explained with this
    run is divided by the same number, computed the same way by every process that loads the run. A run with
    no such images gets the per-image fallback, saying why.
    """
    if run_dir is None:
        return CamScale(None, "no run folder to take a shared scale from")
    run = RunDir(run_dir)
    why = f"{run / RunDir.SAMPLES} is missing; `realfake evaluate` writes it"
    if run.has(RunDir.SAMPLES):
        try:
            with np.load(run / RunDir.SAMPLES, allow_pickle=False) as npz:
                images, labels = np.asarray(npz["images"]), np.asarray(npz["labels"])
        except (OSError, ValueError, KeyError) as e:
            why = f"{run / RunDir.SAMPLES} is unreadable ({type(e).__name__}); `realfake evaluate` rewrites it"
        else:
            fakes = images[labels == 1] if len(labels) == len(images) else images[:0]
            value = reference_scale(model, fakes, layer) if fakes.ndim == 4 and fakes.dtype == np.uint8 else None
            if value is not None:
                return CamScale(value, f"the {SCALE_QUANTILE * 100:g}th percentile of this run's raw Grad-CAM "
                                       f"on its {len(fakes)} FAKE test samples ({RunDir.SAMPLES})")
            why = f"{run / RunDir.SAMPLES} holds no FAKE image with evidence for FAKE"
    return CamScale(None, why)


def overlay(
    image: np.ndarray, heatmap: np.ndarray, size: int = 256, alpha: float = 0.5, cmap: str = "jet"
) -> Image.Image:
    """The image enlarged (nearest neighbour: the real pixels, not invented detail) with the map over it."""
    from matplotlib import colormaps  # the colormap only; pyplot is never imported

    if size < 1:
        raise RealfakeError("overlay size must be a positive number of pixels")
    base = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB").resize((size, size), Image.NEAREST)
    heat8 = Image.fromarray(np.clip(np.asarray(heatmap, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8))
    heat = np.asarray(heat8.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    colored = (colormaps[cmap](heat)[..., :3] * 255.0 + 0.5).astype(np.uint8)
    return Image.blend(base, Image.fromarray(colored, "RGB"), alpha)


class Explained(Protocol):
    """What an annotated overlay needs of a `detector.Explanation` (named structurally: the detector sits above
    this module and imports it, not the other way round)."""

    prediction: Any  # a detector.Prediction: label, p_fake, threshold
    scale: CamScale | None

    def overlay(self, size: int = 256, alpha: float = 0.5, cmap: str = "jet") -> Image.Image: ...


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's own default font (no file to ship), a little larger on a large overlay."""
    try:
        return ImageFont.load_default(size=max(10, round(size / 24)))
    except TypeError:  # a Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> list[str]:
    """`text` broken at spaces into lines no wider than `width` pixels (a single long word stays whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def verdict_text(explanation: Explained) -> str:
    """The verdict as the overlay states it: label, p_fake and the threshold it was judged by."""
    p = explanation.prediction
    p_fake = "n/a" if p.p_fake is None else f"{p.p_fake:.4f}"
    return f"{p.label or 'unreadable'}: p_fake {p_fake} (threshold {p.threshold:.4g})"


def annotated_overlay(
    explanation: Explained, size: int = 256, alpha: float = 0.5, cmap: str = "jet"
) -> Image.Image:
    """The overlay with a strip beneath it: the verdict, a colour bar from 0 to 1.0 and what 1.0 is, so a
    file on its own says how strong the evidence is and for which verdict."""
    from matplotlib import colormaps

    top = explanation.overlay(size, alpha, cmap)
    scale = explanation.scale or CamScale(None, "scale not recorded")
    width = max(size, CAPTION_MIN_WIDTH)
    pad = max(4, width // 40)
    font = _font(width)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = int(probe.textbbox((0, 0), "Ag", font=font)[3]) + max(2, pad // 2)
    verdict = _wrap(probe, verdict_text(explanation), font, width - 2 * pad)
    legend = _wrap(probe, scale.describe(), font, width - 2 * pad)
    bar_h = max(6, line_h // 2)
    strip_h = pad + len(verdict) * line_h + pad // 2 + bar_h + line_h + len(legend) * line_h + pad
    canvas = Image.new("RGB", (width, size + strip_h), (20, 20, 20))
    canvas.paste(top, ((width - size) // 2, 0))
    draw = ImageDraw.Draw(canvas)
    y = size + pad
    colour = {"FAKE": (255, 110, 90), "REAL": (120, 220, 120)}.get(explanation.prediction.label or "", (240, 200, 80))
    for line in verdict:
        draw.text((pad, y), line, fill=colour, font=font)
        y += line_h
    y += pad // 2
    ramp = (colormaps[cmap](np.linspace(0.0, 1.0, width - 2 * pad))[:, :3] * 255 + 0.5).astype(np.uint8)
    canvas.paste(Image.fromarray(np.repeat(ramp[None], bar_h, axis=0), "RGB"), (pad, y))
    y += bar_h
    right = "1.0" if scale.value is None else f"1.0 = {scale.value:.3g}"
    draw.text((pad, y), "0", fill=(230, 230, 230), font=font)
    draw.text((width - pad - draw.textlength(right, font=font), y), right, fill=(230, 230, 230), font=font)
    y += line_h
    for line in legend:
        draw.text((pad, y), line, fill=(200, 200, 200), font=font)
        y += line_h
    return canvas


def annotated_png(explanation: Explained, size: int = 256, alpha: float = 0.5, cmap: str = "jet") -> bytes:
    """`annotated_overlay` as PNG bytes, with the verdict and scale also as PNG text chunks for programs."""
    p = explanation.prediction
    scale = explanation.scale or CamScale(None, "scale not recorded")
    meta = PngInfo()
    meta.add_text("realfake:label", str(p.label))
    meta.add_text("realfake:p_fake", "" if p.p_fake is None else repr(p.p_fake))
    meta.add_text("realfake:threshold", repr(p.threshold))
    meta.add_text("realfake:heatmap_scale", "" if scale.value is None else repr(scale.value))
    meta.add_text("realfake:heatmap_scale_basis", scale.basis)
    buf = io.BytesIO()
    annotated_overlay(explanation, size, alpha, cmap).save(buf, format="PNG", pnginfo=meta)
    return buf.getvalue()
