"""Prediction's copy of a model: BatchNorm folded into the convolution before it, and on the CPU the activation
after a convolution computed inside it. The same function of the image, fewer passes over memory.

Why: in eval mode a BatchNorm is an affine map per channel, so it can live in the convolution's weights and bias
(`torch.fx.experimental.optimization.fuse`, PyTorch's own pass); and oneDNN, which runs PyTorch's CPU
convolutions, applies an activation to each output while it is still in registers (a "post-op",
the kernel torch.compile itself emits on CPUs; a private op, fenced in realfake._kernels.onednn). Unfused, `fast` spends
most of its prediction time outside its convolutions, in GELU and BatchNorm, each a full pass over a feature map
(docs/performance.md, Speed: "Why `fast` predicts 1.5x faster").

In bf16 on a CPU with AMX, every convolution also holds its weights packed once in the layout AMX's kernel reads
(`packing_pays`): unpacked, oneDNN re-lays them out at every call, which is most of a single image's time.

Training never sees this copy (BatchNorm must learn there), and Grad-CAM and ONNX export keep the original, whose
layers they hook and trace; so a Detector holds the model twice (docs/performance.md#the-fused-prediction-copy). A
model torch.fx cannot trace is predicted unfused; on other devices (CUDA), or where the oneDNN kernel is missing
or disagrees with the unfused layers (checked once per process, `post_ops_work`), or where REALFAKE_KERNELS=0
turns realfake's fast paths off, only BatchNorm is folded.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

from copy import deepcopy

import torch
from torch import fx, nn
from torch.fx.experimental.optimization import fuse as fold_batchnorm

from realfake._kernels.onednn import conv_act, packed_kernel_agrees, post_ops_work, reorder_weight
from realfake.device import cpu_info

# Activations oneDNN can compute inside the convolution before them: module type -> (post-op, its algorithm).
POST_OPS: dict[type[nn.Module], tuple[str, str | None]] = {nn.GELU: ("gelu", "none"), nn.ReLU: ("relu", None)}
# Which of them a model's copy fuses, unless the model names its own (`fused_activations`): GELU only. Its erf
# makes it several times a ReLU's cost, while oneDNN's pointwise entry point pays a fixed cost at each call that
# PyTorch's plain convolution does not, so fusing seed-resnet50's ReLUs made one image slower and batches no
# faster, packed or not (docs/performance.md#the-fused-prediction-copy). `fast` (ReLU since version 2) names ReLU: its
# maps are large for their arithmetic, so a separate pass over each costs more than the call (see realfake.models.fast).
DEFAULT_FUSED: tuple[type[nn.Module], ...] = (nn.GELU,)


class ConvAct(nn.Module):
    """A Conv2d followed by its activation (`act` "none": by nothing), as one oneDNN convolution with the
    activation as a post-op.

    The weight is held in `dtype` (bf16 under bf16 prediction, as autocast would cast it) and channels_last; the
    bias stays fp32 (a folded BatchNorm's shift, added in the kernel's fp32 accumulator). The input is cast to
    the weight's dtype, as autocast casts a convolution's input. With `pack`, the weight is also packed into
    oneDNN's own layout the first time an input of a shape comes (`packing_pays` says where that is worth it).
    """

    def __init__(
        self, conv: nn.Conv2d, act: str, algorithm: str | None, dtype: torch.dtype, pack: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(
            conv.weight.detach().to(dtype).contiguous(memory_format=torch.channels_last), requires_grad=False)
        bias = conv.bias.detach().float() if conv.bias is not None else None
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.stride, self.padding = list(conv.stride), list(conv.padding)  # type: ignore[arg-type]
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.act, self.algorithm = act, algorithm
        self.pack = pack
        self._packed: dict[tuple[int, ...], torch.Tensor] = {}  # one image's input shape -> the packed weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_act(x.to(self.weight.dtype), self._weight_for(x), self.bias, self.padding, self.stride,
                        self.dilation, self.groups, self.act, self.algorithm)

    def __getstate__(self) -> dict[str, object]:
        """Copies and pickles leave the packed weights behind (oneDNN's opaque tensors have no storage to copy);
        the copy packs its own at first use."""
        state = self.__dict__.copy()
        state["_packed"] = {}
        return state

    def _weight_for(self, x: torch.Tensor) -> torch.Tensor:
        """The weight as this input's convolution reads it: packed for one image of its shape (oneDNN's layout for
        AMX does not depend on the batch, and the kernel's values do not either: tested), or as it is."""
        if not self.pack:
            return self.weight
        key = tuple(x.shape[1:])
        packed = self._packed.get(key)
        if packed is None:
            with torch.no_grad():
                packed = reorder_weight(self.weight, self.padding, self.stride, self.dilation, self.groups, [1, *key])
            self._packed[key] = packed
        return packed


def fusable(conv: nn.Module) -> bool:
    """A plain 2-D convolution oneDNN's pointwise kernel takes: numeric zero padding, on the CPU."""
    return (isinstance(conv, nn.Conv2d) and type(conv) is nn.Conv2d and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and conv.weight.device.type == "cpu")


def packing_pays(dtype: torch.dtype) -> bool:
    """Whether prediction's convolutions should hold their weights packed once (`ConvAct(pack=True)`): in bf16 on a
    CPU with AMX, where this PyTorch build has the packing op and the packed kernel gives the plain convolution's
    values bit for bit at two batch sizes (checked once per process on a tiny input, `packed_kernel_agrees`).

    Why: unpacked, oneDNN re-lays out a bf16 weight into AMX's tiles at every call (59 times in one of
    seed-resnet50's single-image forwards, seen with ONEDNN_VERBOSE=1), which is most of one image's time; packed
    once, one image runs about twice as fast, with the same logits at every batch size tried and batches no slower
    (docs/performance.md#the-fused-prediction-copy). Only there: in fp32 oneDNN packs for the batch size it is
    given (packed for one image, a large batch ran far slower), and a CPU without AMX was not measured.
    """
    if dtype != torch.bfloat16 or not cpu_info()["isa"].get("amx_bf16"):
        return False
    return packed_kernel_agrees(dtype)


def pack_weights(gm: fx.GraphModule, dtype: torch.dtype) -> int:
    """Every convolution oneDNN takes, made a ConvAct that packs its weights (a fused one keeps its post-op);
    returns how many."""
    done = 0
    for name, module in list(gm.named_modules()):
        if isinstance(module, ConvAct):
            module.pack = True
        elif fusable(module):
            parent, _, attr = name.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, attr, ConvAct(module, "none", None, dtype, pack=True))
        else:
            continue
        done += 1
    return done


def _post_op(
    module: nn.Module | None, kinds: tuple[type[nn.Module], ...] = tuple(POST_OPS)
) -> tuple[str, str | None] | None:
    """The post-op computing `module` (an activation of one of `kinds`, or a subclass of one), else None."""
    return next((op for kind, op in POST_OPS.items() if kind in kinds and isinstance(module, kind)), None)


class Fp32Head(nn.Module):
    """A model's head, computed in fp32 whatever the rest computes in: a bf16 logit has 8 significant bits, and
    three different photos came out with byte-identical scores. The head is a few thousand multiply-adds."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.inner(x.float())


class _Tracer(fx.Tracer):
    """fx's tracer, with every activation POST_OPS knows (subclasses too, such as fast's DenseGELU) kept as one
    module call, which the fusing pass then finds, and an Fp32Head kept whole (its autocast switch is code that
    tracing would drop)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (isinstance(m, Fp32Head) or _post_op(m) is not None
                or super().is_leaf_module(m, module_qualified_name))


def fuse_activations(
    gm: fx.GraphModule, dtype: torch.dtype, kinds: tuple[type[nn.Module], ...] = DEFAULT_FUSED
) -> int:
    """Replace each convolution whose only reader is an activation of `kinds` (GELU: the exact one) by one
    ConvAct; returns how many."""
    modules = dict(gm.named_modules())
    done = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or _post_op(modules.get(node.target), kinds) is None:
            continue
        act = modules[node.target]
        if isinstance(act, nn.GELU) and act.approximate != "none":
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1
                and fusable(modules.get(src.target))):
            continue
        name, algorithm = _post_op(act, kinds)  # type: ignore[misc]
        parent, _, attr = src.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, attr, ConvAct(modules[src.target], name, algorithm, dtype))
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        done += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return done


def for_prediction(model: nn.Module, dtype: torch.dtype | None) -> tuple[nn.Module, dict[str, int]]:
    """An eval-mode copy of `model` for prediction, and what was done to it (layers folded and fused).

    `dtype` is the autocast dtype prediction runs under (None: fp32). Convolution and linear weights are held in
    it already (`hold_weights_in`): autocast would cast them at every call (for seed-resnet50's 25M weights, a
    quarter of a single-image prediction; docs/performance.md, Speed) and passes a weight already in its
    dtype through.
    """
    copy = deepcopy(model).eval()
    if dtype is not None and isinstance(getattr(copy, "head", None), nn.Module):
        copy.head = Fp32Head(copy.head)
    summary = {"batchnorm_folded": 0, "activations_fused": 0, "weights_packed": 0}
    try:
        traced = fx.GraphModule(copy, _Tracer().trace(copy), copy.__class__.__name__)
    except Exception:  # noqa: BLE001 - a model fx cannot trace is still a model: predicted unfused
        traced = None
    if traced is not None:
        before = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in traced.modules())
        traced = fold_batchnorm(traced, inplace=True, no_trace=True)
        summary["batchnorm_folded"] = before - sum(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in traced.modules())
        if post_ops_work(dtype or torch.float32):
            kinds = tuple(getattr(model, "fused_activations", DEFAULT_FUSED))
            summary["activations_fused"] = fuse_activations(traced, dtype or torch.float32, kinds)
        copy = traced
    copy = hold_weights_in(copy, dtype)
    if traced is not None and dtype is not None and packing_pays(dtype):
        # after the cast: a convolution's bias was rounded to `dtype` with it, as before packing (the same values)
        summary["weights_packed"] = pack_weights(traced, dtype)
    return copy.eval(), summary


def hold_weights_in(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """`model` with its Conv2d and Linear weights cast to `dtype` in place (None: left as they are); BatchNorm keeps
    fp32 parameters, as autocast leaves them."""
    if dtype is not None:
        kept = {id(m) for head in model.modules() if isinstance(head, Fp32Head) for m in head.modules()}
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in kept:
                m.to(dtype)
    return model
