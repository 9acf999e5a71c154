import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from realfake.errors import RealfakeError
from realfake.models import available, build
from realfake.models.seed_resnet50 import SeedResNet50


def test_registry_lists_seed_model_and_refuses_unknown():
    assert "seed-resnet50" in available()
    with pytest.raises(RealfakeError, match="unknown model 'nope'"):
        build("nope")


def test_seed_head_is_the_notebooks_head():
    m = build("seed-resnet50", "none").model
    kinds = [type(layer) for layer in m.head]
    assert kinds == [nn.Flatten, nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Dropout, nn.Linear, nn.ReLU, nn.Linear]
    linears = [layer for layer in m.head if isinstance(layer, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(2048, 256), (256, 128), (128, 1)]
    assert m.head[4].p == 0.5 and m.head[3].num_features == 256


def test_backbone_gives_1x1x2048_at_32px_and_one_logit_per_image():
    m = build("seed-resnet50", "none").model.eval()
    x = torch.rand(3, 3, 32, 32)
    assert m.backbone(x).shape == (3, 2048, 1, 1)
    assert m(x).shape == (3,)


def test_normalisation_is_inside_the_model():
    m = build("seed-resnet50", "none").model.eval()
    # a [0,1] image equal to the ImageNet mean becomes zeros before the first conv
    mean = m.mean.expand(1, 3, 32, 32)
    seen = {}

    def grab(mod, inp, out):
        seen["x"] = inp[0]

    m.backbone[0].register_forward_hook(grab)
    m(mean)
    assert torch.allclose(seen["x"], torch.zeros_like(seen["x"]), atol=1e-6)


def test_weights_file_whole_model_and_torchvision_backbone(tmp_path):
    src = SeedResNet50()
    whole = tmp_path / "whole.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(whole))
    m = build("seed-resnet50", str(whole)).model
    assert torch.equal(m.head[1].weight, src.head[1].weight)

    from torchvision.models import resnet50

    tv = resnet50(weights=None)
    tv_file = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), tv_file)
    m2 = build("seed-resnet50", str(tv_file)).model
    assert torch.equal(m2.backbone[0].weight, tv.conv1.weight)
    assert torch.equal(m2.backbone[7][2].conv3.weight, tv.layer4[2].conv3.weight)


def test_bad_weights_spec_is_a_clear_error(tmp_path):
    with pytest.raises(RealfakeError, match="--weights must be"):
        build("seed-resnet50", str(tmp_path / "missing.safetensors"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a tensor file")
    with pytest.raises(RealfakeError, match="cannot read weights file"):
        build("seed-resnet50", str(junk))
    wrong = tmp_path / "wrong.safetensors"
    save_file({"backbone.0.weight": torch.zeros(1)}, str(wrong))
    with pytest.raises(RealfakeError, match="does not fit"):
        build("seed-resnet50", str(wrong))
