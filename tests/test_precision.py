"""--precision auto|fp32|bf16: what the CPU can do is read in one place (realfake.device), auto follows it, and a
forced bf16 runs on any CPU (emulated where there is no AMX / AVX-512 BF16) with logits close to fp32's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from realfake import device as dev
from realfake.config import RunConfig
from realfake.detector import Detector
from realfake.errors import RealfakeError
from realfake.rundir import RunDir

CPU = torch.device("cpu")
XEON_FLAGS = "fpu sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 avx_vnni"
EPYC_FLAGS = "fpu sse2 avx avx2 fma bmi2 sha_ni"


@pytest.fixture
def fake_cpu(monkeypatch):
    """Make realfake.device read a chosen /proc/cpuinfo (model, flags); the cached answer is dropped around it."""

    def use(model: str | None, flags: str | None) -> dict:
        monkeypatch.setattr(dev, "_proc_cpuinfo", lambda: (model, None if flags is None else set(flags.split())))
        dev.cpu_info.cache_clear()
        return dev.cpu_info()

    yield use
    dev.cpu_info.cache_clear()


def test_cpu_info_reads_the_isa_flags_that_matter(fake_cpu):
    xeon = fake_cpu("Intel(R) Xeon(R) Platinum 8480+", XEON_FLAGS)
    assert xeon["model"] == "Intel(R) Xeon(R) Platinum 8480+" and xeon["isa_source"] == "/proc/cpuinfo"
    assert xeon["isa"] == dict.fromkeys(dev.ISA_FLAGS, True) and xeon["native_bf16"] and dev.native_bf16_cpu()
    epyc = fake_cpu("AMD EPYC", EPYC_FLAGS)
    assert epyc["isa"]["avx2"] and not any(v for k, v in epyc["isa"].items() if k != "avx2")
    assert not epyc["native_bf16"] and not dev.native_bf16_cpu()
    sapphire_avx512_only = fake_cpu("x", "avx2 avx512f avx512_bf16")  # AVX-512 BF16 without AMX is native too
    assert sapphire_avx512_only["native_bf16"]


def test_cpu_info_falls_back_to_torch_when_there_is_no_proc_cpuinfo(fake_cpu, monkeypatch):
    caps = {"cpu_name": "Some CPU", "avx2": True, "avx512_f": True, "amx_bf16": True, "amx_tile": True}
    monkeypatch.setattr(dev, "_torch_capabilities", lambda: caps)
    info = fake_cpu(None, None)
    assert info["model"] == "Some CPU" and info["isa_source"] == "torch.cpu.get_capabilities"
    assert info["isa"]["avx512f"] and info["isa"]["amx_bf16"] and info["native_bf16"]
    assert info["isa"]["avx_vnni"] is None  # not reported: unknown, not False


def test_auto_is_bf16_only_where_the_cpu_has_it_natively(fake_cpu):
    fake_cpu("Intel Xeon", XEON_FLAGS)
    p = dev.resolve_precision(CPU, "auto")
    assert p.name == "bf16" and p.dtype == torch.bfloat16
    assert p.reason.startswith("auto: native bf16") and "Intel Xeon" in p.reason and "amx_bf16" in p.reason
    fake_cpu("AMD EPYC", EPYC_FLAGS)
    p = dev.resolve_precision(CPU, "auto")
    assert p.name == "fp32" and p.dtype is None and dev.amp_dtype(CPU) is None
    assert p.to_info() == {"precision": "fp32",
                           "precision_reason": "auto: no native bf16 on this CPU (AMD EPYC: no AMX or AVX-512 BF16)"}
    assert dev.resolve_precision(CPU, "fp32").name == "fp32"
    forced = dev.resolve_precision(CPU, "bf16")  # any CPU: emulated, and the reason says so
    assert forced.name == "bf16" and "emulated" in forced.reason
    fake_cpu("Intel Xeon", XEON_FLAGS)
    assert dev.resolve_precision(CPU, "fp32").name == "fp32"  # forced fp32 wins over native bf16


def test_gpu_precision_bf16_where_supported_else_fp16(monkeypatch):
    gpu = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert dev.resolve_precision(gpu, "auto").name == "bf16" and dev.resolve_precision(gpu, "bf16").name == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    auto = dev.resolve_precision(gpu, "auto")
    assert auto.name == "fp16" and auto.dtype == torch.float16 and "loss scaling" in auto.reason
    assert dev.resolve_precision(gpu, "fp32").dtype is None
    with pytest.raises(RealfakeError, match="Fake GPU cannot compute in bf16"):
        dev.resolve_precision(gpu, "bf16")
    assert dev.resolve_precision(torch.device("mps"), "auto").name == "fp32"
    with pytest.raises(RealfakeError, match="not supported on mps"):
        dev.resolve_precision(torch.device("mps"), "bf16")


def test_autocast_computes_in_the_resolved_dtype():
    lin = torch.nn.Linear(4, 1)
    x = torch.rand(2, 4)
    with dev.autocast(CPU, "bf16"):
        assert lin(x).dtype == torch.bfloat16
    with dev.autocast(CPU, "fp32"):
        assert lin(x).dtype == torch.float32


def test_bad_precision_values_are_one_line_errors(tmp_path):
    with pytest.raises(RealfakeError, match="precision must be one of auto, fp32, bf16; got 'fp16'"):
        dev.resolve_precision(CPU, "fp16")
    with pytest.raises(RealfakeError, match="invalid config: precision"):
        RunConfig.from_sources(precision="half")
    with pytest.raises(RealfakeError, match="precision must be one of"):
        Detector.load(tmp_path / "no-run", precision="fp16")
    # an ONNX model runs in fp32: asking it for bf16 is refused, not silently ignored
    with pytest.raises(RealfakeError, match="bf16 needs the PyTorch backend"):
        Detector.load(tmp_path / "model.onnx", precision="bf16")
    from realfake.cli import app

    runner = CliRunner()
    for args in (["train", "--precision", "fp16"], ["predict", str(tmp_path), "x.png", "--precision", "fp16"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert "precision" in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_forced_bf16_trains_on_any_cpu_and_the_run_says_so(bf16_run):
    run = RunDir(bf16_run)
    info = run.info()
    assert info["precision"] == "bf16" and info["precision_reason"].startswith("asked for bf16")
    assert run.config().precision == "bf16"
    assert run.read_json(RunDir.METRICS)["compute_precision"] == "bf16"
    history = run.read_text(RunDir.HISTORY).splitlines()
    assert len(history) == 2 and np.isfinite(float(history[1].split(",")[1]))  # one epoch, finite loss
    assert Detector.load(bf16_run).precision == "bf16"  # the run's own setting is the default
    assert Detector.load(bf16_run, precision="fp32").precision == "fp32"


def test_bf16_logits_are_finite_and_close_to_fp32(bf16_run):
    images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    z32 = Detector.load(bf16_run, device="cpu", precision="fp32").predict_logits(images)
    z16 = Detector.load(bf16_run, device="cpu", precision="bf16").predict_logits(images)
    assert np.isfinite(z16).all()
    assert not np.array_equal(z16, z32)  # bf16 really ran
    # bf16 keeps 8 significant bits (relative step 2^-8): allow 5% of the fp32 logits' spread, plus 1e-3
    tolerance = 0.05 * float(np.ptp(z32)) + 1e-3
    assert np.abs(z16 - z32).max() <= tolerance, (np.abs(z16 - z32).max(), tolerance)


def test_run_json_records_the_automatic_choice(trained_run):
    info = RunDir(trained_run).info()
    assert info["precision"] == ("bf16" if dev.native_bf16_cpu() else "fp32")
    assert info["precision_reason"].startswith("auto:") and dev.cpu_info()["model"] in info["precision_reason"]


def test_bf16_prediction_holds_its_weights_in_bf16_and_answers_near_autocast():
    """TorchBackend under bf16 predicts with a copy whose conv/linear weights are bf16 already (no re-cast per
    call) and whose BatchNorm is folded into them (models.fused): as close to fp32 as autocast on the original
    model is; the fp32 model (Grad-CAM's) is untouched."""
    import numpy as np
    import torch
    from torch import nn

    from realfake.infer import TorchBackend, predict_logits
    from realfake.models import build
    from realfake.models.fused import ConvAct

    model = build("seed-resnet50", "none").model.eval()
    images = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    cpu = torch.device("cpu")
    autocast = predict_logits(model, images, cpu, tta="flip", precision="bf16")
    fp32 = predict_logits(model, images, cpu, tta="flip", precision="fp32")
    backend = TorchBackend(model, cpu, "flip", "bf16")
    got = backend.logits(images)
    # as near fp32 as bf16 itself allows: autocast rounds its logit to bf16 too (8 bits, ~0.004 at |logit| ~1);
    # the copy's head is fp32 (models.fused.Fp32Head), so its error is the body's, with BatchNorm folded into bf16
    assert np.abs(got - fp32).max() <= 3 * np.abs(autocast - fp32).max() + 1e-2
    assert len(set(got.tolist())) == len(got)  # five images, five scores
    assert backend.model is model and all(p.dtype == torch.float32 for p in model.parameters())
    head = {id(m) for m in backend._predicting.head.modules()}  # the head stays fp32 (models.fused.Fp32Head)
    held = {type(m): m.weight.dtype for m in backend._predicting.modules()
            if hasattr(m, "weight") and id(m) not in head}
    conv = ConvAct if backend.fusion["weights_packed"] else nn.Conv2d  # packed on an AMX CPU (models.fused)
    assert held[conv] == held.get(nn.Linear, torch.bfloat16) == torch.bfloat16 and nn.BatchNorm2d not in held
    assert all(p.dtype == torch.float32 for p in backend._predicting.head.parameters())
