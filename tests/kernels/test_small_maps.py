"""Convolutions on tiny maps as matrix products (realfake._kernels.small_maps): the same outputs and gradients as
nn.Conv2d, on every path the layer can take, and a swap that leaves the model as it found it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from realfake._kernels.small_maps import MAX_PIXELS, MIN_BATCH, SmallMapConv2d, small_map_kernels, small_maps_work
from realfake.models import build

# (in, out, kernel, stride, padding, bias, height, width): ResNet50's own shapes at 32x32 input, then the corners
CASES = [
    (16, 24, 1, 1, 0, False, 1, 1),  # 1x1 conv on a 1x1 map (ResNet50's last stage)
    (16, 24, 1, 2, 0, False, 2, 2),  # strided projection 2x2 -> 1x1
    (16, 24, 1, 1, 0, True, 8, 8),  # 1x1 conv on a big map: a product per pixel, any size
    (16, 24, 1, 2, 0, True, 5, 7),  # ... strided, odd sizes
    (16, 24, 3, 1, 1, False, 1, 1),  # 3x3 on 1x1: only the centre tap
    (16, 24, 3, 1, 1, True, 2, 2),  # 3x3 on 2x2: every pixel pair has a tap
    (16, 24, 3, 2, 1, False, 2, 2),  # strided 3x3, 2x2 -> 1x1
    (16, 24, 3, 1, 1, False, 1, 2),  # not square
    (16, 24, 3, 1, 0, False, 2, 2),  # no padding: the output is empty, left to nn.Conv2d
    (16, 24, 3, 1, 1, True, 4, 4),  # more than MAX_PIXELS: the ordinary convolution
    (16, 24, 5, 1, 2, False, 2, 2),  # another kernel size
]


def _pair(c_in: int, c_out: int, k: int, s: int, p: int, bias: bool) -> tuple[nn.Conv2d, nn.Conv2d]:
    torch.manual_seed(0)
    ref = nn.Conv2d(c_in, c_out, k, stride=s, padding=p, bias=bias)
    fast = nn.Conv2d(c_in, c_out, k, stride=s, padding=p, bias=bias)
    fast.load_state_dict(ref.state_dict())
    fast.__class__ = SmallMapConv2d
    return ref, fast


@pytest.mark.parametrize("case", CASES, ids=[f"{c[2]}x{c[2]}s{c[3]}p{c[4]}-{c[6]}x{c[7]}" for c in CASES])
@pytest.mark.parametrize("channels_last", [True, False])
def test_outputs_and_gradients_equal_the_convolution(case, channels_last):
    c_in, c_out, k, s, p, bias, h, w = case
    ref, fast = _pair(c_in, c_out, k, s, p, bias)
    x = torch.randn(MIN_BATCH, c_in, h, w, generator=torch.Generator().manual_seed(1))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if (h + 2 * p - k) // s + 1 < 1:  # an empty output: nn.Conv2d's own error, from both
        with pytest.raises(RuntimeError):
            ref(x)
        with pytest.raises(RuntimeError):
            fast(x)
        return
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yf = ref(xr), fast(xf)
    assert yf.shape == yr.shape
    torch.testing.assert_close(yf, yr, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(yr)
    (yr * g).sum().backward()
    (yf * g).sum().backward()
    torch.testing.assert_close(xf.grad, xr.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-5)
    if bias:
        torch.testing.assert_close(fast.bias.grad, ref.bias.grad, atol=1e-4, rtol=1e-5)


def test_under_bf16_autocast_it_agrees_to_bf16_precision():
    ref, fast = _pair(64, 64, 3, 1, 1, False)
    x = torch.randn(MIN_BATCH, 64, 2, 2, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", torch.bfloat16):
        yr, yf = ref(x), fast(x)
    assert yf.dtype == yr.dtype == torch.bfloat16  # autocast casts the product as it casts the convolution
    assert (yf.float() - yr.float()).abs().max() <= 0.05 * yr.float().abs().max()


def test_a_small_batch_keeps_the_convolution(monkeypatch):
    """Below MIN_BATCH images the dense matrix would cost more than it saves: the convolution runs."""
    calls: list[int] = []
    conv_forward = nn.Conv2d.forward
    monkeypatch.setattr(nn.Conv2d, "forward", lambda self, x: calls.append(len(x)) or conv_forward(self, x))
    ref, fast = _pair(16, 24, 3, 1, 1, False)
    x = torch.randn(MIN_BATCH, 16, 2, 2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(fast(x[:-1]), conv_forward(ref, x[:-1]))
    torch.testing.assert_close(fast(x), conv_forward(ref, x), atol=1e-5, rtol=1e-5)
    assert calls == [MIN_BATCH - 1]  # the smaller batch went to the convolution, the full one did not


def test_the_swap_is_undone_and_leaves_the_state_dict_alone():
    if not small_maps_work():
        pytest.skip("the swap is off here (REALFAKE_KERNELS=0, or its probe failed): "
                    "tests/kernels/test_kernels.py covers that")
    model = build("seed-resnet50", "none").model.eval()
    keys = list(model.state_dict())
    plain = sum(type(m) is nn.Conv2d for m in model.modules())
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        with small_map_kernels(model) as n:
            assert n == plain > 50 and not any(type(m) is nn.Conv2d for m in model.modules())
            with small_map_kernels(model) as inner:  # nested: a no-op
                assert inner == 0
            swapped = model(x)
            assert list(model.state_dict()) == keys
        assert sum(type(m) is nn.Conv2d for m in model.modules()) == plain
    torch.testing.assert_close(swapped, before, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError), small_map_kernels(model):  # undone on an error too
        raise ValueError
    assert sum(type(m) is nn.Conv2d for m in model.modules()) == plain


def test_resnet50_at_32x32_uses_the_products_where_the_maps_are_small():
    """ResNet50's last two stages run on 2x2 and 1x1 maps at 32x32: those convolutions take the new path."""
    model = build("seed-resnet50", "none").model.eval()
    seen: list[tuple[int, int]] = []
    hooks = [m.register_forward_pre_hook(lambda _m, a: seen.append(tuple(a[0].shape[-2:])))
             for m in model.modules() if type(m) is nn.Conv2d and m.kernel_size == (3, 3)]
    with torch.no_grad():
        model(torch.rand(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    small = [hw for hw in seen if hw[0] * hw[1] <= MAX_PIXELS]
    assert len(small) >= 6  # layer3's 3x3s at 2x2 and layer4's at 1x1: the ones that were slow


def test_prediction_keeps_the_convolutions(monkeypatch):
    """Outside training the model predicts with plain convolutions, whatever the batch: a verdict does not
    depend on which images shared its batch."""
    import numpy as np

    from realfake.infer import predict_logits

    model = build("seed-resnet50", "none").model.eval()
    calls: list[type] = []
    conv_forward = nn.Conv2d.forward
    monkeypatch.setattr(nn.Conv2d, "forward", lambda self, x: calls.append(type(self)) or conv_forward(self, x))
    images = np.random.default_rng(0).integers(0, 256, (MIN_BATCH + 3, 32, 32, 3), dtype=np.uint8)
    whole = predict_logits(model, images, torch.device("cpu"), precision="fp32")
    one = predict_logits(model, images[:1], torch.device("cpu"), precision="fp32")
    assert calls and set(calls) == {nn.Conv2d}
    np.testing.assert_allclose(one, whole[:1], atol=1e-5)
