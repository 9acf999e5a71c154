"""oneDNN's convolution with an activation computed inside it (a "post-op", the kernel torch.compile itself emits
on CPUs) and its weight packing: private ATen ops (`torch.ops.mkldnn._convolution_pointwise`,
`_reorder_convolution_weight`), so each is used only where its check on a probe passes (`post_ops_work`,
`packed_kernel_agrees`); the public fallback is the plain convolution and activation (`conv_act_public`).
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import functools
from collections.abc import Callable, Sequence

import torch
from torch import nn

from realfake._kernels import enabled, turned_off

# The activations the kernel computes, by its name for them: (reference, algorithm the kernel takes).
ACTIVATIONS: dict[str, Callable[[torch.Tensor, str | None], torch.Tensor]] = {
    "none": lambda y, algorithm: y,
    "relu": lambda y, algorithm: nn.functional.relu(y),
    "gelu": lambda y, algorithm: nn.functional.gelu(y, approximate=algorithm or "none"),
}
# The post-ops realfake fuses, with their algorithm (GELU's "none": the exact one), as the probe checks them.
CHECKED: tuple[tuple[str, str | None], ...] = (("gelu", "none"), ("relu", None))
_ERRORS = (RuntimeError, AttributeError, NotImplementedError, TypeError)


def conv_act(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: Sequence[int],
    stride: Sequence[int], dilation: Sequence[int], groups: int, act: str, algorithm: str | None,
) -> torch.Tensor:
    """oneDNN's convolution of `x` with `act` ("none", "relu", "gelu") applied inside it; `weight` may be packed
    (`reorder_weight`). The bias is added in the kernel's fp32 accumulator."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, weight, bias, padding, stride, dilation, groups, act, [], algorithm)


def conv_act_public(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: Sequence[int],
    stride: Sequence[int], dilation: Sequence[int], groups: int, act: str, algorithm: str | None,
) -> torch.Tensor:
    """`conv_act` through public functions (an unpacked weight): `F.conv2d`, then the activation."""
    y = nn.functional.conv2d(x, weight, None if bias is None else bias.to(weight.dtype), list(stride), list(padding),
                             list(dilation), groups)
    return ACTIVATIONS[act](y, algorithm)


def reorder_weight(
    weight: torch.Tensor, padding: Sequence[int], stride: Sequence[int], dilation: Sequence[int], groups: int,
    input_size: Sequence[int],
) -> torch.Tensor:
    """`weight` packed into oneDNN's own layout for inputs of `input_size` (an opaque tensor `conv_act` takes)."""
    return torch.ops.mkldnn._reorder_convolution_weight(weight, padding, stride, dilation, groups, list(input_size))


def post_ops_work(dtype: torch.dtype) -> bool:
    """Whether `conv_act` may run in `dtype`: switched on, and on a tiny probe the kernel gives the public
    convolution and activation's values for every post-op realfake fuses (a build without oneDNN, or one without
    the op, has not)."""
    return _passes("onednn_post_ops", _post_ops_probe, dtype)


def _passes(piece: str, probe: Callable[[torch.dtype], str | None], dtype: torch.dtype) -> bool:
    """A piece may run when it is switched on and its probe finds nothing wrong; why not is logged once."""
    if not enabled(piece):
        return False
    why = probe(dtype)
    if why is not None:
        turned_off(piece, f"{dtype}: {why}")
    return why is None


@functools.cache
def _post_ops_probe(dtype: torch.dtype) -> str | None:
    try:
        with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
            torch.random.default_generator.manual_seed(0)  # the CPU's alone: the one fork_rng puts back
            conv = nn.Conv2d(4, 8, 3, padding=1)
            x = torch.randn(2, 4, 5, 5)
        weight = conv.weight.detach().to(dtype).contiguous(memory_format=torch.channels_last)
        bias = conv.bias.detach().float()
        with torch.no_grad():
            plain = nn.functional.conv2d(x.to(dtype), conv.weight.to(dtype), conv.bias.to(dtype), padding=1)
            for name, algorithm in CHECKED:
                got = conv_act(x.to(dtype), weight, bias, [1, 1], [1, 1], [1, 1], 1, name, algorithm).float()
                if not torch.allclose(got, ACTIVATIONS[name](plain, algorithm).float(), atol=0.05, rtol=0.05):
                    return f"its {name} post-op disagrees with the plain layers"
        return None
    except _ERRORS as e:
        return f"the op is missing or fails ({type(e).__name__})"


def packed_kernel_agrees(dtype: torch.dtype) -> bool:
    """Whether weights packed by `reorder_weight` may be used in `dtype`: switched on, and on a tiny probe the packed
    kernel gives the plain convolution's values bit for bit at a batch of five and of one."""
    return _passes("onednn_packing", _packing_probe, dtype)


@functools.cache
def _packing_probe(dtype: torch.dtype) -> str | None:
    try:
        with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
            torch.random.default_generator.manual_seed(0)  # the CPU's alone: the one fork_rng puts back
            conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
            x = torch.randn(5, 8, 6, 6).to(dtype)
        weight = conv.weight.detach().to(dtype).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            packed = reorder_weight(weight, [1, 1], [1, 1], [1, 1], 1, [1, *x.shape[1:]])
            want = nn.functional.conv2d(x, conv.weight.to(dtype), padding=1)
            same = all(torch.equal(conv_act(part, packed, None, [1, 1], [1, 1], [1, 1], 1, "none", None), want[:n])
                       for n, part in ((5, x), (1, x[:1])))
        return None if same else "the packed kernel's values differ from the plain convolution's"
    except _ERRORS as e:
        return f"the op is missing or fails ({type(e).__name__})"
