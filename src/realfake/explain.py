"""Where in the image the detector saw "fake": Grad-CAM heatmaps and the overlays a person looks at.

Grad-CAM only: `Detector.explain` pairs these maps with its verdicts (an `Explanation`), and `predict`
writes the overlay files.

Grad-CAM (Selvaraju et al., 2017, via captum's LayerGradCam) weighs a convolutional layer's feature maps by
the gradient of the FAKE logit and keeps the positive part. So a map always shows evidence *for FAKE*,
whatever the verdict: on an image judged REAL it shows what little pointed the other way (often nothing).

The layer matters more than usual at 32x32: a ResNet's last block sees a 1x1 map, which says nothing about
where. Each model may name its layer with a `cam_layer()` method; otherwise the last stage whose output is
still at least 4x4 is found by running the model once (`find_cam_layer`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from realfake.contract import IMAGE_SIZE
from realfake.data.batches import to_float
from realfake.errors import RealfakeError

MIN_CAM_SIDE = 4  # a map smaller than this cannot say where in a 32x32 image the evidence is
EXPLAIN_BATCH = 64  # Grad-CAM keeps activations and gradients: smaller batches than prediction


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


def gradcam(model: nn.Module, layer: nn.Module, images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Grad-CAM maps of `model`'s logit (positive = FAKE) at `layer`, for (N, 3, H, W) float images.

    Returns (N, H, W) float32 in [0, 1]: each map is upsampled bilinearly to the input size and divided by
    its own maximum (an all-zero map means no positive evidence at that layer). Works for any model that
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
    peak = maps.flatten(1).amax(1).view(-1, 1, 1)
    maps = torch.where(peak > 0, maps / peak.clamp(min=1e-12), torch.zeros_like(maps))
    return maps.cpu().numpy().astype(np.float32)


def heatmaps(
    model: nn.Module, images: np.ndarray, layer: nn.Module | None = None, batch_size: int = EXPLAIN_BATCH
) -> np.ndarray:
    """Grad-CAM maps for (N, 32, 32, 3) uint8 images, scaled to [0, 1] exactly as training scales them."""
    layer = layer if layer is not None else cam_layer(model)
    out = []
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
        out.append(gradcam(model, layer, to_float(chunk.permute(0, 3, 1, 2))))
    return np.concatenate(out) if out else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)


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
