"""Every value read back from a run folder (run.json, config.yaml, checkpoint state, weights) or from an ONNX
file's metadata is checked: a bad one is one line naming the file and the field, never a traceback, a NaN in an
output row or a silently wrong verdict (issue 26)."""

from __future__ import annotations

import json
import math
import shutil
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file
from tests.clitools import assert_one_line_error, cli_inline
from torch import nn

from realfake.calibration import OOD_POINTS, Calibration, Typicality, calibrate
from realfake.config import RunConfig
from realfake.errors import RealfakeError
from realfake.rundir import RunDir

# --- run.json and ONNX metadata: one schema ------------------------------------------------------------------


def _valid_info() -> dict:
    z = np.concatenate([np.linspace(-6, 1, 200), np.linspace(-1, 6, 200)])
    y = np.repeat([0, 1], 200)
    cal = calibrate(z, y, "balanced", band="0.4:0.6", tta="flip")
    return {"model": "fast", "status": "trained", **cal.to_info()}


def _ood(real: list, fake: list | None = None, level: float = 0.96) -> dict:
    return {"level": level, "real": real, "fake": fake if fake is not None else list(range(OOD_POINTS))}


BAD = {  # field: (bad value, field named in the message)
    "threshold text": ("threshold", "abc"),
    "threshold 5": ("threshold", 5),
    "threshold NaN": ("threshold", math.nan),
    "threshold bool": ("threshold", True),
    "temperature -1": ("temperature", -1),
    "temperature text": ("temperature", "x"),
    "temperature 0": ("temperature", 0),
    "logit_offset inf": ("logit_offset", math.inf),
    "band reversed": ("uncertain_band", [0.6, 0.4]),
    "band text": ("uncertain_band", "0.4:0.6"),
    "band of three": ("uncertain_band", [0.1, 0.2, 0.3]),
    "band item text": ("uncertain_band", [0.1, "x"]),
    "tta unknown": ("tta", "mirror"),
    "policy number": ("threshold_policy", 3),
    "class names swapped": ("class_names", ["FAKE", "REAL"]),
    "class names text": ("class_names", "REAL,FAKE"),
    "ood text": ("ood", "typical"),
    "ood level 1.5": ("ood", _ood(list(range(OOD_POINTS)), level=1.5)),
    "ood too short": ("ood", _ood(list(range(OOD_POINTS - 1)))),
    "ood too long": ("ood", _ood(list(range(OOD_POINTS + 1)))),
    "ood unsorted": ("ood", _ood(list(range(OOD_POINTS))[::-1])),
    "ood NaN": ("ood", _ood([*range(OOD_POINTS - 1), math.nan])),
    "ood text items": ("ood", _ood(["a"] * OOD_POINTS)),
    "ood missing fake": ("ood", {"level": 0.96, "real": list(range(OOD_POINTS))}),
}


def _field(case: str) -> str:
    key, value = BAD[case]
    if key == "ood" and isinstance(value, dict):
        return "ood.level" if value["level"] == 1.5 else "ood.real" if "fake" in value else "ood.fake"
    return key


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_run_json_value_is_one_line_naming_file_and_field(tmp_path, case):
    key, value = BAD[case]
    (tmp_path / RunDir.INFO).write_text(json.dumps({**_valid_info(), key: value}))  # NaN/inf as json writes them
    with pytest.raises(RealfakeError) as err:
        RunDir(tmp_path).info()
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path / RunDir.INFO}: ") and f" {_field(case)} must be " in msg
    assert "restore it from a copy, or retrain" in msg
    # the library call goes through the same rule
    with pytest.raises(RealfakeError, match=f" {_field(case)} must be "):
        Calibration.from_info(json.loads((tmp_path / RunDir.INFO).read_text()))


def test_the_message_shows_the_value_short():
    with pytest.raises(RealfakeError, match=r"threshold must be a number between 0 and 1, got 'abc': restore"):
        Calibration.from_info({"threshold": "abc"})
    with pytest.raises(RealfakeError, match=r"ood.real must be 101 finite numbers in ascending order, got nan at "
                                            r"position 100"):
        Calibration.from_info({"ood": _ood([*range(OOD_POINTS - 1), math.nan])})


def test_every_stored_field_has_its_rule_said_once():
    from realfake.calibration import _STORED_RULES, StoredCalibration, StoredOod

    fields = {*StoredCalibration.model_fields, *(f"ood.{f}" for f in StoredOod.model_fields)}
    assert fields == set(_STORED_RULES)
    with pytest.raises(RealfakeError, match="run.json must hold an object of settings, not list"):
        Calibration.from_info([0.5])  # type: ignore[arg-type]


def test_a_million_ood_quantiles_fail_fast_without_a_big_allocation():
    million = [0.0] * 1_000_000
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        with pytest.raises(RealfakeError, match=r"ood.real must be 101 .*got a list of 1000000 values"):
            Calibration.from_info({"ood": _ood(million)})
        with pytest.raises(RealfakeError, match=r"ood.fake must be 101"):
            Typicality.from_info(_ood(list(range(OOD_POINTS)), million))
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seconds < 0.5 and peak < 1_000_000, (seconds, peak)  # no copy of the list, let alone N x quantiles


def test_old_runs_and_unknown_keys_still_load(tmp_path):
    """Provenance of any shape passes; a run from before calibration gets T = 1 and its stored threshold."""
    old = {"model": "seed-resnet50", "status": "trained", "threshold": 0.7, "created": "2024-01-01",
           "parent": {"path": "x", "temperature": "not checked here"}, "notes": [1, {"a": None}], "ood": None}
    (tmp_path / RunDir.INFO).write_text(json.dumps(old))
    assert RunDir(tmp_path).info() == old
    cal = Calibration.from_info(old, default_threshold=0.5)
    assert (cal.temperature, cal.threshold, cal.uncertain_band, cal.tta, cal.ood) == (1.0, 0.7, None, "none", None)
    assert Calibration.from_info({}, default_threshold=0.4).threshold == 0.4
    again = Calibration.from_info(_valid_info())  # what calibrate writes reads back
    assert again.ood is not None and len(again.ood.real) == OOD_POINTS and again.uncertain_band == (0.4, 0.6)


# --- config.yaml ---------------------------------------------------------------------------------------------

BAD_CONFIG = {"data_budget_mb": math.inf, "lr": math.inf, "min_lr": math.inf, "seed": 2**70, "threshold": "abc"}


@pytest.mark.parametrize("key", [*BAD_CONFIG, "seed -1"])
def test_a_bad_config_value_is_one_line_naming_file_and_field(tmp_path, key):
    field, value = ("seed", -1) if key == "seed -1" else (key, BAD_CONFIG[key])
    (tmp_path / RunDir.CONFIG).write_text(yaml.safe_dump({**RunConfig(model="fast").model_dump(), field: value}))
    with pytest.raises(RealfakeError) as err:
        RunDir(tmp_path).config()
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / RunDir.CONFIG) in msg and f"{field}: " in msg, msg


def test_seeds_torch_and_numpy_take_are_accepted():
    for seed in (0, 2**32 - 1):
        cfg = RunConfig(seed=seed)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)  # the strictest of the seeding functions realfake's dependencies offer
    with pytest.raises(RealfakeError, match="seed"):
        RunConfig.from_sources(seed=2**32)


# --- checkpoint state (train --resume) -----------------------------------------------------------------------


def _training(seed: int):
    from realfake.fit import EarlyStopping

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    return model, opt, sched, EarlyStopping(patience=3), torch.Generator().manual_seed(seed)


BAD_STATE = {  # damage to state.json: the field its message names
    "lr text": (lambda d: d["optimizer"]["param_groups"][0].update(lr="abc"), "optimizer.param_groups.0.lr"),
    "lr null": (lambda d: d["optimizer"]["param_groups"][0].update(lr=None), "optimizer.param_groups.0.lr"),
    "lr NaN": (lambda d: d["optimizer"]["param_groups"][0].update(lr={"$float": "nan"}), "param_groups.0.lr"),
    "betas text": (lambda d: d["optimizer"]["param_groups"][0].update(betas="ab"), "param_groups.0.betas"),
    "three betas": (lambda d: d["optimizer"]["param_groups"][0].update(betas={"$tuple": [0.9, 0.9, 0.9]}),
                    "param_groups.0.betas"),
    "amsgrad number": (lambda d: d["optimizer"]["param_groups"][0].update(amsgrad=3), "param_groups.0.amsgrad"),
    "amsgrad switched": (lambda d: d["optimizer"]["param_groups"][0].update(amsgrad=True), "amsgrad"),
    "weight decay text": (lambda d: d["optimizer"]["param_groups"][0].update(weight_decay="0"), "weight_decay"),
    "scheduler best text": (lambda d: d["scheduler"]["state"].update(best="x"), "scheduler.state.best"),
    "scheduler counter list": (lambda d: d["scheduler"]["state"].update(cooldown_counter=[1]), "cooldown_counter"),
    "scheduler epoch text": (lambda d: d["scheduler"]["state"].update(last_epoch="1"), "last_epoch"),
    "scheduler min_lrs short": (lambda d: d["scheduler"]["state"].update(min_lrs=[]), "scheduler.state.min_lrs"),
    "scheduler last lr text": (lambda d: d["scheduler"]["state"].update(_last_lr="x"), "_last_lr"),
    "moment a number": (lambda d: d["optimizer"]["state"]["0"].update(exp_avg=0.5), "optimizer.state.0.exp_avg"),
}


def _checkpoint(tmp_path: Path) -> Path:
    from realfake.checkpoint import write_checkpoint
    from realfake.fit import state_to_cpu

    model, opt, sched, early, gen = _training(0)
    opt.zero_grad()
    model(torch.rand(4, 8)).square().mean().backward()
    opt.step()
    sched.step(1.0)
    ckpt = tmp_path / "checkpoint"
    write_checkpoint(ckpt, model, state_to_cpu(model), opt, sched, early, gen, 1, [])
    return ckpt


@pytest.mark.parametrize("damage", list(BAD_STATE))
def test_checkpoint_state_of_the_wrong_type_is_one_line(tmp_path, damage):
    from realfake.checkpoint import read_checkpoint

    ckpt = _checkpoint(tmp_path)
    change, field = BAD_STATE[damage]
    d = json.loads((ckpt / "state.json").read_text())
    change(d)
    (ckpt / "state.json").write_text(json.dumps(d))
    if damage == "moment a number":  # its tensor is no longer referenced: drop it, or that is what is reported
        tensors = load_file(str(ckpt / "state.safetensors"))
        del tensors["optimizer.state.0.exp_avg"]
        save_file(tensors, str(ckpt / "state.safetensors"))
    model, opt, sched, early, gen = _training(1)
    with pytest.raises(RealfakeError) as err:
        read_checkpoint(ckpt).restore(model, opt, sched, early, gen)
    msg = str(err.value)
    assert "\n" not in msg and str(ckpt / "state.json") in msg and field in msg and "--out" in msg, msg


def test_the_checkpoint_as_written_still_restores_and_steps(tmp_path):
    """The control for the cases above: the same checkpoint undamaged restores and trains on."""
    from realfake.checkpoint import read_checkpoint

    ckpt = _checkpoint(tmp_path)
    model, opt, sched, early, gen = _training(1)
    read_checkpoint(ckpt).restore(model, opt, sched, early, gen)
    model(torch.rand(4, 8)).square().mean().backward()
    opt.step()
    sched.step(0.5)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_checkpoint_weights_holding_nan_are_refused(tmp_path):
    from realfake.checkpoint import read_checkpoint

    ckpt = _checkpoint(tmp_path)
    weights = load_file(str(ckpt / "model.safetensors"))
    weights["0.weight"][0, 0] = math.nan
    save_file(weights, str(ckpt / "model.safetensors"))
    with pytest.raises(RealfakeError, match=r"model\.safetensors: 0\.weight holds NaN or infinite values"):
        read_checkpoint(ckpt).restore(*_training(1))


# --- through the command line, on one small trained run ---------------------------------------------------------


@pytest.fixture(scope="module")
def fast_run(mini_zip, tmp_path_factory):
    """A fast-model run trained for one epoch (checkpoint kept), and its data cache; tests change copies."""
    from realfake import training

    cache = tmp_path_factory.mktemp("schema-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REALFAKE_CACHE_DIR", str(cache))
        out = tmp_path_factory.mktemp("schema") / "run"
        cfg = RunConfig(data=str(mini_zip), limit=200, epochs=1, batch_size=32, weights="none", device="cpu",
                        model="fast", seed=3, out=str(out))
        training.train(cfg, progress=False, log=lambda m: None)
        return out, cache


@pytest.fixture
def run_copy(fast_run, tmp_path, monkeypatch):
    src, cache = fast_run
    monkeypatch.setenv("REALFAKE_CACHE_DIR", str(cache))
    return Path(shutil.copytree(src, tmp_path / "run", ignore=shutil.ignore_patterns("tb", "plots")))


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (32, 32), (10, 120, 30)).save(path)
    return path


def _assert_error_line(proc, *parts: str) -> None:
    """Exit 1, no traceback, and one `error:` line holding every part."""
    assert_one_line_error(proc, parts[0])
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and all(p in lines[0] for p in parts), proc.stderr


def _edit_info(run: Path, **fields) -> None:
    info = json.loads((run / RunDir.INFO).read_text())
    (run / RunDir.INFO).write_text(json.dumps({**info, **fields}))


def test_predict_on_the_run_as_trained_gives_finite_rows(run_copy, image):
    proc = cli_inline("predict", run_copy, image, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0 <= row["p_fake"] <= 1 and row["label"] in ("REAL", "FAKE", "uncertain")


@pytest.mark.parametrize("field,value", [("threshold", "abc"), ("threshold", math.nan), ("temperature", -1),
                                         ("logit_offset", math.inf), ("uncertain_band", [0.7, 0.2])])
def test_predict_refuses_a_bad_run_json_value_in_one_line(run_copy, image, field, value):
    _edit_info(run_copy, **{field: value})
    proc = cli_inline("predict", run_copy, image, "--device", "cpu")
    _assert_error_line(proc, f"{run_copy / RunDir.INFO}: {field} must be ")
    assert "NaN" not in proc.stdout


def test_export_and_predict_refuse_a_million_quantiles_at_once(run_copy, image):
    info = json.loads((run_copy / RunDir.INFO).read_text())
    _edit_info(run_copy, ood={**info["ood"], "real": [0.0] * 1_000_000})
    for args in (("predict", run_copy, image, "--device", "cpu"), ("export", run_copy)):
        t0 = time.perf_counter()
        proc = cli_inline(*args)
        assert time.perf_counter() - t0 < 20
        _assert_error_line(proc, str(run_copy / RunDir.INFO), "ood.real must be 101", "1000000")


@pytest.mark.parametrize("field,value", [("data_budget_mb", math.inf), ("lr", math.inf), ("seed", 2**70)])
def test_predict_refuses_a_bad_config_value_in_one_line(run_copy, image, field, value):
    cfg = yaml.safe_load((run_copy / RunDir.CONFIG).read_text())
    (run_copy / RunDir.CONFIG).write_text(yaml.safe_dump({**cfg, field: value}))
    proc = cli_inline("predict", run_copy, image, "--device", "cpu")
    _assert_error_line(proc, str(run_copy / RunDir.CONFIG), f"{field}: ")


def test_nan_weights_are_refused_in_one_line(run_copy, image):
    weights = load_file(str(run_copy / RunDir.WEIGHTS))
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name].view(-1)[0] = math.nan
    save_file(weights, str(run_copy / RunDir.WEIGHTS))
    proc = cli_inline("predict", run_copy, image, "--device", "cpu")
    _assert_error_line(proc, str(run_copy / RunDir.WEIGHTS), "NaN", name)


def test_resume_refuses_optimizer_state_of_the_wrong_type_in_one_line(run_copy):
    state = run_copy / RunDir.CHECKPOINT / "state.json"
    d = json.loads(state.read_text())
    d["optimizer"]["param_groups"][0]["lr"] = "abc"
    state.write_text(json.dumps(d))
    proc = cli_inline("train", "--resume", run_copy)
    _assert_error_line(proc, str(state), "optimizer.param_groups.0.lr must be a number")


# --- ONNX metadata: the same schema, naming the file and the key ---------------------------------------------

BAD_META = {
    "threshold": "abc",
    "temperature": "-1",
    "logit_offset": "inf",
    "uncertain_band": "[0.6, 0.4]",
    "tta": "mirror",
    "class_names": '["FAKE", "REAL"]',
    "ood": json.dumps(_ood([0.0] * 1_000_000)),
    "quantization": "[1",
}


@pytest.fixture(scope="module")
def onnx_file(fast_run, tmp_path_factory):
    from realfake.export import export_onnx

    run = tmp_path_factory.mktemp("schema-onnx") / "run"
    shutil.copytree(fast_run[0], run, ignore=shutil.ignore_patterns("tb", "plots", "checkpoint"))
    return export_onnx(run)


def _with_metadata(src: Path, dst: Path, key: str, value: str) -> Path:
    import onnx

    proto = onnx.load(str(src))
    props = {p.key: p.value for p in proto.metadata_props}
    props[key] = value
    del proto.metadata_props[:]
    for k, v in props.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(dst))
    return dst


@pytest.mark.parametrize("key", list(BAD_META))
def test_bad_onnx_metadata_is_one_line_naming_the_file_and_key(onnx_file, tmp_path, key):
    from realfake.onnxfile import load_onnx

    path = _with_metadata(onnx_file, tmp_path / "model.onnx", key, BAD_META[key])
    with pytest.raises(RealfakeError) as err:
        load_onnx(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ") and f"metadata {key}" in msg and "realfake export" in msg


def test_onnx_metadata_as_exported_loads_and_a_bad_one_fails_through_the_cli(onnx_file, tmp_path, image):
    from realfake.detector import Detector

    ok = Detector.load(onnx_file)
    assert ok.calibration.ood is not None and len(ok.calibration.ood.real) == OOD_POINTS
    bad = _with_metadata(onnx_file, tmp_path / "model.onnx", "threshold", "nan")
    proc = cli_inline("predict", bad, image)
    _assert_error_line(proc, f"{bad}: metadata threshold must be a number between 0 and 1, got nan")
