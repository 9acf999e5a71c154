"""realfake._kernels: each fast path gives its public fallback's numbers, REALFAKE_KERNELS=0 turns them all off, and
nothing outside the package touches a private or version-specific API."""

from __future__ import annotations

import logging
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import realfake._kernels as kernels
from realfake import device
from realfake._kernels import cpu_caps, jpeg, onednn, small_maps, state_dict

SRC = Path(__file__).resolve().parents[2] / "src" / "realfake"
# What only realfake._kernels may write: private ops, torch's C extension, a class swap, a private registration, and
# any private attribute of torch or torchvision (`torch.cpu._is_avx2_supported`, `torch._dynamo`,
# `from torch.utils._pytree import ...`, `getattr(torch.cpu, "_x")`); dunders such as `torch.__version__` are public.
PRIVATE = re.compile(
    r"torch\.ops\.|__class__\s*=(?!=)|_register_"
    r"|\btorch(?:vision)?(?:\.[A-Za-z]\w*)*\._[A-Za-z]"
    r"|\bfrom\s+torch(?:vision)?(?:\.\w+)*\s+import\s+\(?\s*_[A-Za-z]"
    r"|getattr\(\s*torch(?:vision)?[\w.]*\s*,\s*[\"']_[A-Za-z]"
)


def _hits(files: list[Path]) -> list[str]:
    return [f"{p.relative_to(SRC)}:{i}: {line.strip()}" for p in files
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if PRIVATE.search(line)]


def test_only_the_kernels_package_touches_private_apis() -> None:
    outside = [p for p in sorted(SRC.rglob("*.py")) if "_kernels" not in p.relative_to(SRC).parts]
    assert len(outside) > 50
    assert _hits(outside) == []
    inside = _hits(sorted((SRC / "_kernels").glob("*.py")))  # the pattern finds what it is for
    assert {h.split(":")[0] for h in inside} >= {"_kernels/onednn.py", "_kernels/jpeg.py", "_kernels/small_maps.py",
                                                 "_kernels/state_dict.py"}


@pytest.mark.parametrize("line", [
    "torch.ops.mkldnn._convolution_pointwise(x)", "torch._C._set_something()", "ok = torch.cpu._is_avx2_supported()",
    "torch._dynamo.reset()", "torch.nn.modules.conv._ConvNd", "from torch.utils._pytree import tree_map",
    "from torch._subclasses import FakeTensor", "import torch._inductor",
    "fn = getattr(torch.cpu, '_is_vnni_supported')",
    "torchvision.io._load_library()", "m.__class__ = Fast", "m._register_load_state_dict_pre_hook(h)",
])
def test_the_private_api_pattern_catches(line: str) -> None:
    assert PRIVATE.search(line)


@pytest.mark.parametrize("line", [
    "torch.__version__", "torch.cpu.get_capabilities()", "torch.backends.cpu.get_cpu_capability()",
    "torch.nn.functional.conv2d(x, w)", "from torch.utils.data import DataLoader", "my_torch._private",
    "if m.__class__ == Fast:",
])
def test_the_private_api_pattern_leaves_public_apis(line: str) -> None:
    assert not PRIVATE.search(line)


# --- the switch -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "on"), [(None, True), ("1", True), ("0", False), ("off", False), ("no", False)])
def test_the_switch(value: str | None, on: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if value is None:
        monkeypatch.delenv(kernels.ENV, raising=False)
    else:
        monkeypatch.setenv(kernels.ENV, value)
    assert kernels.fast_paths_enabled() is on


def test_with_the_switch_off_every_piece_runs_its_fallback_and_says_why_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(kernels.ENV, "0")
    monkeypatch.setattr(kernels, "_off", {})
    with caplog.at_level(logging.DEBUG, logger="realfake.kernels"):
        assert not onednn.post_ops_work(torch.float32)
        assert not onednn.post_ops_work(torch.float32)
        assert not onednn.packed_kernel_agrees(torch.bfloat16)
        assert not small_maps.small_maps_work()
        assert jpeg.decoder(lambda data: np.zeros(1)) is None
        assert jpeg.roundtrip_codec(lambda img, q: np.zeros(1)) is not jpeg.roundtrip_direct
        assert cpu_caps.probed_flags() == {}  # nothing known: the private probes are not asked
    model = nn.Sequential(nn.Conv2d(3, 4, 1))
    with small_maps.small_map_kernels(model) as n:
        assert n == 0 and type(model[0]) is nn.Conv2d
    off = kernels.pieces_off()
    assert set(off) == {"onednn_post_ops", "onednn_packing", "small_maps", "jpeg_decode", "jpeg_roundtrip",
                        "cpu_probes"}
    assert set(off.values()) == {"REALFAKE_KERNELS=0"}
    lines = [r.getMessage() for r in caplog.records if r.name == "realfake.kernels"]
    assert len(lines) == 6 and all(r.levelno == logging.DEBUG for r in caplog.records)  # one line a piece


def test_prediction_with_the_switch_off_gives_the_fused_copys_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32: the folded and fused copy with the oneDNN post-ops, and without them (REALFAKE_KERNELS=0)."""
    from realfake.infer import predict_logits
    from realfake.models.fast import FastNet
    from realfake.models.fused import ConvAct, for_prediction

    if onednn._post_ops_probe(torch.float32) is not None:
        pytest.skip(f"oneDNN's post-ops are unavailable here: {onednn._post_ops_probe(torch.float32)}")
    g = torch.Generator().manual_seed(0)
    model = FastNet()
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.3
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    monkeypatch.delenv(kernels.ENV, raising=False)
    fast, summary = for_prediction(model.eval(), None)
    assert summary["activations_fused"] == 6 and any(isinstance(m, ConvAct) for m in fast.modules())
    monkeypatch.setenv(kernels.ENV, "0")
    plain, summary = for_prediction(model, None)
    assert summary["activations_fused"] == 0 and not any(isinstance(m, ConvAct) for m in plain.modules())
    want = predict_logits(plain, images, torch.device("cpu"), tta="flip", precision="fp32")
    assert np.abs(want).max() > 1e-3
    np.testing.assert_allclose(predict_logits(fast, images, torch.device("cpu"), tta="flip", precision="fp32"),
                               want, rtol=1e-5, atol=1e-5)


# --- onednn -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("act", "algorithm"), [("none", None), ("relu", None), ("gelu", "none")])
@pytest.mark.parametrize(("stride", "padding", "bias"), [(1, 1, True), (2, 1, False), (1, 0, True)])
def test_onednn_conv_act_gives_the_public_convolutions_numbers(
    act: str, algorithm: str | None, stride: int, padding: int, bias: bool
) -> None:
    why = onednn._post_ops_probe(torch.float32)
    if why is not None:
        pytest.skip(f"oneDNN's post-ops are unavailable here: {why}")
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(16, 8, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
    b = torch.randn(16, generator=g) if bias else None
    x = torch.randn(4, 8, 9, 9, generator=g)
    args = (b, [padding] * 2, [stride] * 2, [1, 1], 1, act, algorithm)
    with torch.no_grad():
        want = onednn.conv_act_public(x, weight, *args)
        torch.testing.assert_close(onednn.conv_act(x, weight, *args), want, rtol=1e-5, atol=1e-5)
        packed = _packed(weight, padding, stride, x)
        torch.testing.assert_close(onednn.conv_act(x, packed, *args), want, rtol=1e-5, atol=1e-5)


def _packed(weight: torch.Tensor, padding: int, stride: int, x: torch.Tensor) -> torch.Tensor:
    try:
        return onednn.reorder_weight(weight, [padding] * 2, [stride] * 2, [1, 1], 1, [1, *x.shape[1:]])
    except (RuntimeError, AttributeError) as e:
        pytest.skip(f"oneDNN's weight packing is unavailable here ({type(e).__name__})")


def test_a_missing_or_wrong_onednn_op_turns_the_piece_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(kernels.ENV, raising=False)
    monkeypatch.setattr(kernels, "_off", {})
    onednn._post_ops_probe.cache_clear()
    try:
        monkeypatch.setattr(onednn, "conv_act", lambda *a: (_ for _ in ()).throw(AttributeError("no such op")))
        assert not onednn.post_ops_work(torch.float32)
        assert "missing or fails" in kernels.pieces_off()["onednn_post_ops"]
        onednn._post_ops_probe.cache_clear()
        monkeypatch.setattr(onednn, "conv_act", lambda *a: onednn.conv_act_public(*a) + 1)
        assert not onednn.post_ops_work(torch.float32)
        assert "disagrees" in kernels.pieces_off()["onednn_post_ops"]
    finally:
        onednn._post_ops_probe.cache_clear()


# --- jpeg ---------------------------------------------------------------------------------------------------------

def _mini_zip_files(mini_zip: Path) -> list[bytes]:
    with zipfile.ZipFile(mini_zip) as zf:
        return [zf.read(m) for m in zf.namelist() if not m.endswith("/")]


def test_jpeg_decoders_give_pillows_bytes_on_the_stand_in(mini_zip: Path) -> None:
    """Every file of the mini stand-in through torchvision's operator, called directly, and its public function:
    the bytes Pillow decodes; each goes the fast way (a plain 32x32 JPEG by its header)."""
    from realfake.data.images import _decode_with_pillow

    op = jpeg.decode_jpeg_operator()
    if op is None:
        pytest.skip("torchvision's image library cannot be loaded here")
    direct = jpeg.decode_direct(op)
    jpeg.quiet_torchvision_io()
    files = _mini_zip_files(mini_zip)
    assert len(files) >= 2000
    for i, data in enumerate(files):
        assert jpeg.jpeg_header(data) in ((32, 32, 3), (32, 32, 1))
        want = _decode_with_pillow(data, 32)
        assert np.array_equal(direct(data), want), i
        if i % 10 == 0:  # the public function costs more: a tenth of them
            assert np.array_equal(jpeg.decode_public(data), want), i


def test_jpeg_round_trips_give_pillows_bytes(mini_zip: Path) -> None:
    from realfake.data.batches import _pillow_roundtrip

    if jpeg.image_operators() is None:
        pytest.skip("torchvision's image library cannot be loaded here")
    from realfake.data.images import _decode_with_pillow

    for data in _mini_zip_files(mini_zip)[::25]:
        img = torch.from_numpy(_decode_with_pillow(data, 32).copy())
        for quality in (30, 75, 95):
            want = _pillow_roundtrip(img, quality)
            assert np.array_equal(jpeg.roundtrip_direct(img, quality), want)
            assert np.array_equal(jpeg.roundtrip_public(img, quality), want)


def test_a_jpeg_decoder_that_disagrees_is_not_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    from realfake.data.images import _decode_with_pillow

    monkeypatch.delenv(kernels.ENV, raising=False)
    monkeypatch.setattr(kernels, "_off", {})
    monkeypatch.setattr(jpeg, "_TORCHVISION_IO", "not.imported")  # no public candidate
    if jpeg.decode_jpeg_operator() is None:
        pytest.skip("torchvision's image library cannot be loaded here")
    assert jpeg.decoder(lambda data: _decode_with_pillow(data, 32)).__name__ == "direct"
    assert jpeg.decoder(lambda data: _decode_with_pillow(data, 32) ^ 1) is None
    assert "other pixels" in kernels.pieces_off()["jpeg_decode"]


# --- small maps ---------------------------------------------------------------------------------------------------

def test_small_map_kernels_give_the_convolutions_outputs_and_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """A net whose convolutions run on 2x2 and 1x1 maps, trained one step with and without the swap: the same
    outputs and the same gradients for every parameter and the input, and plain layers after."""
    monkeypatch.delenv(kernels.ENV, raising=False)  # the fast path, even in a run with REALFAKE_KERNELS=0
    why = small_maps._probe()
    if why is not None:
        pytest.skip(f"the small-maps swap is unavailable here: {why}")

    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1),
                             nn.ReLU(), nn.Conv2d(16, 4, 1, bias=False))

    x = torch.randn(small_maps.MIN_BATCH, 8, 2, 2, generator=torch.Generator().manual_seed(1))
    ref, fast = net(), net()
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr = ref(xr)
    yr.square().sum().backward()
    with small_maps.small_map_kernels(fast) as n:
        assert n == 3 and all(type(m) is small_maps.SmallMapConv2d for m in fast if isinstance(m, nn.Conv2d))
        yf = fast(xf)
        yf.square().sum().backward()
    assert all(type(m) is nn.Conv2d for m in fast if isinstance(m, nn.Conv2d))
    torch.testing.assert_close(yf, yr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-5, atol=1e-5)
    for (name, pf), (_, pr) in zip(fast.named_parameters(), ref.named_parameters(), strict=True):
        torch.testing.assert_close(pf.grad, pr.grad, rtol=1e-5, atol=1e-4, msg=name)


# --- cpu caps -----------------------------------------------------------------------------------------------------

def test_cpu_probes_agree_with_the_public_sources_on_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each flag torch's private probes answer is what /proc/cpuinfo and torch.cpu.get_capabilities say, where this
    machine has them (the probes are the last source realfake.device asks, so their answers must mean the same)."""
    monkeypatch.delenv(kernels.ENV, raising=False)
    probed = cpu_caps.probed_flags()
    if not probed:
        pytest.skip(f"this torch has none of torch.cpu's private probes ({kernels.pieces_off().get('cpu_probes')})")
    _, flags = device._proc_cpuinfo()
    caps = device._torch_capabilities()
    if flags is None and caps is None:
        pytest.skip("no public source of CPU flags here to compare with")
    if flags is not None:
        assert probed == {f: f in flags for f in probed}
    if caps is not None:
        public = {f: bool(caps[k]) for f in probed if (k := device._TORCH_CAPABILITY_NAMES.get(f, f)) in caps}
        assert public and probed.items() >= public.items()


def test_cpu_info_falls_back_to_the_probes_then_to_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "_proc_cpuinfo", lambda: (None, None))
    monkeypatch.setattr(device, "_torch_capabilities", lambda: None)
    monkeypatch.setattr(kernels, "_off", {})
    monkeypatch.setattr(cpu_caps, "_probe", lambda: ({"avx2": True, "avx512_bf16": True}, None))
    device.cpu_info.cache_clear()
    try:
        info = device.cpu_info()
        assert info["isa_source"] == "torch.cpu probes" and info["isa"]["avx2"] and info["native_bf16"]
        assert info["isa"]["amx_bf16"] is None  # no probe for it: unknown, not False
        monkeypatch.setenv(kernels.ENV, "0")
        device.cpu_info.cache_clear()
        info = device.cpu_info()
        assert info["isa_source"] == "none" and set(info["isa"].values()) == {None} and not info["native_bf16"]
    finally:
        device.cpu_info.cache_clear()


def test_a_missing_cpu_probe_tells_nothing_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(kernels.ENV, raising=False)
    monkeypatch.setattr(kernels, "_off", {})
    monkeypatch.delattr(torch.cpu, cpu_caps.PROBES["avx2"], raising=False)
    monkeypatch.setattr(torch.cpu, cpu_caps.PROBES["amx_tile"], lambda: 1 / 0, raising=False)
    cpu_caps._probe.cache_clear()
    try:
        probed = cpu_caps.probed_flags()
        assert "avx2" not in probed and "amx_tile" not in probed
        why = kernels.pieces_off()["cpu_probes"]
        assert cpu_caps.PROBES["avx2"] in why and cpu_caps.PROBES["amx_tile"] in why
    finally:
        cpu_caps._probe.cache_clear()


# --- state dict ---------------------------------------------------------------------------------------------------

def test_old_and_new_fast_weights_load_alike_through_the_public_and_the_private_hook(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Weights from before the `version` buffer (GELU) and current ones (ReLU) load to the same network and the same
    tensors whether the hook is registered publicly or, as on a torch before 2.5, privately."""
    from realfake.models.fast import DenseGELU, FastNet

    if not hasattr(nn.Module, "_register_load_state_dict_pre_hook"):
        pytest.skip("this torch has no private registration to compare with")
    x = torch.rand(4, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    old, new = FastNet(version=1), FastNet()
    for p in [*old.parameters(), *new.parameters()]:
        p.data = torch.randn(p.shape, generator=g) * 0.3
    legacy = {k: v for k, v in old.state_dict().items() if k != "version"}

    def load_both() -> tuple[nn.Module, nn.Module]:
        nets = FastNet(), FastNet()
        nets[0].load_state_dict(legacy)
        nets[1].load_state_dict(new.state_dict())
        return nets[0].eval(), nets[1].eval()

    a_old, a_new = load_both()  # the public registration
    monkeypatch.delattr(nn.Module, "register_load_state_dict_pre_hook", raising=False)
    calls: list[int] = []
    real = state_dict.private_registration
    monkeypatch.setattr(state_dict, "private_registration", lambda m, h: calls.append(1) or real(m, h))
    b_old, b_new = load_both()  # the private one, as on a torch before 2.5
    assert calls == [1, 1]
    for a, b in ((a_old, b_old), (a_new, b_new)):
        assert a.state_dict().keys() == b.state_dict().keys()
        assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert int(a_old.version) == int(b_old.version) == 1
    assert [sum(isinstance(m, DenseGELU) for m in n.modules()) for n in (a_old, b_old)] == [6, 6]
    assert int(a_new.version) == int(b_new.version) == 2
    with torch.no_grad():
        assert torch.equal(a_old(x), old.eval()(x)) and torch.equal(b_old(x), old(x))
        assert torch.equal(a_new(x), new.eval()(x)) and torch.equal(b_new(x), new(x))
