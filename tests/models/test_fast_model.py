"""The `fast` model: shape contract, FLOP budget, its training recipe, and that it learns on the mini stand-in."""

import json

import pytest
import torch
from safetensors.torch import save_file

from realfake import training as run
from realfake.config import RunConfig
from realfake.errors import RealfakeError
from realfake.fit import make_scheduler
from realfake.models import apply_recipe, available, build
from realfake.models.fast import RECIPE, FastNet


def test_fast_is_registered_and_returns_one_logit_per_image():
    assert "fast" in available()
    built = build("fast", "none")
    m = built.model.eval()
    x = torch.rand(5, 3, 32, 32)
    out = m(x)
    assert out.shape == (5,) and out.dtype == torch.float32
    # channels_last (what fit and batches use) computes the same function
    cl = m.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out, cl, atol=1e-5)
    assert built.recipe == RECIPE and built.recipe is not RECIPE  # a copy: callers may not change the defaults


def test_stem_keeps_full_resolution_and_grad_cam_reads_an_8x8_map():
    m = FastNet()
    assert m.stem(torch.rand(1, 3, 32, 32)).shape[-2:] == (32, 32)
    seen = {}

    def grab(mod, inp, out):  # returns None: a forward hook's return value would replace the output
        seen["shape"] = out.shape

    m.cam_layer().register_forward_hook(grab)
    m(torch.rand(1, 3, 32, 32))
    assert seen["shape"][-2:] == (8, 8)


def test_recipe_fills_only_what_the_user_left_unset():
    cfg = apply_recipe(RunConfig(model="fast", lr=1e-4), RECIPE)
    assert cfg.lr == 1e-4  # explicit wins
    assert cfg.batch_size == RECIPE["batch_size"] and cfg.schedule == "onecycle"
    assert cfg.label_smoothing == RECIPE["label_smoothing"] and cfg.tta == "flip"
    assert {"batch_size", "schedule", "lr"} <= cfg.model_fields_set  # saved config replays it
    # explicitly set to the global default still wins over the recipe
    assert apply_recipe(RunConfig(batch_size=128), RECIPE).batch_size == 128


def test_seed_model_has_no_recipe_so_it_trains_with_the_notebook_defaults():
    built = build("seed-resnet50", "none")
    assert built.recipe == {}
    cfg = apply_recipe(RunConfig(), built.recipe)
    assert cfg.model_dump() == RunConfig().model_dump()
    assert (cfg.schedule, cfg.label_smoothing, cfg.batch_size, cfg.lr) == ("plateau", 0.0, 128, 1e-3)


def test_onecycle_warms_up_peaks_and_decays_to_zero():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, RunConfig(schedule="onecycle", epochs=2), steps_per_epoch=50)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1)
    assert max(lrs) == pytest.approx(1.0) and lrs.index(max(lrs)) == 20
    assert lrs[-1] < 0.02 and all(a >= b for a, b in zip(lrs[20:], lrs[21:], strict=False))
    plateau = make_scheduler(opt, RunConfig(), steps_per_epoch=50)
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)


def test_weights_file_and_bad_specs(tmp_path):
    src = FastNet()
    f = tmp_path / "fast.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(f))
    m = build("fast", str(f)).model
    assert torch.equal(m.head.weight, src.head.weight)
    with pytest.raises(RealfakeError, match="no ImageNet weights"):
        build("fast", "imagenet")
    with pytest.raises(RealfakeError, match="--weights must be"):
        build("fast", str(tmp_path / "missing.safetensors"))
    wrong = tmp_path / "wrong.safetensors"
    save_file({"stem.0.weight": torch.zeros(1)}, str(wrong))
    with pytest.raises(RealfakeError, match="does not fit the fast model"):
        build("fast", str(wrong))


@pytest.mark.slow
def test_fast_trains_with_its_recipe_and_learns(mini_zip, tmp_path):
    cfg = RunConfig(data=str(mini_zip), model="fast", limit=1200, epochs=4, device="cpu", seed=1,
                    out=str(tmp_path / "r"))
    out = run.train(cfg, progress=False, log=lambda m: None)
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["batch_size"] == RECIPE["batch_size"] and saved["schedule"] == "onecycle"
    assert saved["label_smoothing"] == RECIPE["label_smoothing"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.65  # chance is 0.5; 0.72 with seed 1 (840 training images, 4 epochs)
    # resume replays the saved (recipe-filled) config and continues the one-cycle schedule
    resumed = run.resume(out, epochs=5, progress=False, log=lambda m: None)
    assert json.loads((resumed / "run.json").read_text())["epochs_run"] == 5


def test_a_large_batch_runs_in_pieces_on_the_cpu_with_the_same_logits(monkeypatch):
    """fast's feature maps fall out of cache past a few hundred images: predicting on a CPU runs a large batch in
    pieces of `cpu_forward_batch`, through the backend's fused copy and the training model alike, with the logits
    of one whole batch."""
    import numpy as np

    from realfake.infer import TorchBackend, forward_batch, predict_logits

    cpu = torch.device("cpu")
    assert forward_batch(FastNet(), cpu, 1024) == FastNet.cpu_forward_batch == 256
    assert forward_batch(FastNet(), cpu, 100) == 100  # a smaller batch asked for is kept
    assert forward_batch(FastNet(), torch.device("cuda"), 1024) == 1024  # GPUs: the caller's batch
    assert forward_batch(build("seed-resnet50", "none").model, cpu, 1024) == 1024  # a model that sets none

    torch.manual_seed(0)
    model = FastNet().eval()
    images = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    sizes: list[int] = []
    for precision in ("fp32", "bf16"):
        backend = TorchBackend(model, cpu, "flip", precision)
        whole = backend.logits(images, 64)  # 40 images, one pass
        training_whole = predict_logits(model, images, cpu, 64, tta="flip", precision=precision)
        sizes.clear()
        hooks = [m.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[0]))
                 for m in (backend._predicting, model)]
        monkeypatch.setattr(FastNet, "cpu_forward_batch", 16)
        pieces = backend.logits(images, 64)
        training_pieces = predict_logits(model, images, cpu, 64, tta="flip", precision=precision)
        monkeypatch.undo()
        for h in hooks:
            h.remove()
        assert sizes == [16, 16, 16, 16, 8, 8] * 2  # image and mirror image per piece, backend then training
        np.testing.assert_allclose(pieces, whole, atol=1e-5)  # bf16 too: per-image kernels
        np.testing.assert_allclose(training_pieces, training_whole, atol=1e-5)


def test_training_pools_over_the_nhwc_view_with_the_same_values_and_gradients():
    """In training `fast` pools over the channels_last map viewed as (N, H*W, C), so the gradient reaches the last
    BatchNorm in its input's layout; the values and gradients are those of pooling over (2, 3)."""
    m = FastNet().train()
    x = torch.randn(6, 128, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    ref = x.detach().clone().requires_grad_()
    got = m.pool(x)
    want = torch.cat([ref.amax(dim=(2, 3)), ref.mean(dim=(2, 3))], dim=1)
    torch.testing.assert_close(got, want)
    weights = torch.randn_like(want)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    torch.testing.assert_close(x.grad, ref.grad)
    torch.testing.assert_close(m.eval().pool(x.detach()), want.detach())

    # in a training step (bf16 autocast, as fit runs it) the last BatchNorm gets its gradient channels_last: pooled
    # over (2, 3) it came back NCHW, beside a channels_last input, a backward 4x as slow
    m = FastNet().to(memory_format=torch.channels_last).train()
    layouts = []
    m.stages[4][1].register_full_backward_hook(
        lambda _m, _gi, go: layouts.append(go[0].is_contiguous(memory_format=torch.channels_last)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = m(torch.rand(8, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), torch.ones(8)).backward()
    assert layouts == [True]


def _random_statistics(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights and BatchNorm statistics as a trained model has them, not the identity a fresh one starts with."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.3
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean = torch.randn(m.num_features, generator=g) * 0.2
            m.running_var = torch.rand(m.num_features, generator=g) + 0.5
    return model.eval()


def test_weights_say_their_version_and_a_run_from_before_relu_loads_as_gelu(tmp_path):
    """`fast` switched from GELU (version 1) to ReLU (version 2). Weights carry their version; a run saved before
    the switch has none, and must load as the GELU net it was trained as, with its logits, not as a ReLU net that
    happens to fit its tensors."""
    from realfake.models.fast import VERSION, DenseGELU
    from realfake.models.registry import load_weights

    x = torch.rand(6, 3, 32, 32)
    new = _random_statistics(FastNet(), 1)
    assert VERSION == 2 and int(new.state_dict()["version"]) == 2
    assert not any(isinstance(m, torch.nn.GELU) for m in new.modules())
    old = _random_statistics(FastNet(version=1), 2)
    legacy = {k: v.contiguous() for k, v in old.state_dict().items() if k != "version"}  # as runs were saved
    f = tmp_path / "model.safetensors"
    save_file(legacy, str(f))
    loaded = load_weights("fast", f).eval()
    assert int(loaded.version) == 1 and sum(isinstance(m, DenseGELU) for m in loaded.modules()) == 6
    assert torch.equal(loaded(x), old(x))
    as_relu = FastNet().eval()
    as_relu.load_state_dict({**legacy, "version": torch.tensor(2)})
    assert not torch.allclose(as_relu(x), old(x), atol=1e-3)  # the same tensors read as ReLU: other logits
    save_file({k: v.contiguous() for k, v in new.state_dict().items()}, str(f))
    again = load_weights("fast", f).eval()
    assert int(again.version) == 2 and torch.equal(again(x), new(x))
    save_file({**{k: v.contiguous() for k, v in new.state_dict().items()}, "version": torch.tensor(9)}, str(f))
    with pytest.raises(RealfakeError, match="does not fit the fast model: .*version 9"):
        load_weights("fast", f)
