"""models.fused: prediction's copy folds BatchNorm into its convolutions and computes GELU inside them, and gives
the model's answers (to float rounding); the original model, which training and Grad-CAM use, is untouched."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import realfake._kernels.onednn as onednn
import realfake.models.fused as fused
from realfake.infer import TorchBackend, predict_logits
from realfake.models import build

CPU = torch.device("cpu")


def _with_running_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """A model whose BatchNorm layers hold non-trivial statistics and affine parameters (a fresh one holds 0/1,
    which folding would reproduce even if it ignored them)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(0.2 * torch.randn(n, generator=g))
    return model.eval()


def _images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("version", [1, 2])
def test_fast_folds_every_batchnorm_and_fuses_every_activation_with_the_same_logits(version: int) -> None:
    """Both versions of `fast`: GELU (1) and ReLU (2), each computed inside its convolution."""
    from realfake.models.fast import FastNet

    act = {1: nn.GELU, 2: nn.ReLU}[version]
    model = _with_running_stats(FastNet(version=version)).train()
    images = _images(16)
    copy, summary = fused.for_prediction(model, None)
    assert model.training and not copy.training
    model.eval()
    assert summary["batchnorm_folded"] == _count(model, nn.BatchNorm2d) == 6
    assert _count(copy, nn.BatchNorm2d) == 0
    if fused.post_ops_work(torch.float32):
        assert summary["activations_fused"] == _count(copy, fused.ConvAct) == 6 and _count(copy, act) == 0
    want = predict_logits(model, images, CPU, tta="flip", precision="fp32")
    got = predict_logits(copy, images, CPU, tta="flip", precision="fp32")
    assert np.abs(want).max() > 1e-3  # a model whose logits are all ~0 would pass anything
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # the original is as it was: BatchNorm and activation layers, fp32 (and its training flag, checked above)
    assert _count(model, nn.BatchNorm2d) == 6 and _count(model, act) == 6 and _count(model, fused.ConvAct) == 0
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bf16_copy_holds_bf16_weights_and_stays_near_the_autocast_model() -> None:
    model = _with_running_stats(build("fast", "none").model)
    images = _images(32)
    copy, _ = fused.for_prediction(model, torch.bfloat16)
    head = {id(m) for m in copy.head.modules()}
    weights = [m.weight for m in copy.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear, fused.ConvAct)) and id(m) not in head]
    assert weights and all(w.dtype == torch.bfloat16 for w in weights)
    # ...but the head's: a bf16 logit has 8 significant bits, and distinct images shared one score
    assert isinstance(copy.head, fused.Fp32Head) and all(p.dtype == torch.float32 for p in copy.head.parameters())
    want = predict_logits(model, images, CPU, precision="bf16")
    got = predict_logits(copy, images, CPU, precision="bf16")
    fp32 = predict_logits(model, images, CPU, precision="fp32")
    # bf16 keeps 8 bits of mantissa: the fused copy must be as close to fp32 as autocast's own bf16 is, give or take
    assert np.abs(got - fp32).max() <= 2 * np.abs(want - fp32).max() + 1e-3
    # ...and the verdict of an image does not depend on the batch it came in (the fp32 head's sums may be ordered
    # otherwise for one image than for eight: float noise in the last bits, far below a printed p_fake)
    one_by_one = np.concatenate([predict_logits(copy, images[i : i + 1], CPU, precision="bf16") for i in range(8)])
    np.testing.assert_allclose(one_by_one, got[:8], rtol=1e-6, atol=1e-7)


def test_seed_resnet50_folds_its_batchnorms_and_keeps_its_relus() -> None:
    """ReLU is not worth oneDNN's per-call cost (see POST_OPS): only the folding applies to ResNet50."""
    model = _with_running_stats(build("seed-resnet50", "none").model)
    images = _images(4)
    copy, summary = fused.for_prediction(model, None)
    assert summary == {"batchnorm_folded": 53, "activations_fused": 0, "weights_packed": 0}
    assert _count(copy, nn.BatchNorm2d) == 0 and _count(copy, nn.BatchNorm1d) == 1  # the head's: after a ReLU
    want = predict_logits(model, images, CPU, precision="fp32")
    np.testing.assert_allclose(predict_logits(copy, images, CPU, precision="fp32"), want, rtol=1e-4, atol=1e-4)


def test_without_the_onednn_kernel_only_batchnorm_is_folded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused, "post_ops_work", lambda dtype: False)
    model = _with_running_stats(build("fast", "none").model)
    copy, summary = fused.for_prediction(model, None)
    assert summary == {"batchnorm_folded": 6, "activations_fused": 0, "weights_packed": 0}
    assert _count(copy, nn.ReLU) == 6
    images = _images(8)
    np.testing.assert_allclose(predict_logits(copy, images, CPU, precision="fp32"),
                               predict_logits(model, images, CPU, precision="fp32"), rtol=1e-4, atol=1e-5)


class _Branchy(nn.Module):
    """Control flow on a value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return y.mean(dim=(1, 2, 3)) if y.sum() > 0 else -y.mean(dim=(1, 2, 3))


def test_a_model_fx_cannot_trace_is_predicted_unfused() -> None:
    model = _with_running_stats(_Branchy())
    copy, summary = fused.for_prediction(model, None)
    assert summary == {"batchnorm_folded": 0, "activations_fused": 0, "weights_packed": 0} and copy is not model
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(copy(x), model(x))


def test_torch_backend_predicts_through_the_fused_copy_and_keeps_the_original_for_grad_cam() -> None:
    model = _with_running_stats(build("fast", "none").model)
    backend = TorchBackend(model, CPU, "flip", "fp32")
    assert backend.model is model and backend._predicting is not model
    assert backend.fusion["batchnorm_folded"] == 6
    images = _images(8)
    np.testing.assert_allclose(backend.logits(images), predict_logits(model, images, CPU, tta="flip",
                                                                      precision="fp32"), rtol=1e-4, atol=1e-5)


def test_building_the_copy_leaves_the_callers_random_state_alone() -> None:
    """The kernel check draws its test input; a caller that seeded torch and then loaded a Detector must draw what
    it would have drawn without loading it."""
    model = build("fast", "none").model
    onednn._post_ops_probe.cache_clear()
    onednn._packing_probe.cache_clear()
    torch.manual_seed(123)
    want = torch.rand(4)
    torch.manual_seed(123)
    fused.for_prediction(model, None)
    fused.for_prediction(model, torch.bfloat16)
    assert torch.equal(torch.rand(4), want)


def test_fast_dense_gelu_is_gelu_and_fuses_like_it():
    """fast's DenseGELU (GELU on the channels_last map viewed as NHWC, in training) computes nn.GELU's values and
    gradients, and prediction's copy still fuses every one of its six convolution + GELU pairs."""
    from realfake.models.fast import DenseGELU, FastNet

    x = torch.randn(4, 8, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    ref = x.detach().clone().requires_grad_()
    dense, plain = DenseGELU().train(), nn.GELU()
    y = dense(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, plain(ref))
    y.sum().backward()
    plain(ref).sum().backward()
    torch.testing.assert_close(x.grad, ref.grad)
    fused_here = 6 if fused.post_ops_work(torch.float32) else 0  # none with REALFAKE_KERNELS=0
    assert fused.for_prediction(FastNet(version=1), None)[1] == {"batchnorm_folded": 6, "activations_fused": fused_here,
                                                         "weights_packed": 0}


@pytest.mark.parametrize("name", ["fast", "seed-resnet50"])
def test_packed_weights_give_the_unpacked_logits_at_every_batch_size(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16 prediction's convolutions with their weights packed once (where `packing_pays`) answer exactly as the
    unpacked copy does, one image at a time or many; forced on here, so the packed path runs on any CPU."""
    try:  # oneDNN's bf16 convolution needs AVX-512 or AMX; elsewhere PyTorch refuses it, and nothing is packed
        fused.ConvAct(nn.Conv2d(2, 2, 3, padding=1), "none", None, torch.bfloat16, pack=True)(
            torch.zeros(1, 2, 4, 4, dtype=torch.bfloat16))
    except RuntimeError as e:
        pytest.skip(f"oneDNN's bf16 convolution does not run on this CPU ({e})")
    model = _with_running_stats(build(name, "none").model)
    images = _images(12)
    pays = fused.packing_pays(torch.bfloat16)
    monkeypatch.setattr(fused, "packing_pays", lambda dtype: False)
    plain, summary = fused.for_prediction(model, torch.bfloat16)
    assert summary["weights_packed"] == 0
    monkeypatch.setattr(fused, "packing_pays", lambda dtype: True)
    packed, summary = fused.for_prediction(model, torch.bfloat16)
    convs = _count(model, nn.Conv2d)
    assert summary["weights_packed"] == convs == _count(packed, fused.ConvAct) and _count(packed, nn.Conv2d) == 0
    assert all(m.pack for m in packed.modules() if isinstance(m, fused.ConvAct))
    want = predict_logits(plain, images, CPU, precision="bf16")
    assert np.abs(want).max() > 1e-3
    fp32 = predict_logits(model, images, CPU, precision="fp32")
    for batch in (1, 5, 12):
        got = np.concatenate([predict_logits(packed, images[i : i + batch], CPU, precision="bf16")
                              for i in range(0, len(images), batch)])
        if pays:  # where realfake packs (bf16 on an AMX CPU), bit for bit
            np.testing.assert_array_equal(got, want)
        else:  # elsewhere oneDNN may pick another kernel for the packed layout: as near fp32 as bf16 is, give or take
            assert np.abs(got - fp32).max() <= 2 * np.abs(want - fp32).max() + 1e-3
    assert {k for m in packed.modules() if isinstance(m, fused.ConvAct) for k in m._packed}  # packed, at first use
    again = copy.deepcopy(packed)  # the packed weights stay behind (they have no storage); the copy packs its own
    np.testing.assert_array_equal(predict_logits(again, images, CPU, precision="bf16"),
                                  predict_logits(packed, images, CPU, precision="bf16"))


def test_weights_are_packed_only_in_bf16_on_a_cpu_with_amx_where_the_kernel_agrees(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    try:
        monkeypatch.setattr(fused, "packed_kernel_agrees", lambda dtype: True)
        monkeypatch.setattr(fused, "cpu_info", lambda: {"isa": {"amx_bf16": True}})
        assert not fused.packing_pays(torch.float32)  # fp32: oneDNN packs for one batch size, slower at others
        assert fused.packing_pays(torch.bfloat16)
        monkeypatch.setattr(fused, "cpu_info", lambda: {"isa": {"amx_bf16": False, "avx512_bf16": True}})
        assert not fused.packing_pays(torch.bfloat16)  # no AMX: not measured, not packed
        monkeypatch.setattr(fused, "cpu_info", lambda: {"isa": {"amx_bf16": True}})
        monkeypatch.setattr(fused, "packed_kernel_agrees", lambda dtype: False)
        assert not fused.packing_pays(torch.bfloat16)  # the kernel check decides
        monkeypatch.undo()
        onednn._packing_probe.cache_clear()
        monkeypatch.setattr(torch.ops.mkldnn, "_reorder_convolution_weight", None)  # a build without the op
        assert not onednn.packed_kernel_agrees(torch.bfloat16)
    finally:
        onednn._packing_probe.cache_clear()
