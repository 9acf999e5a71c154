"""`seed-resnet50`: the original notebook's model, faithfully: ResNet50 without its top at 32x32,
then Flatten -> Dense 256 ReLU -> BatchNorm -> Dropout 0.5 -> Dense 128 ReLU -> Dense 1.

At 32x32 the backbone's last feature map is 1x1x2048, so Flatten gives 2048 features, as in Keras.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import sys
from pathlib import Path

import torch
from torch import nn

from realfake.errors import RealfakeError, one_line
from realfake.models.registry import Built, load_state, read_state_dict, register

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SeedResNet50(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50

        r = resnet50(weights=None)
        # torchvision's ImageNet weights expect mean/std-normalised input; doing it here keeps data in [0,1].
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.backbone = nn.Sequential(
            r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3, r.layer4
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2048, 256),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(256),
            nn.Dropout(0.5),
            nn.Linear(256, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return self.head(self.backbone(x)).squeeze(1)

    def cam_layer(self) -> nn.Module:
        """Grad-CAM's layer (see realfake.explain): layer1, an 8x8 map at 32x32.

        layer4 is 1x1 and layer3 2x2 here, too coarse to say where; flattening the patches layer1's map ranks
        highest moved the logit most (docs/guide/export.md, Explanations).
        """
        return self.backbone[4]


def _backbone_keys_from_resnet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map torchvision resnet50 keys (conv1.weight, layer1.0...) onto our Sequential backbone."""
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    index = {n: str(i) for i, n in enumerate(names)}
    out = {}
    for k, v in state.items():
        head, _, rest = k.partition(".")
        if head in index:
            out[f"{index[head]}.{rest}"] = v
    return out


def load_imagenet(model: SeedResNet50) -> None:
    """torchvision's ImageNet weights: downloaded once when online, read from torch's cache after."""
    from torchvision.models import ResNet50_Weights

    state = ResNet50_Weights.IMAGENET1K_V2.get_state_dict(progress=False)
    model.backbone.load_state_dict(_backbone_keys_from_resnet(state))


def load_file(model: SeedResNet50, path: Path) -> None:
    """A weights file: a whole model of ours, or a torchvision ResNet50 (backbone only)."""
    state = read_state_dict(path)
    if any(k.startswith("backbone.") for k in state):
        load_state(model, state, path, "the seed-resnet50 model")
    else:
        load_state(model.backbone, _backbone_keys_from_resnet(state), path, "the seed-resnet50 backbone")


@register("seed-resnet50")
def build(weights: str) -> Built:
    model = SeedResNet50()
    if weights == "none":
        return Built(model, "none (random initialisation)")
    if weights in ("imagenet", "auto"):
        try:
            load_imagenet(model)
            return Built(model, "imagenet (torchvision IMAGENET1K_V2)")
        except Exception as e:  # noqa: BLE001 - offline, proxy, corrupt cache: all end the same way
            reason = f"{e.__class__.__name__}: {one_line(e, 200)}"
            if weights == "imagenet":
                raise RealfakeError(
                    f"could not get the ImageNet weights ({reason}); connect to the internet once, "
                    "or use --weights none"
                ) from None
            print(
                f"warning: ImageNet weights unavailable ({reason}); training from random initialisation",
                file=sys.stderr,
            )
            return Built(model, "none (ImageNet weights unavailable, random initialisation)")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise RealfakeError(f"--weights must be auto, imagenet, none or a weights file; {weights!r} is none")
    load_file(model, path)
    return Built(model, f"file {path}")
