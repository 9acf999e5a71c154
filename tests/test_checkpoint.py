"""Checkpoints hold safetensors + JSON only: a run folder can never run code, and every damaged or
unwritable checkpoint ends in one line that names the file and says what to do.

realfake.checkpoint is imported inside the tests, so the CLI tests also run (and fail) against older code.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.clitools import assert_one_line_error, cli
from torch import nn

from realfake.config import RunConfig
from realfake.errors import RealfakeError
from realfake.fit import EarlyStopping, state_to_cpu

NEW_FILES = {"model.safetensors", "best.safetensors", "state.safetensors", "state.json"}


@pytest.fixture(scope="module")
def fast_run(mini_zip, tmp_path_factory):
    """A fast-model run stopped after epoch 1 of 2 (what --resume is for), and its data cache.

    Tests copy it before changing it. Interrupting also skips the run's final report: seconds per test file.
    """
    from realfake import training as run

    def stop(epoch: int) -> None:
        raise KeyboardInterrupt

    cache = tmp_path_factory.mktemp("ckpt-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REALFAKE_CACHE_DIR", str(cache))
        out = tmp_path_factory.mktemp("ckpt") / "run"
        cfg = RunConfig(data=str(mini_zip), limit=200, epochs=2, batch_size=32, weights="none", device="cpu",
                        model="fast", seed=3, out=str(out))
        with pytest.raises(KeyboardInterrupt):
            run.train(cfg, progress=False, log=lambda m: None, on_epoch_end=stop)
        return out, cache


@pytest.fixture
def run_copy(fast_run, tmp_path, monkeypatch):
    """A private copy of the run; the shared data cache is read (never written) by the child processes."""
    src, cache = fast_run
    monkeypatch.setenv("REALFAKE_CACHE_DIR", str(cache))
    return Path(shutil.copytree(src, tmp_path / "run"))


class _Payload:
    """Unpickling this runs code: it writes `marker`. What an attacker would put in a shared run folder."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def _plant_pickle(ckpt: Path, marker: Path) -> None:
    """Replace the checkpoint's state with a pickle that writes `marker` when loaded, as the old format was."""
    for name in ("state.json", "state.safetensors"):
        (ckpt / name).unlink(missing_ok=True)
    torch.save({"epoch": 0, "optimizer": _Payload(marker)}, ckpt / "state.pt")


def test_crafted_pickle_in_a_run_folder_never_runs(run_copy, tmp_path):
    control = tmp_path / "control"  # the payload is live: loading it the old way does run it
    torch.save({"x": _Payload(control)}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.exists()

    marker = tmp_path / "pwned"
    _plant_pickle(run_copy / "checkpoint", marker)
    proc = cli("train", "--resume", run_copy, check=False, timeout=300)
    assert not marker.exists(), "resuming unpickled the run folder's state.pt and ran its code"
    assert_one_line_error(proc, "older realfake")
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert str(run_copy / "checkpoint") in line and "never loaded" in line and "--out" in line


@pytest.mark.parametrize("where", ["aside", "beside"])
def test_state_pt_is_never_opened(run_copy, tmp_path, where):
    """Also in the aside copy a crash can leave (.checkpoint.PID.RANDOM.old), and next to a new-format state."""
    from realfake.atomic import existing_dir
    from realfake.checkpoint import read_checkpoint

    marker = tmp_path / "pwned"
    ckpt = run_copy / "checkpoint"
    if where == "aside":
        _plant_pickle(ckpt, marker)
        ckpt.rename(run_copy / ".checkpoint.123.0a1b.old")
        with pytest.raises(RealfakeError, match="older realfake"):
            read_checkpoint(existing_dir(ckpt))
    else:
        torch.save({"x": _Payload(marker)}, ckpt / "state.pt")
        assert read_checkpoint(ckpt).epoch == 0
    assert not marker.exists()


# --- the format round-trips exactly ---------------------------------------------------------------------


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 30 * 30, 1))


def _training(opt_cls, schedule: str, seed: int):
    torch.manual_seed(seed)
    model = _net()
    opt = opt_cls(model.parameters(), lr=1e-2)
    if schedule == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 / (1 + step))
    return model, opt, sched, EarlyStopping(patience=3), torch.Generator().manual_seed(seed)


def _step(model, opt, x):
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()


def _same(a, b, path="") -> None:
    """Equal values of equal types (a tuple stays a tuple, a float a float), tensors bit for bit."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            _same(u, v, f"{path}.{i}")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    else:
        assert a == b, path


@pytest.mark.parametrize("opt_cls,schedule", [(torch.optim.Adam, "plateau"), (torch.optim.AdamW, "lambda")])
def test_round_trip_restores_every_piece_of_state(tmp_path, opt_cls, schedule):
    from realfake.checkpoint import read_checkpoint, write_checkpoint

    model, opt, sched, early, gen = _training(opt_cls, schedule, seed=0)
    x = torch.rand(8, 3, 32, 32)
    for val_loss in (0.5, 0.7, 0.6):
        _step(model, opt, x)
        sched.step(val_loss) if schedule == "plateau" else sched.step()
        if schedule == "plateau":  # the lambda run keeps early stopping fresh: best_loss inf must survive
            early.step(val_loss, 1)
    torch.rand(5, generator=gen), torch.rand(3)
    best = state_to_cpu(model)
    history = [{"epoch": 1, "val_loss": float("nan"), "lr": 0.01}, {"epoch": 2, "val_loss": 0.6, "lr": 5e-3}]
    rng = torch.get_rng_state()
    write_checkpoint(tmp_path / "checkpoint", model, best, opt, sched, early, gen, 2, history)
    assert {p.name for p in (tmp_path / "checkpoint").iterdir()} == NEW_FILES

    model2, opt2, sched2, early2, gen2 = _training(opt_cls, schedule, seed=1)
    torch.manual_seed(123)
    ckpt = read_checkpoint(tmp_path / "checkpoint")
    ckpt.restore(model2, opt2, sched2, early2, gen2)

    _same(opt.state_dict(), opt2.state_dict())
    _same(sched.state_dict(), sched2.state_dict())
    _same(asdict(early), asdict(early2))
    _same(model.state_dict(), model2.state_dict())
    _same(best, ckpt.best)
    _same(history, ckpt.history)
    _same(gen.get_state(), gen2.get_state())
    _same(rng, torch.get_rng_state())
    assert ckpt.epoch == 2
    if schedule == "lambda":
        assert early2.best_loss == math.inf
    # and training goes on identically
    _step(model, opt, x)
    _step(model2, opt2, x)
    _same(model.state_dict(), model2.state_dict())


def test_state_json_cannot_hold_is_refused_before_the_disk_is_touched(tmp_path):
    from realfake.checkpoint import write_checkpoint

    class OddScheduler:
        def state_dict(self):
            return {"fn": object()}

    model, opt, _, early, gen = _training(torch.optim.Adam, "plateau", seed=0)
    with pytest.raises(RealfakeError, match=r"scheduler\.state\.fn is of type object.*never pickles"):
        write_checkpoint(tmp_path / "checkpoint", model, state_to_cpu(model), opt, OddScheduler(), early, gen, 0, [])
    assert list(tmp_path.iterdir()) == []


# --- damaged checkpoints -----------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_json(change):
    def edit(ckpt: Path) -> None:
        d = json.loads((ckpt / "state.json").read_text())
        change(d)
        (ckpt / "state.json").write_text(json.dumps(d))

    return edit


def _edit_tensors(name, change):
    def edit(ckpt: Path) -> None:
        t = load_file(str(ckpt / name))
        change(t)
        save_file(t, str(ckpt / name))

    return edit


DAMAGE = {
    "truncated model": ("model.safetensors", lambda c: _truncate(c / "model.safetensors")),
    "truncated best": ("best.safetensors", lambda c: _truncate(c / "best.safetensors")),
    "truncated state tensors": ("state.safetensors", lambda c: _truncate(c / "state.safetensors")),
    "truncated json": ("state.json", lambda c: _truncate(c / "state.json")),
    "json not utf-8": ("state.json", lambda c: (c / "state.json").write_bytes(b"\xff\xfe{")),
    "json missing": ("state.json", lambda c: (c / "state.json").unlink()),
    "model missing": ("model.safetensors", lambda c: (c / "model.safetensors").unlink()),
    "future version": ("state.json", _edit_json(lambda d: d.update(version=99))),
    "epoch not a number": ("state.json", _edit_json(lambda d: d.update(epoch="3"))),
    "NaN literal": ("state.json", lambda c: (c / "state.json").write_text(
        (c / "state.json").read_text().replace('"epoch": 2', '"epoch": NaN'))),
    "dangling tensor": ("state.json", _edit_json(lambda d: d["rng"].update(torch={"$tensor": "nope"}))),
    "unknown tag": ("state.json", _edit_json(lambda d: d["rng"].update(torch={"$pickle": "x"}))),
    "extra tensor": ("state.safetensors", _edit_tensors("state.safetensors", lambda t: t.update(x=torch.zeros(1)))),
    "rng not uint8": ("state.safetensors", _edit_tensors("state.safetensors",
                                                         lambda t: t.update({"rng.torch": torch.zeros(3)}))),
    "renamed weight": ("model.safetensors", _edit_tensors("model.safetensors",
                                                          lambda t: t.update(extra=t.pop("0.weight")))),
    "wrong weight shape": ("best.safetensors", _edit_tensors(
        "best.safetensors", lambda t: t.update({"0.weight": torch.zeros(4, 3, 1, 1)}))),
    "wrong moment shape": ("state.safetensors", _edit_tensors(
        "state.safetensors", lambda t: t.update({"optimizer.state.0.exp_avg": torch.zeros(2)}))),
    "other optimizer": ("state.json", _edit_json(lambda d: d["optimizer"].update({"class": "SGD"}))),
    "other schedule": ("state.json", _edit_json(lambda d: d["scheduler"].update({"class": "LambdaLR"}))),
    "unknown scheduler key": ("state.json", _edit_json(lambda d: d["scheduler"]["state"].update(optimizer=1))),
    "early stopping keys": ("state.json", _edit_json(lambda d: d["early_stopping"].pop("bad_epochs"))),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_checkpoint_is_one_line_naming_the_file(tmp_path, damage):
    from realfake.checkpoint import read_checkpoint, write_checkpoint

    model, opt, sched, early, gen = _training(torch.optim.Adam, "plateau", seed=0)
    _step(model, opt, torch.rand(4, 3, 32, 32))
    ckpt = tmp_path / "checkpoint"
    write_checkpoint(ckpt, model, state_to_cpu(model), opt, sched, early, gen, 2, [])
    name, damage_fn = DAMAGE[damage]
    damage_fn(ckpt)
    with pytest.raises(RealfakeError) as err:
        read_checkpoint(ckpt).restore(*_training(torch.optim.Adam, "plateau", seed=1)[:3], early, gen)
    msg = str(err.value)
    assert "\n" not in msg and str(ckpt / name) in msg and "--out" in msg, msg


def test_truncated_checkpoint_on_resume(run_copy):
    from realfake import training as run

    _truncate(run_copy / "checkpoint" / "model.safetensors")
    with pytest.raises(RealfakeError, match="not a readable safetensors file") as err:
        run.resume(run_copy, progress=False, log=lambda m: None)
    assert str(run_copy / "checkpoint" / "model.safetensors") in str(err.value) and "\n" not in str(err.value)


# --- a full disk while writing ------------------------------------------------------------------------------

_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
from realfake.cli import app
app(sys.argv[2:], prog_name="realfake")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_disk_full_during_checkpoint_write_keeps_the_old_one(run_copy):
    from realfake import training as run

    ckpt = run_copy / "checkpoint"
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    limit = (ckpt / "model.safetensors").stat().st_size // 2  # the run's small files fit, the weights do not
    proc = subprocess.run([sys.executable, "-c", _LIMITED, str(limit), "train", "--resume", str(run_copy)],
                          capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "could not write the checkpoint")
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert str(ckpt / "model.safetensors") in line and "previous checkpoint is kept" in line, line
    assert "--resume" in line
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    assert not [p for p in run_copy.rglob("*") if "tmp" in p.name or p.name.endswith(".old")]

    run.resume(run_copy, progress=False, log=lambda m: None)  # in-process: a second CLI start costs seconds
    state = json.loads((ckpt / "state.json").read_text())
    assert state["epoch"] == 1 and [r["epoch"] for r in state["history"]] == [1, 2]
    assert len((run_copy / "history.csv").read_text().splitlines()) == 3
